"""The coordinator's state: plain data, saved atomically as `<run>/state.json` after every change."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp_hpc.io import atomic_write_json, read_json
from dp_hpc.layout import RunDir

PHASES = ("generate", "train", "eval", "done", "failed")


@dataclass
class RoundRecord:
    index: int
    kind: str  # plain | guided | prune
    kept: int  # samples the round adds to the training pool
    generated: int  # samples generated for it (kept x prune_factor for prune rounds)
    classifier_step: int | None = None  # checkpoint whose classifier guides / scores this round
    stats: dict = field(default_factory=dict)  # once complete: dp_hpc.pool.round_stats (entropy, label fidelity)


@dataclass
class JobRecord:
    job_id: str
    kind: str  # generator | generate | train | eval
    round: int
    submitted: float
    status: str = "running"  # running | succeeded | failed | lost
    detail: dict = field(default_factory=dict)  # e.g. chunk range, plateau_exit
    error: str | None = None
    log_path: str | None = None
    executor: str = "local"  # local | debug | slurm: how the job id is to be read


@dataclass
class RunState:
    phase: str = "generate"
    round: int = 0
    adding_data: bool = True  # False from the moment no more rounds will be generated
    rounds: list[RoundRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    lost_in_a_row: int = 0  # jobs that died without a result, consecutively (retried up to a limit)
    error: str | None = None
    failed_phase: str | None = None  # the phase a relaunch retries after a failure
    pending: dict | None = None  # a submission under way: job name, kind, round, details (see Coordinator._submit)
    updated: float = 0.0

    # -- derived views
    def running_jobs(self, kind: str | None = None) -> list[JobRecord]:
        return [j for j in self.jobs if j.status == "running" and (kind is None or j.kind == kind)]

    def pool_size(self) -> int:
        return sum(r.kept for r in self.rounds)

    def generated(self) -> int:
        return sum(r.generated for r in self.rounds)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunState":
        d = dict(d)
        d["rounds"] = [RoundRecord(**r) for r in d.get("rounds", [])]
        d["jobs"] = [JobRecord(**j) for j in d.get("jobs", [])]
        return cls(**d)


def load_state(run_dir: Path) -> RunState | None:
    d = read_json(RunDir(run_dir).state)
    return None if d is None else RunState.from_json(d)


def save_state(run_dir: Path, st: RunState) -> None:
    st.updated = time.time()
    atomic_write_json(RunDir(run_dir).state, st.to_json())
