"""sweeps/pilot.yaml as a user runs it: planned with --dry-run against a tiny ImageFolder packed with
its class list and a tiny Stable Diffusion folder (the dry-run's GPU-hour estimate on 8 fake GPU
slots is the ~6 GPU-hours the file promises), then run end to end on the CPU at tiny scale: every
run of its grid, same methods, same class list, the local executor."""

from __future__ import annotations

import re

import pytest
import yaml

from dp_hpc.data.imagenet import load_class_list
from dp_hpc.io import read_json
from e2e_helpers import ROOT, run_launch
from test_imagenet_data import write_folder
from test_imagenet_e2e import pack
from test_stable_diffusion import save_tiny_sd

pytestmark = pytest.mark.slow
PILOT = ROOT / "sweeps" / "pilot.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny SD folder and the pilot's classes packed from tiny ImageFolders, at 64 and 128 px."""
    tmp = tmp_path_factory.mktemp("pilot_inputs")
    wnids = list(load_class_list("imagenet10").wnids)
    val, train = write_folder(tmp / "val", wnids, per_class=3), write_folder(tmp / "train", wnids, per_class=3, seed=1)
    for r in (64, 128):
        pack(val, tmp / f"val{r}.h5", "imagenet10", "--resolution", str(r))
        pack(train, tmp / f"test{r}.h5", "imagenet10", "--resolution", str(r), "--per-class", "2")
    return {"sd": save_tiny_sd(tmp / "weights"), "dir": tmp}


def paths(inputs, r: int) -> dict:
    d = inputs["dir"]
    return {"val_h5": str(d / f"val{r}.h5"), "test_h5": str(d / f"test{r}.h5")}


def test_the_pilot_plans_about_six_gpu_hours_on_an_8_gpu_box(inputs, monkeypatch):
    monkeypatch.setenv("DP_HPC_FAKE_GPUS", "1")
    p = paths(inputs, 128)
    r = run_launch(PILOT, inputs["dir"] / "out", "--dry-run", "--set", f"data.val_h5={p['val_h5']}",
                   "--set", f"data.test_h5={p['test_h5']}", "--set", f"generator.model_dir={inputs['sd']}",
                   "--set", "executor.gpus=8")
    assert r.returncode == 0, r.stdout + r.stderr
    runs = re.findall(r"^  (\S+)\s+(static|dp)\s", r.stdout, re.M)
    assert sorted(m for _, m in runs) == ["dp"] * 4 + ["static"] * 2, r.stdout
    assert "GPU slots (local executor): 8" in r.stdout and "training: 8 slot(s) (torchrun, 8 processes" in r.stdout
    total = float(re.search(r"^on this machine: up to ([\d.]+) GPU-h, ~([\d.]+) h on these 8 slots", r.stdout,
                            re.M).group(1))
    assert 5.0 <= total <= 7.0, r.stdout
    assert re.search(rf"^sweep total: up to {total} GPU-h for 6 runs", r.stdout, re.M), r.stdout


def tiny_pilot(inputs, tmp) -> tuple:
    """pilot.yaml with its paths set and every size cut to a CPU test's; its grid's shape kept."""
    raw = yaml.safe_load(PILOT.read_text())
    raw["executor"] = {"kind": "local", "gpus": None, "max_parallel_jobs": 2, "poll_interval_s": 0.2,
                       "threads_per_job": 1}
    b = raw["base"]
    b["data"].update(resolution=64, **paths(inputs, 64))
    b["generator"].update(model_dir=str(inputs["sd"]), generation_resolution=64, prompt_templates=["a photo of a {}"])
    b["sampler"].update(num_inference_steps=4, guidance_every=2)
    b["pool"] = {"chunk_size": 8, "shard_size": 16}
    b["train"].update(input_size=32, total_steps=16, warmup_steps=2, cooldown_steps=4, batch_size=8, eval_every=4,
                      checkpoint_every=None, eval_workers=0, ema=0.001,
                      # an improvement must beat the best by 60 points: the second evaluation plateaus
                      patience={"initial": 1, "increment": 0, "max": 1, "min_delta": 0.6})
    for g in raw["grid"]:
        g["method.budget,method.initial,method.per_round"] = [[16, 8, 8], [24, 8, 8]]
    path = tmp / "pilot.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw["name"]


def test_the_pilot_runs_end_to_end_at_tiny_scale(inputs, tmp_path):
    sweep, name = tiny_pilot(inputs, tmp_path)
    r = run_launch(sweep, tmp_path / "out", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    sweep_dir = tmp_path / "out" / name
    runs = sorted(d.name for d in sweep_dir.iterdir() if (d / "state.json").exists())
    assert len(runs) == 6, runs
    for run in runs:
        st = read_json(sweep_dir / run / "state.json")
        assert st["phase"] == "done", (run, st)
        ev = read_json(sweep_dir / run / "eval.json")
        assert ev["n_test"] == 20 and 0.0 <= ev["acc"] <= 1.0, (run, ev)
    configs = {run: yaml.safe_load((sweep_dir / run / "config.yaml").read_text()) for run in runs}
    omegas = sorted(c["sampler"]["omega"] for c in configs.values() if c["method"]["name"] == "dp")
    assert omegas == [0.0, 0.0, 0.05, 0.05], (runs, omegas)  # dp and its omega = 0 ablation at two budgets
