"""Print where every run of a sweep stands, with the ids and states of its jobs in flight (asked
of the runner of each job's executor in one go: SLURM's queue state from one squeue, a local job
'running' while its process is a job of the run). The table is dp_hpc.coordinate.sweep_table's, which
the sweep loop prints too.

    python -m dp_hpc.status runs/digits
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dp_hpc.coordinate.sweep_table import print_table
from dp_hpc.errors import run_main
from dp_hpc.layout import SweepDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.status", description="Show the runs of a sweep.")
    p.add_argument("sweep_dir", help="the sweep folder, <out>/<sweep name>")
    args = p.parse_args(argv)
    d = Path(args.sweep_dir)
    if not d.is_dir() or not SweepDir(d).sweep_file.exists():
        print(f"error: {d} is not a sweep folder (no sweep.yaml)", file=sys.stderr)
        return 2
    print_table(d)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
