"""The coordinator's state: plain data, saved atomically as `<run>/state.json` after every change.

What is rewritten at each change stays small however many array tasks a run has in flight
(bench/coordinator_scale.py: 100k tasks): state.json holds the phase and rounds, the running jobs
that are not array tasks, and the running array tasks as one entry per array (`job_arrays`: kind,
round, submission time, task indices as ranges '0-999'). The rest of a job's record goes elsewhere:
- `jobs/<array id>.json`: the details of each task (its chunk range), written once, when the
  array is first saved;
- `jobs.jsonl`: an ended job's whole record (state, error, log, usage), appended once.
Saves write in that order (details, ended records, then state.json), so a crash between them
leaves at worst an ended record that state.json still calls running: `load_state` lets the ended
one win, and a torn last line of jobs.jsonl is skipped (the job is asked about again). An older
state.json, with every job's record in its `jobs` list, loads as before; its next save moves the
ended ones out.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any

from dp_hpc.contracts import PendingSubmission
from dp_hpc.io import atomic_write_json, read_json
from dp_hpc.layout import JOB_DETAILS, RunDir

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

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "status" and "status" in self.__dict__:  # a change, not __init__'s first write
            _STATUS_WRITES[0] += 1
        object.__setattr__(self, name, value)


def _shard(j: JobRecord) -> tuple[int, int]:
    """The chunk range a generation job writes."""
    return j.detail["start"], j.detail["stop"]


_STATUS_WRITES = [0]
"""Writes of JobRecord.status since start-up, other than RunState.end_job's: a RunState's JobIndex
is up to date only while the count is the one it last saw."""


class JobIndex:
    """The running jobs of a RunState's `jobs`, and what its next save has to write: kept up to date
    job by job by RunState.add_job / end_job, so that a poll with 100k array tasks in flight does
    not walk every record several times (running_jobs, save_state; bench/coordinator_scale.py).
    Anything else that changes the list or a status (a test, dp_hpc.cancel, verify --repair) is
    noticed (`stale`) and the index is built again from the list."""

    def __init__(self, jobs: list[JobRecord]):
        self.jobs_id, self.jobs_len, self.writes = id(jobs), len(jobs), _STATUS_WRITES[0]
        self.running: dict[int, JobRecord] = {}  # id(record) -> record, in list order
        self.by_kind: dict[str, dict[int, JobRecord]] = {}
        self.singles: dict[int, JobRecord] = {}  # running jobs that state.json keeps whole
        self.arrays: dict[tuple, dict[int, None]] = {}  # (array, kind, round, submitted, executor) -> tasks
        self.ranges: dict[tuple, str] = {}  # ranges_text of an array's tasks, until they change
        self.shards: dict[int, dict[tuple[int, int], int]] = {}  # round -> (start, stop) of running generate jobs -> count
        # what the next save may have to write; it skips what `saved` says is written already
        self.new_running: list[JobRecord] = []  # added since the last save: their details may be unsaved
        self.newly_ended: list[JobRecord] = []  # ended since the last save: maybe not yet in jobs.jsonl
        for j in jobs:
            if j.status == "running":
                self._add_running(j)
                self.new_running.append(j)
            else:
                self.newly_ended.append(j)

    def stale(self, jobs: list[JobRecord]) -> bool:
        return id(jobs) != self.jobs_id or len(jobs) != self.jobs_len or _STATUS_WRITES[0] != self.writes

    def _add_running(self, j: JobRecord) -> None:
        self.running[id(j)] = j
        self.by_kind.setdefault(j.kind, {})[id(j)] = j
        if j.kind == "generate":
            shards = self.shards.setdefault(j.round, {})
            shards[_shard(j)] = shards.get(_shard(j), 0) + 1
        key = array_entry_key(j)
        if key is None:
            self.singles[id(j)] = j
        else:
            self.arrays.setdefault(key, {})[array_task(j.job_id)[1]] = None
            self.ranges.pop(key, None)

    def added(self, j: JobRecord) -> None:
        self.jobs_len += 1
        if j.status == "running":
            self._add_running(j)
            self.new_running.append(j)
        else:
            self.newly_ended.append(j)

    def ended(self, j: JobRecord, key: tuple | None) -> None:
        """`j` (running before, under array entry `key`) has just ended."""
        del self.running[id(j)]
        del self.by_kind[j.kind][id(j)]
        if j.kind == "generate":
            shards = self.shards[j.round]
            shards[_shard(j)] -= 1
            if not shards[_shard(j)]:
                del shards[_shard(j)]
        if key is None:
            del self.singles[id(j)]
        else:
            tasks = self.arrays[key]
            del tasks[array_task(j.job_id)[1]]
            self.ranges.pop(key, None)
            if not tasks:
                del self.arrays[key]
        self.newly_ended.append(j)

    def compact(self) -> tuple[list[dict], list[dict]]:
        """What `compact_jobs` gives for the list, from the index."""
        arrays = []
        for key, tasks in self.arrays.items():
            if key not in self.ranges:
                self.ranges[key] = ranges_text(list(tasks))
            arrays.append(array_entry(key, self.ranges[key]))
        return [dataclasses.asdict(j) for j in self.singles.values()], arrays


@dataclass
class RunState:
    phase: str = "generate"
    round: int = 0
    adding_data: bool = True  # False from the moment no more rounds will be generated
    rounds: list[RoundRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    lost_work: dict = field(default_factory=dict)  # work key -> times its jobs died without a result in a row
    error: str | None = None
    failed_phase: str | None = None  # the phase a relaunch retries after a failure
    pending: PendingSubmission | None = None  # a submission under way (see Coordinator._submit)
    updated: float = 0.0
    _saved: dict = field(default_factory=lambda: {"ended": set(), "details": {}}, repr=False, compare=False)
    """What save_state already wrote elsewhere: ids of ended records in jobs.jsonl (by `id()` of the
    JobRecord), and per array the job ids whose details are in jobs/<array>.json. Not saved."""
    _index: JobIndex | None = field(default=None, repr=False, compare=False)

    # -- the job list: through these, a poll costs what changed, not every record (JobIndex)
    def job_index(self) -> JobIndex:
        if self._index is None or self._index.stale(self.jobs):
            self._index = JobIndex(self.jobs)
        return self._index

    def add_job(self, job: JobRecord) -> None:
        index = self.job_index()
        self.jobs.append(job)
        index.added(job)

    def end_job(self, job: JobRecord, status: str, error: str | None, log_path: str | None) -> None:
        """A running job of this state has ended with `status`."""
        index = self.job_index()
        key = array_entry_key(job)
        object.__setattr__(job, "status", status)  # not counted: the index is told below, and only this one's
        job.error, job.log_path = error, log_path
        index.ended(job, key)

    # -- derived views
    @property
    def lost_in_a_row(self) -> int:
        """The most times one piece of work (lost_work) has died without a result in a row."""
        return max(self.lost_work.values(), default=0)

    def running_jobs(self, kind: str | None = None) -> list[JobRecord]:
        index = self.job_index()
        return list((index.running if kind is None else index.by_kind.get(kind, {})).values())

    def running_shards(self, round_index: int) -> AbstractSet[tuple[int, int]]:
        """(start, stop) of the chunk ranges that running generation jobs of this round write."""
        return self.job_index().shards.get(round_index, {}).keys()

    def pool_size(self) -> int:
        return sum(r.kept for r in self.rounds)

    def generated(self) -> int:
        return sum(r.generated for r in self.rounds)

    def fields_json(self) -> dict[str, Any]:
        """Every saved field but `jobs`: what state.json holds besides the job records."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("jobs", "_saved", "_index")}
        d["rounds"] = [dataclasses.asdict(r) for r in self.rounds]
        d["pending"] = None if self.pending is None else self.pending.to_json()
        return d

    def to_json(self) -> dict[str, Any]:
        """Every field, every job's whole record in `jobs` (the format of older state.json files)."""
        return {**self.fields_json(), "jobs": [dataclasses.asdict(j) for j in self.jobs]}

    @classmethod
    def from_json(cls, d: dict[str, Any], run_dir: Path | None = None) -> "RunState":
        """From state.json's content; with `run_dir`, also the records kept beside it (jobs.jsonl,
        jobs/<array>.json: see the module's docstring)."""
        d = dict(d)
        jobs, details, ended = all_jobs(d, run_dir)
        d.pop("job_arrays", None)
        d.pop("lost_in_a_row", None)  # older files: now derived from lost_work
        d["rounds"] = [RoundRecord(**r) for r in d.get("rounds", [])]
        d["jobs"] = [JobRecord(**j) for j in jobs]
        pending = resolve_pending(d.get("pending"), run_dir)
        d["pending"] = None if pending is None else PendingSubmission.from_json(pending)
        st = cls(**d)
        st._saved["details"] = details
        st._saved["ended"] = {id(j) for j in st.jobs if (j.job_id, j.submitted) in ended}
        return st


def all_jobs(d: dict[str, Any], run_dir: Path | None) -> tuple[list[dict], dict[str, set], set[tuple[str, float]]]:
    """Every job's whole record, as plain dicts in submission order, from state.json's content `d`
    (its `jobs` and `job_arrays`) and, with `run_dir`, jobs/<array>.json and jobs.jsonl (an ended
    record there wins over a running one in state.json). Also: per array, the job ids whose details
    jobs/<array>.json holds; the (job id, submitted) keys that came from jobs.jsonl."""
    jobs = [dict(j) for j in d.get("jobs", [])]
    details: dict[str, dict] = {}
    for a in d.get("job_arrays", []):
        known = details.setdefault(a["array"], {} if run_dir is None else
                                   read_json(_details_file(run_dir, a["array"]), {}) or {})
        for t in parse_ranges(a["tasks"]):
            jid = f"{a['array']}_{t}"
            jobs.append(dataclasses.asdict(JobRecord(job_id=jid, kind=a["kind"], round=a["round"], submitted=a["submitted"],
                                                     detail=dict(known.get(jid, {})), executor=a["executor"])))
    ended = read_ended(run_dir) if run_dir is not None else {}
    if ended:
        jobs = [j for j in jobs if (j.get("job_id"), j.get("submitted")) not in ended] + list(ended.values())
        jobs.sort(key=_submission_order)
    return jobs, {a: set(v) for a, v in details.items()}, set(ended)


def _submission_order(j: dict) -> tuple[float, int]:
    """By submission time, an array's tasks by index (the order they were recorded in)."""
    m = ARRAY_TASK.fullmatch(str(j.get("job_id")))
    return (j.get("submitted") or 0.0, int(m.group(2)) if m else -1)


def resolve_pending(pending: dict | None, run_dir: Path | None) -> dict | None:
    """A submission intent whose task details state.json keeps in jobs/pending-<name>.json, whole."""
    if pending and pending.get("details_file") and run_dir is not None:
        pending = {k: v for k, v in pending.items() if k != "details_file"}
        pending["details"] = read_json(RunDir(run_dir).path / JOB_DETAILS / pending["details_file"], [])
    return pending


def full_state_json(run_dir: Path, d: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A run's state as one dict in the format of older state.json files: every job's whole record
    in `jobs` (ended ones from jobs.jsonl, running array tasks from `job_arrays` and
    jobs/<array>.json), the pending intent with its details. `d`: state.json's content if already
    read. None without a state.json. What readers of the job history (the report, the tests) use:
    state.json alone no longer holds it. Tolerant of records that are not the coordinator's own
    (hand-written states keep their extra fields)."""
    if d is None:
        d = read_json(RunDir(run_dir).state)
        if d is None:
            return None
    out = {k: v for k, v in d.items() if k != "job_arrays"}
    out["jobs"] = all_jobs(d, run_dir)[0]
    out["pending"] = resolve_pending(d.get("pending"), run_dir)
    return out


PENDING_INLINE = 100  # a submission intent with more task details keeps them in jobs/pending-<name>.json
ARRAY_TASK = re.compile(r"(\d+)_(\d+)")  # an array task's id, '12_3'


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


def compact_jobs(jobs: list[JobRecord]) -> tuple[list[dict], list[dict]]:
    """Running jobs -> (whole records of those that are no array task, one entry per array of the
    array tasks: {array, kind, round, submitted, executor, tasks}). Pure: what state.json holds."""
    singles, groups = [], {}
    for j in jobs:
        if j.status != "running":
            continue
        key = array_entry_key(j)
        if key is None:
            singles.append(dataclasses.asdict(j))
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


def running_jobs_in(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, job id, executor) of the running jobs a state.json's content names, either format."""
    return [(j["kind"], j["job_id"], j.get("executor", "local")) for j in all_jobs(d, None)[0]
            if j.get("status") == "running"]


def _details_file(run_dir: Path, array: str) -> Path:
    return RunDir(run_dir).job_details(array)


def read_ended(run_dir: Path) -> dict[tuple[str, float], dict]:
    """{(job id, submitted): record} of jobs.jsonl; the last line of a job wins, a line that is no
    job record (a torn last line, from a crash while appending) is skipped: the job is still running
    in state.json, so the coordinator asks about it again and appends its end anew."""
    path = RunDir(run_dir).jobs_log
    out: dict[tuple[str, float], dict] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            j = json.loads(line)
            JobRecord(**j)  # a whole record
        except (ValueError, TypeError):
            continue
        out[(j["job_id"], j["submitted"])] = j
    return out


def load_state(run_dir: Path) -> RunState | None:
    d = read_json(RunDir(run_dir).state)
    return None if d is None else RunState.from_json(d, run_dir)


def save_state(run_dir: Path, st: RunState) -> None:
    """Details of new arrays, then the records of newly ended jobs, then state.json (module docstring).
    What it writes besides state.json is what changed since the last save (st.job_index())."""
    st.updated = time.time()
    rd, saved, index = RunDir(run_dir), st._saved, st.job_index()
    new_details: dict[str, dict] = {}
    for j in index.new_running:
        task = array_task(j.job_id) if j.status == "running" else None
        if task and j.job_id not in saved["details"].get(task[0], ()):
            new_details.setdefault(task[0], {})[j.job_id] = j.detail
    for array, add in new_details.items():
        path = rd.job_details(array)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**(read_json(path, {}) or {}), **add}
        atomic_write_json(path, merged)
        saved["details"][array] = set(merged)
    index.new_running = []
    ended = [j for j in index.newly_ended if id(j) not in saved["ended"]]
    if ended:
        with rd.jobs_log.open("ab+") as f:
            lines = "".join(json.dumps(dataclasses.asdict(j), sort_keys=True) + "\n" for j in ended)
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn last line (a crash while appending): it stays a line of its own
                    lines = "\n" + lines
            f.write(lines.encode())
            f.flush()
            os.fsync(f.fileno())
        saved["ended"].update(id(j) for j in ended)
    index.newly_ended = []
    d = st.fields_json()
    d["jobs"], d["job_arrays"] = index.compact()
    if st.pending is not None:
        if len(st.pending.details) > PENDING_INLINE:
            path = rd.job_details(f"pending-{st.pending.name.replace('/', '_')}")  # written once per submission
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, d["pending"]["details"])
            d["pending"] = {**d["pending"], "details": None, "details_file": path.name}
    atomic_write_json(rd.state, d)
