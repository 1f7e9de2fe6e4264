"""README and CI agree: CI runs the exact test command the README shows."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up: two commands\n[^#]*?```bash\n(.*?)```", readme, re.S)
    assert block, "README must open with the two set-up commands in a bash block"
    launch_cmd, test_cmd = [line.strip() for line in block.group(1).strip().splitlines()]
    assert "dp_hpc.launch --sweep sweeps/digits.yaml" in launch_cmd
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines, f"{test_cmd!r} is not a line of .ci/run"
