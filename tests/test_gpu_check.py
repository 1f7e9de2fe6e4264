"""bench/gpu_check.sh, the prepared GPU check, runs end to end on the CPU on tiny shapes (its
--cpu-smoke mode), so the script a GPU session runs in its few minutes of device time cannot rot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_section_on_the_cpu():
    r = subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.split("== summary", 1)[1]
    for key in ("plain images/s", "guided images/s", "guided / plain time", "guided step peak memory",
                "ViT-B/16 training images/s", "JPEG decode CPU images/s"):
        assert key in summary, summary
    assert "FAILED" not in r.stdout
