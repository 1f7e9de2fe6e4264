"""python -m dp_hpc.cancel with the local executor, with real processes: a launcher driving a sweep
and its jobs (forks of the warm parent) are stopped while a job trains, and the next launch
continues the sweep to the uninterrupted result with nothing done twice. The same on the local
SLURM cluster: tests/test_slurm.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from dp_hpc.coordinate.runners.warm import is_live_job
from dp_hpc.io import read_json, read_jsonl
from dp_hpc.train.checkpoint import latest_train_state
from e2e_helpers import HANG_S, ROOT, kill, launch_cmd, pool_digest, reuse_generators, run_launch, run_state, smoke_variant, wait_for

LONG = 1000  # training steps of the cancelled run (the smoke sweep's 240 end too soon to be caught)


def cancel(sweep_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dp_hpc.cancel", str(sweep_dir), *extra], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_a_folder_that_is_not_a_sweep_is_refused(tmp_path):
    r = cancel(tmp_path / "nosuch")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "not a sweep folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "empty").mkdir()
    assert cancel(tmp_path / "empty").returncode == 2


def test_a_process_holding_the_lock_that_is_not_a_launcher_is_not_signalled(tmp_path):
    """launcher.json names a pid; cancel signals it only if that process is `dp_hpc.launch`. A
    stranger holding the lock (a reused pid would look the same) is left alone, and said."""
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: s\n")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
                               str(sweep / "launch.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (sweep / "launcher.json").write_text(f'{{"pid": {holder.pid}, "host": "{socket.gethostname()}"}}')
        r = cancel(sweep, "--wait", "1")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"still held by pid {holder.pid}" in r.stderr, r.stderr
        assert "stopped the launcher" not in r.stdout
        assert holder.poll() is None, "a process that is not a launcher was signalled"
    finally:
        holder.kill()
        holder.wait()


def test_a_local_job_that_no_record_names_is_found_and_stopped(tmp_path):
    """A launcher killed between starting a job and recording it leaves a job that no state.json
    names: cancel finds it in /proc by its log file. It ignores SIGTERM (submitit's handler, as in a
    generator's training), so it is killed once --wait has passed."""
    from dp_hpc.coordinate.runners.local import LocalRunner

    sweep, run = tmp_path / "s", tmp_path / "s" / "r"
    (run / "logs").mkdir(parents=True)
    (sweep / "sweep.yaml").write_text("name: s\n")
    (run / "config.yaml").write_text("{}\n")
    runner = LocalRunner("local")
    (jid,) = runner.submit((run / "logs").resolve(), "r-train", time.sleep, [(120,)], kind="train")
    try:
        runner.close()  # the launcher is gone; its job is not
        assert is_live_job(jid, run / "logs")
        r = cancel(sweep, "--wait", "1")
    finally:
        if is_live_job(jid, run / "logs"):
            kill(int(jid))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"stopped r: unrecorded job {jid} (local, running)" in r.stdout, r.stdout
    assert f"killed r: unrecorded job {jid}: still running 1 s after SIGTERM" in r.stdout, r.stdout
    assert not is_live_job(jid, run / "logs")


@pytest.mark.slow
def test_an_idle_sweep_has_nothing_to_stop(smoke):
    sweep_dir, _ = smoke
    r = cancel(sweep_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to stop" in r.stdout and "stopped " not in r.stdout.replace("nothing to stop", ""), r.stdout
    assert "python -m dp_hpc.launch --sweep" in r.stdout  # how to continue: the last launch, from manifest.json


@pytest.mark.slow
def test_a_sweep_cancelled_while_training_continues_at_the_next_launch(smoke, tmp_path):
    """The launcher and the training job are stopped (the launcher first: exit 143; the job at a
    step boundary, after saving); no process of the sweep is left. The same launch command then
    finishes the run: the pool is the uninterrupted smoke run's, byte for byte, no generation is
    submitted again, and the resumed training does only the steps that were left."""
    smoke_dir, _ = smoke
    sweep = smoke_variant(tmp_path, {"method.name": ["static"]}, train__total_steps=LONG)
    out = tmp_path / "out"
    reuse_generators(smoke_dir, out / "smoke")
    run = out / "smoke" / "static"
    proc = subprocess.Popen(launch_cmd(sweep, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def training():
            st = run_state(run) or {"jobs": []}
            job = next((j for j in st["jobs"] if j["kind"] == "train" and j["status"] == "running"), None)
            ts = latest_train_state(run) if job else None
            return job if ts and 0 < ts.step < LONG // 2 else None

        train = wait_for(training, HANG_S, 0.05, "a training checkpoint")
        r = cancel(out / "smoke")
        _, launcher_err = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"stopped the launcher: pid {proc.pid} ("), r.stdout  # first: it would submit more
    assert f"stopped static: train job {train['job_id']} (local, running)" in lines, r.stdout
    assert "stopped the launcher and 1 job (1 local)" in r.stdout, r.stdout
    assert proc.returncode == 143, launcher_err[-3000:]
    st = run_state(run)
    assert not [j["job_id"] for j in st["jobs"] if is_live_job(j["job_id"], run / "logs")], "a job still runs"
    stopped_at = latest_train_state(run)
    assert stopped_at.stop_reason == "preempted" and 0 < stopped_at.step < LONG, stopped_at

    again = run_launch(sweep, out, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    st = run_state(run)
    assert st["phase"] == "done"
    assert pool_digest(run) == pool_digest(smoke_dir / "static"), "pool differs from the uninterrupted run"
    generate = [j for j in st["jobs"] if j["kind"] == "generate"]
    assert len(generate) == 4 and {j["status"] for j in generate} == {"succeeded"}, generate  # one per shard
    trains = [c for c in read_jsonl(run / "compute.jsonl") if c["kind"] == "train"]
    assert [c["steps"] for c in trains] == [stopped_at.step, LONG - stopped_at.step], trains
    val_steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl") if m["split"] == "val"]
    assert val_steps == list(range(20, LONG + 1, 20)), "an evaluation logged twice or missing"
    # each job attempt says where it ran (no GPU here); each launch is in the manifest
    assert {(c["host"], c["gpu"]) for c in read_jsonl(run / "compute.jsonl")} == {(socket.gethostname(), None)}
    launches = read_json(out / "smoke" / "manifest.json")["launches"]
    assert len(launches) == 2 and all(e["argv"][1:3] == ["--sweep", str(sweep)] for e in launches), launches


@pytest.mark.slow
def test_a_generator_job_that_ignores_sigterm_is_killed_after_the_wait(tmp_path):
    """The first job of a new sweep trains its generator, and submitit's handler ignores SIGTERM in
    it: cancel kills it once --wait has passed, and leaves no process of the sweep."""
    sweep = smoke_variant(tmp_path, {"method.name": ["static"]})
    out = tmp_path / "out"
    proc = subprocess.Popen(launch_cmd(sweep, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def generator_job():
            for path in (out / "smoke" / "generators").glob("*/job.json"):
                rec = read_json(path)
                if rec and rec["job_id"] and is_live_job(rec["job_id"], path.parent / "logs"):
                    return path.parent, rec["job_id"]
            return None

        gdir, jid = wait_for(generator_job, HANG_S, 0.05, "the generator job")
        r = cancel(out / "smoke", "--wait", "2")
        proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"stopped generator {gdir.name}: job {jid} (local, running)" in r.stdout, r.stdout
    assert f"killed generator {gdir.name}: job {jid}: still running 2 s after SIGTERM" in r.stdout, r.stdout
    assert proc.returncode == 143
    assert not is_live_job(jid, gdir / "logs")
    assert not (gdir / "generator.json").exists(), "the generator finished: the test proves nothing"
