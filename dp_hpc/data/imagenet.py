"""ImageNet as the rest of the system sees it: class lists, and the packed real evaluation files.

Class lists (`DataConfig.classes`): `imagenet1k`, `imagenet100`, `imagenet10` (Imagenette's; shipped
in `dp_hpc/data/classes/`, with their sources in the files' headers) or the path of a text file with one WNID per line,
optionally followed by a name (else the name comes from the ImageNet-1k list). The class index is
the position in sorted-WNID order: the standard ImageNet index (what torchvision's ImageFolder gives).

Packed files (`python -m dp_hpc.data.pack`; `val_h5`, `test_h5`): one HDF5 file per split::

    images       uint8  (N, 3, R, R)  contiguous, uncompressed (decoding would cost more than reading)
    labels       int64  (N,)          index in the class list; samples sorted by (label, path)
    paths        bytes  (N,)          source image, relative to the packed folder
    blocks_done  uint8  (ceil(N / block_size),)   1 once a block of images is written
    attrs        format, resolution, classes (WNIDs, index order), class_list, source, per_class,
                 block_size, listing (sha256 of paths + labels), complete (0 until the last block)

`check_h5` checks a file against the config (`dp_hpc.data.eval_data.H5Split` reads it). No torch here:
the packer imports this module in every decoding process.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CLASS_DIR = Path(__file__).parent / "classes"
NAMED_CLASS_LISTS = ("imagenet100", "imagenet1k", "imagenet10")
H5_FORMAT = "dp_hpc.eval_h5/1"


class DataInputError(ValueError):
    """A missing or unusable real-data input (class list, packed file). The message names the path."""


@dataclass(frozen=True)
class ClassList:
    wnids: tuple[str, ...]  # sorted: the class index order
    names: tuple[str, ...]  # human-readable, the generator's prompts


def _read_lines(path: Path) -> list[list[str]]:
    """Non-empty, non-comment lines, split into WNID and optional name."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split(None, 1))
    return out


@functools.lru_cache(maxsize=1)
def _imagenet1k_names() -> dict[str, str]:
    return {wnid: name for wnid, name in _read_lines(CLASS_DIR / "imagenet1k.txt")}


@functools.lru_cache(maxsize=8)
def load_class_list(spec: str) -> ClassList:
    """`imagenet1k`, `imagenet100`, or a WNID file. Raises DataInputError naming the file."""
    path = CLASS_DIR / f"{spec}.txt" if spec in NAMED_CLASS_LISTS else Path(spec)
    try:
        rows = _read_lines(path)
    except OSError as e:
        raise DataInputError(f"{path}: cannot read the class list ({e.strerror or e}); use imagenet100, imagenet10, "
                             f"imagenet1k or a text file with one WNID per line") from None
    wnids = [r[0] for r in rows]
    if not wnids:
        raise DataInputError(f"{path}: the class list holds no WNIDs")
    dupes = sorted(w for w, k in Counter(wnids).items() if k > 1)
    if dupes:
        raise DataInputError(f"{path}: WNIDs listed twice: {', '.join(dupes[:5])}")
    known = _imagenet1k_names()
    given = {r[0]: r[1].strip() for r in rows if len(r) > 1}
    unnamed = [w for w in wnids if w not in given and w not in known]
    if unnamed:
        raise DataInputError(f"{path}: {len(unnamed)} WNIDs are not ImageNet-1k classes and have no name "
                             f"after them: {', '.join(unnamed[:5])}")
    order = sorted(wnids)
    return ClassList(tuple(order), tuple(given.get(w) or known[w] for w in order))


# ----------------------------------------------------------------------------- packed files


def describe_h5(path: str | os.PathLike) -> dict:
    """The attributes of a packed file, plus `n` (raises DataInputError naming it if it is not one)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataInputError(f"{path}: packed file not found; make it with python -m dp_hpc.data.pack")
    try:
        # locking=False: a finished file is only read, and flock fails on some parallel file
        # systems (Lustre without flock: "unable to lock file, errno = 38")
        with h5py.File(path, "r", locking=False) as f:
            attrs = dict(f.attrs)
            n = int(f["images"].shape[0]) if "images" in f else -1
    except OSError as e:
        raise DataInputError(f"{path}: not a readable HDF5 file ({e}); delete it and pack again") from None
    if attrs.get("format") != H5_FORMAT:
        raise DataInputError(f"{path}: not a file written by dp_hpc.data.pack (format {attrs.get('format')!r})")
    attrs["classes"] = tuple(str(w) for w in attrs["classes"])
    attrs["n"] = n
    return attrs


def check_h5(path: str | os.PathLike, resolution: int, classes: ClassList) -> int:
    """Check a packed file against what the run expects; return its number of images."""
    a = describe_h5(path)
    if not a["complete"]:
        raise DataInputError(f"{path}: incomplete (packing was interrupted); rerun the same "
                             f"python -m dp_hpc.data.pack command to finish it")
    if int(a["resolution"]) != resolution:
        raise DataInputError(f"{path}: packed at resolution {int(a['resolution'])}, the config says "
                             f"data.resolution={resolution}")
    if a["classes"] != classes.wnids:
        raise DataInputError(f"{path}: packed for another class list ({len(a['classes'])} classes from "
                             f"{a['class_list']!r}) than the config's data.classes ({len(classes.wnids)} classes)")
    return int(a["n"])
