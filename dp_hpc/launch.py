"""Launch (or resume) a sweep: expand the grid into runs, train the shared generator, and drive
one coordinator per run until every run is done.

    python -m dp_hpc.launch --sweep sweeps/digits.yaml [--out runs] [--executor local|debug|slurm|auto]
                            [--set key=value ...] [--dry-run] [--foreground]

With `--executor slurm` the launcher checks the request against the cluster, then submits the
coordinator itself as a small CPU job and returns (`--foreground`: drive the sweep from this
process instead). Rerunning the same command continues where it stopped: all state is in
`<out>/<sweep>/`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from submitit.helpers import Checkpointable

from dp_hpc.config import (
    PlannedRun,
    RunConfig,
    SweepConfig,
    dump_run_config,
    flatten,
    from_dict,
    generator_key,
    load_sweep,
    to_dict,
)
from dp_hpc.errors import ConfigError, UsageError
from dp_hpc.generate.config import MARKER as GENERATOR_MARKER
from dp_hpc.jobs import requeue_if_asked

log = logging.getLogger("dp_hpc.launch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dp_hpc.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", required=True, help="sweep YAML file (name, base, grid, executor)")
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
    return p.parse_args(argv)


def resolve_executor(requested: str) -> str:
    if requested == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return requested


# ----------------------------------------------------------------------------- planning output


def describe_rounds(cfg: RunConfig) -> str:
    m = cfg.method
    sizes = m.round_sizes()
    if m.name == "static":
        return f"1 round: {sizes[0]:,} plain"
    later = sizes[1:]
    kind = "guided" if m.name == "dp" else f"kept of {m.prune_factor}x plain"
    text = f"{sizes[0]:,} plain"
    if later:
        text += f" + up to {len(later)} x {later[0]:,} {kind} (at plateaus)"
    if m.branch_at:
        text += f"; branch-outs after rounds {', '.join(map(str, m.branch_at))}"
    return text


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:,.1f} TB"


def print_plan(sweep: SweepConfig, runs: list[PlannedRun], out: Path) -> None:
    from dp_hpc.data.spec import dataset_spec
    from dp_hpc.pool import estimated_bytes_per_image

    print(f"sweep {sweep.name!r}: {len(runs)} runs -> {out / sweep.name}/")
    w = max(len(r.name) for r in runs)
    print(f"  {'run':<{w}}  {'method':<6}  {'budget':>10}  {'max gen.':>10}  {'pool':>8}  {'steps':>7}  planned rounds")
    total = 0.0
    for r in runs:
        c = r.config
        sizes = c.method.round_sizes()
        gen = sum(c.method.generated(i, k) for i, k in enumerate(sizes))
        pool = gen * estimated_bytes_per_image(dataset_spec(c.data).image_shape)
        total += pool
        print(f"  {r.name:<{w}}  {c.method.name:<6}  {c.method.budget:>10,}  {gen:>10,}  {_size(pool):>8}  "
              f"{c.train.total_steps:>7,}  {describe_rounds(c)}")
    print(f"  pool storage, all runs: up to {_size(total)} (pool = every generated sample, prune candidates included)")


def print_slurm_plan(sweep: SweepConfig, runs: list[PlannedRun]) -> None:
    """sbatch options of every kind of job, and per run its arrays and a GPU-hour estimate."""
    import math

    from dp_hpc.coordinate.slurm import sbatch_flags

    sc, tp = sweep.slurm, sweep.slurm.throughput
    tr = sc.training
    print("SLURM jobs (sbatch options):")
    print(f"  coordinator (1 per sweep): sbatch {' '.join(sbatch_flags(sc.coordinator, sc.signal_delay_s))}")
    print(f"  generation round (array) : sbatch {' '.join(sbatch_flags(sc.generation, sc.signal_delay_s))} "
          f"--array=0-<tasks-1>%{sc.generation.array_parallelism}")
    print(f"  generator prep, eval     : sbatch {' '.join(sbatch_flags(sc.generation, sc.signal_delay_s))}")
    print(f"  training                 : sbatch {' '.join(sbatch_flags(tr, sc.signal_delay_s))}  "
          f"-> torchrun {tr.nodes} node(s) x {tr.procs} process(es)")
    gpus = tr.nodes * tr.gpus_per_node
    print(f"GPU-hours (assumed: {tp.plain_images_per_gpu_s:g} plain images/s per GPU, guided x{tp.guided_cost:g}, "
          f"training {tp.train_images_per_gpu_s:g} images/s per GPU; dp rounds happen at plateaus, so 'up to'):")
    for r in runs:
        m, shard = r.config.method, r.config.pool.shard_size
        parts, total = [], 0.0
        for i, kept in enumerate(m.round_sizes()):
            n = m.generated(i, kept)
            kind = m.round_kind(i)
            h = n / tp.plain_images_per_gpu_s * (tp.guided_cost if kind == "guided" else 1.0) / 3600
            total += h
            parts.append((kind, n, math.ceil(n / shard), h))
        train_h = r.config.train.total_steps * r.config.train.batch_size / tp.train_images_per_gpu_s / 3600
        total += train_h
        first, rest = parts[0], parts[1:]
        text = f"round 0: {first[1]:,} {first[0]} in {first[2]} tasks ~{first[3]:,.1f} GPU-h"
        if rest:
            which = "round 1" if len(rest) == 1 else f"rounds 1-{len(rest)}"
            text += f"; {which}: {rest[0][1]:,} {rest[0][0]} in {rest[0][2]} tasks ~{rest[0][3]:,.1f} GPU-h each"
        wall = f" ({train_h / gpus:,.1f} h on {gpus} GPUs)" if gpus else ""
        print(f"  {r.name}: {text}; training {r.config.train.total_steps:,} steps x {r.config.train.batch_size} "
              f"~{train_h:,.1f} GPU-h{wall}; total {'up to ' if rest else ''}{total:,.1f} GPU-h")


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


def check_run_inputs(runs: list[PlannedRun]) -> None:
    """What the runs need from outside their config -- a Stable Diffusion folder, packed evaluation
    files, a class list -- checked before anything is written or submitted."""
    from dp_hpc.data.eval_data import check_data_inputs
    from dp_hpc.generate.cache import validate_generator_inputs

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


def prepare_dirs(sweep: SweepConfig, runs: list[PlannedRun], sweep_dir: Path) -> None:
    """Write the sweep's and each run's resolved config (before any work)."""
    from dp_hpc.io import atomic_write_text

    sweep_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"name": sweep.name, "base": to_dict(sweep.base), "grid": sweep.grid,
                           "executor": to_dict(sweep.executor), "slurm": to_dict(sweep.slurm)}, sort_keys=False)
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


def read_job_record(runner, path: Path, logs: Path) -> dict | None:
    """A single job recorded in `path` ({job_id, name, submitted}). A record without an id is a
    submission that died before writing it: adopt the job by its name, or forget the record."""
    from dp_hpc.io import atomic_write_json, read_json

    rec = read_json(path)
    if rec is None or rec.get("job_id") is not None:
        return rec
    ids = runner.find_submitted(logs, rec["name"])
    if not ids:
        path.unlink(missing_ok=True)
        return None
    rec["job_id"] = ids[0]
    atomic_write_json(path, rec)
    return rec


def submit_recorded(runner, path: Path, logs: Path, name: str, fn, args: tuple, kind: str) -> dict:
    """Submit one job, writing the intent to `path` first and the job id after (see read_job_record)."""
    import uuid

    from dp_hpc.io import atomic_write_json

    if runner.kind == "slurm":
        name = f"{name}-{uuid.uuid4().hex[:8]}"
    rec = {"job_id": None, "name": name, "submitted": time.time()}
    atomic_write_json(path, rec)
    rec["job_id"] = runner.submit(logs, name, fn, [args], kind=kind)[0]
    atomic_write_json(path, rec)
    return rec


def ensure_generators(runs: list[PlannedRun], sweep_dir: Path, runner, max_parallel: int, poll_s: float,
                      flag) -> None:
    """Train each distinct generator once per sweep (a job each, at most `max_parallel` at once),
    or find it cached; re-attach to a generator job that a killed launcher had started."""
    from dp_hpc import jobs
    from dp_hpc.coordinate.executor import RUNNING, SUCCEEDED
    from dp_hpc.io import atomic_write_text

    todo: list[Path] = []
    for r in runs:
        gdir = generator_dir_for(sweep_dir, r.config).resolve()
        if (gdir / GENERATOR_MARKER).exists() or gdir in todo:
            continue
        if not (gdir / "config.yaml").exists():
            atomic_write_text(gdir / "config.yaml", yaml.safe_dump(
                {"data": to_dict(r.config.data), "generator": to_dict(r.config.generator),
                 "sampler": to_dict(r.config.sampler)}, sort_keys=False))
        todo.append(gdir)
    running: dict[Path, tuple[str, float]] = {}
    records = {g: read_job_record(runner, g / "job.json", g / "logs") for g in todo}
    runner.poll([j["job_id"] for j in records.values() if j])
    for gdir in todo:
        job = records[gdir]
        if job and runner.status(gdir / "logs", job["job_id"], job["submitted"]).state == RUNNING:
            log.info("re-attaching to the generator job %s in %s", job["job_id"], gdir)
            running[gdir] = (job["job_id"], job["submitted"])
    waiting = [g for g in todo if g not in running]
    t0 = time.time()
    while (running or waiting) and not stopping(flag):
        while waiting and len(running) < max_parallel:
            gdir = waiting.pop(0)
            log.info("training the generator in %s", gdir)
            rec = submit_recorded(runner, gdir / "job.json", gdir / "logs", "generator", jobs.train_generator,
                                  (str(gdir), runner.threads_for("generator")), kind="generator")
            running[gdir] = (rec["job_id"], rec["submitted"])
        runner.poll([jid for jid, _ in running.values()])
        for gdir, (jid, submitted) in list(running.items()):
            st = runner.status(gdir / "logs", jid, submitted)
            if st.state == RUNNING:
                continue
            if st.state != SUCCEEDED or not (gdir / GENERATOR_MARKER).exists():
                raise GeneratorFailed(f"generator training failed ({st.state}; log: {st.log_path})\n{st.error or ''}")
            log.info("generator ready: %s (%.0fs)", gdir, time.time() - t0)
            del running[gdir]
        if running or waiting:
            sleep_unless(flag, poll_s)


# ----------------------------------------------------------------------------- the sweep loop

LOCK = "launch.lock"


def acquire_sweep_lock(sweep_dir: Path):
    """One launcher per sweep: two would submit every job twice. Returns the open lock file
    (hold it; the lock dies with the process, so a relaunch after a crash is never blocked) or
    None if another launcher holds it. Taking it writes nothing."""
    from dp_hpc.io import try_lock

    sweep_dir.mkdir(parents=True, exist_ok=True)
    return try_lock(sweep_dir / LOCK)


def step_sweep(coordinators, runner, max_jobs: int) -> None:
    """One poll: the states of all the sweep's jobs in one query, then every run takes its next steps."""
    from dp_hpc.coordinate.coordinator import Slots

    runner.poll([i for c in coordinators for i in c.running_job_ids()])
    slots = Slots(free=max(0, max_jobs - sum(c.running_jobs() for c in coordinators)))
    for c in coordinators:
        c.advance(slots)


def stopping(flag) -> bool:
    """A stop signal reached the launcher: through its own flag, or through the flag of a job that
    the debug executor runs in this process (which holds the handlers meanwhile)."""
    from dp_hpc.signals import RECEIVED

    return flag.set or bool(RECEIVED)


def sleep_unless(flag, seconds: float) -> None:
    """Sleep, but wake within 0.2 s when a stop signal arrives."""
    end = time.time() + seconds
    while not stopping(flag) and time.time() < end:
        time.sleep(min(0.2, max(0.0, end - time.time())))


def drive(coordinators, runner, max_jobs: int, poll_s: float, flag) -> None:
    """Poll and advance until every run has ended, or a stop signal sets `flag` (checked only
    between polls, so a submission and its record are never torn apart by it)."""
    from dp_hpc.progress import SweepProgress

    progress = SweepProgress(coordinators)
    try:
        while not stopping(flag):
            step_sweep(coordinators, runner, max_jobs)
            progress.update()
            if all(c.finished for c in coordinators):
                return
            sleep_unless(flag, poll_s)
    finally:
        progress.close()


def make_runner(kind: str, sweep: SweepConfig, foreground: bool):
    """The executor's job runner; for slurm, first ask the cluster whether it would take our jobs
    (not again inside the coordinator job: a passing hiccup of sbatch must not fail a sweep)."""
    if kind == "slurm":
        from dp_hpc.coordinate.slurm import SlurmRunner

        runner = SlurmRunner(sweep.slurm, sweep_name=sweep.name)
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            runner.check(("generation", "training") + (() if foreground else ("coordinator",)))
        return runner
    from dp_hpc.coordinate.executor import JobRunner

    return JobRunner(kind, timeout_min=sweep.executor.timeout_min, threads=sweep.executor.threads_per_job)


COORDINATOR = "coordinator.json"


def active_coordinator(runner, sweep_dir: Path) -> tuple[str, str] | None:
    """(job id, SLURM state) of the sweep's coordinator job if it is queued or running."""
    from dp_hpc.coordinate.slurm import ENDED

    rec = read_job_record(runner, sweep_dir / COORDINATOR, sweep_dir / "logs")
    if not rec:
        return None
    jid = rec["job_id"]
    runner.poll([jid])
    state = runner.slurm_state(jid)
    if state is None or state in ENDED:  # accounting lags or the attempt ended: ask the queue too
        q = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True, timeout=120)
        if q.returncode == 0 and q.stdout.strip():
            return jid, q.stdout.split()[0]
        return None
    return jid, state


def submit_coordinator(runner, sweep: SweepConfig, sweep_dir: Path, args: argparse.Namespace) -> str:
    """Submit the coordinator job and record its id in <sweep>/coordinator.json."""
    argv = ["--sweep", str(Path(args.sweep).resolve()), "--out", str(Path(args.out).resolve()), "--executor", "slurm"]
    for o in args.overrides:
        argv += ["--set", o]
    rec = submit_recorded(runner, sweep_dir / COORDINATOR, sweep_dir / "logs", "coordinator", CoordinatorJob(),
                          (argv,), kind="coordinator")
    jid = rec["job_id"]
    print(f"sweep {sweep.name!r}: submitted its coordinator as SLURM job {jid} (log: "
          f"{runner.status(sweep_dir / 'logs', jid).log_path}); it survives logging out.\n"
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
    another launcher, 3 the generator failed, 143 stopped by SIGTERM/SIGUSR2 (rerun to continue),
    130 Ctrl-C. `retry_failed=False`: a requeued coordinator job leaves failed runs failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("submitit").setLevel(logging.WARNING)
    try:
        sweep, runs = load_sweep(args.sweep, args.overrides)
        kind = resolve_executor(args.executor or sweep.executor.kind)
        out = Path(args.out)
        if args.dry_run:
            print_plan(sweep, runs, out)
            if kind == "slurm":
                print_slurm_plan(sweep, runs)
            return 0
        sweep_dir = out / sweep.name
        check_existing_runs(runs, sweep_dir)
        check_run_inputs(runs)
        runner = make_runner(kind, sweep, args.foreground)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    submit_job = kind == "slurm" and not args.foreground
    if submit_job and (active := active_coordinator(runner, sweep_dir)):
        print(f"sweep {sweep.name!r}: its coordinator is already SLURM job {active[0]} ({active[1]}); "
              f"watch it with: python -m dp_hpc.status {sweep_dir}")
        return 0
    lock = acquire_sweep_lock(sweep_dir)  # held until this process exits
    if lock is None:
        print(f"error: another launcher is driving {sweep_dir}; wait for it or stop it first", file=sys.stderr)
        return 2
    prepare_dirs(sweep, runs, sweep_dir)
    if submit_job:
        submit_coordinator(runner, sweep, sweep_dir, args)
        return 0

    from dp_hpc.coordinate.coordinator import Coordinator
    from dp_hpc.status import print_table

    ex = sweep.executor
    poll_s = sweep.slurm.poll_interval_s if kind == "slurm" else ex.poll_interval_s
    max_jobs = sweep.slurm.max_queued_jobs if kind == "slurm" else ex.max_parallel_jobs
    coordinators = [Coordinator(sweep_dir / r.name, r.config, runner, generator_dir_for(sweep_dir, r.config))
                    for r in runs]
    if all(c.finished and not c.failed_runs() for c in coordinators):
        print(f"sweep {sweep.name!r}: all {len(runs)} runs are already done; nothing to do.")
        print_table(sweep_dir)
        return 0
    if retry_failed:
        for c in coordinators:
            c.retry_if_failed()
    todo = [r for r, c in zip(runs, coordinators) if not c.finished]
    print(f"sweep {sweep.name!r}: {len(todo)} of {len(runs)} runs to do, executor {kind}, "
          f"up to {max_jobs} jobs at once -> {sweep_dir}/", flush=True)
    from dp_hpc.coordinate.executor import SubmitError
    from dp_hpc.signals import PreemptFlag

    try:
        with PreemptFlag() as flag:  # SIGTERM/SIGUSR2 (a preempted coordinator job): stop between polls
            ensure_generators(todo, sweep_dir, runner, max_jobs, poll_s, flag)
            if not stopping(flag):
                drive([c for c in coordinators if not c.finished], runner, max_jobs, poll_s, flag)
    except (GeneratorFailed, SubmitError) as e:
        print(f"error: {e}\nRerunning the command retries it (training resumes from its checkpoint).", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        where = ("SLURM jobs keep running; " if kind == "slurm" else "jobs started from this terminal got the Ctrl-C "
                 "too and stop at their next safe point (a training step, a generated chunk); ")
        print(f"interrupted: {where}rerun the same command to continue.", file=sys.stderr)
        return 130
    if stopping(flag):
        print("stopped by a signal between polls; rerun the same command to continue.", file=sys.stderr)
        return 143
    print_table(sweep_dir)
    failed = [name for c in coordinators for name in c.failed_runs()]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; see state.json 'error' in each. "
              f"Rerunning the command retries them.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
