"""The suite on a machine without SLURM (a newcomer's laptop, where `uv run pytest` is the README's
second command): the simulated-cluster tests pass against bench/slurm_sim.py's fake commands, and
the real-cluster tests skip saying why. CI has a real cluster on PATH, so this test takes SLURM away
from a pytest in a subprocess: every SLURM command masked on PATH, every SLURM_* / DP_HPC_SLURM_*
variable and DP_HPC_REQUIRE_SLURM unset. (submitit's SlurmExecutor refuses to start without `srun`
on PATH; before the simulator put a fake one there, 4 tests of test_coordinator_scale.py failed on
such a machine while CI, with its cluster, could not see it.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from e2e_helpers import ROOT

SLURM_COMMANDS = frozenset("sacct sacctmgr salloc sattach sbatch sbcast scancel scontrol sdiag sinfo sprio squeue "
                           "sreport srun sshare sstat strigger".split())
"""What Debian's slurm-client, slurmctld, slurmd and slurmdbd put on PATH."""

SIMULATED = "tests/test_coordinator_scale.py::test_sacct_command_line_and_state_writes_stay_bounded_as_tasks_grow"
"""The real coordinator, SlurmRunner and submitit's SlurmExecutor against the simulated cluster, at
50 and 400 tasks (the quick ones: the longer simulations of the file use the same SimCluster)."""


def path_without_slurm(path: str, shadows: Path) -> str:
    """PATH with every folder that holds a SLURM command replaced by a folder of links to everything
    else in it (/usr/bin keeps its python3, mount, ...; loses srun, sbatch, ...)."""
    out = []
    for i, d in enumerate(path.split(os.pathsep)):
        folder = Path(d)
        if not any((folder / c).exists() for c in SLURM_COMMANDS):
            out.append(d)
            continue
        shadow = shadows / f"{i}"
        shadow.mkdir(parents=True)
        for entry in folder.iterdir():
            if entry.name not in SLURM_COMMANDS:
                (shadow / entry.name).symlink_to(entry)
        out.append(str(shadow))
    return os.pathsep.join(out)


def env_without_slurm(shadows: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "DP_HPC_SLURM_")) and k != "DP_HPC_REQUIRE_SLURM"}
    env["PATH"] = path_without_slurm(env.get("PATH", os.defpath), shadows)
    return env


def outcomes(junit_xml: Path) -> dict[str, tuple[str, str]]:
    """test id (file::name[param]) -> (outcome, message) from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"tests/{case.get('classname').split('.')[-1]}.py::{case.get('name')}"
        result = [c for c in case if c.tag in ("skipped", "failure", "error")]
        out[name] = (result[0].tag, result[0].get("message", "")) if result else ("passed", "")
    return out


def test_simulated_cluster_tests_pass_and_real_cluster_tests_skip_without_slurm(tmp_path):
    env = env_without_slurm(tmp_path / "path")
    assert not [c for c in SLURM_COMMANDS if shutil.which(c, path=env["PATH"])], "a SLURM command is still on PATH"
    assert shutil.which("python3", path=env["PATH"]) or shutil.which("python", path=env["PATH"])
    report = tmp_path / "report.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}",
                        SIMULATED, "tests/test_slurm.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    got = outcomes(report)
    said = f"pytest without SLURM exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    simulated = {k: v for k, v in got.items() if not k.startswith("tests/test_slurm.py::")}
    real = {k: v for k, v in got.items() if k.startswith("tests/test_slurm.py::")}
    assert len(simulated) == 2 and all(o == "passed" for o, _ in simulated.values()), (simulated, said)
    assert len(real) >= 10, said  # every test of test_slurm.py was collected...
    assert all(o == "skipped" and "no local SLURM cluster (sbatch is not installed)" in m for o, m in real.values()), \
        (real, said)  # ...and skipped, with the reason
    assert r.returncode == 0, said
