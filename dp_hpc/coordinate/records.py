"""Record-then-submit: the one protocol by which every job is submitted (a run's jobs, a
generator job, the sweep's coordinator job), so that no crash submits a job twice or loses one.

1. The intent is saved first, under the name the runner gives the job (`Runner.job_name`: on
   SLURM unique, `<sweep>/<name>-<nonce>`), with the time (`submitted` precedes the submission,
   so a job's result file is always newer).
2. The job is submitted; its ids are saved.
3. A process that finds an intent without ids (its predecessor died between 1 and 2) adopts the
   jobs by their name (`Runner.find_submitted`: squeue/sacct --name), or forgets the intent if
   there are none (local jobs cannot be found by name: the work is planned again, and a duplicate
   is harmless).

Where the intent and the ids are kept is the caller's: `save_intent` and `save_ids`. A run keeps
them in state.json (`RunState.pending`, then JobRecords: dp_hpc.coordinate.coordinator); a single
job (the generator's job.json, the sweep's coordinator.json) in a `JobFile`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from dp_hpc.contracts import executor_of
from dp_hpc.coordinate.runners.base import Runner
from dp_hpc.io import atomic_write_json, read_json


def submit_recorded(runner: Runner, logs: Path, name: str, fn: Callable, args_list: Sequence[tuple], kind: str,
                    save_intent: Callable[[str, float], None], save_ids: Callable[[list[str]], None]) -> list[str]:
    """Save the intent (job name, time), submit, save the ids. A SubmitError leaves the intent
    saved: the next look adopts what was submitted (`adopt_unrecorded`)."""
    name = runner.job_name(name)
    save_intent(name, time.time())
    ids = runner.submit(logs, name, fn, args_list, kind=kind)
    save_ids(ids)
    return ids


def adopt_unrecorded(runner: Runner, logs: Path, name: str, save_ids: Callable[[list[str]], None]) -> list[str]:
    """The jobs of a submission saved as an intent without ids, found by name and saved ([]: none)."""
    ids = runner.find_submitted(logs, name)
    save_ids(ids)
    return ids


def recorded_executor(rec: dict) -> str:
    """The executor of a job file's record (older records do not name it: `executor_of`)."""
    return executor_of(rec.get("name"), rec.get("executor"))


class JobFile:
    """One job recorded in a JSON file: {job_id, name, submitted, executor} (job_id null: only the
    intent; executor: the kind of the runner that submitted it)."""

    def __init__(self, path: Path, logs: Path):
        self.path, self.logs = Path(path), Path(logs)

    def read(self, runner: Runner) -> dict | None:
        """The record; an intent without an id adopts its job by name, or is forgotten (None)."""
        rec = read_json(self.path)
        if rec is None or rec.get("job_id") is not None:
            return rec
        ids = adopt_unrecorded(runner, self.logs, rec["name"], lambda ids: self._save_id(rec, ids))
        return rec if ids else None

    def submit(self, runner: Runner, name: str, fn: Callable, args: tuple, kind: str) -> dict:
        """Submit one job under the record-then-submit protocol; the record."""
        rec: dict = {}

        def save_intent(job_name: str, submitted: float) -> None:
            rec.update(job_id=None, name=job_name, submitted=submitted, executor=runner.kind)
            atomic_write_json(self.path, rec)

        submit_recorded(runner, self.logs, name, fn, [args], kind, save_intent, lambda ids: self._save_id(rec, ids))
        return rec

    def _save_id(self, rec: dict, ids: list[str]) -> None:
        if not ids:
            self.path.unlink(missing_ok=True)
            return
        rec["job_id"] = ids[0]
        atomic_write_json(self.path, rec)
