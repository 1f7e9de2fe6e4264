"""analysis.read and analysis.frames on small sweep folders written by hand: a sweep into tidy frames
(one row per evaluation, per job, per round, per run), job times, compute and arms."""

from __future__ import annotations

import math
import os

import pandas as pd
import pytest
import yaml

from analysis.frames import addition_steps, assign_arms, collect, collect_jobs, per_run
from analysis.report import write_report
from analysis.stats import summary
from report_helpers import T0, make_grid_sweep, make_run, write_job_logs


@pytest.fixture
def grid(tmp_path):
    return make_grid_sweep(tmp_path)


# -- collect ----------------------------------------------------------------------------------

def test_collect_one_row_per_evaluation_with_flat_config(grid):
    df = collect(grid)
    assert len(df) == 12 * 5  # 12 runs x (4 val + 1 test); the torn last line is skipped
    row = df[(df["run"] == "dp-budget1000-seed1") & (df["split"] == "test")].iloc[0]
    assert (row["method"], row["budget"], row["seed"], row["omega"], row["phase"]) == ("dp", 1000, 1, 0.05, "done")
    assert row["acc"] == 0.86 and row["round"] == 1 and row["generated"] == 1000 and row["kept"] == 1000
    assert row["config.train.patience.initial"] == 1
    assert row["config.generator.block_out_channels"] == "[16, 32]"  # lists as JSON text
    assert str(df["time"].dtype).startswith("datetime64") and str(df["time"].dt.tz) == "UTC"


def test_collect_marks_failed_and_in_progress_runs_and_counts_complete_rounds(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text("name: s\n")
    make_run(sweep, "dp-failed", "dp", 100, 0, test_acc=None, phase="failed",
             error="Traceback (most recent call last):\n  ...\nRuntimeError: boom", complete=[0, 1])
    # round 1 recorded in state but its generation not complete: not counted as generated data
    make_run(sweep, "dp-running", "dp", 100, 0, test_acc=None, phase="generate", complete=[0],
             val=[(20, 0, 0.5, 1.0), (40, 0, 0.55, 0.9)])
    # no marker folder yet: the round being generated does not count
    make_run(sweep, "static-gen", "static", 100, 0, test_acc=None, phase="generate", val=[])
    make_run(sweep, "static-new", "static", 100, 0, test_acc=None, val=[])
    (sweep / "static-new" / "state.json").unlink()
    df = collect(sweep)
    runs = per_run(df).set_index("run")
    assert runs.loc["dp-failed", "phase"] == "failed"
    assert runs.loc["dp-failed", "error"] == "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    assert runs.loc["dp-failed", "generated"] == 100
    assert runs.loc["dp-running", ["phase", "generated", "n_rounds", "steps"]].tolist() == ["generate", 50, 1, 40]
    assert runs.loc["static-gen", ["phase", "generated", "n_rounds"]].tolist() == ["generate", 0, 0]
    assert runs.loc["static-new", "phase"] == "new" and len(df[df["run"] == "static-new"]) == 1
    assert runs["test_acc"].isna().all()
    summ = summary(df)
    dp = summ[summ["method"] == "dp"].iloc[0]
    assert (dp["n_runs"], dp["n_seeds"]) == (2, 0) and math.isnan(dp["acc_mean"])


def test_old_test_line_without_round_takes_the_last_trained_round(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    make_run(sweep, "dp", "dp", 100, 0, test_acc=0.9, test_round=False)  # no sweep.yaml: run folders suffice
    df = collect(sweep)
    assert df[df["split"] == "test"]["round"].tolist() == [1]


def test_addition_steps_from_state_or_from_metrics():
    rounds = [{"index": 0, "classifier_step": None}, {"index": 1, "classifier_step": 120},
              {"index": 2, "classifier_step": None}]
    metrics = [{"split": "val", "step": s, "round": r} for s, r in [(100, 0), (120, 0), (140, 1), (180, 1), (200, 2)]]
    assert addition_steps(rounds, metrics) == [120, 180]
    assert addition_steps(rounds[:1], metrics) == []


# -- compute ----------------------------------------------------------------------------------

def test_job_wall_times_from_logs_and_fallback_to_result_mtime(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "executor": {"threads_per_job": 2}}))
    logs = sweep / "r" / "logs"
    jobs = [{"job_id": "11", "kind": "generate", "round": 0, "submitted": T0, "status": "succeeded"},
            {"job_id": "12", "kind": "generate", "round": 0, "submitted": T0, "status": "succeeded"},
            {"job_id": "13", "kind": "train", "round": 0, "submitted": T0, "status": "succeeded"},
            {"job_id": "14", "kind": "eval", "round": 0, "submitted": T0 + 500, "status": "succeeded"},
            {"job_id": "15", "kind": "eval", "round": 0, "submitted": T0, "status": "lost"}]
    make_run(sweep, "r", "static", 100, 0, test_acc=0.9, jobs=jobs)
    write_job_logs(logs, "11", 0, 60)
    write_job_logs(logs, "12", 10, 40)
    write_job_logs(logs, "13", 100, 280)
    (logs / "14_0_result.pkl").write_bytes(b"x")
    os.utime(logs / "14_0_result.pkl", (T0 + 536, T0 + 536))
    j = collect_jobs(sweep).set_index("job_id")
    assert j["wall_s"].tolist()[:4] == [60, 30, 180, 36]
    assert j["time_source"].tolist() == ["log timestamps"] * 3 + ["submitted to result mtime", "none"]
    assert j.loc["13", "cpu_h"] == pytest.approx(180 * 2 / 3600)
    run = per_run(collect(sweep)).iloc[0]
    assert run["generate_cpu_h"] == pytest.approx(90 * 2 / 3600)
    assert run["train_cpu_h"] == pytest.approx(180 * 2 / 3600)
    assert run["eval_cpu_h"] == pytest.approx(36 * 2 / 3600)
    assert run["cpu_h"] == pytest.approx(306 * 2 / 3600)


# -- arms: the omega = 0 ablation and other distinguishing keys --------------------------------

def test_dp_omega_zero_is_its_own_arm(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    for budget in (100, 1000):
        for seed in (0, 1):
            make_run(sweep, f"static-{budget}-{seed}", "static", budget, seed, test_acc=0.6 + 0.1 * (budget > 100))
            make_run(sweep, f"dp-{budget}-{seed}", "dp", budget, seed, test_acc=0.9)
            make_run(sweep, f"dpw0-{budget}-{seed}", "dp", budget, seed, test_acc=0.5, omega=0.0)
            make_run(sweep, f"prune2-{budget}-{seed}", "prune", budget, seed, test_acc=0.7, prune_factor=2)
            make_run(sweep, f"prune4-{budget}-{seed}", "prune", budget, seed, test_acc=0.8, prune_factor=4)
    df = collect(sweep)
    runs = per_run(df).set_index("run")
    assert runs.loc["dpw0-100-0", "arm"] == "dp (ω=0)" and runs.loc["dp-100-0", "arm"] == "dp"
    assert runs.loc["prune4-100-1", "arm"] == "prune (prune_factor=4)"
    assert runs.loc["static-1000-0", "arm"] == "static"  # initial/per_round follow the budget: no arm
    st = summary(df)
    assert st["method"].tolist() == ["static", "static", "dp", "dp", "dp (ω=0)", "dp (ω=0)",
                                     "prune (prune_factor=2)", "prune (prune_factor=2)",
                                     "prune (prune_factor=4)", "prune (prune_factor=4)"]
    by = st.set_index(["method", "budget"])
    assert by.loc[("dp", 100), "acc_mean"] == pytest.approx(0.9) and by.loc[("dp (ω=0)", 100), "acc_mean"] == 0.5
    assert by.loc[("dp (ω=0)", 1000), "n_runs"] == 2 and by.loc[("dp (ω=0)", 1000), "base_method"] == "dp"
    out = write_report(sweep, tmp_path / "rep").read_text()
    assert "| dp (ω=0) | 50.00 [" in out and "| dp | 90.00 [" in out
    assert "| dpw0-100-0 | dp (ω=0) | 100 | 0 |" in out


def test_omega_values_all_labelled_when_several_are_guided():
    runs = pd.DataFrame([{"run": f"r{w}-{s}", "method": "dp", "budget": 100, "seed": s, "config.sampler.omega": w,
                          "config.name": f"r{w}-{s}"} for w in (0.0, 0.03, 0.05) for s in (0, 1)])
    assert sorted(set(assign_arms(runs))) == ["dp (ω=0)", "dp (ω=0.03)", "dp (ω=0.05)"]
    # in100's layout: the main curve at omega 0.05 over four budgets, the ablation at one budget
    in100 = pd.DataFrame([{"run": f"m{n}-{s}", "method": "dp", "budget": n, "seed": s, "config.sampler.omega": 0.05,
                           "config.name": f"m{n}-{s}"} for n in (1, 2, 3, 4) for s in (0, 1)]
                         + [{"run": f"a{w}-{s}", "method": "dp", "budget": 3, "seed": s, "config.sampler.omega": w,
                             "config.name": f"a{w}-{s}"} for w in (0.0, 0.03, 0.07) for s in (0, 1)])
    arms = assign_arms(in100)
    assert sorted(set(arms)) == ["dp", "dp (ω=0)", "dp (ω=0.03)", "dp (ω=0.07)"]
    assert (arms == "dp").sum() == 8
    # dp at omega 0 alone is still the ablation, not dp
    alone = runs[runs["config.sampler.omega"] == 0]
    assert set(assign_arms(alone)) == {"dp (ω=0)"}


def test_model_compute_seconds_when_jobs_record_them(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    jobs = [{"job_id": "1", "kind": "generate", "round": 0, "submitted": T0, "status": "succeeded", "compute_s": 1.5},
            {"job_id": "2", "kind": "train", "round": 0, "submitted": T0, "status": "succeeded",
             "detail": {"compute_s": 10.0}},
            {"job_id": "3", "kind": "eval", "round": 0, "submitted": T0, "status": "succeeded"}]
    make_run(sweep, "r", "static", 100, 0, test_acc=0.9, jobs=jobs)
    for j in jobs:
        write_job_logs(sweep / "r" / "logs", j["job_id"], 0, 60)
    run = per_run(collect(sweep)).iloc[0]
    assert (run["generate_compute_s"], run["train_compute_s"], run["eval_compute_s"], run["compute_s"]) == \
        (1.5, 10.0, 0.0, 11.5)
    assert run["cpu_h"] == pytest.approx(180 / 3600)  # CPU-h kept beside it
    assert collect_jobs(sweep)["compute_s"].fillna(-1).tolist() == [1.5, 10.0, -1]
    md = write_report(sweep, tmp_path / "rep").read_text()
    assert "| model compute (s) | classifier iterations |" in md and "| 11.5 |" in md
    assert (tmp_path / "rep" / "acc_vs_model_compute.png").stat().st_size > 0


def test_gpu_hours_sum_elapsed_times_allocated_gpus_of_recorded_jobs():
    from analysis.frames import gpu_hours

    jobs = [{"kind": "generate", "detail": {"start": 0, "elapsed_s": 1800, "gpus": 1}},
            {"kind": "train", "detail": {"elapsed_s": 3600, "gpus": 8}},
            {"kind": "eval", "detail": {}}]  # a job that ended before accounting was recorded
    assert gpu_hours(jobs) == pytest.approx(0.5 + 8.0)
    assert math.isnan(gpu_hours([{"kind": "train", "detail": {}}]))  # local runs: unknown, not zero
