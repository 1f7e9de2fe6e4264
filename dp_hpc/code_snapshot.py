"""The sweep's code snapshot (SLURM): a copy of the dp_hpc package that every job of the sweep runs
from, so that editing the checkout after a launch changes nothing a queued or later job runs.

    snap = choose(sweep_dir, update=False)  # the recorded snapshot, or a new copy of this package
    print(snap.summary())                    # one line: which snapshot, and whether the checkout differs
    runner.env.update(snap.job_env())        # PYTHONPATH (the snapshot first), PYTHONSAFEPATH=1

`<sweep>/code/<hash>/dp_hpc/` holds the package's files (no __pycache__, no dotfiles), read-only;
<hash> is a content hash of their relative paths and bytes, so identical code is one folder.
`<sweep>/code/current` names the snapshot that jobs submitted from now on run. A relaunch reuses
it; `update=True` (`--update-code`) copies the checkout again and records the copy: later jobs run
it, jobs already queued or running (and their requeues: SLURM reruns the same batch script, with
the same environment) keep theirs. Snapshots are never deleted by dp_hpc.

Only source is copied: the interpreter and the installed packages are the launcher's (.venv).
Why the job finds the snapshot first: `python -m submitit.core._submit` would put the job's working
directory (the launch's, usually the checkout) first on sys.path, which PYTHONSAFEPATH=1 (Python
3.11) prevents; PYTHONPATH entries come before site-packages, so before the editable install's .pth
entry (the checkout) too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dp_hpc.errors import UsageError
from dp_hpc.io import atomic_write_text, read_json
from dp_hpc.layout import SweepDir

PACKAGE_DIR = Path(__file__).resolve().parent  # the package this process imported
PACKAGE = PACKAGE_DIR.name


def package_files(package: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file of the package, sorted; __pycache__ and dotfiles (editor
    swap files) left out. Read once: what is hashed is what is copied, even while someone edits."""
    out = {}
    for p in sorted(package.rglob("*")):
        rel = p.relative_to(package)
        if p.is_file() and "__pycache__" not in rel.parts and not any(s.startswith(".") for s in rel.parts):
            out[rel.as_posix()] = p.read_bytes()
    return out


def content_hash(files: dict[str, bytes]) -> str:
    """16 hex digits of sha256 over the sorted (path, length, bytes)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def make_snapshot(package: Path, code_dir: Path) -> tuple[Path, bool]:
    """(code_dir/<hash>, whether this call made it). Copied into a temporary folder beside it and
    renamed into place: a snapshot folder is whole or absent; a second call with the same content
    (or a concurrent one that loses the rename) finds it made."""
    files = package_files(package)
    dest = code_dir / content_hash(files)
    if (dest / PACKAGE).is_dir():
        return dest, False
    code_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=code_dir, prefix=f".{dest.name}."))
    try:
        for rel, data in files.items():
            path = tmp / PACKAGE / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o444)  # an edit here would make the folder lie about its hash
        tmp.chmod(0o755)  # mkdtemp's 0700
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (dest / PACKAGE).is_dir():  # another launcher renamed the same content first
            return dest, False
        raise
    return dest, True


def recorded(sweep_dir: str | os.PathLike) -> str | None:
    """The hash in <sweep>/code/current (None: no snapshot recorded yet)."""
    try:
        return SweepDir(sweep_dir).code_current.read_text().strip() or None
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Snapshot:
    path: Path  # <sweep>/code/<hash>/: first on the jobs' PYTHONPATH
    source: Path  # the package folder of this process (the checkout, or a snapshot in a coordinator job)
    made: bool  # copied by this call
    previous: str | None  # the snapshot it replaced as current (--update-code, or a recorded one gone missing)
    checkout_differs: bool  # reused, and `source` holds other code

    @property
    def hash(self) -> str:
        return self.path.name

    def job_env(self) -> dict[str, str]:
        """The variables a job gets: PYTHONPATH with the snapshot first (other snapshots of the
        sweep dropped, the submitter's other entries kept after it), PYTHONSAFEPATH=1."""
        others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p and Path(p).parent != self.path.parent]
        return {"PYTHONPATH": os.pathsep.join([str(self.path), *others]), "PYTHONSAFEPATH": "1"}

    def summary(self) -> str:
        """One line for the launcher's output."""
        if self.previous is not None:
            return (f"code: jobs submitted from now on run the snapshot {self.path} of {self.source} (was "
                    f"{self.previous}; jobs queued or running keep theirs)")
        if self.made:
            return f"code: copied {self.source} to {self.path}; every job of this sweep runs from it"
        if self.checkout_differs:
            return (f"code: the sweep's jobs run the snapshot {self.path}; {self.source} differs from it "
                    f"(--update-code: run that code from now on)")
        return f"code: the sweep's jobs run the snapshot {self.path} (the same code as {self.source})"

    def manifest_entry(self, sweep_dir: str | os.PathLike) -> dict:
        """What the launch's manifest entry records. `from`, when this launch replaced a snapshot:
        per run, the round and the number of jobs in its state.json at that moment; its jobs from
        that index on were submitted from this snapshot."""
        entry = {"hash": self.hash, "path": str(self.path), "made": self.made, "previous": self.previous,
                 "checkout_differs": self.checkout_differs}
        if self.previous is not None:
            entry["from"] = runs_so_far(sweep_dir)
        return entry


def runs_so_far(sweep_dir: str | os.PathLike) -> dict[str, dict]:
    """{run (branch-outs as <run>/branches/round_XXX): {round, jobs}} from each run's state.json."""
    sd = SweepDir(sweep_dir)
    out = {}
    for run in sd.runs_and_branches():
        st = read_json(run.state)
        if isinstance(st, dict):
            from dp_hpc.coordinate.state import full_state_json  # jobs.jsonl and job_arrays count too

            n = len(full_state_json(run.path, st)["jobs"])
            out[run.path.relative_to(sd.path).as_posix()] = {"round": st.get("round"), "jobs": n}
    return out


def choose(sweep_dir: str | os.PathLike, update: bool = False, package: Path = PACKAGE_DIR) -> Snapshot:
    """The snapshot the sweep's jobs run from. The recorded one if there is one and `update` is
    false; else a copy of `package`, recorded as current. Hold the sweep's lock: two launchers
    choosing at once could record different snapshots."""
    sd = SweepDir(Path(sweep_dir).resolve())  # PYTHONPATH must not depend on a job's working directory
    old = recorded(sd.path)
    if old is not None and not update and (sd.code_snapshot(old) / PACKAGE).is_dir():
        differs = content_hash(package_files(package)) != old
        return Snapshot(sd.code_snapshot(old), package, made=False, previous=None, checkout_differs=differs)
    path, made = make_snapshot(package, sd.code)
    if path.name != old:
        atomic_write_text(sd.code_current, path.name + "\n")
    return Snapshot(path, package, made=made, previous=old if old != path.name else None, checkout_differs=False)


def check_update_request(runner, update: bool) -> None:
    """--update-code is for jobs that run from a snapshot (SLURM): UsageError for the others."""
    if update and not runner.runs_from_snapshot:
        raise UsageError(f"--update-code: {runner.kind} jobs run from the checkout itself, not from a code snapshot; "
                         "it is for --executor slurm")


def busy_coordinator_message(job_id: str, state: str) -> str:
    """Why --update-code waits for the coordinator job to be stopped."""
    return (f"--update-code: the sweep's coordinator, SLURM job {job_id} ({state}), runs its snapshot and submits "
            f"every job from it; stop it first with `scancel {job_id}` (its jobs keep running, the relaunch "
            f"re-attaches to them)")
