"""What produced a sweep: `<sweep>/manifest.json`, one entry per launch.

    collect(argv) -> dict           # this process: command, code version, packages, host, GPUs
    record_launch(sweep_dir, argv)  # append collect(argv) to <sweep>/manifest.json (never raises)

The launcher records every real launch (not `--dry-run`) after it has taken the sweep's lock and
written the run folders; on SLURM the coordinator job records its own start too (with its
`slurm_job_id`), so a requeued or relaunched coordinator shows where and with what it ran.
An entry:

    time          UTC, ISO 8601
    argv, cwd     the command line and the folder it was started from
    code_path     the dp_hpc package folder the launcher imported
    git_commit    `git rev-parse HEAD` of the checkout holding that folder, git_dirty whether
                  `git status --porcelain` lists anything; both null when the package is not a
                  tracked file of a git checkout (an installed wheel) or git is missing
    python        the interpreter's version
    packages      torch, torchvision, diffusers, submitit, zarr, numpy: installed versions (null: absent)
    torch_cuda    the CUDA version torch was built for (null: a CPU build)
    host          socket.gethostname()
    gpus          GPU models of this host (`nvidia-smi`; [] without it), gpu_count their number
    slurm_job_id  the SLURM job the launch runs in (the coordinator job), else null
    code_snapshot slurm: the snapshot the sweep's jobs run from (dp_hpc.code_snapshot): hash, path,
                  made (copied by this launch), checkout_differs (reused though this process's
                  package differs), previous (the snapshot replaced by --update-code) and then
                  from: per run, the round and number of jobs in its state.json at the switch
                  (its later jobs run this snapshot); null for the local executors

Each job attempt records its own host and GPU in `<run>/compute.jsonl` (dp_hpc.metrics.append_compute).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from dp_hpc.io import atomic_write_json, read_json
from dp_hpc.layout import SweepDir

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "diffusers", "submitit", "zarr", "numpy")
CODE_DIR = Path(__file__).resolve().parent


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    """stdout of a command, None if it is missing, fails or hangs."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_state(path: Path = CODE_DIR) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout that tracks the package folder `path`; (None, None) if
    there is none (no git, not a checkout, or a copy of the package that the checkout around it
    does not track, like a wheel installed in a .venv inside a checkout)."""
    git = shutil.which("git")
    if git is None:
        return None, None
    if not _run([git, "-C", str(path), "ls-files", "--", "__init__.py"]):
        return None, None
    head = _run([git, "-C", str(path), "rev-parse", "HEAD"])
    if not head:
        return None, None
    status = _run([git, "-C", str(path), "status", "--porcelain"])
    return head.strip(), None if status is None else bool(status.strip())


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_cuda() -> str | None:
    """torch.version.cuda (None for a CPU build or without torch). Imports torch (the launcher
    has already) but does not initialise CUDA."""
    try:
        import torch.version
    except Exception:  # noqa: BLE001 (no torch, or a broken one: the manifest says null)
        return None
    return torch.version.cuda


def gpu_models() -> list[str]:
    """The GPU models of this host, one per GPU, from nvidia-smi ([] without it); no CUDA context
    is created in this process."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    out = _run([smi, "--query-gpu=name", "--format=csv,noheader"])
    return [line.strip() for line in (out or "").splitlines() if line.strip()]


def collect(argv: list[str] | None = None) -> dict:
    """One manifest entry for this process (`argv`: the command line; default sys.argv)."""
    commit, dirty = git_state()
    gpus = gpu_models()
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "code_path": str(CODE_DIR),
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "torch_cuda": torch_cuda(),
        "host": socket.gethostname(),
        "gpus": gpus,
        "gpu_count": len(gpus),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def read_manifest(sweep_dir: str | os.PathLike) -> dict:
    """The manifest ({"launches": []} if there is none yet)."""
    data = read_json(SweepDir(sweep_dir).manifest)
    return data if isinstance(data, dict) else {"launches": []}


def record_launch(sweep_dir: str | os.PathLike, argv: list[str] | None = None,
                  code_snapshot: dict | None = None) -> dict | None:
    """Append this launch to `<sweep>/manifest.json` (atomic rewrite); the entry written. Never
    raises: a manifest that cannot be written is a warning, not a failed launch (None).
    `code_snapshot`: Snapshot.manifest_entry of the launch (SLURM), else None."""
    path = SweepDir(sweep_dir).manifest
    try:
        manifest = read_manifest(sweep_dir)
        launches = manifest.get("launches")
        if not isinstance(launches, list):
            raise ValueError("its 'launches' is not a list")
        entry = {**collect(argv), "code_snapshot": code_snapshot}
        atomic_write_json(path, {**manifest, "launches": [*launches, entry]})
        return entry
    except Exception as e:  # noqa: BLE001 (see the docstring)
        log.warning("could not record this launch in %s: %s: %s", path, type(e).__name__, e)
        return None
