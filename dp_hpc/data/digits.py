"""The embedded default dataset: scikit-learn's 8x8 digits, split into three disjoint real sets.

- gen_train: the only images the diffusion model ever sees;
- val: monitors plateaus during classifier training;
- test: held out for the final numbers.

Images are uint8 (N, 1, 8, 8) in [0, 255] (the raw 0..16 ink levels rescaled), labels int64 (N,).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp_hpc.data.config import DataConfig

NUM_CLASSES = 10
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]
IMAGE_SHAPE = (1, 8, 8)  # (C, H, W)


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, rank: int = 0, world_size: int = 1, batch_size: int = 1024, workers: int = 0):  # noqa: ARG002
        """This rank's shard (every world_size-th sample), in order, as (uint8, int64) tensor
        batches: the interface of an evaluation split (dp_hpc.data.eval_data)."""
        import torch

        x, y = self.images[rank::world_size], self.labels[rank::world_size]
        for i in range(0, len(y), batch_size):
            yield torch.from_numpy(x[i : i + batch_size]), torch.from_numpy(y[i : i + batch_size])


@dataclass(frozen=True)
class Splits:
    gen_train: LabelledImages
    val: LabelledImages
    test: LabelledImages


def cache_dir() -> Path:
    """Where derived data is cached: $DP_HPC_CACHE, else ~/.cache/dp_hpc."""
    return Path(os.environ.get("DP_HPC_CACHE") or Path.home() / ".cache" / "dp_hpc")


def load_digit_splits(cfg: DataConfig) -> Splits:
    """The three splits, from a small .npz cache: every job needs them, and importing
    scikit-learn costs seconds per job process while the arrays are 120 kB."""
    path = cache_dir() / f"digits-v1-{cfg.split_seed}-{cfg.val_fraction}-{cfg.test_fraction}.npz"
    try:
        with np.load(path) as z:
            return Splits(**{k: LabelledImages(z[f"{k}_images"], z[f"{k}_labels"]) for k in ("gen_train", "val", "test")})
    except (FileNotFoundError, OSError, KeyError, ValueError):
        pass
    splits = split_digits(cfg)
    try:
        from dp_hpc.io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **{f"{k}_{a}": getattr(getattr(splits, k), a)
                         for k in ("gen_train", "val", "test") for a in ("images", "labels")})
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a read-only home is fine: we just recompute next time
        pass
    return splits


def split_indices(labels: np.ndarray, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Stratified, seeded split of indices: every split has every class in proportion."""
    rng = np.random.default_rng(cfg.split_seed)
    parts: dict[str, list[np.ndarray]] = {"gen_train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * cfg.test_fraction))
        n_val = int(round(len(idx) * cfg.val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["gen_train"].append(idx[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def split_digits(cfg: DataConfig) -> Splits:
    """Deterministic stratified split: the same cfg always gives the same three sets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = d.target.astype(np.int64)
    idx = split_indices(labels, cfg)
    return Splits(**{name: LabelledImages(images[i], labels[i]) for name, i in idx.items()})
