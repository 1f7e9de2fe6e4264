"""Per-image results of a run's final evaluation: `<run>/test_predictions.npz`.

Every arm of a sweep is scored on the same held-out test images, so two runs can be compared image
by image (analysis.paired: McNemar's test, a bootstrap over images and seeds together). The final
evaluation writes, in the test split's order, each image's predicted class and its true label as
int16 (4 bytes an image: 200 KB for ImageNet's 50k validation images, 5 MB for the 1.28M-image
held-out train set; compressed), just before eval.json. Numpy only: the report reads it without
torch.

    from dp_hpc.predictions import read_test_predictions
    pred = read_test_predictions(RunDir(run).test_predictions)  # None for runs from before it
    pred.correct  # bool (n_test,)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dp_hpc.io import atomic_write_bytes

FORMAT = 1


@dataclass(frozen=True)
class TestPredictions:
    predicted: np.ndarray  # int16 (n_test,): the class the classifier chose
    label: np.ndarray  # int16 (n_test,): the true class, in the split's order

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.label


def write_test_predictions(path: str | os.PathLike, predicted: np.ndarray, label: np.ndarray) -> None:
    """Atomically (a reader sees the whole file or none)."""
    predicted, label = np.asarray(predicted), np.asarray(label)
    if predicted.shape != label.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and label {label.shape} must be one equal length")
    buf = io.BytesIO()
    np.savez_compressed(buf, format=np.int16(FORMAT), predicted=predicted.astype(np.int16),
                        label=label.astype(np.int16))
    atomic_write_bytes(path, buf.getvalue())


def read_test_predictions(path: str | os.PathLike) -> TestPredictions | None:
    """None if the run has no such file (runs evaluated before it existed)."""
    path = Path(path)
    try:
        with np.load(path) as z:
            if int(z["format"]) != FORMAT:
                raise ValueError(f"{path}: format {int(z['format'])}, this code reads {FORMAT}")
            return TestPredictions(z["predicted"], z["label"])
    except FileNotFoundError:
        return None
