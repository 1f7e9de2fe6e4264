"""The job list of a run's state: `JobRecord`, and `JobTable`, the one owner of the list, whose
methods (`add`, `end`) are the only way to add a record or change its status.

Because every change goes through the table, it keeps, job by job, what a poll with 100k array
tasks in flight would otherwise walk every record for several times (bench/coordinator_scale.py):
the running jobs (all, by kind, the chunk ranges of running generation jobs per round), the running
jobs grouped as state.json keeps them (array tasks as ranges per array, the rest whole), and what
the next save has to write (records added since the last save, records ended since then).

Also here, pure: how state.json groups running array tasks (`array_entry_key`, `ranges_text`,
`compact_jobs`), which the table keeps up to date and dp_hpc.coordinate.state.store writes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, Iterable, Iterator

from dp_hpc.contracts import JobDetail, JobUsage

RUNNING = "running"


@dataclass
class JobRecord:
    job_id: str
    kind: str  # generator | generate | train | eval
    round: int
    submitted: float
    status: str = RUNNING  # running | succeeded | failed | lost; changed by JobTable.end only
    detail: JobDetail = field(default_factory=JobDetail)  # its work (chunk range, plateau_exit), its usage
    error: str | None = None
    log_path: str | None = None
    executor: str = "local"  # local | debug | slurm: how the job id is to be read

    def to_json(self) -> dict[str, Any]:
        """The record as state.json and jobs.jsonl hold it."""
        return {"job_id": self.job_id, "kind": self.kind, "round": self.round, "submitted": self.submitted,
                "status": self.status, "detail": self.detail.to_json(), "error": self.error,
                "log_path": self.log_path, "executor": self.executor}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "JobRecord":
        """From a record in state.json or jobs.jsonl; TypeError (a field it does not know or lacks) or
        ValueError (a detail that is no JSON object) for what is no job record."""
        return cls(**{**d, "detail": JobDetail.from_json(d.get("detail"))})


def _shard(j: JobRecord) -> tuple[int, int]:
    """The chunk range a generation job writes."""
    return j.detail.start, j.detail.stop


class JobTable:
    """Every job of a run in submission order. `add` and `end` are the only changes; reads:
    iteration, `len`, indexing, `running`, `running_shards`, `compact`; what the next save writes:
    `unwritten_running`, `unwritten_ended`, cleared by `written` (dp_hpc.coordinate.state.store)."""

    def __init__(self, records: Iterable[JobRecord] = (), on_disk: Callable[[JobRecord], bool] | None = None):
        """`on_disk`: whether a record (ended: in jobs.jsonl; running: its details in
        jobs/<array>.json) is written already; without it, none is."""
        self._records: list[JobRecord] = []
        self._running: dict[int, JobRecord] = {}  # id(record) -> record, in list order
        self._by_kind: dict[str, dict[int, JobRecord]] = {}
        self._singles: dict[int, JobRecord] = {}  # running jobs that state.json keeps whole
        self._arrays: dict[tuple, dict[int, None]] = {}  # (array, kind, round, submitted, executor) -> tasks
        self._ranges: dict[tuple, str] = {}  # ranges_text of an array's tasks, until they change
        self._shards: dict[int, dict[tuple[int, int], int]] = {}  # round -> (start, stop) of running generate jobs -> count
        self.unwritten_running: list[JobRecord] = []  # added since the last save: their details may be unsaved
        self.unwritten_ended: list[JobRecord] = []  # ended since the last save: not yet in jobs.jsonl
        for j in records:
            self._insert(j, on_disk is None or not on_disk(j))

    # -- the changes
    def add(self, job: JobRecord) -> None:
        """A job just submitted (or a record of one, running or ended)."""
        self._insert(job, True)

    def end(self, job: JobRecord, status: str, error: str | None = None, log_path: str | None = None,
            usage: JobUsage | None = None) -> None:
        """Running job `job` of this table has ended with `status`, `error`, `log_path` and (SLURM)
        the `usage` accounting recorded."""
        key = array_entry_key(job)
        del self._running[id(job)]  # KeyError: not a running job of this table
        job.status, job.error, job.log_path = status, error, log_path
        if usage is not None:
            job.detail = job.detail.with_usage(usage)
        del self._by_kind[job.kind][id(job)]
        if job.kind == "generate":
            shards = self._shards[job.round]
            shards[_shard(job)] -= 1
            if not shards[_shard(job)]:
                del shards[_shard(job)]
        if key is None:
            del self._singles[id(job)]
        else:
            tasks = self._arrays[key]
            del tasks[array_task(job.job_id)[1]]
            self._ranges.pop(key, None)
            if not tasks:
                del self._arrays[key]
        self.unwritten_ended.append(job)

    def written(self) -> None:
        """The store has written what `unwritten_running` and `unwritten_ended` name."""
        self.unwritten_running, self.unwritten_ended = [], []

    def _insert(self, j: JobRecord, unwritten: bool) -> None:
        self._records.append(j)
        if j.status != RUNNING:
            if unwritten:
                self.unwritten_ended.append(j)
            return
        if unwritten:
            self.unwritten_running.append(j)
        self._running[id(j)] = j
        self._by_kind.setdefault(j.kind, {})[id(j)] = j
        if j.kind == "generate":
            shards = self._shards.setdefault(j.round, {})
            shards[_shard(j)] = shards.get(_shard(j), 0) + 1
        key = array_entry_key(j)
        if key is None:
            self._singles[id(j)] = j
        else:
            self._arrays.setdefault(key, {})[array_task(j.job_id)[1]] = None
            self._ranges.pop(key, None)

    # -- reads
    def __iter__(self) -> Iterator[JobRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i):
        return self._records[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobTable) and self._records == other._records

    def __repr__(self) -> str:
        return f"JobTable({self._records!r})"

    def running(self, kind: str | None = None) -> list[JobRecord]:
        """The running jobs (of `kind`), in submission order."""
        return list((self._running if kind is None else self._by_kind.get(kind, {})).values())

    def running_shards(self, round_index: int) -> AbstractSet[tuple[int, int]]:
        """(start, stop) of the chunk ranges that running generation jobs of this round write."""
        return self._shards.get(round_index, {}).keys()

    def compact(self) -> tuple[list[dict], list[dict]]:
        """What `compact_jobs` gives for the table's records, from what the table keeps."""
        arrays = []
        for key, tasks in self._arrays.items():
            if key not in self._ranges:
                self._ranges[key] = ranges_text(list(tasks))
            arrays.append(array_entry(key, self._ranges[key]))
        return [j.to_json() for j in self._singles.values()], arrays


# -- how state.json groups running array tasks


@functools.lru_cache(maxsize=1 << 18)
def array_task(job_id: str) -> tuple[str, int] | None:
    """'12_3' -> ('12', 3), None for an id that is no array task's: ARRAY_TASK.fullmatch without the
    regex, and cached, as it runs for every running job at every save (the regex was half of a save
    at 30k tasks in flight)."""
    array, sep, task = job_id.partition("_")
    if sep and array.isdecimal() and task.isdecimal():  # isdecimal: exactly the regex's \d
        return array, int(task)
    return None


def ranges_text(ints: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts: list[str] = []
    for i in sorted(ints):
        if parts and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in parts)


def parse_ranges(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out += range(int(a), int(b or a) + 1)
    return out


def compact_jobs(jobs: Iterable[JobRecord]) -> tuple[list[dict], list[dict]]:
    """Running jobs -> (whole records of those that are no array task, one entry per array of the
    array tasks: {array, kind, round, submitted, executor, tasks}). Pure: what state.json holds."""
    singles, groups = [], {}
    for j in jobs:
        if j.status != RUNNING:
            continue
        key = array_entry_key(j)
        if key is None:
            singles.append(j.to_json())
        else:
            groups.setdefault(key, []).append(array_task(j.job_id)[1])
    return singles, [array_entry(key, ranges_text(ts)) for key, ts in groups.items()]


def array_entry_key(j: JobRecord) -> tuple | None:
    """(array, kind, round, submitted, executor): the entry of state.json's `job_arrays` that names
    running job `j`; None when state.json keeps its record whole (no array task, or it has an error
    or a log path to keep)."""
    task = array_task(j.job_id)
    if task is None or j.error is not None or j.log_path is not None:
        return None
    return task[0], j.kind, j.round, j.submitted, j.executor


def array_entry(key: tuple, tasks: str) -> dict:
    a, k, r, s, e = key
    return {"array": a, "kind": k, "round": r, "submitted": s, "executor": e, "tasks": tasks}
