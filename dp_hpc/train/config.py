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
    classifier: Literal["digits_cnn", "vit_b_16", "resnet50", "resnet18"] = "digits_cnn"
    """Classifier architecture, random init. digits_cnn: a 0.1M-parameter CNN for the 8x8 digits.
    vit_b_16 (the paper's ViT-B/16), resnet50 and resnet18 (a smaller BatchNorm network): the
    torchvision models, fed at `input_size`; what this file says of resnet50 holds for resnet18."""
    input_size: int = 224
    """Side of the square image vit_b_16 and resnet50 see: they resize the pool's stored resolution
    to it inside the module (digits_cnn ignores it)."""
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
    update_clipping: bool = True
    """AdamW with update clipping (StableAdamW, Wortsman et al. 2023): per tensor, the step is divided
    by max(1, RMS(g^2 / v_hat)). A no-op while Adam's second moment is up to date; after a data
    addition, whose hard samples bring gradients ~100x those of a pool trained to its loss floor, it
    stops the stale second moment from turning them into ~3x-lr steps on every parameter, which
    collapsed the digits classifier to chance (docs/design.md, "Training through a data addition"). false: plain AdamW."""
    adam_beta2: float = 0.999
    """AdamW's second-moment decay (memory ~1 / (1 - beta2) steps; 0.999 is AdamW's default). Lower
    lets the second moment catch up within a few dozen steps when a data addition raises the
    gradients, where update clipping alone still leaves lr-sized steps for as long as it lags:
    the digits recipe uses 0.95 (docs/design.md, "Dips after an addition: β₂")."""
    fused_adamw: bool = False
    """AdamW as torch's fused kernel (`torch.optim.AdamW(fused=True)`: one launch per step on a GPU)
    instead of our multi-tensor one (dp_hpc.train.optim); the same arithmetic up to rounding and the
    same checkpoint state. The kernel has no update clipping: needs update_clipping: false. Costs
    1-6 s at every job's start (torch.optim imports torch._dynamo)."""
    label_smoothing: float = 0.11
    """Label smoothing of the cross-entropy (paper: 0.11)."""
    mixup_alpha: float | None = None
    """Mixup Beta(alpha, alpha) (0: off). null: the recipe of the classifier: 0.5 for vit_b_16 and
    resnet50 (paper), off for digits_cnn. With CutMix also on, each batch gets one of the two."""
    cutmix_alpha: float | None = None
    """CutMix Beta(alpha, alpha) (0: off). null: 1.0 for vit_b_16 and resnet50 (paper), off for
    digits_cnn."""
    augment: bool | None = None
    """Random-resized crop + horizontal flip of every training image, batched on the device.
    null: on for vit_b_16 and resnet50, off for digits_cnn."""
    eval_crop: float | None = None
    """Evaluation sees the central fraction of each side of the stored image, then the classifier
    resizes it to input_size. null: 0.875 for vit_b_16 and resnet50 (the standard Resize(256) +
    CenterCrop(224) of ImageNet evaluation, from the packed 256 px images), 1.0 for digits_cnn."""
    crop_min_scale: float = 0.08
    """Smallest area fraction of a random-resized crop (the largest is the whole image)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Forward-pass precision: bf16 autocasts forward passes (weights, optimizer and loss stay fp32).
    auto: bf16 on CUDA (with channels_last), fp32 on CPU."""
    ema: float = 0.01
    """EMA update rate: ema += rate * (param - ema) every step (paper: 0.001 over 50k-100k steps).
    Evaluation uses the EMA weights."""
    eval_workers: int = 4
    """Loader processes reading an evaluation split from disk (the packed ImageNet splits);
    splits held in memory (digits) ignore it."""
    jpeg_decode: Literal["cpu", "cuda"] = "cpu"
    """Where training batches of JPEG pool rounds (RGB, 64 px and up) are decoded. cpu: Pillow in the
    reader's threads, one step ahead of training. cuda: the reader hands over the encoded bytes and
    the training GPU decodes each batch in one nvjpeg call (dp_hpc.jpeg_batch), whose pixels may
    differ from the CPU's by a grey level or so. cuda needs GPU training jobs: refused before launch
    otherwise, and for pools not stored as JPEG (digits)."""
    eval_every: int = 100
    """tau: steps between evaluations on the real validation set (and checkpoints)."""
    patience: PatienceConfig = field(default_factory=PatienceConfig)
    """Plateau detection on validation accuracy."""
    checkpoint_keep: int = 2
    """How many recent checkpoints to keep (checkpoints used for guidance are always kept)."""
    checkpoint_every: int | None = None
    """Steps between checkpoints (null: at every evaluation). Plateau and budget exits and a
    preemption always save one. A resume from an older checkpoint redoes the evaluations since,
    with the same results (training is a pure function of the step); at ImageNet scale a checkpoint
    is ~1.4 GB that every rank waits for, so checkpoint less often than you evaluate."""
    async_checkpoint: bool = False
    """Write the checkpoints that do not end the job in a background thread: the state is copied to
    CPU memory at the step boundary (training waits for that copy, not for the disk), then written
    as usual (state.pt, train_state.json last). One write in flight at most; a failed write
    is raised at the next save; plateau, budget and preemption exits save synchronously after the
    pending write. Costs one copy of the state in host memory while it is written."""
    collective_timeout_min: float = 30.0
    """Minutes a collective (all-reduce, barrier) of a multi-process job may wait for the other ranks
    before the job fails with an error, rather than holding its GPUs while one rank is gone."""
    gpus: int | None = None
    """Local executor with GPU slots (executor.gpus): the slots the training job takes, one torchrun
    process each on this machine (null: every slot; 1: one process, no torchrun). Ignored elsewhere
    (SLURM: slurm.training). The global batch is split across the processes, as on a cluster."""
    tensorboard: bool = True
    """Also write every evaluation as TensorBoard scalars to `<run>/tensorboard/` (dp_hpc.train.tracking)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "batch_size", "eval_every", "checkpoint_keep", "input_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.gpus is not None and self.gpus < 1:
            raise ConfigError("gpus", f"must be >= 1 or null (every GPU slot), got {self.gpus}")
        if self.collective_timeout_min <= 0:
            raise ConfigError("collective_timeout_min", f"must be > 0, got {self.collective_timeout_min}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", f"must be >= 1 or null (at every evaluation), got {self.checkpoint_every}")
        for name in ("warmup_steps", "cooldown_steps", "eval_workers"):
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
        if not 0 < self.adam_beta2 < 1:
            raise ConfigError("adam_beta2", f"must be in (0, 1), got {self.adam_beta2}")
        if self.fused_adamw and self.update_clipping:
            raise ConfigError("fused_adamw", "torch's fused AdamW kernel has no update clipping: set "
                                             "update_clipping: false with it (plain AdamW), or fused_adamw: false")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0 (0: off) or null, got {getattr(self, name)}")
        if not 0 < self.crop_min_scale <= 1:
            raise ConfigError("crop_min_scale", f"must be in (0, 1], got {self.crop_min_scale}")
        if self.eval_crop is not None and not 0 < self.eval_crop <= 1:
            raise ConfigError("eval_crop", f"must be in (0, 1] or null, got {self.eval_crop}")
        if self.classifier != "digits_cnn" and self.input_size < 32:
            raise ConfigError("input_size", f"{self.classifier} needs >= 32 (five stride-2 stages or "
                                            f"16-pixel patches), got {self.input_size}")
        if self.classifier == "vit_b_16" and self.input_size % 16:
            raise ConfigError("input_size", f"vit_b_16 needs a multiple of its 16-pixel patch, "
                                            f"got {self.input_size}")

    @property
    def mix_alphas(self) -> tuple[float, float]:
        """(Mixup, CutMix) alphas in effect: the configured ones, else the classifier's recipe."""
        recipe = (0.0, 0.0) if self.classifier == "digits_cnn" else (0.5, 1.0)
        return (recipe[0] if self.mixup_alpha is None else self.mixup_alpha,
                recipe[1] if self.cutmix_alpha is None else self.cutmix_alpha)

    @property
    def eval_crop_fraction(self) -> float:
        """`eval_crop` in effect (the configured one, else the classifier's)."""
        if self.eval_crop is not None:
            return self.eval_crop
        return 1.0 if self.classifier == "digits_cnn" else 0.875

    @property
    def decays_everything(self) -> bool:
        """AdamW's weight decay on every parameter (digits_cnn, as measured in docs/results-digits.md), or not on
        biases, norm gains, ViT's position embedding and class token (DeiT/timm's ViT recipe: vit_b_16
        and resnet50)."""
        return self.classifier == "digits_cnn"

    @property
    def augments(self) -> bool:
        """Whether training images get random-resized crops and flips (`augment`, else the recipe)."""
        return self.classifier != "digits_cnn" if self.augment is None else self.augment

    @property
    def decay_start(self) -> int:
        """First step of the cool-down: no plateau exits (and so no new data) from here on."""
        return self.total_steps - self.cooldown_steps


@dataclass(kw_only=True, slots=True)
class WandbConfig:
    """One Weights & Biases run per run (dp_hpc.train.wandb_run); the section's presence turns it on."""

    project: str
    """wandb project (required in a `tracking.wandb` section; without the section, wandb is never imported)."""
    entity: str | None = None
    """wandb team or user; null: the logged-in user's default entity."""
    mode: Literal["offline", "online"] = "offline"
    """offline: the runs are written under `<run>/wandb/` and nothing touches the network (upload them
    later with `wandb sync`). online: streamed to the wandb server as they train (needs network and
    `wandb login` on the nodes)."""

    def __post_init__(self) -> None:
        bad = [c for c in "/\\#?%:" if c in self.project]
        if not self.project.strip() or bad:
            raise ConfigError("project", f"must be a non-empty wandb project name without / \\ # ? % :, "
                                         f"got {self.project!r}")


@dataclass(kw_only=True, slots=True)
class TrackingConfig:
    """Dashboards beyond metrics.jsonl and TensorBoard (train.tensorboard): a sweep-level section, read
    by every training and evaluation job from `<sweep>/sweep.yaml`."""

    wandb: WandbConfig | None = None
    """Weights & Biases (null: off). Grouped by sweep, named by run, resumed by every later job of the run."""
