"""The embedded default dataset: scikit-learn's 8x8 digits, split into three disjoint real sets.

- gen_train: the only images the diffusion model ever sees;
- val: monitors plateaus during classifier training;
- test: held out for the final numbers.

Images are uint8 (N, 1, 8, 8) in [0, 255] (the raw 0..16 ink levels rescaled), labels int64 (N,).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Splits:
    gen_train: LabelledImages
    val: LabelledImages
    test: LabelledImages


def load_digit_splits(cfg: DataConfig) -> Splits:
    """Deterministic stratified split: the same cfg always gives the same three sets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(cfg.split_seed)
    parts: dict[str, list[np.ndarray]] = {"gen_train": [], "val": [], "test": []}
    for c in range(NUM_CLASSES):  # stratify: every split has every class in proportion
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * cfg.test_fraction))
        n_val = int(round(len(idx) * cfg.val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["gen_train"].append(idx[n_test + n_val :])
    out = {}
    for name, chunks in parts.items():
        idx = np.sort(np.concatenate(chunks))
        out[name] = LabelledImages(images[idx], labels[idx])
    return Splits(**out)
