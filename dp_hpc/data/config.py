"""Configuration of the real data: what the generator learns from, what monitors plateaus,
what gives the final numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dp_hpc.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class DataConfig:
    dataset: Literal["digits", "imagenet"] = "digits"
    """Real dataset. `digits`: the 8x8 digits bundled with scikit-learn (1,797 images, 10 classes).
    `imagenet`: classes from `classes`, real evaluation images from the packed files `val_h5` and
    `test_h5` (the generator is a pretrained text-to-image model: it learns from no real image)."""
    split_seed: int = 0
    """digits: seed of the deterministic, stratified split into generator-train / validation / test."""
    val_fraction: float = 0.2
    """digits: fraction of the real images used for plateau monitoring (validation)."""
    test_fraction: float = 0.3
    """digits: fraction held out for the final numbers (test). The rest trains the generator."""
    classes: str = "imagenet100"
    """imagenet: `imagenet100` (the CMC 100-class subset), `imagenet1k`, `imagenet10` (Imagenette's
    ten classes: sweeps/pilot.yaml), or the path of a text file
    with one WNID per line (optionally followed by a class name). Class index = sorted-WNID order."""
    val_h5: str = ""
    """imagenet: packed real images that monitor plateaus (the paper: the real val set, 5k images
    for IN-100, 50k for IN-1k). Make it with `python -m dp_hpc.data.pack`. Required."""
    test_h5: str = ""
    """imagenet: packed held-out real images for the final numbers (the paper: the real train set,
    or a per-class subset of it: `pack --per-class N`). Required."""
    resolution: int = 256
    """imagenet: side R of the stored images, 3xRxR, in the pool and the packed files (the
    classifier crops from it)."""

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(name, f"must be in (0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("test_fraction", "val_fraction + test_fraction must leave >= 10% to train the generator")
        if self.resolution < 16 or self.resolution % 8:
            raise ConfigError("resolution", f"must be a multiple of 8 and >= 16 (latent diffusion works on "
                                            f"8x8 pixel cells), got {self.resolution}")
        if not self.classes.strip():
            raise ConfigError("classes", "must be imagenet100, imagenet1k, imagenet10 or the path of a WNID file, got ''")
        for name in ("val_h5", "test_h5"):
            path = getattr(self, name)
            if self.dataset == "imagenet" and not path:
                raise ConfigError(name, "required with dataset: imagenet: a file made by "
                                        "python -m dp_hpc.data.pack --src IMAGEFOLDER --out FILE.h5")
            if self.dataset == "digits" and path:
                raise ConfigError(name, "only read with dataset: imagenet (digits splits come from scikit-learn)")
