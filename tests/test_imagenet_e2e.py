"""The ImageNet path end to end through the launcher, at toy scale: a tiny random Stable Diffusion
saved to a folder (test_stable_diffusion.save_tiny_sd), evaluation files packed from an ImageFolder
of JPEGs the test writes (python -m dp_hpc.data.pack), ResNet-50 with Mixup/CutMix, a JPEG pool at
3x64x64. A dp run must plateau, generate a guided round through the VAE with its own checkpoint,
finish and evaluate; a static run beside it shares the prepared generator."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dp_hpc.io import read_json
from dp_hpc.pool import Pool, PoolReader
from e2e_helpers import ROOT, run_launch
from test_imagenet_data import WNIDS, write_folder
from test_stable_diffusion import save_tiny_sd

pytestmark = pytest.mark.slow


def pack(src, out, classes, *extra):
    r = subprocess.run([sys.executable, "-m", "dp_hpc.data.pack", "--src", str(src), "--out", str(out),
                        "--classes", str(classes), "--resolution", "64", "--workers", "0", *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr


def test_tiny_imagenet_sweep_with_stable_diffusion_runs_to_done(tmp_path):
    sd = save_tiny_sd(tmp_path / "weights")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(WNIDS) + "\n")
    pack(write_folder(tmp_path / "val", per_class=6), tmp_path / "val.h5", classes)
    pack(write_folder(tmp_path / "train", per_class=8, seed=1), tmp_path / "test.h5", classes, "--per-class", "5")
    sweep = {
        "name": "tiny-imagenet",
        "executor": {"kind": "debug"},
        "base": {
            "data": {"dataset": "imagenet", "classes": str(classes), "resolution": 64,
                     "val_h5": str(tmp_path / "val.h5"), "test_h5": str(tmp_path / "test.h5")},
            "generator": {"backend": "stable-diffusion", "model_dir": str(sd), "generation_resolution": 64,
                          "prompt_templates": ["a photo of a {}"]},
            "sampler": {"num_inference_steps": 4, "cfg_lambda": 3.0, "omega": 0.05, "guidance_every": 2,
                        "batch_size": 16},
            "pool": {"chunk_size": 8, "shard_size": 16},
            "train": {"classifier": "resnet50", "input_size": 32, "total_steps": 16, "warmup_steps": 2,
                      "cooldown_steps": 4, "batch_size": 8, "eval_every": 4, "checkpoint_keep": 1,
                      "eval_workers": 0, "ema": 0.001,
                      # an improvement must beat the best by 60 points: the second evaluation plateaus
                      "patience": {"initial": 1, "increment": 0, "max": 1, "min_delta": 0.6}},
            "method": {"budget": 32, "initial": 16, "per_round": 16},
        },
        "grid": {"method.name": ["dp", "static"]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    r = run_launch(path, tmp_path / "out", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]

    sweep_dir = tmp_path / "out" / "tiny-imagenet"
    (gen,) = (sweep_dir / "generators").iterdir()
    assert (gen / "text_embeddings.pt").exists() and read_json(gen / "generator.json") is not None
    dp = read_json(sweep_dir / "dp" / "state.json")
    assert dp["phase"] == "done"
    assert [(x["kind"], x["kept"], x["classifier_step"]) for x in dp["rounds"]] == [("plain", 16, None),
                                                                                     ("guided", 16, 8)]
    reader = PoolReader(sweep_dir / "dp")
    images, labels = reader.read(list(range(32)))
    assert images.shape == (32, 3, 64, 64) and sorted(set(labels.tolist())) == [0, 1, 2]
    entropy = Pool(sweep_dir / "dp").group(1)["entropy"][:]  # scored by the classifier that guided it
    assert entropy.shape == (16,) and np.isfinite(entropy).all() and (entropy > 0).all()
    meta = json.loads((sweep_dir / "dp" / "pool.zarr" / "round_001" / "images" / "zarr.json").read_text())
    assert "dp_hpc.jpeg" in json.dumps(meta["codecs"]), "3x64x64 RGB rounds are stored as JPEG"
    for run in ("dp", "static"):
        ev = read_json(sweep_dir / run / "eval.json")
        assert ev["n_test"] == 15 and 0.0 <= ev["acc"] <= 1.0 and ev["step"] == 16
