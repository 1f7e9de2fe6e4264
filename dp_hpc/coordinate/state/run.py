"""`RunState`, the coordinator's state of one run: plain data. Its job records are a `JobTable`
(dp_hpc.coordinate.state.table), the only way to add a job or change a job's status; the files it
is saved in are dp_hpc.coordinate.state.store's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import AbstractSet, Any

from dp_hpc.contracts import PendingSubmission
from dp_hpc.coordinate.state.table import JobRecord, JobTable

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
class RunState:
    phase: str = "generate"
    round: int = 0
    adding_data: bool = True  # False from the moment no more rounds will be generated
    rounds: list[RoundRecord] = field(default_factory=list)
    jobs: JobTable = field(default_factory=JobTable)  # changed through its methods only
    lost_work: dict = field(default_factory=dict)  # work key -> times its jobs died without a result in a row
    error: str | None = None
    failed_phase: str | None = None  # the phase a relaunch retries after a failure
    pending: PendingSubmission | None = None  # a submission under way (see Coordinator._submit)
    updated: float = 0.0

    # -- derived views
    @property
    def lost_in_a_row(self) -> int:
        """The most times one piece of work (lost_work) has died without a result in a row."""
        return max(self.lost_work.values(), default=0)

    def running_jobs(self, kind: str | None = None) -> list[JobRecord]:
        return self.jobs.running(kind)

    def running_shards(self, round_index: int) -> AbstractSet[tuple[int, int]]:
        """(start, stop) of the chunk ranges that running generation jobs of this round write."""
        return self.jobs.running_shards(round_index)

    def pool_size(self) -> int:
        return sum(r.kept for r in self.rounds)

    def generated(self) -> int:
        return sum(r.generated for r in self.rounds)

    def fields_json(self) -> dict[str, Any]:
        """Every saved field but `jobs`: what state.json holds besides the job records."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "jobs"}
        d["rounds"] = [dataclasses.asdict(r) for r in self.rounds]
        d["pending"] = None if self.pending is None else self.pending.to_json()
        return d

    def to_json(self) -> dict[str, Any]:
        """Every field, every job's whole record in `jobs` (the format of older state.json files)."""
        return {**self.fields_json(), "jobs": [j.to_json() for j in self.jobs]}
