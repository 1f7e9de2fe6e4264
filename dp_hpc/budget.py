"""The GPU-hour budget of a sweep, as `launch --dry-run` prints it: per run, per arm and in all.

Pure functions of the planned runs' configs and the sweep's `slurm.throughput` figures, so a test
can check every number by hand. A run's cost, if every planned round happens:

    generation  per round: generated images / plain images/s per GPU, times `guided_cost` for an
                entropy-guided round (dp with omega > 0; dp at omega = 0 samples plainly, and so do
                prune rounds, which generate prune_factor x what they keep)
    training    total_steps x batch_size / training images/s per GPU
    evaluation  val images x evaluations (every eval_every steps and at the end) + test images once,
                / evaluation images/s per GPU
    branch-outs training and evaluation from the branch point to the end of the budget, no generation

Branch-outs start at a plateau, whose step is unknown before the run: the estimate places the
plateaus of a run's planned rounds evenly between the end of the warm-up and the start of the
cool-down (the only steps at which a run asks for data), each on an evaluation step.

Not counted: the generator's preparation (digits: training a small UNet; stable-diffusion: none),
a guided round's diagnostic plain twins (`sampler.paired_plain_samples`, one chunk per round) and
the coordinator's CPU job.

    costs = sweep_costs(runs, throughput, eval_sizes)   # one RunCost per planned run
    arm_costs(costs), sweep_total(costs)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dp_hpc.config import RunConfig, flatten, to_dict
from dp_hpc.coordinate.config import ThroughputConfig
from dp_hpc.data.config import DataConfig

DIGITS_IMAGES = 1797  # scikit-learn's 8x8 digits, split by dp_hpc.data.digits.split_indices
IMAGENET_VAL_PER_CLASS = 50  # ImageNet's val set: 50 images of each class

# Where a figure comes from when the sweep leaves it at its default (docs/benchmarks.md, its "GPU check").
DEFAULT_SOURCES = {
    "plain_images_per_gpu_s": "an estimate for SD-1.5 on an A100, unmeasured: docs/benchmarks.md, GPU check",
    "guided_cost": "the paper's, on an H100; docs/benchmarks.md: 1.24x on the CPU digits UNet",
    "train_images_per_gpu_s": "an estimate for ViT-B/16 on an A100, unmeasured: docs/benchmarks.md, GPU check",
    "eval_images_per_gpu_s": "3x the training default, a forward pass only; unmeasured",
}


@dataclass(frozen=True)
class Figure:
    """One assumed number and where it comes from."""

    key: str  # the slurm.throughput key
    value: float
    source: str


@dataclass(frozen=True)
class EvalSizes:
    val: int
    test: int
    source: str


@dataclass(frozen=True)
class RoundCost:
    kind: str  # plain | guided | prune (MethodConfig.round_kind)
    generated: int
    tasks: int  # array tasks (shards)
    steered: bool  # sampled with entropy guidance: charged at the guided rate
    gpu_h: float


@dataclass(frozen=True)
class TrainCost:
    """Training from `start_step` to the end of the budget, and its evaluations."""

    start_step: int
    steps: int
    batch_size: int
    evals: int  # validation evaluations in (start_step, total_steps]
    train_gpu_h: float
    val_gpu_h: float
    test_gpu_h: float  # the final evaluation

    @property
    def eval_gpu_h(self) -> float:
        return self.val_gpu_h + self.test_gpu_h


@dataclass(frozen=True)
class BranchCost:
    round_index: int  # the branch-out trains on rounds 0..round_index
    train: TrainCost


@dataclass(frozen=True)
class RunCost:
    """One run's GPU-hours if every planned round happens (dp and prune rounds come at plateaus)."""

    name: str
    arm: str
    rounds: list[RoundCost]
    train: TrainCost
    branches: list[BranchCost]
    gpus: int  # GPUs of one training job

    @property
    def generation_gpu_h(self) -> float:
        return sum(r.gpu_h for r in self.rounds)

    @property
    def training_gpu_h(self) -> float:
        return self.train.train_gpu_h + sum(b.train.train_gpu_h for b in self.branches)

    @property
    def eval_gpu_h(self) -> float:
        return self.train.eval_gpu_h + sum(b.train.eval_gpu_h for b in self.branches)

    @property
    def branch_gpu_h(self) -> float:
        return sum(b.train.train_gpu_h + b.train.eval_gpu_h for b in self.branches)

    @property
    def total(self) -> float:
        return self.generation_gpu_h + self.training_gpu_h + self.eval_gpu_h

    @property
    def upper_bound(self) -> bool:
        """True when the total assumes rounds that come only at plateaus."""
        return len(self.rounds) > 1


@dataclass(frozen=True)
class ArmCost:
    arm: str
    runs: int
    generation_gpu_h: float
    training_gpu_h: float
    eval_gpu_h: float

    @property
    def total(self) -> float:
        return self.generation_gpu_h + self.training_gpu_h + self.eval_gpu_h


# ----------------------------------------------------------------------------- assumptions


def throughput_figures(tp: ThroughputConfig) -> list[Figure]:
    """The speeds the estimate assumes, each with its source: the sweep's own setting where it
    differs from the default, else where the default comes from (a sweep may set the default's
    value on purpose: the source is then still the default's)."""
    default = ThroughputConfig()
    out = []
    for key, note in DEFAULT_SOURCES.items():
        value = getattr(tp, key)
        source = f"the default's value: {note}" if value == getattr(default, key) else \
            f"the sweep's slurm.throughput.{key}"
        out.append(Figure(key, value, source))
    return out


def eval_sizes(data: DataConfig, num_classes: int, tp: ThroughputConfig) -> EvalSizes:
    """Images per validation and test evaluation: the sweep's `slurm.throughput.val_images` /
    `test_images`, else 50 per class on imagenet (its val set) and the split's size on digits."""
    if data.dataset == "digits":
        val, test = round(DIGITS_IMAGES * data.val_fraction), round(DIGITS_IMAGES * data.test_fraction)
        source = f"the digits splits of {DIGITS_IMAGES:,} images"
    else:
        val = test = IMAGENET_VAL_PER_CLASS * num_classes
        source = f"{IMAGENET_VAL_PER_CLASS} per class, the size of ImageNet's val set"
    if tp.val_images is not None or tp.test_images is not None:
        source = "the sweep's slurm.throughput.val_images/test_images" + (
            "" if tp.val_images is not None and tp.test_images is not None else f", else {source}")
    return EvalSizes(tp.val_images or val, tp.test_images or test, source)


# ----------------------------------------------------------------------------- one run


def round_costs(cfg: RunConfig, tp: ThroughputConfig) -> list[RoundCost]:
    m, shard = cfg.method, cfg.pool.shard_size
    out = []
    for i, kept in enumerate(m.round_sizes()):
        n, kind = m.generated(i, kept), m.round_kind(i)
        steered = kind == "guided" and cfg.sampler.omega > 0  # omega 0: the plain sampler, no gradient
        h = n / tp.plain_images_per_gpu_s * (tp.guided_cost if steered else 1.0) / 3600
        out.append(RoundCost(kind, n, math.ceil(n / shard), steered, h))
    return out


def evaluations_after(start_step: int, total_steps: int, eval_every: int) -> int:
    """Validation evaluations in (start_step, total_steps]: at every multiple of eval_every and at
    the last step (dp_hpc.train.loop)."""
    last_extra = 1 if total_steps % eval_every else 0
    return total_steps // eval_every - start_step // eval_every + last_extra


def train_cost(cfg: RunConfig, tp: ThroughputConfig, sizes: EvalSizes, start_step: int = 0) -> TrainCost:
    t = cfg.train
    steps = t.total_steps - start_step
    evals = evaluations_after(start_step, t.total_steps, t.eval_every)
    return TrainCost(start_step=start_step, steps=steps, batch_size=t.batch_size, evals=evals,
                     train_gpu_h=steps * t.batch_size / tp.train_images_per_gpu_s / 3600,
                     val_gpu_h=evals * sizes.val / tp.eval_images_per_gpu_s / 3600,
                     test_gpu_h=sizes.test / tp.eval_images_per_gpu_s / 3600)


def branch_step(cfg: RunConfig, round_index: int) -> int:
    """Estimated step of the plateau after `round_index`: the planned rounds' n - 1 plateaus evenly
    spaced between the warm-up's end and the cool-down's start, on an evaluation step."""
    t, n = cfg.train, len(cfg.method.round_sizes())
    span = t.total_steps - t.cooldown_steps - t.warmup_steps
    step = t.warmup_steps + span * (round_index + 1) / n
    return int(step // t.eval_every) * t.eval_every


def branch_costs(cfg: RunConfig, tp: ThroughputConfig, sizes: EvalSizes) -> list[BranchCost]:
    """Only rounds followed by another planned round branch (dp_hpc.coordinate.plan: a branch at
    the last round would be the run itself)."""
    n = len(cfg.method.round_sizes())
    return [BranchCost(r, train_cost(cfg, tp, sizes, branch_step(cfg, r)))
            for r in sorted(cfg.method.branch_at) if r < n - 1]


def run_cost(name: str, arm: str, cfg: RunConfig, tp: ThroughputConfig, sizes: EvalSizes, gpus: int) -> RunCost:
    return RunCost(name, arm, round_costs(cfg, tp), train_cost(cfg, tp, sizes), branch_costs(cfg, tp, sizes), gpus)


# ----------------------------------------------------------------------------- arms and the sweep

ARM_IGNORED = ("name", "seed", "method.name", "method.budget")


def arm_names(configs: list[RunConfig]) -> list[str]:
    """Each run's arm, as analysis.frames.assign_arms names it: its method, plus the settings that
    tell its runs apart at the same budget and seed (e.g. omega), where they differ from the
    method's main setting (the one measured at strictly the most budgets); dp at omega = 0 is
    always its own arm, "dp (ω=0)"."""
    flat = [flatten(to_dict(c)) for c in configs]  # lists as JSON text: hashable
    by_method: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        by_method.setdefault(c.method.name, []).append(i)
    labels = [""] * len(configs)
    for method, idx in by_method.items():
        keys = [k for k in flat[idx[0]] if k not in ARM_IGNORED
                and _varies_within_cells(k, [(configs[i], flat[i]) for i in idx])]
        main = {k: _main_value(k, method, [(configs[i], flat[i]) for i in idx]) for k in keys}
        for i in idx:
            parts = [f"{_short(k)}={_fmt(flat[i][k])}" for k in keys
                     if not (k == "sampler.omega" and method == "dp" and flat[i][k] == 0) and flat[i][k] != main[k]]
            if method == "dp" and configs[i].sampler.omega == 0:
                parts.insert(0, "ω=0")
            labels[i] = f"{method} ({', '.join(parts)})" if parts else method
    return labels


def _varies_within_cells(key: str, rows: list[tuple[RunConfig, dict]]) -> bool:
    cells: dict[tuple, set] = {}
    for c, f in rows:
        cells.setdefault((c.method.budget, c.seed), set()).add(f[key])
    return any(len(v) > 1 for v in cells.values())


def _main_value(key: str, method: str, rows: list[tuple[RunConfig, dict]]):
    budgets: dict = {}
    for c, f in rows:
        if not (key == "sampler.omega" and method == "dp" and f[key] == 0):
            budgets.setdefault(f[key], set()).add(c.method.budget)
    counts = sorted((len(b) for b in budgets.values()), reverse=True)
    if not counts or (len(counts) > 1 and counts[0] == counts[1]):
        return None
    return next(v for v, b in budgets.items() if len(b) == counts[0])


def _short(key: str) -> str:
    return "ω" if key == "sampler.omega" else key.rsplit(".", 1)[-1]


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_costs(named: list[tuple[str, RunConfig]], tp: ThroughputConfig, sizes: list[EvalSizes],
                gpus: int) -> list[RunCost]:
    """One RunCost per (run name, config), with the evaluation sizes of each run's data."""
    arms = arm_names([c for _, c in named])
    return [run_cost(name, arm, cfg, tp, s, gpus) for (name, cfg), arm, s in zip(named, arms, sizes)]


def arm_costs(costs: list[RunCost]) -> list[ArmCost]:
    """Per arm, in the order arms first appear: its runs (all budgets and seeds) summed."""
    arms: dict[str, list[RunCost]] = {}
    for c in costs:
        arms.setdefault(c.arm, []).append(c)
    return [ArmCost(arm, len(cs), sum(c.generation_gpu_h for c in cs), sum(c.training_gpu_h for c in cs),
                    sum(c.eval_gpu_h for c in cs)) for arm, cs in arms.items()]


def sweep_total(costs: list[RunCost]) -> ArmCost:
    """The whole sweep, as one row."""
    return ArmCost("sweep", len(costs), sum(c.generation_gpu_h for c in costs),
                   sum(c.training_gpu_h for c in costs), sum(c.eval_gpu_h for c in costs))

