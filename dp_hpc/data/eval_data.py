"""The real evaluation splits (`val` monitors plateaus, `test` gives the final numbers), whatever
the dataset: `open_eval_split(cfg, split)` -> an `EvalSplit` that yields this rank's share of the
split as uint8 image batches (B, C, H, W) at the pool's stored resolution, with int64 labels.

`check_data_inputs(cfg)` checks the real-data inputs a run will read (class list, packed files)
without reading images: the launcher calls it before submitting anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Union

import torch

from dp_hpc.data.config import DataConfig
from dp_hpc.data.digits import LabelledImages
from dp_hpc.data.imagenet import DataInputError, check_h5, load_class_list
from dp_hpc.errors import ConfigError


class _RankBatches(torch.utils.data.Dataset):
    """Batch k of one rank: every world_size-th sample from rank + k * batch * world_size on, read
    as one strided HDF5 hyperslab (only the rank's images are read). Opens the file lazily in the
    process that reads, so DataLoader workers never share an HDF5 handle with their parent."""

    def __init__(self, path: str, n: int, rank: int, world_size: int, batch_size: int):
        self.path, self.n, self.rank, self.world, self.batch = path, n, rank, world_size, batch_size
        self._file = None

    def __len__(self) -> int:
        mine = len(range(self.rank, self.n, self.world))
        return -(-mine // self.batch)

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r", locking=False)  # see describe_h5
        start = self.rank + k * self.batch * self.world
        sel = slice(start, min(self.n, start + self.batch * self.world), self.world)
        return torch.from_numpy(self._file["images"][sel]), torch.from_numpy(self._file["labels"][sel])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class H5Split:
    """A packed real split; the same interface as the in-memory `LabelledImages`."""

    path: str
    n: int

    def __len__(self) -> int:
        return self.n

    def batches(self, rank: int = 0, world_size: int = 1, batch_size: int = 1024,
                workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's shard (every world_size-th sample), in order: uint8 (B, 3, R, R), int64 (B,).
        With `workers` > 0, that many processes read ahead (two batches each)."""
        ds = _RankBatches(self.path, self.n, rank, world_size, batch_size)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers)
        try:
            yield from loader
        finally:
            ds.close()


EvalSplit = Union[LabelledImages, H5Split]  # in memory (digits) or packed HDF5


def open_eval_split(cfg: DataConfig, split: Literal["val", "test"]) -> EvalSplit:
    """Raises DataInputError naming the file if a packed split is missing, incomplete, or made for
    another resolution or class list than `cfg`."""
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}; allowed: val, test")
    if cfg.dataset == "digits":
        from dp_hpc.data.digits import load_digit_splits

        return getattr(load_digit_splits(cfg), split)
    if cfg.dataset == "imagenet":
        path = cfg.val_h5 if split == "val" else cfg.test_h5
        return H5Split(path, check_h5(path, cfg.resolution, load_class_list(cfg.classes)))
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def check_data_inputs(cfg: DataConfig) -> None:
    """Raise ConfigError (key `data.<field>`, message naming the file) if a real-data input of the
    run is missing or does not match the config. Reads attributes only: fast on any file size."""
    if cfg.dataset != "imagenet":
        return
    try:
        classes = load_class_list(cfg.classes)
    except DataInputError as e:
        raise ConfigError("data.classes", str(e)) from None
    for name in ("val_h5", "test_h5"):
        try:
            check_h5(getattr(cfg, name), cfg.resolution, classes)
        except DataInputError as e:
            raise ConfigError(f"data.{name}", str(e)) from None
