"""Progress of long work at a steady rate (issue 26, item 6), on a fake clock: the generator's
training (progress.json, and the launcher's lines from it), the sweep's per-run lines, and the
end of a finished launch."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from dp_hpc.coordinate.generators import log_generator_progress
from dp_hpc.coordinate.sweep_table import next_steps_text
from dp_hpc.generate.unet import _ProgressFile
from dp_hpc.io import atomic_write_json, read_json
from dp_hpc.layout import GeneratorDir
from dp_hpc.progress import Every, SweepProgress, duration_text, progress_line


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_is_due_at_most_once_per_interval():
    clock = FakeClock()
    due = Every(10.0, clock)
    seen = []
    for _ in range(25):  # 2 s per tick for 50 s
        clock.now += 2
        seen.append(due())
    assert [i for i, d in enumerate(seen) if d] == [4, 9, 14, 19, 24]  # at 10, 20, 30, 40, 50 s
    assert Every(10.0, clock, due_at_start=True)()


def test_progress_lines_say_step_loss_and_time_left():
    assert duration_text(45) == "45 s" and duration_text(125) == "2 min 05 s" and duration_text(3780) == "1 h 03 min"
    # 1,000 steps in 50 s since step 200 of a resumed run: 1,800 left at 20 steps/s = 90 s
    assert progress_line("generator g", 1200, 3000, 50.0, 200, 0.04123) == \
        "generator g: step 1,200/3,000, loss 0.0412, ~1 min 30 s left"
    assert progress_line("run", 0, 100, 0.0) == "run: step 0/100"  # no rate yet: no time left
    assert progress_line("run", 100, 100, 9.0) == "run: step 100/100"


def test_the_generator_writes_its_progress_at_a_steady_rate(tmp_path, monkeypatch):
    import dp_hpc.generate.unet as unet

    monkeypatch.setattr(unet, "PROGRESS_EVERY_S", 5.0)
    clock, path = FakeClock(), tmp_path / "progress.json"
    progress = _ProgressFile(path, start_step=100, total=3000, clock=clock)
    writes = []
    for step in range(101, 161):  # 60 steps at 4 steps/s: 15 s
        clock.now += 0.25
        before = read_json(path)
        progress.update(step, [0.5, 0.3])
        if read_json(path) != before:
            writes.append(read_json(path))
    assert [w["step"] for w in writes] == [120, 140, 160]  # every 5 s
    assert writes[-1] == {"step": 160, "total": 3000, "start_step": 100, "seconds": 15.0, "loss": 0.4}


def test_the_launcher_prints_a_training_generators_progress(tmp_path, caplog):
    gdir = tmp_path / "generators" / "abc"
    gdir.mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="dp_hpc.launch"):
        log_generator_progress(gdir, 20.0)  # nothing written yet: the job is starting
    assert caplog.records[-1].getMessage() == "generator abc: job starting or preparing (20 s since submission)"
    caplog.clear()
    atomic_write_json(GeneratorDir(gdir).progress, {"step": 1500, "total": 3000, "start_step": 0, "seconds": 78.5,
                                                    "loss": 0.0321})
    with caplog.at_level(logging.INFO, logger="dp_hpc.launch"):
        log_generator_progress(gdir, 100.0)
    assert [r.getMessage() for r in caplog.records] == ["generator abc: step 1,500/3,000, loss 0.0321, ~1 min 18 s left"]
    atomic_write_json(GeneratorDir(gdir).progress, {"step": 3000, "total": 3000, "start_step": 0, "seconds": 157.0,
                                                    "loss": 0.02, "stage": "quality report and export"})
    with caplog.at_level(logging.INFO, logger="dp_hpc.launch"):
        log_generator_progress(gdir, 180.0)
    assert caplog.records[-1].getMessage() == "generator abc: step 3,000/3,000, loss 0.0200; now: quality report and export"


class FakeRun:
    def __init__(self, name: str):
        self.name, self.cfg = name, SimpleNamespace(train=SimpleNamespace(total_steps=1000))
        self.s = {"phase": "train", "round": 0, "pool_size": 100, "step": 0, "best_val_acc": None}

    def summary(self) -> dict:
        return dict(self.s)


def test_a_sweep_without_a_terminal_logs_each_run_at_a_steady_rate_while_it_moves(caplog):
    clock, run = FakeClock(), FakeRun("dp-seed0")
    progress = SweepProgress([run], interval_s=15.0, clock=clock, live=False)
    with caplog.at_level(logging.INFO, logger="dp_hpc.progress"):
        for t in range(60):  # polls 1 s apart: 10 steps per s for 40 s, then stuck for 20 s
            run.s["step"] = min(t, 40) * 10
            progress.update()
            clock.now += 1
    lines = [r.getMessage() for r in caplog.records]
    # the first poll (a phase change), then every 15 s while the step moved since the last line:
    # at 15 s, 30 s and 45 s (step 400, reached at 40 s); none while it stands still after that
    assert [ln.split(" (")[0].split(", ~")[0] for ln in lines] == [
        "dp-seed0: step 0/1,000", "dp-seed0: step 150/1,000", "dp-seed0: step 300/1,000", "dp-seed0: step 400/1,000"]
    assert lines[1] == "dp-seed0: step 150/1,000, ~1 min 25 s left (train r0 pool=100 val=-)"
    run.s.update(phase="eval", step=1000)
    with caplog.at_level(logging.INFO, logger="dp_hpc.progress"):
        progress.update()
    assert caplog.records[-1].getMessage().startswith("dp-seed0: step 1,000/1,000 (eval r0")


def test_a_generating_run_reports_its_chunks_while_they_are_written(caplog):
    clock, run = FakeClock(), FakeRun("dp-seed0")
    done: set[int] = set()
    run.s.update(phase="generate", round=1, step=500)
    run.state = SimpleNamespace(round=1, rounds=[SimpleNamespace(generated=256), SimpleNamespace(generated=640)])
    run.cfg.pool = SimpleNamespace(chunk_size=64)
    progress = SweepProgress([run], interval_s=15.0, clock=clock, live=False)
    with caplog.at_level(logging.INFO, logger="dp_hpc.progress"):
        for t in range(40):  # a chunk every 4 s, 10 chunks of 64 in all
            done.update(range(min(t // 4, 10)))
            run.chunks_seen = (1, len(done))  # what the run's coordinator saw at this poll (Coordinator._observe)
            progress.update()
            clock.now += 1
    assert [r.getMessage().split("(")[1].split(" pool")[0] for r in caplog.records] == [
        "generate r1 chunks 0/10", "generate r1 chunks 3/10", "generate r1 chunks 7/10"]


def test_a_finished_launch_says_where_the_results_are_and_what_to_run_next():
    text = next_steps_text(Path("runs/digits"))
    assert "results: runs/digits/" in text
    assert "next: python -m analysis.report runs/digits " in text and "runs/digits/report/" in text


def test_a_training_generator_leaves_its_last_progress_in_its_folder(tmp_path, splits, monkeypatch):
    import dp_hpc.generate.unet as unet
    from dp_hpc.data.digits import NUM_CLASSES
    from dp_hpc.generate.config import GeneratorConfig

    monkeypatch.setattr(unet, "PROGRESS_EVERY_S", 0.0)  # every step
    cfg = GeneratorConfig(block_out_channels=(8, 16), train_steps=30, batch_size=16, warmup_steps=5,
                          checkpoint_every=10, log_every=10, quality_samples=0)
    unet.train_generator(cfg, splits.gen_train.images, splits.gen_train.labels, tmp_path, NUM_CLASSES)
    p = read_json(GeneratorDir(tmp_path).progress)
    assert (p["step"], p["total"], p["start_step"]) == (30, 30, 0) and p["loss"] > 0 and p["seconds"] > 0
    assert p["stage"] == "quality report and export"  # what the job does after its last step
