"""Launch (or resume) a sweep: expand the grid into runs, train the shared generator, and drive
one coordinator per run until every run is done.

    python -m dp_hpc.launch --sweep sweeps/digits.yaml [--out runs] [--executor local|debug|slurm|auto]
                            [--set key=value ...] [--dry-run] [--foreground] [--print-config]
    python -m dp_hpc.launch --list-keys

With `--executor slurm` the launcher checks the request against the cluster, then submits the
coordinator itself as a small CPU job and returns (`--foreground`: drive the sweep from this
process instead). Rerunning the same command continues where it stopped: all state is in
`<out>/<sweep>/`. This module only parses, checks, prepares and hands over: the sweep loop is
dp_hpc.coordinate.sweep, the plan that `--dry-run` prints dp_hpc.dry_run. Every launch past the
checks (not `--dry-run`) appends what it runs to `<sweep>/manifest.json` (dp_hpc.manifest);
`python -m dp_hpc.cancel <sweep dir>` stops it and the sweep's jobs (dp_hpc.cancel).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml
from submitit.helpers import Checkpointable

from dp_hpc.config import (PlannedRun, RunConfig, SweepConfig, dump_run_config, flatten, from_dict, load_sweep,
                           to_dict)
from dp_hpc.coordinate.runners import make_runner, resolve_kind, runner_class
from dp_hpc.coordinate.runners.base import Runner
from dp_hpc.coordinate.sweep import acquire_sweep_lock, active_coordinator, coordinator_record, run_sweep
from dp_hpc.data.eval_data import check_data_inputs
from dp_hpc.dry_run import print_plan, print_slurm_plan
from dp_hpc.errors import ConfigError, UsageError
from dp_hpc.generate.cache import validate_generator_inputs
from dp_hpc.io import atomic_write_text
from dp_hpc.jobs import requeue_if_asked
from dp_hpc.layout import SweepDir
from dp_hpc.manifest import record_launch

log = logging.getLogger("dp_hpc.launch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", help="sweep YAML file (name, base, grid, executor); required except with --list-keys")
    p.add_argument("--out", default="runs", help="output root; the sweep lives in OUT/<sweep name>/ (default: runs)")
    p.add_argument("--executor", choices=["local", "debug", "slurm", "auto"], default=None,
                   help="where jobs run (default: the sweep's executor.kind, else local); "
                        "auto: slurm if sbatch is on PATH, else local")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base run-config key (e.g. train.total_steps=500) or executor.KEY; repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their planned rounds (on SLURM: "
                   "the sbatch options of every job and a GPU-hour estimate); write nothing")
    p.add_argument("--foreground", action="store_true",
                   help="slurm: drive the sweep from this process instead of a coordinator job")
    p.add_argument("--print-config", action="store_true",
                   help="print every run's resolved config (as written to its config.yaml); write nothing")
    p.add_argument("--list-keys", action="store_true",
                   help="print every key a sweep file can set, with its type, default and help; no --sweep needed")
    args = p.parse_args(argv)
    if args.sweep is None and not args.list_keys:
        p.error("the following arguments are required: --sweep")
    return args


# ----------------------------------------------------------------------------- checks (read only)


def check_existing_runs(runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Refuse to mix configs in one run folder (reads only)."""
    for r in runs:
        existing = SweepDir(sweep_dir).run(r.name).config
        if existing.exists():
            changed = config_changes(existing, r.config)
            if changed:
                raise UsageError(f"{existing} was written with other values of {', '.join(changed)}; use another "
                                 f"--out or sweep name (or delete that run folder) to change a run's settings")


def config_changes(path: Path, cfg: RunConfig) -> list[str]:
    """Keys whose values differ between a run's config.yaml and `cfg`. Keys added to the code
    since the file was written take their defaults, so an upgrade alone changes nothing."""
    try:
        old = to_dict(from_dict(RunConfig, yaml.safe_load(path.read_text())))
    except (ConfigError, yaml.YAMLError, TypeError) as e:
        return [f"(unreadable: {e})"]
    a, b = flatten(old), flatten(to_dict(cfg))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_run_inputs(runs: list[PlannedRun]) -> None:
    """What the runs need from outside their config -- a Stable Diffusion folder, packed evaluation
    files, a class list -- checked before anything is written or submitted."""
    seen = set()
    for r in runs:
        key = (repr(r.config.data), repr(r.config.generator))
        if key in seen:
            continue
        seen.add(key)
        try:
            check_data_inputs(r.config.data)
            validate_generator_inputs(r.config)
        except ConfigError as e:
            raise ConfigError(f"run {r.name}: {e.key}", e.message) from None
        except ValueError as e:  # a data file the class list or resolution does not match
            raise UsageError(f"run {r.name}: {e}") from None


# ----------------------------------------------------------------------------- set-up and hand-over


def prepare_dirs(sweep: SweepConfig, runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Write the sweep's and each run's resolved config (before any work)."""
    sd = SweepDir(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"name": sweep.name, "base": to_dict(sweep.base), "grid": sweep.grid,
                           "executor": to_dict(sweep.executor), "slurm": to_dict(sweep.slurm)}, sort_keys=False)
    if not sd.sweep_file.exists() or sd.sweep_file.read_text() != text:
        atomic_write_text(sd.sweep_file, text)  # a grown grid adds runs to the same sweep
    for r in runs:
        run = sd.run(r.name)
        if not run.config.exists():
            atomic_write_text(run.config, dump_run_config(r.config))
        run.logs.mkdir(exist_ok=True)


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


def dry_run(sweep: SweepConfig, runs: list[PlannedRun], out: Path, kind: str, foreground: bool) -> int:
    """Print the plan, then run every check a launch runs (existing run folders, model and data
    files, the cluster's `sbatch --test-only`): exit 2 with the problems where the launch would stop,
    0 where it would go ahead. Writes nothing, submits nothing."""
    try:
        print_plan(sweep, runs, out)
        if runner_class(kind).uses_sbatch:
            print_slurm_plan(sweep, runs)
        sys.stdout.flush()
    except BrokenPipeError:  # `--dry-run | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    problems = []
    for check in (lambda: check_existing_runs(runs, out / sweep.name), lambda: check_run_inputs(runs),
                  lambda: make_runner(kind, sweep, foreground)):
        try:
            check()
        except (ConfigError, UsageError) as e:
            problems.append(f"error: {e}")
    if problems:
        print("\n".join(problems) + "\nthe launch would stop here (exit 2); the plan above is what it would run",
              file=sys.stderr)
        return 2
    return 0


def _print_quietly(text: str) -> int:
    """Print; a reader that closed the pipe (`| head`) has all it wanted: exit 0, no traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None, retry_failed: bool = True) -> int:
    """Exit status: 0 done (or the coordinator job submitted), 1 some runs failed, 2 bad input or
    another launcher, 3 the generator failed, 143 stopped by SIGTERM/SIGUSR2 (rerun to continue),
    130 Ctrl-C. `retry_failed=False`: a requeued coordinator job leaves failed runs failed."""
    args = parse_args(argv)
    if args.list_keys:
        from dp_hpc.config_keys import format_keys, sweep_keys

        return _print_quietly(format_keys(sweep_keys()))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("submitit").setLevel(logging.WARNING)
    try:
        sweep, runs = load_sweep(args.sweep, args.overrides)
        kind = resolve_kind(args.executor or sweep.executor.kind)
        out = Path(args.out)
        if args.print_config:
            return _print_quietly("".join(f"# run {r.name} -> {out / sweep.name / r.name}/config.yaml\n"
                                          f"{dump_run_config(r.config)}\n" for r in runs))
        if args.dry_run:
            return dry_run(sweep, runs, out, kind, args.foreground)
        sweep_dir = out / sweep.name
        check_existing_runs(runs, sweep_dir)
        check_run_inputs(runs)
        runner = make_runner(kind, sweep, args.foreground)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    submit_job = runner.detached and not args.foreground
    if submit_job and (active := active_coordinator(runner, sweep_dir)):
        print(f"sweep {sweep.name!r}: its coordinator is already SLURM job {active[0]} ({active[1]}); "
              f"watch it with: python -m dp_hpc.status {sweep_dir}")
        return 0
    lock = acquire_sweep_lock(sweep_dir)  # held until this process exits
    if lock is None:
        print(f"error: another launcher is driving {sweep_dir}; wait for it or stop it first", file=sys.stderr)
        return 2
    prepare_dirs(sweep, runs, sweep_dir)
    record_launch(sweep_dir, sys.argv if argv is None else [sys.executable, "-m", "dp_hpc.launch", *argv])
    if submit_job:
        submit_coordinator(runner, sweep, sweep_dir, args)
        return 0
    return run_sweep(sweep, runs, sweep_dir, runner, retry_failed)


if __name__ == "__main__":
    sys.exit(main())
