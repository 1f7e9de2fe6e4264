"""bench/guided_memory.py, the CPU benchmark of a guided step's peak memory by guidance micro-batch,
runs end to end on tiny shapes (--tiny: real subprocesses, one per micro-batch), prints a peak and
an increment for micro-batches 1, 2 and 4, and the step's output agrees across them within the
benchmark's stated tolerance."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # bench/guided_memory.py's TOLERANCE, restated: a change there must be deliberate here too
ROW = re.compile(r"^(micro-batch (\d)(, decoder checkpointing off)?)\s+([\d.]+) GiB\s+([\d.]+) GiB\s+([\d.]+) GiB"
                 r"\s+([\d.]+)\s+(\d+)\s+(\S+)$", re.M)


@pytest.mark.slow
def test_tiny_run_reports_each_micro_batch_and_the_same_step():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "guided_memory.py"), "--tiny"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout.split("== summary", 1)[1]
    rows = {m[1]: m for m in ROW.finditer(summary)}
    assert set(rows) == {"micro-batch 1", "micro-batch 2", "micro-batch 4",
                         "micro-batch 1, decoder checkpointing off"}, summary
    for name, m in rows.items():
        base, peak, inc, diff = float(m[4]), float(m[5]), float(m[6]), float(m[9])
        assert base > 0 and peak >= base and inc >= 0, (name, summary)
        assert abs(peak - base - inc) <= 0.011, (name, summary)  # two decimals each
        assert diff <= TOLERANCE, (name, diff, summary)
    assert float(rows["micro-batch 1"][9]) == 0.0  # the reference itself
    assert f"tolerance {TOLERANCE:g}; all within it" in summary, summary
