"""Pack real images from an ImageFolder tree (SRC/<WNID>/<image>) into one HDF5 evaluation file.

    python -m dp_hpc.data.pack --src /data/imagenet/val   --out in100_val.h5  --classes imagenet100
    python -m dp_hpc.data.pack --src /data/imagenet/train --out in100_test.h5 --classes imagenet100 --per-class 100

The ImageNet val images must first be sorted into class folders (the usual valprep.sh layout).
Images are stored uncompressed, 196 KB each at R = 256: IN-1k val (50k) is 9.8 GB, the whole IN-1k
train set 252 GB, hence `--per-class` for the held-out train split.

Each image is resized so that its shorter side is R (bilinear, antialiased), then center-cropped to
RxR: torchvision's Resize(R) + CenterCrop(R), the usual evaluation view before the classifier's
own crop. Folders of classes not in the list are skipped (IN-100 packs from the IN-1k folders).
`--per-class N` keeps, in every class, the N images whose file names hash lowest (SHA-1): a
deterministic subset that depends on nothing but the names, for the held-out train split.

Resumable: the file is created at full size (in a temporary file renamed into place), images are
written in blocks of `--block-size`, each followed by its `blocks_done` flag, and `complete` is set
last. A killed pack rerun with the same command continues from the last written block; a finished
file is left alone. The file layout is documented in `dp_hpc.data.imagenet`.

Bad inputs (no images, class folders that do not match the class list, an existing output made with
other settings, an `--out` whose folder does not exist or cannot be written) are reported before any
work: one line on stderr, exit status 2. A Ctrl-C is one line too (exit 130): rerun to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from dp_hpc.data.imagenet import H5_FORMAT, ClassList, DataInputError, describe_h5, load_class_list
from dp_hpc.errors import run_main

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


@dataclass(frozen=True)
class Listing:
    paths: list[str]  # relative to the source folder, sorted by (label, path)
    labels: np.ndarray  # int64 (N,)

    @property
    def digest(self) -> str:
        """Identifies the exact set of images: a resumed pack must see the same listing."""
        text = "\n".join(f"{y}\t{p}" for y, p in zip(self.labels.tolist(), self.paths))
        return hashlib.sha256(text.encode()).hexdigest()


def _name_hash(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _few(items: list[str], k: int = 5) -> str:
    return ", ".join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")


def list_images(src: Path, classes: ClassList, per_class: int = 0) -> Listing:
    """The images to pack, with their labels. Raises DataInputError naming the folder."""
    if not src.is_dir():
        raise DataInputError(f"{src}: not a folder; expected an ImageFolder tree SRC/<WNID>/<image>")
    folders = sorted(p.name for p in src.iterdir() if p.is_dir())
    missing = [w for w in classes.wnids if w not in set(folders)]
    if missing:
        if not folders:
            raise DataInputError(f"{src}: no images found: no class folders (expected SRC/<WNID>/<image>)")
        extra = [f for f in folders if f not in set(classes.wnids)]
        raise DataInputError(f"{src}: class folders do not match the class list: {len(missing)} of its "
                             f"{len(classes.wnids)} classes have no folder ({_few(missing)})"
                             + (f"; folders not in the list: {_few(extra)}" if extra else ""))
    paths, labels = [], []
    for label, wnid in enumerate(classes.wnids):
        names = sorted(e.name for e in os.scandir(src / wnid)
                       if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
        if not names:
            raise DataInputError(f"{src / wnid}: no images found ({', '.join(IMG_EXTENSIONS)})")
        if per_class:
            if len(names) < per_class:
                raise DataInputError(f"{src / wnid}: {len(names)} images, fewer than --per-class {per_class}")
            names = sorted(sorted(names, key=_name_hash)[:per_class])
        paths += [f"{wnid}/{n}" for n in names]
        labels += [label] * len(names)
    return Listing(paths, np.asarray(labels, dtype=np.int64))


def load_image(path: str, resolution: int) -> np.ndarray:
    """Shorter side to R (bilinear), center crop RxR, as torchvision Resize(R) + CenterCrop(R). (3, R, R)"""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataInputError(f"{path}: cannot decode the image ({e})") from None
    w, h = im.size
    if w <= h:
        size = (resolution, int(resolution * h / w))
    else:
        size = (int(resolution * w / h), resolution)
    if size != im.size:
        im = im.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - resolution) / 2.0)), int(round((size[1] - resolution) / 2.0))
    im = im.crop((left, top, left + resolution, top + resolution))
    return np.asarray(im).transpose(2, 0, 1).copy()


# ----------------------------------------------------------------------------- the file


def _settings(classes: ClassList, class_list: str, resolution: int, per_class: int, block_size: int,
              src: Path, listing: Listing) -> dict:
    return {"format": H5_FORMAT, "resolution": resolution, "classes": list(classes.wnids),
            "class_list": class_list, "per_class": per_class, "block_size": block_size,
            "listing": listing.digest, "source": str(src.resolve())}


def _check_existing(out: Path, settings: dict) -> bool:
    """True if `out` is a complete pack of exactly these settings; False if it is resumable.
    Raises DataInputError if it was made with other settings or from other images."""
    a = describe_h5(out)
    for key, what in (("resolution", "resolution"), ("classes", "class list"), ("per_class", "--per-class"),
                      ("block_size", "--block-size")):
        have = list(a[key]) if key == "classes" else int(a[key])
        if have != settings[key]:
            shown = f"{len(have)} classes ({a['class_list']})" if key == "classes" else have
            want = f"{len(settings[key])} classes ({settings['class_list']})" if key == "classes" else settings[key]
            raise DataInputError(f"{out}: exists, made with {what} {shown}, not {want}; "
                                 f"delete it or choose another --out")
    if a["listing"] != settings["listing"]:
        raise DataInputError(f"{out}: exists, packed from other images ({a['source']}); "
                             f"delete it or choose another --out")
    return bool(a["complete"])


def _create(out: Path, settings: dict, listing: Listing) -> None:
    """The whole file at full size, renamed into place: a crash leaves either nothing or a
    resumable file. Space is allocated now (never filled: sparse), so later block writes touch
    raw data only, never HDF5 metadata (a kill mid-write cannot corrupt the file's structure)."""
    import h5py

    def early():
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        return dcpl

    n, r = len(listing.paths), settings["resolution"]
    tmp = out.with_name(out.name + ".creating")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({**settings, "complete": np.uint8(0)})
        f.create_dataset("images", shape=(n, 3, r, r), dtype=np.uint8, dcpl=early(), fill_time="never")
        f.create_dataset("labels", data=listing.labels)
        f.create_dataset("paths", data=np.array([p.encode() for p in listing.paths]))
        f.create_dataset("blocks_done", shape=(-(-n // settings["block_size"]),), dtype=np.uint8,
                         dcpl=early(), fillvalue=0)
    os.replace(tmp, out)


def write_block(f, block: int, start: int, images: np.ndarray) -> None:
    """Images first, flushed; then the block's flag: a flag on disk means its images are too."""
    f["images"][start : start + len(images)] = images
    f.flush()
    f["blocks_done"][block] = 1
    f.flush()


@contextlib.contextmanager
def _decoder(workers: int) -> Iterator[Callable]:
    """An order-preserving map over images: in `workers` processes, or in this one for 0."""
    if workers <= 0:
        yield map
        return
    # the workers ignore Ctrl-C: the terminal sends it to the whole process group, and it is this
    # process's to handle (one line, exit 130: dp_hpc.errors.run_main), not every worker's traceback
    with multiprocessing.get_context("fork").Pool(workers, initializer=signal.signal,
                                                  initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        yield functools.partial(pool.imap, chunksize=4)


def check_out_file(out: Path) -> None:
    """`--out` names a file this process can write (or finish): its folder exists and is writable;
    it is not a folder. Nothing is created here: a mistyped folder is said, not made."""
    if out.is_dir():
        raise DataInputError(f"--out: {out} is a folder; give the path of the .h5 file to write in it")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise DataInputError(f"--out: {parent} is a file, not a folder; choose another --out")
    if not parent.is_dir():
        raise DataInputError(f"--out: {parent} is not a folder; create it first (mkdir -p {parent}) "
                             f"or choose another --out")
    target = out if out.exists() else parent
    if not os.access(target, os.W_OK | (0 if target is out else os.X_OK)):
        raise DataInputError(f"--out: {target} is not writable by this user; choose another --out")


def pack(src: str | os.PathLike, out: str | os.PathLike, classes: str = "imagenet100", resolution: int = 256,
         per_class: int = 0, workers: int = 0, block_size: int = 1024, progress: bool = True) -> Path:
    """Pack (or finish packing) `src` into `out`; returns `out`. All checks come before any work."""
    import h5py
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if resolution < 16 or resolution % 8:
        raise DataInputError(f"--resolution: must be a multiple of 8 and >= 16, got {resolution}")
    if per_class < 0 or block_size < 1:
        raise DataInputError("--per-class must be >= 0 and --block-size >= 1")
    check_out_file(out)
    class_list = load_class_list(classes)
    listing = list_images(src, class_list, per_class)
    settings = _settings(class_list, classes, resolution, per_class, block_size, src, listing)
    if out.exists() and _check_existing(out, settings):
        print(f"{out}: already complete ({len(listing.paths):,} images); nothing to do")
        return out
    if not out.exists():
        _create(out, settings, listing)
    n = len(listing.paths)
    with h5py.File(out, "r") as f:
        todo = np.flatnonzero(f["blocks_done"][:] == 0).tolist()
    index = [i for b in todo for i in range(b * block_size, min(n, (b + 1) * block_size))]
    load = functools.partial(load_image, resolution=resolution)
    # the worker processes start before the file is opened: they never inherit an HDF5 handle
    with _decoder(workers) as imap, h5py.File(out, "r+") as f, \
            tqdm(total=n, initial=n - len(index), unit="img", desc=out.name, disable=not progress) as bar:
        decoded = imap(load, [str(src / listing.paths[i]) for i in index])
        for b in todo:
            start, stop = b * block_size, min(n, (b + 1) * block_size)
            write_block(f, b, start, np.stack([next(decoded) for _ in range(stop - start)]))
            bar.update(stop - start)
        f.attrs["complete"] = np.uint8(1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.data.pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="ImageFolder tree: SRC/<WNID>/<image>")
    p.add_argument("--out", required=True, help="the HDF5 file to write (or finish)")
    p.add_argument("--classes", default="imagenet100", help="imagenet100 | imagenet1k | imagenet10 | a WNID file (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=256, help="stored side R (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=0, help="keep N images per class (default: all)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding processes (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=1024, help="images per write (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        pack(args.src, args.out, args.classes, args.resolution, args.per_class, args.workers, args.block_size)
    except DataInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "interrupted (Ctrl-C); rerun the same command to continue"))
