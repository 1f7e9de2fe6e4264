"""The paper's sweeps (sweeps/in100.yaml, sweeps/in1k.yaml): their plans match the paper's data
budgets, the largest pool fits its storage target, and launching them without the local model
and data fails before anything is written."""

from __future__ import annotations

import re

import pytest

from dp_hpc.config import load_sweep
from e2e_helpers import ROOT, run_launch

IN1K, IN100 = ROOT / "sweeps" / "in1k.yaml", ROOT / "sweeps" / "in100.yaml"


def plan_rows(stdout: str) -> dict[str, tuple[str, int, float]]:
    """run -> (method, budget, pool GB) from the --dry-run table."""
    rows = {}
    for m in re.finditer(r"^  (\S+)\s+(dp|static|prune)\s+([\d,]+)\s+[\d,]+\s+([\d.]+) (GB|MB|KB)", stdout, re.M):
        scale = {"KB": 1e-6, "MB": 1e-3, "GB": 1.0}[m.group(5)]
        rows[m.group(1)] = (m.group(2), int(m.group(3).replace(",", "")), float(m.group(4)) * scale)
    return rows


def test_in1k_plan_has_the_paper_budgets_and_fits_its_storage(tmp_path):
    """The plan is printed; then the dry run checks what a launch checks: here the ImageNet data and
    Stable Diffusion weights are missing, so it exits 2 as the launch would, naming them."""
    r = run_launch(IN1K, tmp_path / "out", "--dry-run")
    assert r.returncode == 2 and "the launch would stop here" in r.stdout, r.stderr
    assert "/datasets/imagenet/packed/" in r.stderr or "/models/stable-diffusion-v1-5" in r.stderr, r.stderr
    rows = plan_rows(r.stdout)
    # Table 1 (6.5M, 9.1M) and the IN-1k scaling runs: DP 0.64M/1.308M/13.08M, static 1.3M/13M
    assert sorted(b for m, b, _ in rows.values() if m == "dp") == [640_000, 1_308_000, 6_500_000, 9_100_000,
                                                                   13_080_000]
    assert sorted(b for m, b, _ in rows.values() if m == "static") == [1_300_000, 13_000_000]
    assert rows["dp-budget9100000"][2] < 500, "the largest Table-1 DP pool must fit in 500 GB"
    assert "torchrun 4 node(s) x 8 process(es)" in r.stdout and "--gpus-per-node=8" in r.stdout
    assert re.search(r"dp-budget9100000: up to [\d.,]+ GPU-h\n    generation: round 0: 1,820,000 plain in 711 tasks "
                     r"~[\d.,]+ GPU-h; rounds 1-16: 455,000 guided", r.stdout)
    # the plan ends with the total; the closing line says the launch would stop (no data files here)
    assert r.stdout.splitlines()[-2].startswith("sweep total: up to "), r.stdout
    assert r.stdout.splitlines()[-1].startswith("the launch would stop here"), r.stdout
    assert not (tmp_path / "out").exists()


def test_in100_plan_has_table_4_budgets_and_the_omega_ablation(tmp_path):
    sweep, runs = load_sweep(IN100)
    by_name = {r.name: r.config for r in runs}
    assert sorted(c.method.budget for c in by_name.values() if c.method.name == "static") == \
        [64_000, 130_000, 400_000, 2_000_000, 4_000_000]
    assert sorted({c.method.budget for c in by_name.values() if c.method.name == "dp"}) == \
        [160_000, 416_000, 1_794_000, 3_138_000]
    assert sorted(c.sampler.omega for c in by_name.values() if c.method.budget == 1_794_000) == [0.0, 0.03, 0.05, 0.07]
    cfg = by_name["dp-budget160000"]
    assert (cfg.train.total_steps, cfg.train.lr, cfg.train.batch_size, cfg.train.ema) == (50_000, 3e-3, 2048, 0.001)
    assert (cfg.sampler.cfg_lambda, cfg.data.classes, cfg.generator.backend) == (3.0, "imagenet100", "stable-diffusion")
    assert sweep.slurm.training.nodes * sweep.slurm.training.gpus_per_node == 32
    r = run_launch(IN100, tmp_path / "out", "--dry-run")
    assert r.returncode == 2 and len(plan_rows(r.stdout)) == len(runs) == 12, r.stdout + r.stderr


@pytest.mark.parametrize("sweep", [IN100, IN1K])
def test_launching_without_local_data_and_weights_fails_before_anything_is_written(tmp_path, sweep):
    r = run_launch(sweep, tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "/datasets/imagenet/packed/" in r.stderr or "/models/stable-diffusion-v1-5" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
