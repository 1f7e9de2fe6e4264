"""Classifier training on real pools in real run folders: exact resumption (in-process, after
SIGKILL and after SIGTERM of `python -m dp_hpc.train`), plateau exits, budget and the final
evaluation. Pools hold real digit images written as if they were generated."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dp_hpc import metrics
from dp_hpc.config import RunConfig, dump_run_config, from_dict
from dp_hpc.contracts import TrainState
from dp_hpc.data.config import DataConfig
from dp_hpc.data.digits import load_digit_splits
from dp_hpc.io import append_jsonl
from dp_hpc.pool import Pool, RoundSpec
from dp_hpc.train import checkpoint as ckpt
from dp_hpc.train.evaluate import evaluate_final
from dp_hpc.train.loop import train_until_stop
from dp_hpc.train.trainer import Trainer
from e2e_helpers import HANG_S
from records_helpers import train_state

REPO = Path(__file__).resolve().parents[1]

# 200 steps at batch 32: ~2 s on one core
BASE_TRAIN = {"total_steps": 200, "warmup_steps": 20, "cooldown_steps": 40, "batch_size": 32,
              "eval_every": 10, "checkpoint_keep": 2, "lr": 3e-3}


# Bitwise comparisons need the same intra-op thread count everywhere: conftest's one_thread
# (autouse) gives the tests 1 thread, as the CLI's --threads 1 does.


def make_run(d: Path, train: dict | None = None, rounds: tuple[int, ...] = (256,), seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = from_dict(RunConfig, {"name": d.name, "seed": seed, "train": {**BASE_TRAIN, **(train or {})}})
    (d / "config.yaml").write_text(dump_run_config(cfg))
    for r, n in enumerate(rounds):
        add_round(d, r, n)
    return d


def add_round(d: Path, r: int, n: int, chunk: int = 64) -> None:
    """A complete pool round of real gen_train digits matching the round's fixed labels."""
    pool = Pool(d)
    pool.create_round(RoundSpec(round_index=r, n=n, image_shape=(1, 8, 8), chunk_size=chunk,
                                num_classes=10, run_seed=0, kind="plain"))
    g = load_digit_splits(DataConfig()).gen_train
    by_class = [g.images[g.labels == c] for c in range(10)]
    for c in range(-(-n // chunk)):
        labels, _ = pool.chunk_inputs(r, c)
        imgs = np.stack([by_class[lab][(r * 37 + c * chunk + i) % len(by_class[lab])] for i, lab in enumerate(labels)])
        pool.write_chunk(r, c, imgs, np.zeros(len(labels), np.float32))
    pool.complete_round(r)


def final_state(run: Path) -> dict:
    folder, _ = ckpt.latest_checkpoint(run)
    return ckpt.load_state(folder)


def assert_same_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["step"] == ob["step"]
    for x, y in zip(oa["exp_avg"] + oa["exp_avg_sq"], ob["exp_avg"] + ob["exp_avg_sq"]):
        assert torch.equal(x, y)


VOLATILE = {"time", "steps_per_s"}


def val_lines(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in metrics.read_metrics(run, "val")]


def cli(run: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dp_hpc.train", "--run-dir", str(run), "--threads", "1", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = HANG_S) -> TrainState:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        latest = ckpt.latest_checkpoint(run)
        if latest is not None:
            return latest[1]
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run to the budget; the resume tests must reproduce it bit for bit."""
    run = make_run(tmp_path_factory.mktemp("ref") / "run")
    ts = train_until_stop(run, plateau_exit=False)
    assert ts.stop_reason == "budget" and ts.step == 200
    return run


# ----------------------------------------------------------------------------- resumption


def test_resume_in_process_is_exact(reference, tmp_path):
    run = make_run(tmp_path / "run")
    ts = train_until_stop(run, plateau_exit=False, max_steps=25)  # stops between evaluations
    assert (ts.step, ts.stop_reason) == (25, "preempted")
    assert [c.name for c, _ in ckpt.complete_checkpoints(run)] == ["step_00000020", "step_00000025"]
    # a crash after an eval line but before its checkpoint leaves a line newer than the checkpoint
    # (and its TensorBoard event: both are dropped on resume)
    append_jsonl(run / "metrics.jsonl", {"split": "val", "step": 30, "acc": -1.0})
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as w:
        w.add_scalar("val/acc", -1.0, 30)
    ts = train_until_stop(run, plateau_exit=False, max_steps=10)
    assert (ts.step, ts.stop_reason) == (35, "preempted")
    ts = train_until_stop(run, plateau_exit=False)
    assert (ts.step, ts.stop_reason) == (200, "budget")
    assert_same_state(final_state(run), final_state(reference))
    assert val_lines(run) == val_lines(reference)
    assert [r["step"] for r in val_lines(run)] == list(range(10, 201, 10))
    # TensorBoard, read by its own reader: the same curve as metrics.jsonl, the stale step-30 event purged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    assert [(e.step, round(e.value, 6)) for e in tb.Scalars("val/acc")] == \
        [(r["step"], round(r["acc"], 6)) for r in val_lines(run)]
    assert {"val/loss", "train/loss", "lr", "pool/size", "pool/round", "best_val_acc"} <= set(tb.Tags()["scalars"])
    # retention: the newest two only (no plateau checkpoints in this run)
    assert [c.name for c, _ in ckpt.complete_checkpoints(run)] == ["step_00000190", "step_00000200"]


def test_checkpoints_every_n_steps_and_a_resume_redoes_the_evaluations_since(reference, tmp_path):
    """checkpoint_every 30, eval_every 10: checkpoints at 30, 60, ... and at every exit; a job that dies
    after evaluating at 40 but before its next checkpoint resumes from 30, redoes 40, and ends equal
    to the reference (which checkpointed at every evaluation)."""
    run = make_run(tmp_path / "run", train={"checkpoint_every": 30, "checkpoint_keep": 10})
    ts = train_until_stop(run, plateau_exit=False, max_steps=45)
    assert (ts.step, ts.stop_reason) == (45, "preempted")
    assert [c.name for c, _ in ckpt.complete_checkpoints(run)] == ["step_00000030", "step_00000045"]
    import shutil

    shutil.rmtree(ckpt.checkpoint_dir(run, 45))  # died before that save: the evaluation at 40 is newer than 30
    assert [r["step"] for r in val_lines(run)] == [10, 20, 30, 40]
    ts = train_until_stop(run, plateau_exit=False)
    assert (ts.step, ts.stop_reason) == (200, "budget")
    assert_same_state(final_state(run), final_state(reference))
    assert val_lines(run) == val_lines(reference)
    steps = [int(c.name[5:]) for c, _ in ckpt.complete_checkpoints(run)]
    assert steps == [30, 60, 90, 120, 150, 180, 200]


def test_resume_after_sigkill_is_exact(reference, tmp_path):
    run = make_run(tmp_path / "run")
    proc = cli(run, "--no-plateau-exit")
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_S)
    killed_at = ckpt.latest_checkpoint(run)[1]
    assert killed_at.stop_reason is None and killed_at.step < 200, "killed too late to test anything"
    ts = train_until_stop(run, plateau_exit=False)
    assert ts.stop_reason == "budget"
    assert_same_state(final_state(run), final_state(reference))
    assert val_lines(run) == val_lines(reference)


@pytest.mark.parametrize("train", [{}, {"async_checkpoint": True}], ids=["sync", "async"])
def test_sigterm_checkpoints_at_step_boundary(reference, tmp_path, train):
    """async: the preemption's save waits for the background write in flight, then writes its own."""
    run = make_run(tmp_path / "run", train=train)
    proc = cli(run, "--no-plateau-exit")
    first = wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, err[-2000:]
    ts = TrainState.from_json(json.loads(out.strip().splitlines()[-1]))  # what `python -m dp_hpc.train` prints
    assert ts.stop_reason == "preempted" and first.step < ts.step < 200
    assert ckpt.latest_checkpoint(run)[1] == ts
    # resuming reproduces the uninterrupted run
    assert train_until_stop(run, plateau_exit=False).stop_reason == "budget"
    assert_same_state(final_state(run), final_state(reference))
    assert val_lines(run) == val_lines(reference)


# ----------------------------------------------------------------------------- fused AdamW, async saves


def test_fused_adamw_checkpoints_its_state_and_resumes_exactly(tmp_path):
    """train.fused_adamw: torch's fused kernel (here its CPU version). Its moments go into state.pt in
    our AdamW's format, and a resumed run ends bit for bit where an uninterrupted one does."""
    train = {"fused_adamw": True, "update_clipping": False, "total_steps": 100, "cooldown_steps": 20}
    whole = make_run(tmp_path / "whole", train=train)
    assert train_until_stop(whole, plateau_exit=False).stop_reason == "budget"
    run = make_run(tmp_path / "run", train=train)
    assert train_until_stop(run, plateau_exit=False, max_steps=25).step == 25
    opt = final_state(run)["optimizer"]
    assert opt["step"] == 25 and opt["exp_avg"][0].abs().sum() > 0
    assert train_until_stop(run, plateau_exit=False).stop_reason == "budget"
    assert_same_state(final_state(run), final_state(whole))
    assert val_lines(run) == val_lines(whole)


def zip_members(path: Path) -> dict[str, bytes]:
    """The records of a torch.save file (a zip archive) but its `.data/serialization_id`, a random
    id of each file."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        out = {i.filename: z.read(i) for i in z.infolist() if not i.filename.endswith("/.data/serialization_id")}
    assert len(out) > 10 and any(n.endswith("/data.pkl") for n in out)
    return out


class HeldWrites:
    """`ckpt.save_checkpoint` wrapped: a write in a background thread is held until training has
    gone 3 steps past it (a write in the training thread would wait for ever: the timeout fails
    it), and every write is recorded as (thread, step) with the most writes ever at once."""

    def __init__(self, monkeypatch):
        self.writes: list[tuple[str, int]] = []
        self.active = self.most_at_once = 0
        self.trained_to = 0
        save, step = ckpt.save_checkpoint, Trainer.step

        def counting_step(trainer, *args):
            out = step(trainer, *args)
            self.trained_to = trainer.opt.step_count
            return out

        def held_save(run_dir, state, ts):
            background = threading.current_thread() is not threading.main_thread()
            self.writes.append(("background" if background else "main", ts.step))
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
            try:
                deadline = time.monotonic() + HANG_S
                while background and self.trained_to < ts.step + 3:
                    assert time.monotonic() < deadline, "training did not go on during the write"
                    time.sleep(0.005)
                return save(run_dir, state, ts)
            finally:
                self.active -= 1

        monkeypatch.setattr(Trainer, "step", counting_step)
        monkeypatch.setattr(ckpt, "save_checkpoint", held_save)


def test_async_checkpoints_are_the_sync_files_and_resume_exactly(reference, tmp_path, monkeypatch):
    """train.async_checkpoint: the checkpoints that do not end the job are written in a background
    thread while training goes on (held until it is 3 steps further), from a copy taken at their
    step: the files are byte for byte those of a synchronous run (but for the random id torch.save
    gives every file); the exit's save waits for the write in flight; resumption ends equal to the
    reference."""
    monkeypatch.setattr(metrics, "utc_now", lambda: "2000-01-01T00:00:00Z")  # train_state's time (in state.pt too)
    sync = make_run(tmp_path / "sync", train={"checkpoint_keep": 10})
    torch.manual_seed(0)  # state.pt holds the process's RNG state (training draws nothing from it)
    assert train_until_stop(sync, plateau_exit=False, max_steps=25).step == 25
    run = make_run(tmp_path / "run", train={"checkpoint_keep": 10, "async_checkpoint": True})
    held = HeldWrites(monkeypatch)
    torch.manual_seed(0)
    assert train_until_stop(run, plateau_exit=False, max_steps=25).step == 25
    assert held.writes == [("background", 10), ("background", 20), ("main", 25)] and held.most_at_once == 1
    names = [c.name for c, _ in ckpt.complete_checkpoints(run)]
    assert names == [c.name for c, _ in ckpt.complete_checkpoints(sync)] == \
        ["step_00000010", "step_00000020", "step_00000025"]
    for name in names:
        a, b = run / "checkpoints" / name, sync / "checkpoints" / name
        assert (a / ckpt.TRAIN_STATE_FILE).read_bytes() == (b / ckpt.TRAIN_STATE_FILE).read_bytes()
        assert zip_members(a / ckpt.STATE_FILE) == zip_members(b / ckpt.STATE_FILE)
    ts = train_until_stop(run, plateau_exit=False)
    assert ts.stop_reason == "budget" and held.most_at_once == 1
    assert_same_state(final_state(run), final_state(reference))
    assert val_lines(run) == val_lines(reference)


def test_a_failed_background_write_stops_training_at_the_next_save(tmp_path, monkeypatch):
    """The step-10 checkpoint's write fails in the background thread: its error (an injected EIO) is
    raised by the training job at its next save (step 20), which writes nothing; no checkpoint is
    marked complete."""
    run = make_run(tmp_path / "run", train={"async_checkpoint": True})
    write = ckpt.atomic_write_bytes

    def failing(path, data):
        if threading.current_thread() is not threading.main_thread():
            raise OSError(errno.EIO, "injected write error", str(path))
        write(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", failing)
    with pytest.raises(OSError, match="injected write error"):
        train_until_stop(run, plateau_exit=False, max_steps=25)
    assert [r["step"] for r in val_lines(run)] == [10, 20]
    assert ckpt.complete_checkpoints(run) == []


def test_a_rewritten_checkpoint_folder_drops_the_temporary_files_of_a_killed_write(tmp_path):
    """A job SIGKILLed while writing step 10's state.pt leaves `.state.pt.<random>.tmp` there; the
    rerun that writes step 10 again removes it (found by tests/test_chaos.py, seed 3)."""
    folder = ckpt.checkpoint_dir(tmp_path, 10)
    folder.mkdir(parents=True)
    stale = [folder / ".state.pt.k2j4x8ab.tmp", folder / ".classifier.pt.q9w8e7zz.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    w = {"w": torch.ones(3)}
    ckpt.save_checkpoint(tmp_path, {"model": w, "ema": w, "step": 10}, train_state(10, "plateau"))
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.pt", "state.pt", "train_state.json"]


def test_a_pending_writes_error_is_raised_when_the_writer_closes(tmp_path, monkeypatch):
    """No save after the failed one (the job ends for another reason): leaving the writer's block
    waits for the write and raises its error; if the block itself raised, that error goes on and
    the write's is logged."""
    def failing(run_dir, state, ts):
        time.sleep(0.2)  # still in flight when the block ends
        raise OSError(errno.EIO, "injected write error")

    monkeypatch.setattr(ckpt, "save_checkpoint", failing)
    state, ts = {"w": torch.ones(3)}, train_state(10, None)
    with pytest.raises(OSError, match="injected write error"):
        with ckpt.CheckpointWriter(tmp_path, keep=2, background=True) as writer:
            writer.save(state, ts, wait=False)
    with pytest.raises(KeyError, match="the block's own"):
        with ckpt.CheckpointWriter(tmp_path, keep=2, background=True) as writer:
            writer.save(state, ts, wait=False)
            raise KeyError("the block's own")


# ----------------------------------------------------------------------------- plateaus and rounds


def test_plateau_exit_idempotent_then_new_round(tmp_path):
    patience = {"initial": 1, "increment": 1, "max": 4, "min_delta": 0.02}
    run = make_run(tmp_path / "run", train={"total_steps": 400, "cooldown_steps": 80, "patience": patience},
                   rounds=(64,))
    ts = train_until_stop(run)
    assert ts.stop_reason == "plateau" and ts.step < 320
    assert (ts.patience_counter, ts.patience_limit, ts.pool_rounds, ts.pool_size) == (1, 1, (0,), 64)
    plateau_step = ts.step
    lines = metrics.read_metrics(run)
    # rerun without new data: nothing happens
    assert train_until_stop(run) == ts
    assert metrics.read_metrics(run) == lines
    # a new round: patience reset, limit = limit(1) = 2, training continues from the checkpoint
    add_round(run, 1, 128)
    ts2 = train_until_stop(run)
    first_new = [r for r in metrics.read_metrics(run, "val") if r["step"] > plateau_step][0]
    assert first_new["step"] == plateau_step + 10
    assert (first_new["round"], first_new["pool_size"], first_new["patience_limit"]) == (1, 192, 2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    assert [(e.step, e.value) for e in tb.Scalars("pool/added")] == [(first_new["step"], 128.0)], "the addition marker"
    assert first_new["patience_counter"] in (0, 1)  # reset, then this evaluation's outcome
    assert ts2.step > plateau_step and ts2.pool_rounds == (0, 1) and ts2.round == 1
    assert ts2.stop_reason in ("plateau", "budget")
    # the plateau checkpoint (used for guidance) survives retention
    kept = {c.name: t.stop_reason for c, t in ckpt.complete_checkpoints(run)}
    assert kept[f"step_{plateau_step:08d}"] == "plateau"
    # the classifier used for guidance: the EMA weights in eval mode
    clf = ckpt.load_classifier(ckpt.checkpoint_dir(run, plateau_step), from_dict(RunConfig, {}))
    assert not clf.training
    ema = ckpt.load_state(ckpt.checkpoint_dir(run, plateau_step))["ema"]
    assert all(torch.equal(v, ema[k]) for k, v in clf.state_dict().items())
    # ... read from the plateau checkpoint's classifier.pt alone (not the optimizer-laden state.pt)
    folder = ckpt.checkpoint_dir(run, plateau_step)
    assert (folder / "classifier.pt").stat().st_size < (folder / "state.pt").stat().st_size / 2
    only = tmp_path / "only_classifier"
    only.mkdir()
    for f in ("classifier.pt", "train_state.json"):
        (only / f).write_bytes((folder / f).read_bytes())
    alone = ckpt.load_classifier(only, from_dict(RunConfig, {}))
    assert all(torch.equal(v, ema[k]) for k, v in alone.state_dict().items())
    others = [c for c, t in ckpt.complete_checkpoints(run) if t.stop_reason != "plateau"]
    assert others and not any((c / "classifier.pt").exists() for c in others), "only plateau checkpoints have one"


def test_each_jobs_tensorboard_file_sorts_after_the_ones_before(tmp_path):
    """TensorBoard reads event files in name order, names start with the second a file was opened,
    and within a second they sort by pid and a counter as text (".10" before ".9"): a job resuming
    within a second of the last writer waits for the next second, so that a resume's purge is read
    after the events it purges."""
    from dp_hpc.config import load_run_config
    from dp_hpc.train.tracking import Tracker

    run = make_run(tmp_path / "run", rounds=())
    names: list[str] = []
    for step in (0, 10, 20):
        with Tracker(run, load_run_config(run), step) as tracker:
            tracker.log({"split": "val", "step": step + 10, "acc": 0.5})
        names += sorted({p.name for p in (run / "tensorboard").iterdir()} - set(names))
    seconds = [int(n.split(".")[3]) for n in names]
    assert len(names) == 3 and seconds == sorted(set(seconds)), names


def test_no_plateau_exit_trains_through(tmp_path):
    patience = {"initial": 1, "increment": 0, "max": 1, "min_delta": 1.0}  # never improves after eval 1
    run = make_run(tmp_path / "run", train={"total_steps": 60, "warmup_steps": 6, "cooldown_steps": 12,
                                            "patience": patience}, rounds=(64,))
    ts = train_until_stop(run)
    assert (ts.step, ts.stop_reason) == (20, "plateau")
    ts = train_until_stop(run, plateau_exit=False)  # e.g. the cool-down of a finished data budget
    assert (ts.step, ts.stop_reason, ts.patience_counter) == (60, "budget", 5)


# ----------------------------------------------------------------------------- budget and final eval


def test_budget_is_idempotent_and_final_eval(reference):
    lines = metrics.read_metrics(reference)
    ts = ckpt.latest_checkpoint(reference)[1]
    assert train_until_stop(reference) == ts  # budget reached: returns at once
    assert train_until_stop(reference, plateau_exit=False, max_steps=5) == ts
    assert metrics.read_metrics(reference) == lines
    stale = [reference / ".eval.json.k2j4x8ab.tmp", reference / ".test_predictions.npz.q9w8e7zz.tmp"]
    for p in stale:  # an evaluation SIGKILLed mid-write left them: this one removes them
        p.write_bytes(b"half a file")
    result = evaluate_final(reference)
    assert not any(p.exists() for p in stale)
    assert 0.5 < result["acc"] <= 1.0 and result["step"] == 200 and result["rounds"] == [0]
    assert json.loads((reference / "eval.json").read_text()) == result
    _check_test_predictions(reference, result)
    test_lines = metrics.read_metrics(reference, "test")
    assert len(test_lines) == 1 and test_lines[0]["acc"] == result["acc"]
    assert evaluate_final(reference) == result  # idempotent
    (reference / "eval.json").unlink()  # a crash between the test line and eval.json
    again = evaluate_final(reference)
    assert again["acc"] == result["acc"]
    assert len(metrics.read_metrics(reference, "test")) == 1


def _check_test_predictions(run, result):
    """test_predictions.npz holds, in the test split's order, what the evaluated classifier predicts
    for each image (recomputed here image by image) and the split's labels; its accuracy is eval.json's."""
    from dp_hpc.config import load_run_config
    from dp_hpc.data.eval_data import open_eval_split
    from dp_hpc.predictions import read_test_predictions

    pred = read_test_predictions(run / "test_predictions.npz")
    cfg = load_run_config(run)
    test = open_eval_split(cfg.data, "test")
    assert pred.predicted.dtype == np.int16 and len(pred.label) == result["n_test"] == len(test)
    np.testing.assert_array_equal(pred.label, test.labels)
    model = ckpt.load_classifier(run / "checkpoints" / result["checkpoint"], cfg)
    with torch.no_grad():
        expected = model(torch.from_numpy(test.images).float().div(255.0)).argmax(-1).numpy()
    np.testing.assert_array_equal(pred.predicted, expected)
    assert pred.correct.mean() == result["acc"]


def test_final_eval_requires_budget(tmp_path):
    run = make_run(tmp_path / "run")
    train_until_stop(run, max_steps=10)
    with pytest.raises(RuntimeError, match="not 'budget'"):
        evaluate_final(run)
