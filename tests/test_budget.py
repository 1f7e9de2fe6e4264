"""dp_hpc.budget: the dry run's GPU-hours, checked against hand calculations on a tiny sweep with
stated figures; and the in1k dry run's closing `sweep total:` line."""

from __future__ import annotations

import pytest

from dp_hpc.budget import (
    EvalSizes, arm_costs, arm_names, branch_step, eval_sizes, evaluations_after, sweep_costs, sweep_total,
    throughput_figures,
)
from dp_hpc.config import RunConfig, load_sweep
from dp_hpc.coordinate.config import MethodConfig, PoolConfig, ThroughputConfig
from dp_hpc.data.config import DataConfig
from dp_hpc.generate.config import SamplerConfig
from dp_hpc.train.config import TrainConfig
from e2e_helpers import ROOT

# The tiny sweep's stated figures: 2 plain images/s, guided 3x as long, training 100 images/s,
# evaluation 400 images/s; 800 val and 1,600 test images.
TP = ThroughputConfig(plain_images_per_gpu_s=2, guided_cost=3, train_images_per_gpu_s=100, eval_images_per_gpu_s=400,
                      val_images=800, test_images=1600)
SIZES = EvalSizes(val=800, test=1600, source="stated")
TRAIN = TrainConfig(total_steps=1000, warmup_steps=100, cooldown_steps=200, batch_size=36, eval_every=50)
POOL = PoolConfig(chunk_size=64, shard_size=256)


def run(run_name: str, seed: int = 0, omega: float = 0.05, **method) -> tuple[str, RunConfig]:
    return run_name, RunConfig(name=run_name, seed=seed, sampler=SamplerConfig(omega=omega), pool=POOL, train=TRAIN,
                           method=MethodConfig(**method))


DP = dict(name="dp", budget=1000, initial=400, per_round=200)  # rounds 400 + 3 x 200


def tiny_sweep():
    return [run("dp", **DP, branch_at=(0, 3)),  # 3 is the last round: nothing follows it, no branch
            run("dp-omega0", seed=1, omega=0.0, **DP),
            run("static", name="static", budget=1000),
            run("prune", **{**DP, "name": "prune"}, prune_factor=2)]


def test_a_tiny_sweep_costs_what_a_hand_calculation_gives():
    costs = {c.name: c for c in sweep_costs(tiny_sweep(), TP, [SIZES] * 4, gpus=4)}
    # Every run: training 1000 steps x 36 images / 100 per s = 360 s; evaluation 20 x 800 val
    # (steps 50, 100, ..., 1000) / 400 per s = 40 s, and 1600 test / 400 = 4 s.
    train_s, eval_s = 360, 44
    # dp: 400 plain / 2 per s = 200 s, then 3 guided rounds of 200 at 3x: 300 s each.
    # Its branch-out after round 0: plateaus evenly between step 100 (warm-up) and 800 (cool-down)
    # for 4 rounds -> 100 + 700 / 4 = 275, on an evaluation step: 250. It trains 750 steps x 36 /
    # 100 = 270 s and evaluates 15 times (300, ..., 1000): 15 x 2 s = 30 s, and the test set: 4 s.
    dp = costs["dp"]
    assert [r.kind for r in dp.rounds] == ["plain", "guided", "guided", "guided"]
    assert [r.tasks for r in dp.rounds] == [2, 1, 1, 1]
    assert [b.round_index for b in dp.branches] == [0] and dp.branches[0].train.start_step == 250
    assert dp.branches[0].train.evals == 15 and dp.train.evals == 20
    assert dp.generation_gpu_h * 3600 == pytest.approx(200 + 3 * 300)
    assert dp.branch_gpu_h * 3600 == pytest.approx(270 + 30 + 4)
    assert dp.total * 3600 == pytest.approx(1100 + train_s + eval_s + 304)
    # dp at omega 0: the same rounds at the plain rate (no classifier gradient): 1000 / 2 = 500 s
    omega0 = costs["dp-omega0"]
    assert not any(r.steered for r in omega0.rounds) and omega0.total * 3600 == pytest.approx(500 + train_s + eval_s)
    assert costs["static"].total * 3600 == pytest.approx(500 + train_s + eval_s)
    assert not costs["static"].upper_bound and dp.upper_bound
    # prune: 400 plain, then 3 rounds generating 2 x 200 plain each: 200 + 3 x 200 s
    assert costs["prune"].generation_gpu_h * 3600 == pytest.approx(800)
    assert costs["prune"].rounds[1].generated == 400 and not costs["prune"].rounds[1].steered

    arms = {a.arm: a for a in arm_costs(list(costs.values()))}
    assert list(arms) == ["dp", "dp (ω=0)", "static", "prune"]
    assert arms["dp (ω=0)"].total * 3600 == pytest.approx(904)
    total = sweep_total(list(costs.values()))
    assert total.runs == 4 and total.total * 3600 == pytest.approx(1808 + 904 + 904 + 1204)
    assert total.eval_gpu_h * 3600 == pytest.approx(4 * 44 + 34)


def test_evaluations_and_branch_steps_fall_on_evaluation_steps():
    assert evaluations_after(0, 1000, 50) == 20
    assert evaluations_after(0, 1010, 50) == 21  # the last step always evaluates
    assert evaluations_after(250, 1000, 50) == 15
    cfg = tiny_sweep()[0][1]
    assert [branch_step(cfg, r) for r in range(3)] == [250, 450, 600]  # 275, 450, 625 floored to 50s


def test_throughput_figures_name_their_source():
    figs = {f.key: f for f in throughput_figures(ThroughputConfig(plain_images_per_gpu_s=1.5))}
    assert figs["plain_images_per_gpu_s"].source == "the sweep's slurm.throughput.plain_images_per_gpu_s"
    assert figs["guided_cost"].value == 1.82 and "paper" in figs["guided_cost"].source
    assert "docs/benchmarks.md" in figs["guided_cost"].source and figs["train_images_per_gpu_s"].source.startswith("the default")


def test_eval_sizes_default_to_the_datasets_splits_unless_the_sweep_sets_them():
    digits = eval_sizes(DataConfig(), 10, ThroughputConfig())
    assert (digits.val, digits.test) == (359, 539)  # 20% and 30% of 1,797
    imagenet = DataConfig(dataset="imagenet", val_h5="v.h5", test_h5="t.h5")
    s = eval_sizes(imagenet, 1000, ThroughputConfig())
    assert (s.val, s.test) == (50_000, 50_000) and "50 per class" in s.source
    s = eval_sizes(imagenet, 100, ThroughputConfig(test_images=10_000))
    assert (s.val, s.test) == (5_000, 10_000) and "test_images" in s.source


def test_arms_of_the_in100_sweep_match_the_reports():
    sweep, runs = load_sweep(ROOT / "sweeps" / "in100.yaml")
    arms = dict(zip((r.name for r in runs), arm_names([r.config for r in runs])))
    by_omega = {r.config.sampler.omega: arms[r.name] for r in runs if r.config.method.budget == 1_794_000
                and r.config.method.name == "dp"}
    assert by_omega == {0.0: "dp (ω=0)", 0.03: "dp (ω=0.03)", 0.05: "dp", 0.07: "dp (ω=0.07)"}
    assert {arms[r.name] for r in runs if r.config.method.name == "static"} == {"static"}


def test_the_in1k_dry_run_ends_with_its_sweep_total(capsys):
    from dp_hpc.dry_run import print_slurm_plan

    sweep, runs = load_sweep(ROOT / "sweeps" / "in1k.yaml")
    print_slurm_plan(sweep, runs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("sweep total: up to 13,371.4 GPU-h for 7 runs"), lines[-1]
    assert any(ln.startswith("  dp (5 runs): ") for ln in lines) and any(ln.startswith("  static (2 runs): ")
                                                                       for ln in lines)
    assert any("1.5 images/s per GPU (the sweep's slurm.throughput.plain_images_per_gpu_s)" in ln for ln in lines)


def test_the_docs_dry_run_budget_is_what_the_dry_run_prints(capsys):
    from dp_hpc.dry_run import print_budget

    readme = (ROOT / "docs" / "cli.md").read_text()
    start = readme.index("**A dry run's budget.**")
    block = readme[readme.index("```\n", start) + 4:]
    block = block[:block.index("```")]
    sweep, runs = load_sweep(ROOT / "sweeps" / "in1k.yaml")
    print_budget(sweep, runs)
    assert block == capsys.readouterr().out, "docs/cli.md's dry-run block is out of date: paste the output again"
