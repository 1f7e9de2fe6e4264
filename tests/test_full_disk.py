"""A full disk (a small tmpfs that the test mounts and fills): state writes, pool chunk writes and
checkpoint saves fail naming their path, leave no marker and no half file, and after space is freed
the same launch command finishes with the pool and the results of an undamaged run.

Skipped only where this process cannot mount a tmpfs (not root, or a container without the
capability), with mount's own words; with DP_HPC_REQUIRE_TMPFS=1 (as in CI, which runs as root and
can mount one) that fails instead, so a skip there cannot hide a broken test."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_hpc.coordinate.state import RunState, load_state, save_state
from dp_hpc.io import DiskFull, append_jsonl, atomic_write_bytes, read_json, read_jsonl
from dp_hpc.layout import RunDir
from dp_hpc.pool import Pool, RoundSpec
from dp_hpc.train.checkpoint import checkpoint_dir, latest_checkpoint, save_checkpoint
from records_helpers import train_state

FULL = "no space left on the device holding"


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of `size` (mount's syntax: 1m, 160k) at `path`, unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
    except OSError as e:  # no mount command
        cannot_mount(str(e))
    if r.returncode != 0:
        cannot_mount(f"mount -t tmpfs exited {r.returncode}: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)  # a job still holds a file open


REQUIRE_ENV = "DP_HPC_REQUIRE_TMPFS"


def cannot_mount(why: str) -> None:
    """Skip, or fail where a tmpfs must be mountable (DP_HPC_REQUIRE_TMPFS=1, as in CI)."""
    msg = f"cannot mount a tmpfs to fill up: {why}"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{msg} ({REQUIRE_ENV} is set: these tests must run here)")
    pytest.skip(msg)


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int = 0) -> Path:
    """A ballast file that leaves `leave` bytes of `disk` free (whole pages)."""
    ballast = disk / f"ballast-{len(list(disk.glob('ballast-*')))}"
    size = free_bytes(disk) - leave
    with open(ballast, "wb") as f:
        if size > 0:
            os.posix_fallocate(f.fileno(), 0, size)
    assert free_bytes(disk) <= max(leave, 0) + 4096
    return ballast


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of interrupted writes: ours (.NAME.*.tmp) and zarr's (*.partial)."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


# ----------------------------------------------------------------------------- the writes, one by one


def test_state_writes_and_appends_on_a_full_disk_name_the_path_and_keep_the_old_file(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        run = disk / "run"
        save_state(run, RunState(phase="generate"))
        metrics = run / "metrics.jsonl"
        append_jsonl(metrics, {"step": 1})
        before = metrics.read_bytes()
        fill(disk)
        big = RunState(phase="train", error="x" * 20_000)  # more than the page state.json has
        with pytest.raises(DiskFull) as e:
            save_state(run, big)
        assert e.value.errno == errno.ENOSPC and f"{FULL} {RunDir(run).state}" in str(e.value), e.value
        assert load_state(run).phase == "generate"  # the old file, whole
        with pytest.raises(DiskFull, match=FULL) as e:
            atomic_write_bytes(run / "new.bin", b"x" * 20_000)
        assert str(run / "new.bin") in str(e.value) and not (run / "new.bin").exists()
        with pytest.raises(DiskFull, match=FULL) as e:
            append_jsonl(metrics, {"step": 2, "pad": "x" * 20_000})  # fills the last page, then fails
        assert str(metrics) in str(e.value)
        assert metrics.read_bytes() == before  # no torn line for the next append to glue onto
        assert leftovers(run) == []


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)], ids=["lossless", "jpeg"])
def test_a_chunk_write_on_a_full_disk_raises_before_its_marker(tmp_path, shape):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        pool = Pool(disk / "run")
        spec = RoundSpec(round_index=0, n=8, image_shape=shape, chunk_size=4, num_classes=2, run_seed=0,
                         kind="guided")
        pool.create_round(spec)
        rng = np.random.default_rng(0)
        chunks = [(rng.integers(0, 256, (4, *shape), dtype=np.uint8), rng.random(4).astype(np.float32))
                  for _ in range(2)]  # noise: does not compress into the room left
        pool.write_chunk(0, 0, *chunks[0])
        ballast = fill(disk)
        with pytest.raises(DiskFull) as e:
            pool.write_chunk(0, 1, *chunks[1])
        assert f"{FULL} {pool.layout.pool_round(0) / 'images'}" in str(e.value), e.value
        assert pool.done_chunks(0) == {0}
        g = pool.group(0)
        key = g["images"].metadata.encode_chunk_key((1, 0, 0, 0))
        assert not (pool.layout.pool_round(0) / "images" / key).exists()  # no half chunk for a reader
        assert leftovers(disk / "run") == []
        with pytest.raises(DiskFull, match=FULL):  # the coordinator's part: no half-made round
            pool.create_round(dataclasses.replace(spec, round_index=1))
        assert not pool.has_round(1) and sorted(p.name for p in pool.root.iterdir()) == ["round_000", "zarr.json"]

        ballast.unlink()  # space freed: the same write goes through
        pool.write_chunk(0, 1, *chunks[1])
        assert pool.done_chunks(0) == {0, 1}
        if shape[0] == 1:
            assert np.array_equal(pool.group(0)["images"][:], np.concatenate([c[0] for c in chunks]))


def test_a_checkpoint_save_on_a_full_disk_leaves_no_marker(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        state = {"model": {"w": torch.zeros(100_000)}, "ema": {"w": torch.zeros(100_000)}, "step": 10}  # ~800 KB
        save_checkpoint(run, state, train_state(10, None))
        fill(disk, leave=256 << 10)
        with pytest.raises(DiskFull) as e:
            save_checkpoint(run, {**state, "step": 20}, train_state(20, "plateau"))
        assert f"{FULL} {checkpoint_dir(run, 20) / 'state.pt'}" in str(e.value), e.value
        assert not (checkpoint_dir(run, 20) / "train_state.json").exists()
        assert latest_checkpoint(run)[1].step == 10  # a resume starts from the one before
        assert leftovers(run) == []


# ----------------------------------------------------------------------------- a whole sweep


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_cleanly_and_a_relaunch_finishes_it_unchanged(smoke, tmp_path):
    """The smoke sweep's static run on a disk (tmpfs) of its own, its pool on a second, smaller one:
    1. the pool's disk is full: a generation task fails, the launcher exits 1 with one line naming
       the pool's path; 2. that disk grown, the run's disk nearly full: the first checkpoint save fails
       the same way; 3. the run's disk full: the launcher's own first write fails, exit 4, one line;
    4. space freed: the same command finishes, with the undamaged run's pool and test accuracy."""
    from e2e_helpers import pool_digest, reuse_generators, run_launch, smoke_variant

    from dp_hpc.verify import main as verify_main

    ref, _ = smoke
    sweep = smoke_variant(tmp_path, {"method.name": ["static"]})
    with tmpfs(tmp_path / "disk", "24m") as disk:
        out = disk / "out"
        reuse_generators(ref, out / "smoke")
        run = RunDir(out / "smoke" / "static")
        # 92 KB for the round's metadata (23 files of a page each), then 9 of its 16 chunk files
        with tmpfs(run.pool, "128k"):
            r = run_launch(sweep, out)
            assert r.returncode == 1, r.stderr[-3000:]
            _assert_one_line_per_failure(r.stderr, f"{FULL} {run.pool_round(0)}/")
            st = read_json(run.state)
            assert st["phase"] == "failed" and FULL in st["error"], st
            marked = run.done_chunks(0)
            assert len(marked) < 8
            _assert_marked_chunks_written(run, marked)
            assert leftovers(run.path) == []
            before = {c: run.chunk_marker(0, c).stat().st_mtime_ns for c in marked}

            subprocess.run(["mount", "-o", "remount,size=8m", str(run.pool)], check=True)  # space freed
            ballast = [fill(disk, leave=512 << 10)]  # less than a checkpoint's state.pt (1 MB)
            r = run_launch(sweep, out)
            assert r.returncode == 1, r.stderr[-3000:]
            _assert_one_line_per_failure(r.stderr, f"{FULL} {run.checkpoints}/step_")
            st = read_json(run.state)
            assert st["phase"] == "failed" and "state.pt" in st["error"] and st["failed_phase"] == "train", st
            assert run.complete_rounds() == [0]
            assert [p.name for p in run.checkpoints.rglob("train_state.json")] == []
            assert leftovers(run.path) == []

            ballast.append(fill(disk))
            r = run_launch(sweep, out)
            assert r.returncode == 4, r.stderr[-3000:]
            [line] = r.stderr.strip().splitlines()
            assert line.startswith(f"error: [Errno {errno.ENOSPC}] {FULL} {out / 'smoke'}/"), line
            assert read_json(run.state)["phase"] == "failed"  # still whole
            assert leftovers(out) == []

            for b in ballast:
                b.unlink()
            r = run_launch(sweep, out)
            assert r.returncode == 0, r.stderr[-3000:]
            _assert_no_traceback(r.stderr)  # "retrying after failure": one line
            assert pool_digest(run.path) == pool_digest(ref / "static"), "pool differs from the undamaged run"
            assert all(run.chunk_marker(0, c).stat().st_mtime_ns == t for c, t in before.items()), \
                "a chunk written before the disk filled was written again"
            test = [m for m in read_jsonl(run.metrics) if m["split"] == "test"]
            ref_test = [m for m in read_jsonl(ref / "static" / "metrics.jsonl") if m["split"] == "test"]
            assert [(m["step"], m["acc"]) for m in test] == [(m["step"], m["acc"]) for m in ref_test]
            assert read_json(run.eval)["acc"] == read_json(ref / "static" / "eval.json")["acc"]
            assert verify_main([str(out / "smoke")]) == 0


def _assert_one_line_per_failure(stderr: str, needle: str) -> None:
    """The launcher's stderr: no traceback, one line naming the failed job's error, one summing up."""
    _assert_no_traceback(stderr)
    lines = [line for line in stderr.splitlines() if needle in line]
    assert len(lines) == 1 and "job failed" in lines[0], stderr[-3000:]
    assert "1 run(s) failed: static" in stderr.splitlines()[-1], stderr[-3000:]


def _assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and not any(line.startswith(" ") for line in stderr.splitlines()), \
        stderr[-3000:]


def _assert_marked_chunks_written(run: RunDir, marked: set[int]) -> None:
    pool = Pool(run.path)
    g = pool.group(0)
    for name in ("images", "oracle_label"):  # a plain round writes no entropy
        for c in marked:
            key = g[name].metadata.encode_chunk_key((c, 0, 0, 0)[: g[name].ndim])
            assert (run.pool_round(0) / name / key).exists(), f"chunk {c} is marked, its {name} file is missing"
