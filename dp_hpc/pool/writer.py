"""Writing the sample pool of one run (`Pool`): a Zarr v3 group with one set of arrays per round.

Layout (``<run>/``)::

    pool.zarr/round_003/images   uint8   (N, C, H, W)  chunks (chunk_size, C, H, W); RGB of 64 px
                                                       and up: shards of chunk_size, one JPEG per image
                        labels   int64   (N,)          class-balanced, fixed at creation
                        seeds    int64   (N,)          per-sample seed = f(run seed, round, index)
                        entropy  float32 (N,)          classifier entropy of the stored sample
                        oracle_label int64 (N,)        the label-fidelity judge's reading (-1: none)
                        selected int64   (P,)          only for `prune` rounds: kept indices
    pool_markers/round_003/chunk_000012.done           chunk written (whole chunk)
    pool_markers/round_003/paired_plain.json           guided rounds: plain samples of the first seeds
    pool_markers/round_003/COMPLETE                    round usable by training

Why it is safe under concurrency and crashes:
- arrays are created at full size once, by the coordinator, in a temporary group that is
  renamed into place, so a crash never leaves a half-created round;
- each shard task owns whole chunks and writes each chunk in one call (LocalStore writes
  atomically since zarr 3.1.3), then its marker; a chunk without a marker is simply redone,
  and since labels and seeds are fixed, redoing writes the same bytes;
- markers live beside the store, not in it, because an all-fill chunk is never written by zarr
  and so "chunk file exists" cannot mean "written".

Storage of natural images (3xRxR, R >= 64: the ImageNet pools): lossless codecs leave ~100 KB per
256x256 photo, 0.8-1 TB for the largest IN-1k run (9.1M images), so each image is one JPEG
(quality 95, 4:4:4 chroma: ~38 KB and ~41 dB PSNR on real photos, ~340 GB for 9.1M; numbers and
the other candidates in bench/pool_storage.py). The images array is sharded: a shard is one
chunk_size chunk of samples (still the unit of writing, written whole), an inner chunk is one
image, so a random sample costs two small reads and one JPEG decode, not a whole chunk's. The
codec and the single-image reader are dp_hpc/pool_jpeg.py; the paths are dp_hpc/layout.py's.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from dp_hpc.io import KILL_IN_WRITE, kill_in_write_hook, naming_full_disk, read_json, remove_stale_temps
from dp_hpc.layout import RunDir
from dp_hpc.pool.selection import balanced_labels, round_stats, sample_seeds, top_entropy
from dp_hpc.pool_jpeg import JpegCodec, uses_jpeg


CHUNK_WRITTEN = ("images", "entropy", "oracle_label")
"""The arrays a generation task writes, chunk by chunk (write_chunk)."""


def _kill_in_zarr_writes() -> None:
    """Tests only (dp_hpc.io.KILL_IN_WRITE): zarr's LocalStore writes each chunk file to a temporary
    file and renames it; with the variable set, a write of a matching file SIGKILLs its process
    between the two, as a node failure there would."""
    import contextlib

    import zarr.storage._local as local

    atomic_write = local._atomic_write

    @contextlib.contextmanager
    def killing(path, mode, exclusive=False):
        with atomic_write(path, mode, exclusive) as f:
            yield f
            f.flush()
            kill_in_write_hook(path)

    local._atomic_write = killing


if os.environ.get(KILL_IN_WRITE):
    _kill_in_zarr_writes()


@dataclass(frozen=True)
class RoundSpec:
    """What a round holds. `n` is the number of samples generated (candidates for `prune`)."""

    round_index: int
    n: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    chunk_size: int
    num_classes: int
    run_seed: int
    kind: str  # "plain" | "guided" | "prune"

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_size)


class Pool:
    """Read/write access to one run's pool. Cheap to construct; opens zarr arrays lazily, so it
    can be pickled into job tasks and DataLoader workers (each process opens its own)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.layout = RunDir(run_dir)
        self.root = self.layout.pool
        self.markers = self.layout.markers

    # -- creation (coordinator only)
    def create_round(self, spec: RoundSpec) -> None:
        """Create the round's arrays at full size, with labels and seeds. Idempotent."""
        final = self.layout.pool_round(spec.round_index)
        if (final / "zarr.json").exists():
            return
        tmp = final.with_name(f"_tmp_{final.name}")
        try:
            with naming_full_disk(final):  # being made in tmp, beside it
                self._create_round(spec, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: give its room back at once
            raise
        os.replace(tmp, final)

    def _create_round(self, spec: RoundSpec, tmp: Path) -> None:
        zarr.open_group(self.root, mode="a")  # the root group, once
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a crash during creation
        g = zarr.open_group(tmp, mode="w")
        g.attrs.update(
            {"round": spec.round_index, "n": spec.n, "kind": spec.kind, "chunk_size": spec.chunk_size,
             "num_classes": spec.num_classes, "run_seed": spec.run_seed}
        )
        c = spec.chunk_size
        if uses_jpeg(spec.image_shape):
            g.create_array("images", shape=(spec.n, *spec.image_shape), chunks=(1, *spec.image_shape),
                           shards=(c, *spec.image_shape), serializer=JpegCodec(), compressors=None,
                           dtype="uint8", fill_value=0)
        else:
            g.create_array("images", shape=(spec.n, *spec.image_shape), chunks=(c, *spec.image_shape),
                           dtype="uint8", fill_value=0)
        g.create_array("entropy", shape=(spec.n,), chunks=(c,), dtype="float32", fill_value=np.nan)
        g.create_array("oracle_label", shape=(spec.n,), chunks=(c,), dtype="int64", fill_value=-1)
        labels = g.create_array("labels", shape=(spec.n,), chunks=(c,), dtype="int64", fill_value=-1)
        seeds = g.create_array("seeds", shape=(spec.n,), chunks=(c,), dtype="int64", fill_value=-1)
        labels[:] = balanced_labels(spec.run_seed, spec.round_index, spec.n, spec.num_classes)
        seeds[:] = sample_seeds(spec.run_seed, spec.round_index, spec.n)

    def has_round(self, round_index: int) -> bool:
        return (self.layout.pool_round(round_index) / "zarr.json").exists()

    def group(self, round_index: int, mode: str = "r") -> zarr.Group:
        """The round's zarr group (read-only unless mode="r+")."""
        # use_consolidated=False: metadata is never consolidated while the pool grows
        return zarr.open_group(self.layout.pool_round(round_index), mode=mode, use_consolidated=False)

    def round_attrs(self, round_index: int) -> dict:
        return dict(self.group(round_index).attrs)

    # -- chunk work (shard tasks)
    def chunk_bounds(self, round_index: int, chunk: int) -> tuple[int, int]:
        a = self.round_attrs(round_index)
        start = chunk * a["chunk_size"]
        return start, min(start + a["chunk_size"], a["n"])

    def chunk_marker(self, round_index: int, chunk: int) -> Path:
        return self.layout.chunk_marker(round_index, chunk)

    def chunk_done(self, round_index: int, chunk: int) -> bool:
        return self.chunk_marker(round_index, chunk).exists()

    def done_chunks(self, round_index: int) -> set[int]:
        return self.layout.done_chunks(round_index)

    def unmarked_chunks(self, round_index: int) -> set[int]:
        """Chunks of a round without a marker (not written yet, or unmarked by dp_hpc.verify --repair)."""
        a = self.round_attrs(round_index)
        return set(range(-(-a["n"] // a["chunk_size"]))) - self.done_chunks(round_index)

    def chunk_inputs(self, round_index: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, seeds) of the samples of one chunk."""
        g = self.group(round_index)
        a, b = self.chunk_bounds(round_index, chunk)
        return g["labels"][a:b], g["seeds"][a:b]

    def write_chunk(self, round_index: int, chunk: int, images: np.ndarray, entropy: np.ndarray,
                    oracle_label: np.ndarray | None = None) -> None:
        """Write one whole chunk (a whole shard for JPEG rounds), then its marker (the marker is the
        commit point). JPEG rounds store a lossy copy; `entropy` is that of the images given;
        `oracle_label`: the label-fidelity judge's reading of each image (None: no judge). On a full
        disk: `DiskFull` naming the array, and no marker (zarr writes each chunk file to a temporary
        file and renames it, so no half chunk file is left either)."""
        g = self.group(round_index, mode="r+")
        a, b = self.chunk_bounds(round_index, chunk)
        if images.shape[0] != b - a or entropy.shape != (b - a,):
            raise ValueError(f"chunk {chunk} of round {round_index} holds {b - a} samples, got {images.shape[0]}")
        arrays = [("images", images), ("entropy", entropy.astype(np.float32))]
        if oracle_label is not None and "oracle_label" in g:  # pools made before the array existed lack it
            arrays.append(("oracle_label", oracle_label.astype(np.int64)))
        self.remove_chunk_temps(round_index, chunk, g)
        for name, values in arrays:
            with naming_full_disk(self.layout.pool_round(round_index) / name):
                g[name][a:b] = values
        marker = self.chunk_marker(round_index, chunk)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def remove_chunk_temps(self, round_index: int, chunk: int, g=None) -> list[Path]:
        """Remove the temporary files (zarr's `<file>.<hex>.partial`) that a task killed while
        writing this chunk's files left (write_chunk calls it first). Safe because the task writing
        a chunk owns it: the coordinator never runs two tasks on one chunk range at once
        (RunState.running_shards), and a killed task writes nothing more."""
        g = self.group(round_index) if g is None else g
        folder, removed = self.layout.pool_round(round_index), []
        for name in CHUNK_WRITTEN:
            if name in g:
                f = folder / name / g[name].metadata.encode_chunk_key((chunk,) + (0,) * (g[name].ndim - 1))
                removed += remove_stale_temps(f.parent, f.name)
        return removed

    # -- completion (coordinator only)
    def is_complete(self, round_index: int) -> bool:
        return self.layout.complete_marker(round_index).exists()

    def complete_round(self, round_index: int, keep: int | None = None, per_class: bool = True) -> None:
        """Mark a round usable. With `keep` (prune), first store the indices of the `keep`
        highest-entropy samples (`top_entropy`: within each class if `per_class`)."""
        if self.is_complete(round_index):
            return
        a = self.round_attrs(round_index)
        missing = self.unmarked_chunks(round_index)
        if missing:
            raise RuntimeError(f"round {round_index} has {len(missing)} unwritten chunks")
        if keep is not None:
            g = self.group(round_index, mode="r+")
            sel = top_entropy(g["entropy"][:], g["labels"][:], keep, per_class, int(a["num_classes"]))
            if "selected" in g:
                del g["selected"]
            with naming_full_disk(self.layout.pool_round(round_index) / "selected"):
                g.create_array("selected", shape=sel.shape, chunks=(max(1, len(sel)),), dtype="int64")[:] = sel
        marker = self.layout.complete_marker(round_index)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def paired_plain_path(self, round_index: int) -> Path:
        """Guided rounds: what plain sampling gives for the round's first seeds (`round_stats`)."""
        return self.layout.paired_plain(round_index)

    def round_stats(self, round_index: int) -> dict:
        """How hard and how faithful a written round is (`round_stats` over its arrays)."""
        g = self.group(round_index)
        arrays = {k: g[k][:] for k in ("entropy", "labels", "oracle_label", "selected") if k in g}
        paired = read_json(self.paired_plain_path(round_index))
        return round_stats(arrays["entropy"], arrays["labels"], arrays.get("oracle_label"),
                           arrays.get("selected"), paired)

    def complete_rounds(self) -> list[int]:
        return self.layout.complete_rounds()

    def round_size(self, round_index: int) -> int:
        """Samples the round contributes to training (kept samples for prune rounds)."""
        g = self.group(round_index)
        return int(g["selected"].shape[0]) if "selected" in g else int(g.attrs["n"])
