"""Launch (or resume) a sweep: expand the grid into runs, train the shared generator, and drive
one coordinator per run until every run is done.

    python -m dp_hpc.launch --sweep sweeps/digits.yaml [--out runs] [--executor local|debug|slurm|auto]
                            [--set key=value ...] [--dry-run] [--foreground] [--update-code] [--print-config]
    python -m dp_hpc.launch --list-keys

With `--executor slurm` the launcher checks the request against the cluster, then submits the
coordinator itself as a small CPU job and returns (`--foreground`: drive the sweep from this
process instead). Rerunning the same command continues where it stopped: all state is in
`<out>/<sweep>/`. SLURM jobs run from a copy of the package made at the first launch
(`<sweep>/code/`, dp_hpc.code_snapshot; `--update-code` makes a new one). This module only
parses, checks, prepares and hands over: the sweep loop is dp_hpc.coordinate.sweep, the plan
that `--dry-run` prints dp_hpc.dry_run. Every launch past the checks (not `--dry-run`) appends
what it runs to `<sweep>/manifest.json` (dp_hpc.manifest);
`python -m dp_hpc.cancel <sweep dir>` stops it and the sweep's jobs (dp_hpc.cancel).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml
from submitit.helpers import Checkpointable

from dp_hpc import code_snapshot
from dp_hpc.config import PlannedRun, SweepConfig, dump_run_config, load_sweep, to_dict
from dp_hpc.config.keys import format_keys, sweep_keys
from dp_hpc.coordinate.runners import resolve_kind
from dp_hpc.coordinate.runners.base import QueryError, Runner
from dp_hpc.coordinate.sweep import acquire_sweep_lock, active_coordinator, coordinator_record, run_sweep
from dp_hpc.dry_run import dry_run, print_quietly
from dp_hpc.errors import ConfigError, UsageError, run_main
from dp_hpc.io import as_disk_full, atomic_write_text, is_disk_full
from dp_hpc.jobs import requeue_if_asked
from dp_hpc.layout import SweepDir
from dp_hpc.manifest import record_launch
from dp_hpc.preflight import preflight, report_problems

log = logging.getLogger("dp_hpc.launch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", help="sweep YAML file (name, base, grid, executor, slurm, tracking); required "
                                   "except with --list-keys")
    p.add_argument("--out", default="runs", help="output root; the sweep lives in OUT/<sweep name>/ (default: runs)")
    p.add_argument("--executor", choices=["local", "debug", "slurm", "auto"], default=None,
                   help="where jobs run (default: the sweep's executor.kind, else local); "
                        "auto: slurm if sbatch is on PATH, else local")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base run-config key (e.g. train.total_steps=500), or executor.KEY, slurm.KEY, "
                        "tracking.KEY; repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their planned rounds (on SLURM: "
                   "the sbatch options of every job and a GPU-hour estimate); write nothing")
    p.add_argument("--foreground", action="store_true",
                   help="slurm: drive the sweep from this process instead of a coordinator job")
    p.add_argument("--update-code", action="store_true",
                   help="slurm: copy this checkout's dp_hpc to a new code snapshot; jobs submitted from now on run it "
                        "(default: keep the sweep's recorded snapshot)")
    p.add_argument("--print-config", action="store_true",
                   help="print every run's resolved config (as written to its config.yaml); write nothing")
    p.add_argument("--list-keys", action="store_true",
                   help="print every key a sweep file can set, with its type, default and help; no --sweep needed")
    args = p.parse_args(argv)
    if args.sweep is None and not args.list_keys:
        p.error("the following arguments are required: --sweep")
    return args


# ----------------------------------------------------------------------------- set-up and hand-over


def prepare_dirs(sweep: SweepConfig, runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Write the sweep's and each run's resolved config (before any work)."""
    sd = SweepDir(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"name": sweep.name, "base": to_dict(sweep.base), "grid": sweep.grid,
                           "executor": to_dict(sweep.executor), "slurm": to_dict(sweep.slurm),
                           "tracking": to_dict(sweep.tracking)}, sort_keys=False)
    if not sd.sweep_file.exists() or sd.sweep_file.read_text() != text:
        atomic_write_text(sd.sweep_file, text)  # a grown grid adds runs to the same sweep
    for r in runs:
        run = sd.run(r.name)
        if not run.config.exists():
            atomic_write_text(run.config, dump_run_config(r.config))
        run.logs.mkdir(exist_ok=True)


def use_code_snapshot(runner: Runner, sweep_dir: Path, update: bool) -> dict | None:
    """SLURM: point the runner's jobs at the sweep's code snapshot, reused or made (one line says
    which, and whether the checkout differs); what the manifest records (None: local jobs run from
    the checkout). The coordinator job calls it too: it reads the snapshot its launch recorded."""
    if not runner.runs_from_snapshot:
        return None
    snapshot = code_snapshot.choose(sweep_dir, update=update)
    print(snapshot.summary(), flush=True)
    runner.env.update(snapshot.job_env())
    return snapshot.manifest_entry(sweep_dir)


def submit_coordinator(runner: Runner, sweep: SweepConfig, sweep_dir: Path, args: argparse.Namespace) -> str:
    """Submit the coordinator job and record its id in <sweep>/coordinator.json."""
    argv = ["--sweep", str(Path(args.sweep).resolve()), "--out", str(Path(args.out).resolve()), "--executor", "slurm"]
    for o in args.overrides:
        argv += ["--set", o]
    rec = coordinator_record(sweep_dir).submit(runner, "coordinator", CoordinatorJob(), (argv,), kind="coordinator")
    jid = rec["job_id"]
    print(f"sweep {sweep.name!r}: submitted its coordinator as SLURM job {jid} (log: "
          f"{runner.status(SweepDir(sweep_dir).logs, jid).log_path}); it survives logging out.\n"
          f"Watch it with: python -m dp_hpc.status {sweep_dir}", flush=True)
    return jid


class CoordinatorJob(Checkpointable):
    """The sweep's coordinator as a SLURM job: the launcher in the foreground. On preemption or
    time limit submitit requeues it; state.json and the recorded job ids let the new one
    re-attach to every job in flight."""

    def __call__(self, argv: list[str]) -> int:
        requeued = os.environ.get("SLURM_RESTART_COUNT", "0") != "0"
        code = main([*argv, "--foreground"], retry_failed=not requeued)  # only a user's launch retries
        if code == 143:  # stopped between polls by USR2 (requeue) or SIGTERM
            requeue_if_asked()
        if code not in (0, 1):  # 1: some runs failed, reported in their state.json
            raise RuntimeError(f"the coordinator exited with code {code} (see this log)")
        return code


def main(argv: list[str] | None = None, retry_failed: bool = True) -> int:
    """Exit status: 0 done (or the coordinator job submitted), 1 some runs failed, 2 bad input or
    another launcher, 3 the generator failed, 4 a write of this process found the disk full (free
    space, rerun to continue), 5 SLURM's queue did not answer whether the sweep's coordinator job
    runs (nothing submitted; rerun), 143 stopped by SIGTERM/SIGUSR2 (rerun to continue), 130 Ctrl-C.
    `retry_failed=False`: a requeued coordinator job leaves failed runs failed."""
    args = parse_args(argv)
    if args.list_keys:
        return print_quietly(format_keys(sweep_keys()))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("submitit").setLevel(logging.WARNING)
    logging.getLogger("torch").setLevel(logging.WARNING)  # e.g. FakeTensor cache stats at exit after a Ctrl-C
    try:
        sweep, runs = load_sweep(args.sweep, args.overrides)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = resolve_kind(args.executor or sweep.executor.kind)
    out = Path(args.out)
    if args.print_config:
        return print_quietly("".join(f"# run {r.name} -> {out / sweep.name / r.name}/config.yaml\n"
                                      f"{dump_run_config(r.config)}\n" for r in runs))
    checked = preflight(sweep, runs, out, kind, foreground=args.foreground, update_code=args.update_code)
    if args.dry_run:
        return dry_run(sweep, runs, out, kind, checked.problems)
    if checked.problems:
        return report_problems(checked.problems)
    runner, sweep_dir = checked.runner, out / sweep.name
    submit_job = runner.detached and not args.foreground
    try:
        active = active_coordinator(runner, sweep_dir) if submit_job else None
    except (QueryError, subprocess.SubprocessError) as e:  # not knowing is not "ended": no second coordinator
        print(f"error: could not ask SLURM whether the sweep's coordinator job still runs ({e}); "
              f"nothing submitted: rerun the same command when squeue answers", file=sys.stderr)
        return 5
    if active:
        if args.update_code:
            print(f"error: {code_snapshot.busy_coordinator_message(*active)}", file=sys.stderr)
            return 2
        print(f"sweep {sweep.name!r}: its coordinator is already SLURM job {active[0]} ({active[1]}); "
              f"watch it with: python -m dp_hpc.status {sweep_dir}")
        return 0
    try:
        lock = acquire_sweep_lock(sweep_dir)  # held until this process exits
        if lock is None:
            print(f"error: another launcher is driving {sweep_dir}; wait for it or stop it first", file=sys.stderr)
            return 2
        prepare_dirs(sweep, runs, sweep_dir)
        record_launch(sweep_dir, sys.argv if argv is None else [sys.executable, "-m", "dp_hpc.launch", *argv],
                      code_snapshot=use_code_snapshot(runner, sweep_dir, args.update_code))
        if submit_job:
            submit_coordinator(runner, sweep, sweep_dir, args)
            return 0
        return run_sweep(sweep, runs, sweep_dir, runner, retry_failed)
    except OSError as e:  # a write of this process refused for lack of room: like a crash at that line,
        if not is_disk_full(e):  # which a relaunch continues from; jobs already started run on
            raise
        print(f"error: {as_disk_full(e, sweep_dir)}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(run_main(main, "interrupted (Ctrl-C); rerun the same command to continue"))
