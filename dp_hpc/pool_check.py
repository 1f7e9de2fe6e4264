"""Is a pool what its markers say? The files behind every marked chunk of a run's pool, checked
cheaply (they exist) or deeply (they decode, with the right shape and, for the inputs fixed at
creation, the right values); and the repairs `python -m dp_hpc.verify --repair` makes.

Why a file check and not a read: zarr returns the fill value for a chunk whose file is missing
(images: zeros, entropy: NaN, labels: -1), silently. A chunk purged by a scratch file system
(Lustre/GPFS delete what has not been read for N days) while its marker survives would train as
black images of class -1. One pool chunk (chunk_size samples) is one file in each array:
images/c/<chunk>/0/0/0 (a zarr chunk, or for JPEG rounds a shard of one JPEG per image), and
entropy, labels, seeds, oracle_label /c/<chunk>.

Repairs: a damaged image, entropy or oracle file loses its chunk's marker (generation rewrites the
chunk with the same bytes: seeds and labels are derived from run seed, round and index); damaged
labels or seeds are rewritten from that derivation; a damaged `selected` (prune) loses the round's
COMPLETE marker (completion recomputes it from the entropies). A round whose zarr metadata is
gone is reported, not repaired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp_hpc.layout import RunDir
from dp_hpc.pool import Pool, balanced_labels, sample_seeds

GENERATED = ("images", "entropy", "oracle_label")  # written by a shard task with the chunk's marker
DERIVED = ("labels", "seeds")  # written at round creation, a pure function of the round's attrs


@dataclass(frozen=True)
class ChunkDamage:
    """One damaged file of a round. `chunk` None: the round itself (metadata, `selected`)."""

    round: int
    chunk: int | None
    array: str
    path: Path
    what: str  # "missing", or why it does not decode or is wrong

    @property
    def repairable(self) -> bool:
        return self.array in (*GENERATED, *DERIVED, "selected")

    @property
    def fix(self) -> str | None:
        """What `repair` does about it, in words; None: nothing."""
        if self.array in GENERATED:
            return f"remove the marker of chunk {self.chunk}: the next launch regenerates it (same bytes)"
        if self.array in DERIVED:
            return f"rewrite {self.array} of chunk {self.chunk} from the run seed"
        if self.array == "selected":
            return "remove the round's COMPLETE marker: the next launch recomputes `selected`"
        return None

    def describe(self) -> str:
        where = f"pool round {self.round}" + (f" chunk {self.chunk}" if self.chunk is not None else "")
        if self.what == "missing":
            return f"{where} is marked written, but its {self.array} file is missing"
        return f"{where}: {self.array} {self.what}"


def check_pool(run: RunDir, deep: bool = False, judged: bool = True) -> list[ChunkDamage]:
    """Damage behind the markers of a run's pool (a branch-out shares its parent's: nothing to
    check). Cheap: one stat per file of every marked chunk. Deep: also decodes each.

    Arrays whose chunks can legitimately hold only the fill value are never written (zarr skips
    all-fill chunks), so their files are not expected: entropy in plain rounds (no classifier: NaN),
    oracle_label without a judge (`judged` False, and no file of the round written: -1)."""
    if run.is_branch:
        return []
    pool = Pool(run.path)
    return [d for r in run.marked_rounds() for d in _check_round(pool, r, deep, judged)]


def _check_round(pool: Pool, r: int, deep: bool, judged: bool) -> list[ChunkDamage]:
    folder = pool.layout.pool_round(r)
    try:
        g = pool.group(r)
        arrays = {k: g[k] for k in (*GENERATED, *DERIVED, "selected") if k in g}
        attrs = dict(g.attrs)
        missing = [k for k in ("images", "entropy", *DERIVED) if k not in arrays]
        if missing:
            raise KeyError(f"arrays {missing} not found")
    except Exception as e:  # zarr raises various errors for a missing or truncated zarr.json
        return [ChunkDamage(r, None, "metadata", folder, f"unreadable ({type(e).__name__}: {e}); "
                            f"restore the round or delete it and its markers")]
    if attrs["kind"] == "plain":
        del arrays["entropy"]
    if "oracle_label" in arrays and not judged and not any(_file(arrays["oracle_label"], folder, c).exists()
                                                           for c in pool.done_chunks(r)):
        del arrays["oracle_label"]
    derived = None
    out = []
    for c in sorted(pool.done_chunks(r)):
        a, b = c * attrs["chunk_size"], min((c + 1) * attrs["chunk_size"], attrs["n"])
        for name in (*GENERATED, *DERIVED):
            if name not in arrays:
                continue
            path = _file(arrays[name], folder, c)
            what = "missing" if not path.exists() else None
            if what is None and deep:
                if name in DERIVED and derived is None:
                    derived = {"labels": balanced_labels(attrs["run_seed"], r, attrs["n"], attrs["num_classes"]),
                               "seeds": sample_seeds(attrs["run_seed"], r, attrs["n"])}
                what = _decode_problem(arrays[name], a, b, None if derived is None else derived.get(name))
            if what is not None:
                out.append(ChunkDamage(r, c, name, path, what))
    if "selected" in arrays and pool.is_complete(r):
        sel = arrays["selected"]
        path = _file(sel, folder, 0)
        what = "missing" if not path.exists() else _decode_problem(sel, 0, sel.shape[0], None) if deep else None
        if what is not None:
            out.append(ChunkDamage(r, None, "selected", path, what))
    return out


def _file(array, round_folder: Path, chunk: int) -> Path:
    """The file holding pool chunk `chunk` of one of a round's arrays (a shard for JPEG images)."""
    key = array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))
    return round_folder / array.basename / key


def _decode_problem(array, a: int, b: int, expected: np.ndarray | None) -> str | None:
    """Why samples [a, b) of `array` are damaged (the file exists), or None."""
    try:
        x = array[a:b]
    except Exception as e:  # a truncated file: the codec's error (zstd, the shard index's crc32c, JPEG)
        return f"does not decode ({type(e).__name__}: {e})"
    if x.shape != (b - a, *array.shape[1:]):
        return f"decodes to shape {x.shape}, not {(b - a, *array.shape[1:])}"
    if expected is not None and not np.array_equal(x, expected[a:b]):
        return "differs from its derivation from the run seed"
    return None


def repair_pool(run: RunDir, damage: list[ChunkDamage]) -> list[ChunkDamage]:
    """Repair what can be; returns what was repaired."""
    pool, done = Pool(run.path), []
    for d in damage:
        if d.array in GENERATED:
            pool.chunk_marker(d.round, d.chunk).unlink(missing_ok=True)
        elif d.array in DERIVED:
            a = pool.round_attrs(d.round)
            lo, hi = pool.chunk_bounds(d.round, d.chunk)
            full = (balanced_labels(a["run_seed"], d.round, a["n"], a["num_classes"]) if d.array == "labels"
                    else sample_seeds(a["run_seed"], d.round, a["n"]))
            pool.group(d.round, mode="r+")[d.array][lo:hi] = full[lo:hi]  # one whole chunk: the creation's bytes
        elif d.array == "selected":
            run.complete_marker(d.round).unlink(missing_ok=True)
        else:
            continue
        done.append(d)
    return done
