"""The files of a run's state, and their older formats: the one module that reads and writes them.

A `RunState` (dp_hpc.coordinate.state.run) is saved atomically as `<run>/state.json` after every
change. What is rewritten at each change stays small however many array tasks a run has in flight
(bench/coordinator_scale.py: 100k tasks): state.json holds the phase and rounds, the running jobs
that are not array tasks, and the running array tasks as one entry per array (`job_arrays`: kind,
round, submission time, task indices as ranges '0-999'). The rest of a job's record goes elsewhere:
- `jobs/<array id>.json`: the details of each task (its chunk range), written once, when the
  array is first saved;
- `jobs.jsonl`: an ended job's whole record (state, error, log, usage), appended once;
- `jobs/pending-<name>.json`: the task details of a submission intent with more than
  PENDING_INLINE tasks, written once per submission.
Saves write in that order (details, ended records, then state.json), so a crash between them
leaves at worst an ended record that state.json still calls running: `load_state` lets the ended
one win, and a torn last line of jobs.jsonl is skipped (the job is asked about again). An older
state.json, with every job's record in its `jobs` list, loads as before; its next save moves the
ended ones out.

What a save has to write besides state.json is what the state's JobTable says changed since the
last save (`unwritten_running`, `unwritten_ended`); `load_state` builds the table knowing which
records the files already hold.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from dp_hpc.contracts import JobDetail, PendingSubmission
from dp_hpc.coordinate.state.run import RoundRecord, RunState
from dp_hpc.coordinate.state.table import RUNNING, JobRecord, JobTable, array_task, parse_ranges
from dp_hpc.io import atomic_write_json, read_json
from dp_hpc.layout import JOB_DETAILS, RunDir


def state_from_json(d: dict[str, Any], run_dir: Path | None = None) -> RunState:
    """From state.json's content `d` (either format); with `run_dir`, also the records kept beside it
    (jobs.jsonl, jobs/<array>.json, jobs/pending-<name>.json: see the module's docstring)."""
    d = dict(d)
    jobs, details, ended = all_jobs(d, run_dir)
    d.pop("job_arrays", None)
    d.pop("lost_in_a_row", None)  # older files: now derived from lost_work
    d["rounds"] = [RoundRecord(**r) for r in d.get("rounds", [])]

    def on_disk(j: JobRecord) -> bool:  # in jobs.jsonl (ended), or its details in jobs/<array>.json
        if j.status != RUNNING:
            return (j.job_id, j.submitted) in ended
        task = array_task(j.job_id)
        return task is not None and j.job_id in details.get(task[0], ())

    d["jobs"] = JobTable((JobRecord.from_json(j) for j in jobs), on_disk)
    pending = resolve_pending(d.get("pending"), run_dir)
    d["pending"] = None if pending is None else PendingSubmission.from_json(pending)
    return RunState(**d)


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
            jobs.append(JobRecord(job_id=jid, kind=a["kind"], round=a["round"], submitted=a["submitted"],
                                  detail=JobDetail.from_json(known.get(jid)), executor=a["executor"]).to_json())
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


def running_jobs_in(d: dict[str, Any], run_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """(kind, job id, executor) of the running jobs a state.json's content names, either format;
    with `run_dir`, less those jobs.jsonl records as ended (a crash between appending a job's end
    and saving state.json leaves it running in state.json: load_state lets the ended one win)."""
    return [(j["kind"], j["job_id"], j.get("executor", "local")) for j in all_jobs(d, run_dir)[0]
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
            JobRecord.from_json(j)  # a whole record
        except (ValueError, TypeError):
            continue
        out[(j["job_id"], j["submitted"])] = j
    return out


def load_state(run_dir: Path) -> RunState | None:
    d = read_json(RunDir(run_dir).state)
    return None if d is None else state_from_json(d, run_dir)


def save_state(run_dir: Path, st: RunState) -> None:
    """Details of new arrays, then the records of newly ended jobs, then state.json (module docstring).
    What it writes besides state.json is what changed since the last save (st.jobs.unwritten_*)."""
    st.updated = time.time()
    rd, table = RunDir(run_dir), st.jobs
    new_details: dict[str, dict] = {}
    for j in table.unwritten_running:
        task = array_task(j.job_id) if j.status == RUNNING else None
        if task:
            new_details.setdefault(task[0], {})[j.job_id] = j.detail.to_json()
    for array, add in new_details.items():
        path = rd.job_details(array)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**(read_json(path, {}) or {}), **add})
    if table.unwritten_ended:
        with rd.jobs_log.open("ab+") as f:
            lines = "".join(json.dumps(j.to_json(), sort_keys=True) + "\n" for j in table.unwritten_ended)
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn last line (a crash while appending): it stays a line of its own
                    lines = "\n" + lines
            f.write(lines.encode())
            f.flush()
            os.fsync(f.fileno())
    table.written()
    d = st.fields_json()
    d["jobs"], d["job_arrays"] = table.compact()
    if st.pending is not None:
        if len(st.pending.details) > PENDING_INLINE:
            path = rd.job_details(f"pending-{st.pending.name.replace('/', '_')}")  # written once per submission
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, d["pending"]["details"])
            d["pending"] = {**d["pending"], "details": None, "details_file": path.name}
    atomic_write_json(rd.state, d)
