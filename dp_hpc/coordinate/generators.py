"""The sweep's generator stage: each distinct generator (data + generator config, see
`dp_hpc.generate.cache.generator_key`) is made once per sweep by a job of its own, before any run starts,
at most `max_parallel` at once; a finished one is found in `generators/<key>/` and reused.

A relaunch re-attaches to a generator job that a killed launcher had started (its job.json,
record-then-submit: dp_hpc.coordinate.records).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from dp_hpc import jobs
from dp_hpc.config import PlannedRun, RunConfig, to_dict
from dp_hpc.coordinate.records import JobFile
from dp_hpc.coordinate.runners.base import RUNNING, SUCCEEDED, Runner
from dp_hpc.generate.cache import generator_key
from dp_hpc.io import atomic_write_text, read_json
from dp_hpc.layout import GeneratorDir, SweepDir
from dp_hpc.progress import LINE_EVERY_S, Every, duration_text, progress_line
from dp_hpc.signals import sleep_unless, stopping

log = logging.getLogger("dp_hpc.launch")  # the launcher's lines, under its name


class GeneratorFailed(RuntimeError):
    pass


def generator_dir_for(sweep_dir: Path, cfg: RunConfig) -> Path:
    return SweepDir(sweep_dir).generator(generator_key(cfg)).path


def ensure_generators(runs: list[PlannedRun], sweep_dir: Path, runner: Runner, max_parallel: int, poll_s: float,
                      flag) -> None:
    """Train each distinct generator once per sweep (a job each, at most `max_parallel` at once),
    or find it cached; re-attach to a generator job that a killed launcher had started."""
    todo: list[Path] = []
    for r in runs:
        gdir = generator_dir_for(sweep_dir, r.config).resolve()
        g = GeneratorDir(gdir)
        if g.marker.exists() or gdir in todo:
            continue
        if not g.config.exists():
            atomic_write_text(g.config, yaml.safe_dump(
                {"data": to_dict(r.config.data), "generator": to_dict(r.config.generator),
                 "sampler": to_dict(r.config.sampler)}, sort_keys=False))
        todo.append(gdir)
    files = {g: JobFile(GeneratorDir(g).job, GeneratorDir(g).logs) for g in todo}
    running: dict[Path, tuple[str, float]] = {}
    records = {g: files[g].read(runner) for g in todo}
    runner.poll([j["job_id"] for j in records.values() if j])
    for gdir in todo:
        job = records[gdir]
        if job and runner.status(GeneratorDir(gdir).logs, job["job_id"], job["submitted"]).state == RUNNING:
            log.info("re-attaching to the generator job %s in %s", job["job_id"], gdir)
            running[gdir] = (job["job_id"], job["submitted"])
    waiting = [g for g in todo if g not in running]
    t0 = time.time()
    show_progress = Every(LINE_EVERY_S)
    while (running or waiting) and not stopping(flag):
        # a generator job takes one GPU slot, where the local executor has them
        while waiting and len(running) < max_parallel and (not runner.policy.gpu_slots or runner.free_gpu_slots()):
            gdir = waiting.pop(0)
            log.info("training the generator in %s", gdir)
            rec = files[gdir].submit(runner, "generator", jobs.train_generator,
                                     (str(gdir), runner.policy.threads_for("generator")), kind="generator")
            running[gdir] = (rec["job_id"], rec["submitted"])
        runner.poll([jid for jid, _ in running.values()])
        for gdir, (jid, submitted) in list(running.items()):
            st = runner.status(GeneratorDir(gdir).logs, jid, submitted)
            if st.state == RUNNING:
                continue
            if st.state != SUCCEEDED or not GeneratorDir(gdir).marker.exists():
                raise GeneratorFailed(f"generator training failed ({st.state}; log: {st.log_path})\n{st.error or ''}")
            log.info("generator ready: %s (%.0fs)", gdir, time.time() - t0)
            del running[gdir]
        if running and show_progress():
            for gdir, (_, submitted) in running.items():
                log_generator_progress(gdir, time.time() - submitted)
        if running or waiting:
            sleep_unless(flag, poll_s)


def log_generator_progress(gdir: Path, since_submitted_s: float) -> None:
    """One line from a training generator's progress.json (digits_unet), or how long its job has
    been starting (loading its data and libraries; other backends write no progress)."""
    p = read_json(GeneratorDir(gdir).progress)
    if p:
        line = progress_line(f"generator {gdir.name}", p["step"], p["total"], p["seconds"], p["start_step"], p["loss"])
        log.info("%s", line + (f"; now: {p['stage']}" if p.get("stage") else ""))
    else:
        log.info("generator %s: job starting or preparing (%s since submission)", gdir.name,
                 duration_text(since_submitted_s))
