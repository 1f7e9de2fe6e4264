"""Configuration of classifier training (the paper's recipe, scaled to the data at hand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dp_hpc.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class PatienceConfig:
    """Incremental patience (paper, Sec. 4): T_max(round) = min(max, initial + increment * round).
    A fixed patience is increment = 0."""

    initial: int = 1
    """T_max in round 0: evaluations without improvement before asking for new data."""
    increment: int = 1
    """How much T_max grows with every round of added data."""
    max: int = 8
    """Upper bound on T_max."""
    min_delta: float = 0.0
    """An evaluation improves on the best only if val acc exceeds it by more than this."""

    def __post_init__(self) -> None:
        if self.initial < 1:
            raise ConfigError("initial", f"must be >= 1, got {self.initial}")
        if self.increment < 0:
            raise ConfigError("increment", f"must be >= 0, got {self.increment}")
        if self.max < self.initial:
            raise ConfigError("max", f"must be >= initial ({self.initial}), got {self.max}")
        if self.min_delta < 0:
            raise ConfigError("min_delta", f"must be >= 0, got {self.min_delta}")

    def limit(self, round_index: int) -> int:
        return min(self.max, self.initial + self.increment * round_index)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    classifier: Literal["digits_cnn"] = "digits_cnn"
    """Classifier architecture (random init)."""
    total_steps: int = 3000
    """Total iteration budget of the run, cool-down included."""
    warmup_steps: int = 300
    """Linear LR warm-up (paper: 10% of the budget)."""
    cooldown_steps: int = 600
    """Final cosine LR decay; no data is added during it (paper: 20% of the budget)."""
    batch_size: int = 128
    """Global batch size (split evenly across ranks)."""
    lr: float = 3e-3
    """Peak (stable-phase) learning rate of AdamW."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    label_smoothing: float = 0.11
    """Label smoothing of the cross-entropy (paper: 0.11)."""
    ema: float = 0.01
    """EMA update rate: ema += rate * (param - ema) every step (paper: 0.001 over 50k-100k steps).
    Evaluation uses the EMA weights."""
    eval_every: int = 100
    """tau: steps between evaluations on the real validation set (and checkpoints)."""
    patience: PatienceConfig = field(default_factory=PatienceConfig)
    """Plateau detection on validation accuracy."""
    checkpoint_keep: int = 2
    """How many recent checkpoints to keep (checkpoints used for guidance are always kept)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "batch_size", "eval_every", "checkpoint_keep"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "cooldown_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.total_steps <= self.warmup_steps + self.cooldown_steps:
            raise ConfigError(
                "total_steps",
                f"the iteration budget ({self.total_steps}) must exceed warmup_steps + cooldown_steps "
                f"({self.warmup_steps} + {self.cooldown_steps})",
            )
        if self.lr <= 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if not 0 < self.ema <= 1:
            raise ConfigError("ema", f"must be in (0, 1], got {self.ema}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")

    @property
    def decay_start(self) -> int:
        """First step of the cool-down: no plateau exits (and so no new data) from here on."""
        return self.total_steps - self.cooldown_steps
