"""Configuration of the real data: what the generator learns from, what monitors plateaus,
what gives the final numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dp_hpc.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class DataConfig:
    dataset: Literal["digits"] = "digits"
    """Real dataset. `digits`: the 8x8 digits bundled with scikit-learn (1,797 images, 10 classes)."""
    split_seed: int = 0
    """Seed of the deterministic, stratified split into generator-train / validation / test."""
    val_fraction: float = 0.2
    """Fraction of the real images used for plateau monitoring (validation)."""
    test_fraction: float = 0.3
    """Fraction held out for the final numbers (test). The rest trains the generator."""

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ConfigError(name, f"must be in (0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("test_fraction", "val_fraction + test_fraction must leave >= 10% to train the generator")
