"""Generator training: outputs and quality report, idempotence, resumption after an interruption
(a deterministic stop and a real SIGKILL), config validation. Real models, CPU, ~30 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from diffusers import DDIMScheduler, UNet2DModel

from dp_hpc.data.digits import NUM_CLASSES
from dp_hpc.errors import ConfigError
from dp_hpc.generate import unet as unet_mod
from dp_hpc.generate.config import GeneratorConfig
from dp_hpc.generate.unet import CHECKPOINT, MARKER, load_generator, train_generator
from e2e_helpers import HANG_S

REPO = Path(__file__).resolve().parents[1]

# A generator small enough to train 60 steps in about a second: for the resume tests.
TINY = GeneratorConfig(block_out_channels=(8, 16), train_steps=60, batch_size=16, warmup_steps=5,
                       checkpoint_every=20, log_every=20, quality_samples=0)


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return UNet2DModel.from_pretrained(out_dir / "unet", low_cpu_mem_usage=False).state_dict()


def test_outputs_and_quality_report(smoke_generator_dir):
    info = json.loads((smoke_generator_dir / MARKER).read_text())
    assert info["complete"] and info["steps"] == GeneratorConfig.smoke().train_steps
    assert info["config"]["block_out_channels"] == list(GeneratorConfig.smoke().block_out_channels)
    assert info["train_wall_s"] > 0  # recorded; how fast: bench/generator_training.py, not a test
    q = info["quality"]
    # A digits_cnn trained on real gen_train must recognise most real test digits and most
    # (plain) generated ones: the generator makes digits of the requested class.
    assert q["real_test"]["accuracy"] > 0.9, q
    assert q["generated"]["accuracy"] > 0.6, q
    assert q["generated"]["n"] == GeneratorConfig.smoke().quality_samples
    assert 0 < q["nn_dist_to_gen_train"]["generated_median"]
    unet, scheduler = load_generator(smoke_generator_dir)
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.clip_sample
    assert scheduler.config.timestep_spacing == "trailing"
    assert not unet.training and unet.config.num_class_embeds == NUM_CLASSES + 1


def test_second_call_returns_at_once(smoke_generator_dir, splits, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("train_generator trained although generator.json exists")

    monkeypatch.setattr(unet_mod, "_train_step", no_training)
    monkeypatch.setattr(unet_mod, "generator_quality", no_training)
    monkeypatch.setattr(unet_mod._Training, "start_or_resume", no_training)  # not even a model is built
    info = train_generator(GeneratorConfig.smoke(), splits.gen_train.images, splits.gen_train.labels,
                           smoke_generator_dir, NUM_CLASSES, eval_splits=splits)
    assert info == json.loads((smoke_generator_dir / MARKER).read_text())


def test_completed_folder_with_other_config_is_an_error(smoke_generator_dir, splits):
    with pytest.raises(ValueError, match="different config"):
        train_generator(replace(GeneratorConfig.smoke(), seed=1), splits.gen_train.images,
                        splits.gen_train.labels, smoke_generator_dir, NUM_CLASSES)


def test_resume_after_stop_equals_uninterrupted(tmp_path, splits, monkeypatch):
    x, y = splits.gen_train.images, splits.gen_train.labels
    full = train_generator(TINY, x, y, tmp_path / "full", NUM_CLASSES)

    calls = []
    real_step = unet_mod._train_step
    monkeypatch.setattr(unet_mod, "_train_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    part = train_generator(TINY, x, y, tmp_path / "resumed", NUM_CLASSES, max_steps_this_call=25)
    assert part == {"complete": False, "step": 25}
    assert not (tmp_path / "resumed" / MARKER).exists()
    assert (tmp_path / "resumed" / CHECKPOINT).exists()
    assert len(calls) == 25
    done = train_generator(TINY, x, y, tmp_path / "resumed", NUM_CLASSES)
    assert len(calls) == TINY.train_steps, "the resumed call must train only the remaining steps"
    assert done["steps"] == full["steps"] == TINY.train_steps
    # Model, optimizer, LR schedule, EMA and data RNG are all restored: same weights, bit for bit.
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert done["final_loss"] == full["final_loss"]


def test_resume_after_sigkill(tmp_path, splits):
    """A real crash: kill -9 a training subprocess once it has written a checkpoint, then finish the
    job here; it must start from that checkpoint, not from step 0."""
    out = tmp_path / "gen"
    cfg = replace(TINY, train_steps=100_000, checkpoint_every=20)  # would run for minutes
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads(1)
        from pathlib import Path
        from dp_hpc.data.config import DataConfig
        from dp_hpc.data.digits import load_digit_splits
        from dp_hpc.generate.config import GeneratorConfig
        from dp_hpc.generate.unet import train_generator
        s = load_digit_splits(DataConfig())
        cfg = GeneratorConfig(**{asdict(cfg)!r})
        train_generator(cfg, s.gen_train.images, s.gen_train.labels, Path({str(out)!r}), 10)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + HANG_S
        while not (out / CHECKPOINT).exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"no checkpoint after {HANG_S} s (a hang guard)"
            time.sleep(0.1)
        time.sleep(0.3)  # let it get past the first save, so the kill can land mid-step or mid-save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = torch.load(out / CHECKPOINT, weights_only=True)["state"]["step"]
    assert saved >= 20 and saved % 20 == 0
    assert not (out / MARKER).exists()
    part = train_generator(cfg, splits.gen_train.images, splits.gen_train.labels, out, NUM_CLASSES,
                           max_steps_this_call=5)
    assert part == {"complete": False, "step": saved + 5}, part


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("resolution", {"resolution": 12}),
        ("resolution", {"resolution": 8, "block_out_channels": (8, 16, 32, 64, 64)}),
        ("block_out_channels", {"block_out_channels": (12, 24)}),
        ("cond_drop_prob", {"cond_drop_prob": 1.0}),
        ("train_steps", {"train_steps": 0}),
        ("ema_decay", {"ema_decay": 1.0}),
        ("lr", {"lr": 0.0}),
    ],
)
def test_generator_config_errors_name_the_field(field, kwargs):
    with pytest.raises(ConfigError) as e:
        GeneratorConfig(**kwargs)
    assert e.value.key == field


def test_nearest_upsampling_round_trips_through_area_downsampling(splits):
    from dp_hpc.generate.sampler import to_storage
    from dp_hpc.generate.unet import to_model_space

    x = to_model_space(splits.test.images[:32], 16)  # (32, 1, 16, 16) in [-1, 1]
    assert x.shape == (32, 1, 16, 16)
    np.testing.assert_array_equal(to_storage(x, 8).numpy(), splits.test.images[:32])


def test_a_duplicate_generator_job_waits_for_the_first_and_finds_the_generator_made(tmp_path):
    """Two jobs on one generator folder (a launcher killed between starting the job and recording
    it): the second waits on generator.lock while the first holds it, writes nothing meanwhile
    (diffusers would write the weights in place), and then returns the first one's generator.json
    without training anything."""
    from dp_hpc.config import to_dict
    from dp_hpc.data.config import DataConfig
    from dp_hpc.generate.cache import build_generator
    from dp_hpc.generate.config import SamplerConfig
    from dp_hpc.io import try_lock
    from dp_hpc.layout import GeneratorDir

    g = GeneratorDir(tmp_path / "gen")
    g.path.mkdir()
    cfg = replace(TINY, quality_samples=0, quality_classifier_steps=20)
    g.config.write_text(yaml.safe_dump({"data": to_dict(DataConfig()), "generator": to_dict(cfg),
                                        "sampler": to_dict(SamplerConfig())}, sort_keys=False))
    first = try_lock(g.lock)  # the first job holds the folder (here: this process)
    assert first is not None
    err = tmp_path / "duplicate.err"
    code = "import json, sys; from dp_hpc.jobs import train_generator; print(json.dumps(train_generator(sys.argv[1])))"
    with open(err, "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", code, str(g.path)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=err_file, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + HANG_S
        while "held by another job" not in err.read_text():
            assert proc.poll() is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "the duplicate never reached the lock"
            time.sleep(0.1)
        time.sleep(1.0)
        assert sorted(p.name for p in g.path.iterdir()) == ["config.yaml", "generator.lock"], "the duplicate wrote"
        made = build_generator(g.path)  # the first job's work, under its lock
    finally:
        first.close()
    out, _ = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, err.read_text()[-2000:]
    assert json.loads(out.splitlines()[-1]) == made == json.loads(g.marker.read_text())
    assert "generator done" not in err.read_text(), "the duplicate trained again"
