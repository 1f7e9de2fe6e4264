"""The sweep's code snapshot (dp_hpc.code_snapshot): content-addressed, made whole or not at all,
reused until --update-code, and first on a job's sys.path. On the real cluster: test_slurm.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dp_hpc import code_snapshot
from dp_hpc.layout import SweepDir
from e2e_helpers import ROOT


def package(tmp: Path) -> Path:
    pkg = tmp / "src" / "dp_hpc"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("X = 1\n")
    (pkg / "sub" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"compiled")
    (pkg / "sub" / ".mod.py.swp").write_bytes(b"an editor's")
    return pkg


def test_the_same_content_is_one_folder_made_once_and_whole(tmp_path):
    pkg, code = package(tmp_path), tmp_path / "code"
    first, made = code_snapshot.make_snapshot(pkg, code)
    assert made and first.parent == code
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file()) == [
        "dp_hpc/__init__.py", "dp_hpc/sub/mod.py"]  # no __pycache__, no dotfiles
    assert code_snapshot.make_snapshot(pkg, code) == (first, False)  # idempotent
    (pkg / "sub" / "__pycache__" / "other.pyc").write_bytes(b"x")  # not content: the same hash
    assert code_snapshot.make_snapshot(pkg, code) == (first, False)
    (pkg / "sub" / "mod.py").write_text("X = 2\n")
    second, made = code_snapshot.make_snapshot(pkg, code)
    assert made and second != first and (first / "dp_hpc" / "sub" / "mod.py").read_text() == "X = 1\n"
    assert sorted(p.name for p in code.iterdir()) == sorted([first.name, second.name]), "a temporary folder left"
    # read-only by its mode bits (os.access says "writable" to root whatever they are, and CI runs as root)
    modes = {p.relative_to(second).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in second.rglob("*")
             if p.is_file()}
    assert modes == {"dp_hpc/__init__.py": "0o444", "dp_hpc/sub/mod.py": "0o444"}, modes
    assert stat.S_IMODE(second.stat().st_mode) == 0o755  # readable by the jobs of every user (mkdtemp's 0700)


def test_a_failed_copy_leaves_nothing(tmp_path, monkeypatch):
    pkg, code = package(tmp_path), tmp_path / "code"

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(code_snapshot.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        code_snapshot.make_snapshot(pkg, code)
    assert list(code.iterdir()) == []


def test_a_relaunch_reuses_the_recorded_snapshot_until_update(tmp_path):
    pkg, sweep = package(tmp_path), tmp_path / "sweep"
    sd = SweepDir(sweep)
    (sweep / "run").mkdir(parents=True)
    (sweep / "run" / "config.yaml").write_text("")
    (sweep / "run" / "state.json").write_text('{"round": 1, "jobs": [{}, {}, {}]}')
    first = code_snapshot.choose(sweep, package=pkg)
    assert first.made and first.previous is None and sd.code_current.read_text() == first.hash + "\n"
    assert "every job of this sweep runs from it" in first.summary()
    (pkg / "sub" / "mod.py").write_text("X = 2\n")  # the checkout is edited after the launch
    again = code_snapshot.choose(sweep, package=pkg)
    assert again.path == first.path and not again.made and again.checkout_differs
    assert "differs" in again.summary() and "--update-code" in again.summary()
    updated = code_snapshot.choose(sweep, update=True, package=pkg)
    assert updated.made and updated.path != first.path and updated.previous == first.hash
    assert code_snapshot.recorded(sweep) == updated.hash
    entry = updated.manifest_entry(sweep)
    assert entry["previous"] == first.hash and entry["from"] == {"run": {"round": 1, "jobs": 3}}
    assert code_snapshot.choose(sweep, package=pkg).path == updated.path  # now the recorded one
    assert "from" not in code_snapshot.choose(sweep, update=True, package=pkg).manifest_entry(sweep)  # no change


def test_a_job_with_the_snapshot_env_imports_the_snapshot_not_the_checkout(tmp_path, monkeypatch):
    """From the checkout as working directory (sbatch's default) and with the editable install's
    .pth entry of the checkout: PYTHONSAFEPATH keeps the cwd off sys.path, PYTHONPATH comes first."""
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'code' / 'old'}{os.pathsep}/some/lib")
    snap = code_snapshot.choose(tmp_path, package=ROOT / "dp_hpc")
    env = snap.job_env()
    assert env["PYTHONPATH"] == f"{snap.path}{os.pathsep}/some/lib"  # another snapshot of the sweep dropped
    r = subprocess.run([sys.executable, "-c", "import dp_hpc; print(dp_hpc.__file__)"], cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True)
    assert r.stdout.strip() == str(snap.path / "dp_hpc" / "__init__.py"), r.stdout + r.stderr


def test_update_code_is_refused_where_jobs_run_from_the_checkout(tmp_path, capsys):
    from dp_hpc.launch import main
    from e2e_helpers import SMOKE

    assert main(["--sweep", str(SMOKE), "--out", str(tmp_path), "--executor", "local", "--update-code"]) == 2
    assert "it is for --executor slurm" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "nothing may be written"
