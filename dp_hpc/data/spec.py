"""What the rest of the system needs to know about a dataset, whichever it is: the number of
classes, their names (the generator's prompts) and the stored image shape of the pool."""

from __future__ import annotations

from dataclasses import dataclass

from dp_hpc.data.config import DataConfig


@dataclass(frozen=True)
class DatasetSpec:
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W) as stored in the pool and fed to the classifier


def dataset_spec(cfg: DataConfig) -> DatasetSpec:
    """Raises dp_hpc.data.imagenet.DataInputError (naming the file) for an unreadable class list."""
    if cfg.dataset == "digits":
        from dp_hpc.data.digits import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES

        return DatasetSpec(NUM_CLASSES, tuple(CLASS_NAMES), IMAGE_SHAPE)
    if cfg.dataset == "imagenet":
        from dp_hpc.data.imagenet import load_class_list

        classes = load_class_list(cfg.classes)
        return DatasetSpec(len(classes.wnids), classes.names, (3, cfg.resolution, cfg.resolution))
    raise ValueError(f"unknown dataset {cfg.dataset!r}")
