"""Helpers for the end-to-end tests: run the real CLI in subprocesses, look at run folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "sweeps" / "smoke.yaml"
HANG_S = 600.0
"""How long a test waits for something that must happen (a checkpoint, a process to start or to end)
before it calls it a hang. A guard against waiting forever, never a claim about speed: no test asserts
how long something took (bench/ measures that), and a slow or busy machine only makes a test slower.
The last guard is pytest-timeout's 900 s per test (pyproject.toml)."""


def launch_cmd(sweep: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dp_hpc.launch", "--sweep", str(sweep), "--out", str(out), *extra]


def run_launch(sweep: Path, out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(sweep, out, *extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def smoke_variant(tmp: Path, grid: dict, **base_overrides) -> Path:
    """A copy of the smoke sweep with another grid and some base keys changed (same generator)."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["grid"] = grid
    for dotted, value in base_overrides.items():
        node = raw["base"]
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def reuse_generators(src_sweep_dir: Path, dst_sweep_dir: Path) -> None:
    """Tests share one trained smoke generator: same data+generator config, same cache key."""
    shutil.copytree(src_sweep_dir / "generators", dst_sweep_dir / "generators", dirs_exist_ok=True)


def pool_digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of the run's pool.zarr, by relative path."""
    root = run_dir / "pool.zarr"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for(predicate, timeout: float = HANG_S, interval: float = 0.02, what: str = "condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def kill(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def run_state(run_dir: Path) -> dict | None:
    """A run's state.json with every job's whole record in `jobs` (state.json itself keeps only the
    running ones: dp_hpc.coordinate.state.full_state_json); None without a state.json."""
    from dp_hpc.coordinate.state import full_state_json

    return full_state_json(Path(run_dir))
