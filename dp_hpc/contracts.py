"""What one process writes and another reads, as frozen records: the writer builds the record, the
file holds its `to_json()`, every reader gets it back with `from_json()` and reads attributes,
never a dict's string keys. Each record's JSON is the file format it always was (old run folders
load); a file that lacks a field is refused by name, fields a newer writer added are ignored.

- `TrainState`: a classifier checkpoint's summary, `<run>/checkpoints/step_*/train_state.json`.
  Written by the training job (rank 0, the last file of the folder: its completion marker); read
  by the training job that resumes, the coordinator's plan and consistency checks, the final
  evaluation, status, verify, the local runner's job wrapper and the tests.
- `JobDetail`: what a job record says of its job besides kind and round (`detail` of a record in
  `<run>/state.json`, `<run>/jobs/<array>.json` and `<run>/jobs.jsonl`), with `JobUsage`, the
  accounting of an ended SLURM job. Written by the coordinator (a task's work when it submits, the
  usage when the job has ended) and by `dp_hpc.cancel`; read by the next coordinator, cancel,
  status, verify and the report.
- `PendingSubmission`: a submission under way (record-then-submit, dp_hpc.coordinate.records),
  `pending` in `<run>/state.json`. Written by the coordinator before it submits; read by the next
  coordinator (to adopt the jobs by name) and by `dp_hpc.cancel` (to cancel them).

Low floor: imports nothing of dp_hpc, so writers and readers on every floor can share it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

StopReason = Literal["budget", "plateau", "preempted"]
STOP_REASONS: tuple[str, ...] = get_args(StopReason)


def _fields_from_json(cls, d: dict[str, Any], what: str) -> dict[str, Any]:
    """The values of `cls`'s fields in `d`; a missing field is a ValueError that names it."""
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in d]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}")
    return {n: d[n] for n in names}


@dataclass(frozen=True)
class TrainState:
    """Where a training job stood when it saved a checkpoint (the fields in file order)."""

    round: int  # the newest pool round it trained on
    pool_rounds: tuple[int, ...]  # every pool round it trained on
    pool_size: int  # samples in those rounds
    step: int  # optimizer updates done
    best_val_acc: float | None  # best real-validation accuracy of the current round (None before its first evaluation)
    best_step: int | None
    patience_counter: int  # evaluations since the round's last improvement
    patience_limit: int  # the round's patience
    stop_reason: StopReason | None  # why the job stopped here; None: a checkpoint on the way
    last_val_acc: float | None
    lr: float
    world_size: int  # training processes
    time: str  # UTC, ISO 8601

    def __post_init__(self):
        if self.stop_reason is not None and self.stop_reason not in STOP_REASONS:
            raise ValueError(f"stop_reason must be one of {STOP_REASONS} or None, got {self.stop_reason!r}")
        object.__setattr__(self, "pool_rounds", tuple(self.pool_rounds))

    @property
    def finished(self) -> bool:
        """Trained to the budget: the run's classifier is final."""
        return self.stop_reason == "budget"

    @property
    def plateaued(self) -> bool:
        """Stopped at a plateau to ask for new data (its classifier guides the next round)."""
        return self.stop_reason == "plateau"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pool_rounds"] = list(self.pool_rounds)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**_fields_from_json(cls, d, "train_state"))


@dataclass(frozen=True, slots=True)
class JobUsage:
    """SLURM accounting of an ended job (sacct), for the report's GPU-hours."""

    elapsed_s: int  # wall seconds
    gpus: int  # GPUs allocated


@dataclass(frozen=True, slots=True)
class JobDetail:
    """A job's work and, once it has ended on SLURM, its usage. A field that does not apply to the
    job is None and absent from the JSON (the format it always had: a generation task's detail is
    {"start": a, "stop": b}, a training job's {"plateau_exit": true}, an evaluation's {})."""

    start: int | None = None  # generate: the task's first chunk
    stop: int | None = None  # generate: the chunk after its last
    plateau_exit: bool | None = None  # train: the job stops at a plateau to ask for new data
    elapsed_s: int | None = None  # JobUsage of the ended job (SLURM)
    gpus: int | None = None
    compute_s: float | None = None  # model compute seconds: runs from before compute.jsonl recorded them here

    @property
    def shard(self) -> tuple[int, int] | None:
        """(start, stop): the chunk range a generation task writes; None for any other job."""
        return None if self.start is None or self.stop is None else (self.start, self.stop)

    @property
    def usage(self) -> JobUsage | None:
        return None if self.elapsed_s is None or self.gpus is None else JobUsage(self.elapsed_s, self.gpus)

    def with_usage(self, usage: JobUsage) -> "JobDetail":
        return dataclasses.replace(self, elapsed_s=usage.elapsed_s, gpus=usage.gpus)

    def to_json(self) -> dict[str, Any]:
        return {n: v for n in _DETAIL_FIELDS if (v := getattr(self, n)) is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "JobDetail":
        """From a record's `detail` (None or absent: no detail); keys it does not know are ignored."""
        if not d:
            return _NO_DETAIL
        if not isinstance(d, dict):
            raise ValueError(f"job detail: expected a JSON object, got {type(d).__name__}")
        return cls(**{n: d[n] for n in _DETAIL_FIELDS if n in d})


_DETAIL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(JobDetail))
_NO_DETAIL = JobDetail()


def executor_of(name: str | None, executor: str | None) -> str:
    """The kind of runner that submitted a recorded job: its `executor`, or for records written
    before they named it (2026-11-29), inferred from the job name: a SLURM runner's ends in a
    nonce (SlurmRunner.job_name)."""
    if executor:
        return str(executor)
    return "slurm" if re.search(r"-[0-9a-f]{8}$", name or "") else "local"


@dataclass(frozen=True)
class PendingSubmission:
    """Jobs about to be submitted: saved before the submission, replaced by their JobRecords once
    the runner returns their ids."""

    name: str  # the job name the runner gives them (on SLURM unique: they are found by it)
    kind: str  # generator | generate | train | eval
    round: int
    submitted: float  # time.time() before the submission
    details: tuple[JobDetail, ...]  # one per task: its JobRecord's detail
    executor: str  # local | debug | slurm

    def __post_init__(self):
        object.__setattr__(self, "details", tuple(self.details))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "round": self.round, "submitted": self.submitted,
                "details": [d.to_json() for d in self.details], "executor": self.executor}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PendingSubmission":
        """From state.json's `pending` with its details in place (dp_hpc.coordinate.state.store reads
        a details file)."""
        d = {**d, "executor": executor_of(d.get("name"), d.get("executor"))}
        fields = _fields_from_json(cls, d, "pending submission")
        fields["details"] = tuple(JobDetail.from_json(x) for x in fields["details"] or ())
        return cls(**fields)
