"""Bad input to every command, as a user types it (issue 26): each case runs the real command in a
subprocess and must exit 2 with one line on stderr per problem, each naming its culprit, no
traceback, and nothing written (the tree under the test's folder is the same before and after).
`launch --dry-run` refuses exactly what the launch refuses (dp_hpc.preflight), so every launch
case runs both ways. A Ctrl-C is one line too (exit 130), and the warm job parent says nothing
when the launcher is gone before it reads "ready". Bad sweep files and keys (caught while loading,
before the preflight) are tests/test_config.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_helpers import ROOT, SMOKE

IMAGENET = ["--set", "data.dataset=imagenet", "--set", "data.val_h5={tmp}/nope/val.h5",
            "--set", "data.test_h5={tmp}/nope/test.h5"]
SD = ["--set", "generator.backend=stable-diffusion", "--set", "generator.model_dir={tmp}/nope/sd"]

# (launch arguments besides --sweep smoke, the needle of each stderr line in order); {tmp} is the
# test's folder, which holds `a-file` (a regular file) and `locked/` (a folder without write permission)
LAUNCH_CASES = {
    "out is a file": (["--out", "{tmp}/a-file"], ["--out: {tmp}/a-file is a file"]),
    "out under a file": (["--out", "{tmp}/a-file/runs"], ["--out: {tmp}/a-file/runs cannot be created: {tmp}/a-file"]),
    "out not writable (procfs)": (["--out", "/proc/1/dp-runs"], ["--out: /proc/1/dp-runs cannot be created: /proc/1 is "
                                                                  "not writable"]),
    "out not writable": (["--out", "{tmp}/locked/runs"], ["--out: {tmp}/locked/runs cannot be created: {tmp}/locked is "
                                                          "not writable"]),
    "a run folder not writable": (["--out", "{tmp}/resume"], ["--out: {tmp}/resume/smoke/dp is not writable"]),
    "update-code with local jobs": (["--out", "{tmp}/out", "--executor", "local", "--update-code"],
                                    ["--update-code: local jobs run from the checkout"]),
    "digits data, stable diffusion": (["--out", "{tmp}/out", *SD], ["generator.backend: stable-diffusion does not make "
                                                                     "digits images"]),
    "imagenet data, digits unet": (["--out", "{tmp}/out", *IMAGENET],
                                   ["generator.backend: digits_unet does not make imagenet images",
                                    "data.val_h5: {tmp}/nope/val.h5: packed file not found",
                                    "data.test_h5: {tmp}/nope/test.h5: packed file not found"]),
    "every missing input at once": (["--out", "{tmp}/out", *IMAGENET, *SD],
                                    ["data.val_h5: {tmp}/nope/val.h5", "data.test_h5: {tmp}/nope/test.h5",
                                     "generator.model_dir: {tmp}/nope/sd"]),
    "missing class list": (["--out", "{tmp}/out", *IMAGENET, *SD, "--set", "data.classes={tmp}/nope/classes.txt"],
                           ["data.classes: {tmp}/nope/classes.txt", "data.val_h5: {tmp}/nope/val.h5",
                            "data.test_h5: {tmp}/nope/test.h5"]),
    "gpu decode of a lossless pool": (["--out", "{tmp}/out", "--set", "train.jpeg_decode=cuda"],
                                      ["train.jpeg_decode: cuda decodes pool JPEGs"]),
    "several problems": (["--out", "{tmp}/a-file", "--update-code", "--executor", "local", *SD],
                         ["--out: {tmp}/a-file is a file", "generator.backend: stable-diffusion",
                          "--update-code: local jobs"]),
    # the cluster's own refusals, every kind of job at once (a stand-in sbatch: see FAKE_SBATCH)
    "slurm, partitions the cluster lacks": (["--out", "{tmp}/out", "--executor", "slurm", "--set",
                                             "slurm.generation.partition=nope", "--set", "slurm.training.partition=nope"],
                                            ["the cluster would refuse the generation jobs of slurm.generation",
                                             "the cluster would refuse the training jobs of slurm.training"]),
    "slurm, more GPUs than a node has": (["--out", "{tmp}/out", "--executor", "slurm", "--set",
                                          "slurm.training.gpus_per_node=64"],
                                         ["the cluster would refuse the training jobs of slurm.training"]),
}

OTHER_CASES = {
    "report, sweep without runs": (["-m", "analysis.report", "{tmp}/sweep"], ["{tmp}/sweep has no runs yet"]),
    "report, not a folder": (["-m", "analysis.report", "{tmp}/a-file"], ["{tmp}/a-file is not a folder"]),
    "pack, out in a missing folder": (["-m", "dp_hpc.data.pack", "--src", "{tmp}/images", "--out", "{tmp}/nope/v.h5"],
                                      ["--out: {tmp}/nope is not a folder"]),
    "pack, out is a folder": (["-m", "dp_hpc.data.pack", "--src", "{tmp}/images", "--out", "{tmp}/sweep"],
                              ["--out: {tmp}/sweep is a folder"]),
    "pack, out under a file": (["-m", "dp_hpc.data.pack", "--src", "{tmp}/images", "--out", "{tmp}/a-file/v.h5"],
                               ["--out: {tmp}/a-file is a file, not a folder"]),
    "pack, out in a folder not writable": (["-m", "dp_hpc.data.pack", "--src", "{tmp}/images", "--out",
                                            "{tmp}/locked/v.h5"], ["--out: {tmp}/locked is not writable"]),
    "report, out not writable": (["-m", "analysis.report", "{tmp}/resume/smoke", "--out", "{tmp}/locked/report"],
                                 ["--out: {tmp}/locked is not writable"]),
    "pack, no images": (["-m", "dp_hpc.data.pack", "--src", "{tmp}/images", "--out", "{tmp}/v.h5"],
                        ["{tmp}/images: no images found"]),
    "status, not a sweep": (["-m", "dp_hpc.status", "{tmp}/nope"], ["{tmp}/nope is not a sweep folder"]),
    "cancel, not a sweep": (["-m", "dp_hpc.cancel", "{tmp}/a-file"], ["{tmp}/a-file is not a sweep folder"]),
    "verify, not a sweep": (["-m", "dp_hpc.verify", "{tmp}/nope"], ["{tmp}/nope is not a sweep folder"]),
}


# sbatch --test-only as a cluster with partitions cpu and gpu (the default) and nodes of 8 GPUs answers it
FAKE_SBATCH = """#!/bin/sh
case "$*" in
  *--partition=nope*) echo "sbatch: error: invalid partition specified: nope" >&2; exit 1;;
  *--gpus-per-node=64*) echo "sbatch: error: Requested node configuration is not available" >&2; exit 1;;
esac
echo "sbatch: Job 1 to start at 2026-01-01T00:00:00 using 1 processors on nodes n1 in partition gpu" >&2
"""


def tree(root: Path) -> dict[str, tuple[bool, bytes]]:
    """Every path under root: (is a folder, its bytes)."""
    return {str(p.relative_to(root)): (p.is_dir(), b"" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "locked").mkdir(mode=0o555)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.yaml").write_text("name: sweep\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "resume" / "smoke" / "dp").mkdir(parents=True)  # a sweep with a run folder it cannot write
    (tmp_path / "resume" / "smoke" / "sweep.yaml").write_text("name: smoke\n")
    (tmp_path / "resume" / "smoke" / "dp" / "config.yaml").write_text("name: dp\n")
    (tmp_path / "resume" / "smoke" / "dp").chmod(0o555)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text(FAKE_SBATCH)
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    yield tmp_path
    for d in (tmp_path / "locked", tmp_path / "resume" / "smoke" / "dp"):
        d.chmod(0o755)


def check_refused(tmp: Path, argv: list[str], needles: list[str]) -> None:
    before = tree(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, *[a.format(tmp=tmp) for a in argv]], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, (argv, r.stderr)
    assert len(lines) == len(needles), (argv, r.stderr)
    for line, needle in zip(lines, needles):
        assert line.startswith("error: ") and needle.format(tmp=tmp) in line, (needle, r.stderr)
    assert tree(tmp) == before, "something was written"


@pytest.mark.parametrize("dry", [False, True], ids=["launch", "dry-run"])
@pytest.mark.parametrize("case", list(LAUNCH_CASES))
def test_launch_refuses_bad_input_in_one_line_each_and_writes_nothing(tmp, case, dry):
    args, needles = LAUNCH_CASES[case]
    if ("locked" in " ".join(args) or "resume" in " ".join(args)) and os.access(tmp / "locked", os.W_OK):
        pytest.skip("this user writes into any folder (root): the procfs case covers an unwritable --out")
    if "/proc/1" in " ".join(args) and not Path("/proc/1").is_dir():
        pytest.skip("no procfs here")
    argv = ["-m", "dp_hpc.launch", "--sweep", str(SMOKE), *args, *(["--dry-run"] if dry else [])]
    check_refused(tmp, argv, needles)


@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_other_commands_refuse_bad_input_in_one_line_and_write_nothing(tmp, case):
    argv, needles = OTHER_CASES[case]
    if "locked" in " ".join(argv) and os.access(tmp / "locked", os.W_OK):
        pytest.skip("this user writes into any folder (root)")
    check_refused(tmp, argv, needles)


def test_ctrl_c_and_input_errors_are_one_line_other_errors_keep_their_traceback(capsys):
    from dp_hpc.errors import ConfigError, UsageError, run_main

    def raising(e):
        def main():
            raise e
        return main

    assert run_main(raising(KeyboardInterrupt())) == 130
    assert run_main(raising(KeyboardInterrupt()), "interrupted (Ctrl-C); rerun the same command to continue") == 130
    assert run_main(raising(UsageError("--x: bad; use y"))) == 2
    assert run_main(raising(ConfigError("train.lr", "must be > 0"))) == 2
    assert capsys.readouterr().err.splitlines() == [
        "interrupted (Ctrl-C)", "interrupted (Ctrl-C); rerun the same command to continue", "error: --x: bad; use y",
        "error: train.lr: must be > 0"]
    with pytest.raises(RuntimeError):
        run_main(raising(RuntimeError("a bug")))
    assert run_main(lambda: None) == 0 and run_main(lambda: 3) == 3


def test_the_warm_job_parent_is_quiet_when_the_launcher_is_gone_before_it_is_ready():
    """A Ctrl-C to the launcher's process group: the launcher exits, the warm parent (which ignores
    SIGINT) finishes its imports and says "ready" into a closed pipe. Deterministic here: the read
    end is closed before it starts."""
    r, w = os.pipe()
    os.close(r)
    try:
        # its imports stubbed out: they take seconds, and what is checked is the answer into the pipe
        code = "from dp_hpc.coordinate.runners import warm; warm._preload = lambda: None; warm.main()"
        p = subprocess.run([sys.executable, "-c", code],
                           stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    finally:
        os.close(w)
    assert p.returncode == 0 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_a_ctrl_c_to_the_launchers_process_group_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while the launch asks the cluster (a stand-in sbatch that waits, so that the signal
    lands inside the launcher's main, deterministically): one line, exit 130, nothing written."""
    import signal
    import time

    from e2e_helpers import wait_for

    started = tmp_path / "sbatch-started"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 300\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.Popen([sys.executable, "-m", "dp_hpc.launch", "--sweep", str(SMOKE), "--out", str(tmp_path / "out"),
                          "--executor", "slurm"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=env, start_new_session=True)
    try:
        wait_for(started.exists, what="the launcher asking sbatch")
        time.sleep(0.2)
        os.killpg(p.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == ["interrupted (Ctrl-C); rerun the same command to continue"], err
    assert not (tmp_path / "out").exists()


STAND_IN = """import pathlib, time
pathlib.Path({started!r}).touch()
time.sleep(300)  # a slow import (torch's takes a second or two): the Ctrl-C lands here
"""


@pytest.mark.parametrize(("command", "slow_module"), [(["dp_hpc.launch", "--sweep", str(SMOKE), "--dry-run"], "yaml"),
                                                      (["analysis.report", "nowhere"], "pandas")],
                         ids=["launch", "report"])
def test_a_ctrl_c_while_the_command_still_imports_is_one_line_and_exit_130(tmp_path, command, slow_module):
    """Ctrl-C before run_main is reached, inside a module-level import (a stand-in module on
    PYTHONPATH that waits, so that the signal lands in the import, deterministically)."""
    import signal

    from dp_hpc.errors import INTERRUPTED_WHILE_IMPORTING
    from e2e_helpers import wait_for

    started = tmp_path / "import-started"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / f"{slow_module}.py").write_text(STAND_IN.format(started=str(started)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'slow'}{os.pathsep}{ROOT}"}
    p = subprocess.Popen([sys.executable, "-m", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_for(started.exists, what=f"{command[0]} importing {slow_module}")
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and err.splitlines() == [INTERRUPTED_WHILE_IMPORTING], err


def test_only_a_ctrl_c_in_the_main_modules_imports_counts_as_before_the_command_started(tmp_path, monkeypatch):
    """raised_in_an_import: the main module's top level, or a module it imports there (yes); a
    function it called, or a lazy import inside one (no: that command had started). The hook hands
    everything else to the one before it."""
    from dp_hpc.errors import quiet_ctrl_c_while_importing, raised_in_an_import

    (tmp_path / "interrupting_module.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    # stand-ins for the import machinery's own frames, which Python keeps when the Ctrl-C lands in them
    machinery = {}
    exec(compile("def _find_and_load(name):\n    __import__(name)\n\ndef _find_spec():\n    raise KeyboardInterrupt\n",
                 "<frozen importlib._bootstrap>", "exec"), machinery)

    def traceback_of(main_module: str):
        sys.modules.pop("interrupting_module", None)
        with pytest.raises(KeyboardInterrupt) as e:
            exec(compile(main_module, "<main>", "exec"), dict(machinery))
        return e.value.__traceback__.tb_next  # from the main module's frame on, as at the top level

    assert raised_in_an_import(traceback_of("raise KeyboardInterrupt"))
    assert raised_in_an_import(traceback_of("import interrupting_module"))
    assert raised_in_an_import(traceback_of("_find_and_load('interrupting_module')"))
    assert raised_in_an_import(traceback_of("_find_spec()"))
    assert not raised_in_an_import(traceback_of("def main():\n    raise KeyboardInterrupt\nmain()"))
    assert not raised_in_an_import(traceback_of("def main():\n    import interrupting_module\nmain()"))

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a[0]))
    quiet_ctrl_c_while_importing()  # not under `python -m`: nothing changes
    assert sys.excepthook.__name__ == "<lambda>"
    monkeypatch.setattr(sys, "argv", ["-m"])
    quiet_ctrl_c_while_importing()
    sys.excepthook(ValueError, ValueError("a bug"), None)
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), traceback_of("def main():\n    raise KeyboardInterrupt\nmain()"))
    assert seen == [ValueError, KeyboardInterrupt]
