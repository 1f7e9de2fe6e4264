"""Launch (or resume) a sweep: expand the grid into runs, train the shared generator, and drive
one coordinator per run until every run is done.

    python -m dp_hpc.launch --sweep sweeps/digits.yaml [--out runs] [--executor local|debug]
                            [--set key=value ...] [--dry-run]

Rerunning the same command continues where it stopped: all state is in `<out>/<sweep>/`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from dp_hpc.config import (PlannedRun, RunConfig, SweepConfig, dump_run_config, flatten, from_dict,
                           generator_key, load_sweep, to_dict)
from dp_hpc.errors import ConfigError, UsageError

log = logging.getLogger("dp_hpc.launch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", required=True, help="sweep YAML file (name, base, grid, executor)")
    p.add_argument("--out", default="runs", help="output root; the sweep lives in OUT/<sweep name>/ (default: runs)")
    p.add_argument("--executor", choices=["local", "debug"], default=None,
                   help="where jobs run (default: the sweep's executor.kind, else local)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base run-config key (e.g. train.total_steps=500) or executor.KEY; repeatable")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their planned rounds; write nothing")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- planning output


def describe_rounds(cfg: RunConfig) -> str:
    m = cfg.method
    sizes = m.round_sizes()
    if m.name == "static":
        return f"1 round: {sizes[0]} plain"
    later = sizes[1:]
    kind = "guided" if m.name == "dp" else f"kept of {m.prune_factor}x plain"
    text = f"{sizes[0]} plain"
    if later:
        text += f" + up to {len(later)} x {later[0]} {kind} (at plateaus)"
    if m.branch_at:
        text += f"; branch-outs after rounds {', '.join(map(str, m.branch_at))}"
    return text


def print_plan(sweep: SweepConfig, runs: list[PlannedRun], out: Path) -> None:
    print(f"sweep {sweep.name!r}: {len(runs)} runs -> {out / sweep.name}/")
    w = max(len(r.name) for r in runs)
    print(f"  {'run':<{w}}  {'method':<6}  {'budget':>7}  {'max gen.':>8}  {'steps':>6}  planned rounds")
    for r in runs:
        c = r.config
        sizes = c.method.round_sizes()
        gen = sum(c.method.generated(i, k) for i, k in enumerate(sizes))
        print(f"  {r.name:<{w}}  {c.method.name:<6}  {c.method.budget:>7}  {gen:>8}  {c.train.total_steps:>6}  "
              f"{describe_rounds(c)}")


# ----------------------------------------------------------------------------- set-up


def check_existing_runs(runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Refuse to mix configs in one run folder (reads only)."""
    for r in runs:
        existing = sweep_dir / r.name / "config.yaml"
        if existing.exists():
            changed = config_changes(existing, r.config)
            if changed:
                raise UsageError(f"{existing} was written with other values of {', '.join(changed)}; use another "
                                 f"--out or sweep name (or delete that run folder) to change a run's settings")


def prepare_dirs(sweep: SweepConfig, runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Write the sweep's and each run's resolved config (before any work)."""
    from dp_hpc.io import atomic_write_text

    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"name": sweep.name, "base": to_dict(sweep.base), "grid": sweep.grid,
                           "executor": to_dict(sweep.executor)}, sort_keys=False)
    if not (sweep_dir / "sweep.yaml").exists() or (sweep_dir / "sweep.yaml").read_text() != text:
        atomic_write_text(sweep_dir / "sweep.yaml", text)  # a grown grid adds runs to the same sweep
    for r in runs:
        cfg_path = sweep_dir / r.name / "config.yaml"
        if not cfg_path.exists():
            atomic_write_text(cfg_path, dump_run_config(r.config))
        (sweep_dir / r.name / "logs").mkdir(exist_ok=True)


def config_changes(path: Path, cfg: RunConfig) -> list[str]:
    """Keys whose values differ between a run's config.yaml and `cfg`. Keys added to the code
    since the file was written take their defaults, so an upgrade alone changes nothing."""
    try:
        old = to_dict(from_dict(RunConfig, yaml.safe_load(path.read_text())))
    except (ConfigError, yaml.YAMLError, TypeError) as e:
        return [f"(unreadable: {e})"]
    a, b = flatten(old), flatten(to_dict(cfg))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def generator_dir_for(sweep_dir: Path, cfg: RunConfig) -> Path:
    return sweep_dir / "generators" / generator_key(cfg)


class GeneratorFailed(RuntimeError):
    pass


def ensure_generators(runs: list[PlannedRun], sweep_dir: Path, runner, threads: int, max_parallel: int,
                      poll_s: float) -> None:
    """Train each distinct generator once per sweep (a job each, at most `max_parallel` at once),
    or find it cached; re-attach to a generator job that a killed launcher had started."""
    from dp_hpc import jobs
    from dp_hpc.coordinate.executor import RUNNING, SUCCEEDED
    from dp_hpc.io import atomic_write_json, atomic_write_text, read_json

    todo: list[Path] = []
    for r in runs:
        gdir = generator_dir_for(sweep_dir, r.config).resolve()
        if (gdir / "generator.json").exists() or gdir in todo:
            continue
        if not (gdir / "config.yaml").exists():
            atomic_write_text(gdir / "config.yaml", yaml.safe_dump(
                {"data": to_dict(r.config.data), "generator": to_dict(r.config.generator),
                 "sampler": to_dict(r.config.sampler)}, sort_keys=False))
        todo.append(gdir)
    running: dict[Path, tuple[str, float]] = {}
    for gdir in todo:
        job = read_json(gdir / "job.json")
        if job and runner.status(gdir / "logs", job["job_id"], job["submitted"]).state == RUNNING:
            log.info("re-attaching to the generator job %s in %s", job["job_id"], gdir)
            running[gdir] = (job["job_id"], job["submitted"])
    waiting = [g for g in todo if g not in running]
    t0 = time.time()
    while running or waiting:
        while waiting and len(running) < max_parallel:
            gdir = waiting.pop(0)
            log.info("training the generator in %s", gdir)
            submitted = time.time()
            jid = runner.submit(gdir / "logs", "generator", jobs.train_generator, [(str(gdir), threads)])[0]
            atomic_write_json(gdir / "job.json", {"job_id": jid, "submitted": submitted})
            running[gdir] = (jid, submitted)
        for gdir, (jid, submitted) in list(running.items()):
            st = runner.status(gdir / "logs", jid, submitted)
            if st.state == RUNNING:
                continue
            if st.state != SUCCEEDED or not (gdir / "generator.json").exists():
                raise GeneratorFailed(f"generator training failed ({st.state}; log: {st.log_path})\n{st.error or ''}")
            log.info("generator ready: %s (%.0fs)", gdir, time.time() - t0)
            del running[gdir]
        if running or waiting:
            time.sleep(poll_s)


# ----------------------------------------------------------------------------- the sweep loop

LOCK = "launch.lock"


def acquire_sweep_lock(sweep_dir: Path):
    """One launcher per sweep: two would submit every job twice. Returns the open lock file
    (hold it; the lock dies with the process, so a relaunch after a crash is never blocked) or
    None if another launcher holds it. Taking it writes nothing."""
    from dp_hpc.io import try_lock

    sweep_dir.mkdir(parents=True, exist_ok=True)
    return try_lock(sweep_dir / LOCK)


def drive(coordinators, max_parallel: int, poll_s: float) -> None:
    from dp_hpc.coordinate.coordinator import Slots
    from dp_hpc.progress import SweepProgress

    progress = SweepProgress(coordinators)
    try:
        while True:
            running = sum(c.running_jobs() for c in coordinators)
            slots = Slots(free=max(0, max_parallel - running))
            for c in coordinators:
                c.advance(slots)
            progress.update()
            if all(c.finished for c in coordinators):
                return
            time.sleep(poll_s)
    finally:
        progress.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("submitit").setLevel(logging.WARNING)
    try:
        sweep, runs = load_sweep(args.sweep, args.overrides)
        out = Path(args.out)
        if args.dry_run:
            print_plan(sweep, runs, out)
            return 0
        sweep_dir = out / sweep.name
        check_existing_runs(runs, sweep_dir)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lock = acquire_sweep_lock(sweep_dir)  # held until this process exits
    if lock is None:
        print(f"error: another launcher is driving {sweep_dir}; wait for it or stop it first", file=sys.stderr)
        return 2
    prepare_dirs(sweep, runs, sweep_dir)

    from dp_hpc.coordinate.coordinator import Coordinator
    from dp_hpc.coordinate.executor import JobRunner
    from dp_hpc.status import print_table

    ex = sweep.executor
    kind = args.executor or ex.kind
    runner = JobRunner(kind, timeout_min=ex.timeout_min, env={"OMP_NUM_THREADS": str(ex.threads_per_job)})
    coordinators = [Coordinator(sweep_dir / r.name, r.config, runner, generator_dir_for(sweep_dir, r.config),
                                ex.threads_per_job) for r in runs]
    if all(c.finished and not c.failed_runs() for c in coordinators):
        print(f"sweep {sweep.name!r}: all {len(runs)} runs are already done; nothing to do.")
        print_table(sweep_dir)
        return 0
    for c in coordinators:
        c.retry_if_failed()
    todo = [r for r, c in zip(runs, coordinators) if not c.finished]
    print(f"sweep {sweep.name!r}: {len(todo)} of {len(runs)} runs to do, executor {kind}, "
          f"up to {ex.max_parallel_jobs} jobs at once -> {sweep_dir}/", flush=True)
    try:
        ensure_generators(todo, sweep_dir, runner, ex.threads_per_job, ex.max_parallel_jobs, ex.poll_interval_s)
        drive([c for c in coordinators if not c.finished], ex.max_parallel_jobs, ex.poll_interval_s)
    except GeneratorFailed as e:
        print(f"error: {e}\nRerunning the command retries it (training resumes from its checkpoint).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: jobs started from this terminal got the Ctrl-C too and stop at their next safe "
              "point (a training step, a generated chunk); rerun the same command to continue.", file=sys.stderr)
        return 130
    print_table(sweep_dir)
    failed = [name for c in coordinators for name in c.failed_runs()]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see state.json 'error' in each. "
              f"Rerunning the command retries them.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
