"""Jobs SIGKILLed inside an atomic write (between writing the temporary file and renaming it, through
the test-only hook dp_hpc.io.KILL_IN_WRITE): the temporary file they leave is removed by the next job
that owns the folder, which then writes the same bytes as an undisturbed job, or by
`dp_hpc.verify --repair` once it is stale."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from dp_hpc.io import KILL_IN_WRITE, TEMP_GLOBS, temps_under
from dp_hpc.layout import GENERATOR_CHECKPOINT, GENERATOR_MARKER, ORACLE, GeneratorDir, RunDir
from e2e_helpers import HANG_S, pool_digest

REPO = Path(__file__).resolve().parents[1]


def run_job(code: str, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh process (sys.argv[1:] = args), SIGKILLed inside the atomic write of a path
    matching `kill_at`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KILL_IN_WRITE, None)
    if kill_at is not None:
        env[KILL_IN_WRITE] = kill_at
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_S)


def temps(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in temps_under(folder)]


def generator_files(g: GeneratorDir) -> dict:
    """sha256 of the generator's weights, scheduler and judge; generator.json less its timings (the
    training checkpoint holds a wall time too)."""
    files = {str(p.relative_to(g.path)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(g.path.rglob("*")) if p.is_file() and p.parts[len(g.path.parts)] in ("unet", "scheduler")}
    files[ORACLE] = hashlib.sha256(g.oracle.read_bytes()).hexdigest()
    info = yaml.safe_load(g.marker.read_text())
    return {**files, "info": {k: v for k, v in info.items() if k != "train_wall_s"}}


GENERATOR_JOB = "import sys; from dp_hpc.jobs import train_generator; train_generator(sys.argv[1])"


def test_a_generator_job_killed_inside_each_write_is_finished_by_the_next_with_the_same_files(tmp_path):
    """Killed while writing its checkpoint, then generator.json: each time a temporary file is left;
    the next job (holding generator.lock) removes it and ends with the files of an undisturbed job,
    byte for byte (the undisturbed one made in this process, as the job would: one thread)."""
    from dp_hpc.generate.cache import build_generator
    from dp_hpc.config import to_dict
    from dp_hpc.data.config import DataConfig
    from dp_hpc.generate.config import GeneratorConfig, SamplerConfig

    cfg = GeneratorConfig(block_out_channels=(8, 16), train_steps=60, batch_size=16, warmup_steps=5,
                          checkpoint_every=20, log_every=20, quality_samples=0, quality_classifier_steps=20)
    config = yaml.safe_dump({"data": to_dict(DataConfig()), "generator": to_dict(cfg),
                             "sampler": to_dict(SamplerConfig())}, sort_keys=False)
    ref, killed = GeneratorDir(tmp_path / "ref"), GeneratorDir(tmp_path / "killed")
    for g in (ref, killed):
        g.path.mkdir()
        g.config.write_text(config)
    build_generator(ref.path)
    for name in (GENERATOR_CHECKPOINT, GENERATOR_MARKER):
        r = run_job(GENERATOR_JOB, str(killed.path), kill_at=f"*/killed/{name}")
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        assert [t for t in temps(killed.path) if t.startswith(f".{name}.")], temps(killed.path)
    assert not killed.marker.exists()
    r = run_job(GENERATOR_JOB, str(killed.path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert temps(killed.path) == []
    assert generator_files(killed) == generator_files(ref)


SHARD_JOB = ("import sys; from dp_hpc.jobs import GenerateShard; "
             "GenerateShard()(sys.argv[1], 0, 0, 2, sys.argv[2], None)")


def test_a_generation_task_killed_inside_a_chunk_write_is_redone_by_the_next_without_its_temporary_files(smoke, tmp_path):
    """A round-0 task of the smoke dp run killed inside zarr's write of chunk 1's images, then inside
    the write of the round's sample grid (chunk 0): zarr's `.partial` file and our `.tmp` file are
    left; the rerun of the task removes both and writes the pool of the undisturbed run, byte for
    byte. What it leaves in pool_markers is the undisturbed run's too."""
    from dp_hpc.pool import Pool

    smoke_dir, _ = smoke
    run = RunDir(tmp_path / "smoke" / "dp")
    shutil.copytree(smoke_dir / "dp", run.path, symlinks=True)
    gen = next((smoke_dir / "generators").iterdir())
    before, grid = pool_digest(run.path), run.sample_grid(0).read_bytes()
    pool = Pool(run.path)
    g = pool.group(0)
    for c in (0, 1):  # as after `dp_hpc.verify --repair` unmarked them: generated again
        pool.chunk_marker(0, c).unlink()
    run.sample_grid(0).unlink()
    image_chunk = run.pool_round(0) / "images" / g["images"].metadata.encode_chunk_key((1, 0, 0, 0))
    # killed in chunk 0's grid (before chunk 0's files), then, chunk 0 done, in chunk 1's images
    for kill_at, left in ((str(run.sample_grid(0)), run.round_markers(0)), (str(image_chunk), image_chunk.parent)):
        r = run_job(SHARD_JOB, str(run.path), str(gen), kill_at=kill_at)
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        assert temps(left), f"nothing left in {left}"
    assert temps(run.round_markers(0)) == [], "the task owning chunk 0 left the grid's temporary file"
    assert pool.chunk_done(0, 0) and not pool.chunk_done(0, 1)
    r = run_job(SHARD_JOB, str(run.path), str(gen))
    assert r.returncode == 0, r.stderr[-3000:]
    assert temps(run.pool) == [] and temps(run.markers) == []
    assert pool_digest(run.path) == before and run.sample_grid(0).read_bytes() == grid
    assert pool.chunk_done(0, 0) and pool.chunk_done(0, 1)


def test_a_requeued_job_removes_the_result_file_its_killed_attempt_was_writing(tmp_path, monkeypatch):
    """submitit writes a job's result to `<job>_<task>_result.pkl.save_tmp` and asserts that this file
    does not exist: an attempt killed mid-write would make the requeued one (same job id) fail at
    its end. Each job removes its own at its start (dp_hpc.jobs._setup)."""
    from dp_hpc.jobs import remove_own_result_temp

    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_FOLDER": str(tmp_path), "SUBMITIT_LOCAL_JOB_ID": "4242",
                 "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0", "SUBMITIT_LOCAL_NODEID": "0",
                 "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}.items():
        monkeypatch.setenv(k, v)
    mine, other = tmp_path / "4242_0_result.pkl.save_tmp", tmp_path / "4243_0_result.pkl.save_tmp"
    for p in (mine, other):
        p.write_bytes(b"half a pickle")
    remove_own_result_temp()
    assert not mine.exists() and other.exists()  # another job's (in flight, maybe) is left alone


def test_verify_repair_removes_stale_temporary_files_and_reports_fresh_ones(smoke, tmp_path, capsys):
    """Temporary files a killed job left in a finished run (no job comes to remove them):
    `dp_hpc.verify` lists them, `--repair` removes those untouched for STALE_TEMP_S and reports a
    fresh one (a write in flight, maybe) without touching it, exit 1 until it is gone."""
    from dp_hpc.integrity import STALE_TEMP_S
    from dp_hpc.verify import main as verify_main

    smoke_dir, _ = smoke
    sweep = tmp_path / "smoke"
    for name in ("dp", "sweep.yaml"):
        src = smoke_dir / name
        (shutil.copytree(src, sweep / name, symlinks=True) if src.is_dir() else shutil.copy(src, sweep / name))
    run = RunDir(sweep / "dp")
    step = run.checkpoint_folders()[-1][1]
    chunk_file = next(p for p in sorted((run.pool_round(0) / "images").rglob("*")) if p.is_file() and p.name != "zarr.json")
    assert [g.format("x") for g in TEMP_GLOBS] == [".x.*.tmp", "x.*.partial", "x.save_tmp"]
    stale = [run.path / ".eval.json.k2j4x8ab.tmp", chunk_file.with_name(f"{chunk_file.name}.0123abcd.partial"),
             run.logs / "4242_0_result.pkl.save_tmp", step / ".train_state.json.a1b2c3d4.tmp"]
    fresh = run.path / ".state.json.f00dfeed.tmp"
    for p in (*stale, fresh):
        p.write_bytes(b"half a file")
    old = p.stat().st_mtime - STALE_TEMP_S - 1
    for p in stale:
        os.utime(p, (old, old))
    assert verify_main([str(sweep), "--quick"]) == 1
    out = capsys.readouterr().out
    assert all(str(p.relative_to(sweep)) in out for p in (*stale, fresh)), out
    assert verify_main([str(sweep), "--quick", "--repair"]) == 1
    out = capsys.readouterr().out
    assert not any(p.exists() for p in stale) and fresh.exists()
    assert "maybe a write in flight" in out, out
    fresh.unlink()
    assert verify_main([str(sweep), "--quick"]) == 0
