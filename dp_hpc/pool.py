"""The sample pool of one run: a Zarr v3 group with one set of arrays per round.

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

import functools
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from dp_hpc.io import naming_full_disk, read_json
from dp_hpc.jpeg_batch import EncodedImages
from dp_hpc.layout import COMPLETE, MARKER_DIR, POOL_DIR, RunDir, round_name  # noqa: F401 (re-exported)
from dp_hpc.pool_jpeg import (  # noqa: F401
    JpegCodec,
    JpegShardReader,
    estimated_bytes_per_image,
    uses_jpeg,
)

# ----------------------------------------------------------------------------- pure helpers


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mixing function: our per-sample seeds must not depend on numpy's RNG
    algorithms, which may change between versions."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def sample_seeds(run_seed: int, round_index: int, n: int) -> np.ndarray:
    """Seed of sample i of a round = hash(run seed, round, i), as int64 >= 0. (n,)"""
    base = _splitmix64(np.array([run_seed * 1_000_003 + round_index], dtype=np.uint64))[0]
    idx = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(idx ^ base)
    return (mixed >> np.uint64(1)).astype(np.int64)  # keep it positive for torch.manual_seed


def balanced_labels(run_seed: int, round_index: int, n: int, num_classes: int) -> np.ndarray:
    """Class-balanced labels (counts differ by at most one), in a seeded random order. (n,)"""
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng = np.random.default_rng([run_seed, round_index, 0xB1])
    return labels[rng.permutation(n)]


def top_entropy(entropy: np.ndarray, labels: np.ndarray, keep: int, per_class: bool,
                num_classes: int | None = None) -> np.ndarray:
    """Indices (sorted) of the `keep` highest-entropy samples (ties broken by index: deterministic).
    per_class: the top within each class, with the class counts of `balanced_labels(keep)` (class c
    keeps keep // K, plus one for c < keep % K), so a pruned round is as class-balanced as a plain or
    guided one; else the global top `keep`, whatever the classes. (keep,)"""
    order = np.lexsort((np.arange(len(entropy)), -entropy))  # by entropy desc, then index
    if not per_class:
        return np.sort(order[:keep]).astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 1
    quota = keep // num_classes + (np.arange(num_classes) < keep % num_classes)
    by_class = labels[order]
    picked = [order[by_class == c][: quota[c]] for c in range(num_classes)]
    out = np.sort(np.concatenate(picked)).astype(np.int64)
    if len(out) != keep:
        raise ValueError(f"per-class selection found {len(out)} of {keep} samples: a class has fewer "
                         f"candidates than its quota {quota.tolist()}")
    return out


def _mean_or_none(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return None if len(x) == 0 or np.isnan(x).any() else round(float(x.mean()), 4)


def round_stats(entropy: np.ndarray, labels: np.ndarray, oracle_label: np.ndarray | None,
                selected: np.ndarray | None, paired_plain: dict | None) -> dict:
    """A round's difficulty and label fidelity, for state.json and the report.

    entropy_mean: mean predictive entropy of the kept samples under the classifier that steered (dp)
    or scored (prune) the round (None for round 0: no classifier). label_fidelity: fraction of kept
    samples that the oracle (a classifier trained on the real generator-train images) reads as their
    conditioning label (None without an oracle). The plain reference, same classifier and oracle:
    prune -- all candidates (they are plain samples; the kept ones are the top of them); dp -- plain
    samples from the round's first seeds (`paired_plain`), with `paired_*` the guided samples of the
    same seeds."""
    keep = np.arange(len(labels)) if selected is None else selected
    fid = None if oracle_label is None or (oracle_label < 0).any() else oracle_label == labels
    out = {"n": int(len(keep)), "entropy_mean": _mean_or_none(entropy[keep]),
           "label_fidelity": None if fid is None else _mean_or_none(fid[keep])}
    if selected is not None:
        out.update(plain_entropy_mean=_mean_or_none(entropy),
                   plain_label_fidelity=None if fid is None else _mean_or_none(fid), plain_n=int(len(labels)))
    elif paired_plain is not None:
        n = int(paired_plain["n"])
        out.update(plain_entropy_mean=paired_plain["entropy_mean"],
                   plain_label_fidelity=paired_plain["label_fidelity"], plain_n=n,
                   paired_entropy_mean=_mean_or_none(entropy[:n]),
                   paired_label_fidelity=None if fid is None else _mean_or_none(fid[:n]))
    return out


@dataclass(frozen=True)
class ChunkRange:
    """Chunks [start, stop) of a round, owned by one shard task."""

    start: int
    stop: int


def shard_ranges(n_samples: int, chunk_size: int, shard_size: int) -> list[ChunkRange]:
    """Split a round into shard tasks of `shard_size` samples (a multiple of `chunk_size`)."""
    return list(shard_tuple(n_samples, chunk_size, shard_size))


@functools.lru_cache(maxsize=64)
def shard_tuple(n_samples: int, chunk_size: int, shard_size: int) -> tuple[ChunkRange, ...]:
    """shard_ranges, cached (ChunkRange is frozen): the coordinator's plan asks for a round's shards at
    every poll, and building 100k of them each time was a tenth of a poll (bench/coordinator_scale.py)."""
    n_chunks = -(-n_samples // chunk_size)
    per_shard = max(1, shard_size // chunk_size)
    return tuple(ChunkRange(s, min(s + per_shard, n_chunks)) for s in range(0, n_chunks, per_shard))


# ----------------------------------------------------------------------------- writing


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
        for name, values in arrays:
            with naming_full_disk(self.layout.pool_round(round_index) / name):
                g[name][a:b] = values
        marker = self.chunk_marker(round_index, chunk)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

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


# ----------------------------------------------------------------------------- reading


class PoolReader:
    """Random access to the union of completed rounds, in round order.

    Global index i maps to (round, local index) through the rounds' sizes; prune rounds map
    through their `selected` indices. A round that fits in `cache_bytes` is read whole, once, and
    indexed in memory (the digits pool). Larger rounds stream: JPEG rounds image by image (a
    uniformly random batch from millions of samples touches a different shard per sample, so any
    cache of whole chunks would decode chunk_size images per image used), others chunk by chunk
    through a bounded LRU cache of decoded chunks.

    Picklable by path; zarr arrays are opened lazily in the process that reads (DataLoader
    workers must not share the parent's zarr event loop)."""

    def __init__(self, run_dir: str | os.PathLike, rounds: list[int] | None = None,
                 cache_bytes: int = 256 << 20):
        self.pool = Pool(run_dir)
        self.rounds = list(self.pool.complete_rounds() if rounds is None else rounds)
        self.cache_bytes = cache_bytes
        self._sizes = [self.pool.round_size(r) for r in self.rounds]
        self.offsets = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        self._opened: dict[int, tuple] | None = None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached = 0
        self._whole: dict[int, np.ndarray] = {}  # rounds held entirely in memory
        self._jpeg: dict[int, JpegShardReader] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_opened=None, _cache=OrderedDict(), _cached=0, _whole={}, _jpeg={})
        return state

    def _open(self) -> dict[int, tuple]:
        if self._opened is None:
            opened = {}
            for r in self.rounds:
                g = self.pool.group(r)
                sel = g["selected"][:] if "selected" in g else None
                opened[r] = (g["images"], g["labels"][:], sel, int(g.attrs["chunk_size"]))
            self._opened = opened
        return self._opened

    def labels(self) -> np.ndarray:
        """Labels of the whole union, in global order. (len,)"""
        out = []
        for r in self.rounds:
            _, labels, sel, _ = self._open()[r]
            out.append(labels if sel is None else labels[sel])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _whole_round(self, r: int) -> np.ndarray | None:
        """The round's images in memory if they fit in what the cache budget has left."""
        if r in self._whole:
            return self._whole[r]
        images = self._open()[r][0]
        nbytes = int(np.prod(images.shape))  # uint8
        held = sum(a.nbytes for a in self._whole.values())
        if held + nbytes > self.cache_bytes:
            return None
        self._whole[r] = images[:]
        return self._whole[r]

    def _jpeg_reader(self, r: int) -> JpegShardReader:
        if r not in self._jpeg:
            self._jpeg[r] = JpegShardReader(self._open()[r][0], self.pool.layout.pool_round(r) / "images")
        return self._jpeg[r]

    def _chunk(self, r: int, c: int) -> np.ndarray:
        key = (r, c)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        images, _, _, cs = self._open()[r]
        data = images[c * cs : (c + 1) * cs]  # one whole chunk: one store read, one decode
        self._cache[key] = data
        self._cached += data.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return data

    def _by_round(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(round, mask of the batch rows in it, their indices in the round) for each round that
        global `indices` (B,) touch, in round order."""
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"pool index out of range [0, {len(self)})")
        opened = self._open()
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for k, r in enumerate(self.rounds):
            mask = which == k
            if not mask.any():
                continue
            sel = opened[r][2]
            local = indices[mask] - self.offsets[k]
            yield r, mask, (local if sel is None else sel[local])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (B, C, H, W) and labels int64 (B,) for global indices (B,)."""
        indices = np.asarray(indices, dtype=np.int64)
        opened = self._open()
        images_out: np.ndarray | None = None
        labels_out = np.empty(len(indices), dtype=np.int64)
        for r, mask, local in self._by_round(indices):
            images, labels, _, cs = opened[r]
            if images_out is None:
                images_out = np.empty((len(indices), *images.shape[1:]), dtype=np.uint8)
            labels_out[mask] = labels[local]
            whole = self._whole_round(r)
            if whole is not None:
                images_out[mask] = whole[local]
                continue
            if images.shards is not None:
                images_out[mask] = self._jpeg_reader(r).read(local)
                continue
            chunk_ids = local // cs
            pos = np.flatnonzero(mask)
            for c in np.unique(chunk_ids):
                m = chunk_ids == c
                images_out[pos[m]] = self._chunk(r, int(c))[local[m] - c * cs]
        if images_out is None:
            images_out = np.zeros((0, 1, 1, 1), dtype=np.uint8)
        return images_out, labels_out

    def read_encoded(self, indices: np.ndarray) -> tuple[EncodedImages, np.ndarray]:
        """As `read`, but the images of JPEG rounds stay encoded, for `decode_jpeg_batch` on the
        training device (`train.jpeg_decode: cuda`): the prefetch thread only reads files. JPEG
        rounds are read from their shards even when they would fit in the cache (it holds decoded
        images); lossless rounds are read as by `read`."""
        indices = np.asarray(indices, dtype=np.int64)
        opened = self._open()
        labels_out = np.empty(len(indices), dtype=np.int64)
        streams: list[np.ndarray | None] = [None] * len(indices)  # per batch row; None: a row of `pixels`
        pixels: np.ndarray | None = None
        shape = opened[self.rounds[0]][0].shape[1:] if self.rounds else (1, 1, 1)
        for r, mask, local in self._by_round(indices):
            images, labels, _, _ = opened[r]
            labels_out[mask] = labels[local]
            rows = np.flatnonzero(mask)
            if images.shards is not None:
                for row, stream in zip(rows.tolist(), self._jpeg_reader(r).read_streams(local)):
                    streams[row] = stream
                continue
            if pixels is None:
                pixels = np.zeros((len(indices), *shape), dtype=np.uint8)
            pixels[rows] = self.read(indices[mask])[0]
        jpeg_rows = [i for i, s in enumerate(streams) if s is not None]
        if pixels is None and len(jpeg_rows) < len(indices):  # images never written: all zero
            pixels = np.zeros((len(indices), *shape), dtype=np.uint8)
        kept = [streams[i] for i in jpeg_rows]
        return EncodedImages(
            shape=(len(indices), *shape),
            jpeg=np.concatenate(kept) if kept else np.zeros(0, np.uint8),
            jpeg_ends=np.cumsum([len(s) for s in kept], dtype=np.int64),
            jpeg_rows=np.array(jpeg_rows, dtype=np.int64),
            pixels=pixels,
        ), labels_out
