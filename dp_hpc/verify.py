"""Check a sweep folder for what scratch purges and deletions leave behind, and repair it.

    python -m dp_hpc.verify <out>/<sweep name> [--repair] [--quick]

For every run and branch-out (dp_hpc.integrity): every marked pool chunk's files exist and decode
with the right shape (labels and seeds: the values derived from the run seed); the checkpoints a
resume would load do load, and the classifiers that chunks still to generate need; state.json
parses and agrees with the disk; no temporary file of a write killed before its rename is left.
Prints a table of the problems, and the chunks the next launch will
generate again. `--quick`: the cheap part only (what the launcher runs before resuming: no decoding,
no checkpoint loading). `--repair`, holding the sweep's lock and each run's training lock, unmarks
damaged chunks (the next launch regenerates them: same seeds, same bytes), un-marks damaged
checkpoints (a resume falls back to the newest intact one), removes temporary files untouched for
5 minutes (a newer one may be a write in flight: reported, left) and rewrites a state.json that does not
parse or agree with the disk from the disk; then checks the sweep again, cheaply.

Exit status: 0 nothing wrong (with --repair: nothing left that the next launch cannot handle);
1 problems (left); 2 not a sweep folder, or --repair while a launcher or a job holds a lock.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from dp_hpc.errors import run_main
from dp_hpc.integrity import Problem, check_run, repair_run, to_regenerate
from dp_hpc.io import try_lock
from dp_hpc.layout import RunDir, SweepDir


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    for r in [header, *rows]:
        print("  ".join([*(v.ljust(w) for v, w in zip(r, widths)), r[-1]]).rstrip())


def _row(sweep_dir: Path, p: Problem, outcome: str | None = None) -> list[str]:
    where = str(p.path.relative_to(sweep_dir)) if p.path.is_relative_to(sweep_dir) else str(p.path)
    fix = p.fix or "none: restore it from a backup"
    return [str(p.run.path.relative_to(sweep_dir)), p.part, where, p.what,
            fix if outcome is None else f"{outcome}: {fix}"]


HEADER = ["run", "part", "where", "problem", "repair"]


def verify(sweep_dir: Path, repair: bool, deep: bool) -> int:
    runs = SweepDir(sweep_dir).runs_and_branches()
    problems = {run: check_run(run, deep, temps=True) for run in runs}
    rows = []
    if repair:
        with contextlib.ExitStack() as locks:
            for run in runs:  # all of them before changing anything
                locks.enter_context(_run_locked(run))
            for run, found in problems.items():
                rows += [_row(sweep_dir, p, outcome) for p, outcome in repair_run(run, found)]
    else:
        rows = [_row(sweep_dir, p) for found in problems.values() for p in found]
    if rows:
        print_table(rows, HEADER)
    for run in runs:
        for r, chunks in to_regenerate(run).items():
            print(f"{run.path.relative_to(sweep_dir)}: round {r}: {len(chunks)} chunk(s) without a marker "
                  f"(the next launch generates them again): {chunks}")
    left = sum(len(check_run(run, deep=False, temps=True)) for run in runs) if repair else len(rows)
    what = "deep" if deep else "quick"
    if left:
        print(f"{sweep_dir}: {left} problem(s) {'left after repair' if repair else 'found'} ({what} check of "
              f"{len(runs)} runs)" + ("" if repair else f"; repair with: python -m dp_hpc.verify {sweep_dir} --repair"),
              file=sys.stderr)
        return 1
    print(f"{sweep_dir}: " + (f"{len(rows)} problem(s) repaired; relaunch to continue" if rows
                              else f"no problems ({what} check of {len(runs)} runs)"))
    return 0


class Busy(Exception):
    pass


def _run_locked(run: RunDir):
    """The run's training lock, held while repairing: no job trains on what is being changed."""
    lock = try_lock(run.lock)
    if lock is None:
        raise Busy(f"a job holds {run.lock}: it is training or evaluating the run; wait for it or stop it "
                   f"(python -m dp_hpc.cancel)")
    return lock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", help="the sweep folder, <out>/<sweep name>")
    p.add_argument("--repair", action="store_true", help="repair what can be (see the module docstring)")
    p.add_argument("--quick", action="store_true",
                   help="only the cheap checks the launcher runs (files exist, JSON parses): no decoding, no loading")
    args = p.parse_args(argv)
    d = Path(args.sweep_dir)
    sd = SweepDir(d)
    if not d.is_dir() or not sd.sweep_file.exists():
        print(f"error: {d} is not a sweep folder (no {sd.sweep_file.name})", file=sys.stderr)
        return 2
    lock = try_lock(sd.lock) if args.repair else None
    if args.repair and lock is None:
        print(f"error: a launcher is driving {d}; stop it first (python -m dp_hpc.cancel {d})", file=sys.stderr)
        return 2
    try:
        return verify(d, args.repair, deep=not args.quick)
    except Busy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    sys.exit(run_main(main))
