"""analysis.report on small sweep folders written by hand: known numbers in, exact numbers out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import report as R

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # unix time of the first submission in the fake sweeps

# (method, budget) -> test accuracy of seed 0 and seed 1
ACC = {
    ("static", 100): (0.60, 0.62), ("static", 1000): (0.70, 0.72), ("static", 10000): (0.80, 0.80),
    ("dp", 100): (0.75, 0.77), ("dp", 1000): (0.84, 0.86), ("dp", 10000): (0.88, 0.90),
}


def _stamp(seconds: float) -> str:
    """A submitit log timestamp `seconds` after 2026-01-01 00:00:00."""
    import datetime as dt

    t = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}"


def write_job_logs(logs: Path, job_id: str, start_s: float, end_s: float) -> None:
    """submitit-like logs: the .out has the start line, the .err ends with the exit line."""
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{job_id}_0_log.out").write_text(
        f"submitit INFO ({_stamp(start_s)}) - Starting with JobEnvironment(job_id={job_id})\n")
    (logs / f"{job_id}_0_log.err").write_text(
        f"{_stamp(start_s + 1)} [rank0] dp_hpc.x INFO: working\nno timestamp on this line\n"
        f"{_stamp(end_s)} [rank0] submitit INFO: Exiting after successful completion\n")


def make_run(sweep: Path, name: str, method: str, budget: int, seed: int, *, test_acc: float | None,
             phase: str = "done", rounds: list[dict] | None = None, val: list[tuple] | None = None,
             jobs: list[dict] | None = None, error: str | None = None, complete: list[int] | None = None,
             test_round: bool = True) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "sampler": {"omega": 0.05, "cfg_lambda": 0.5},
           "generator": {"block_out_channels": [16, 32]},
           "train": {"total_steps": 100, "patience": {"initial": 1}},
           "method": {"name": method, "budget": budget, "initial": budget // 2, "per_round": budget // 2,
                      "prune_factor": 2}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if rounds is None:
        rounds = ([{"index": 0, "kind": "plain", "kept": budget, "generated": budget, "classifier_step": None}]
                  if method == "static" else
                  [{"index": 0, "kind": "plain", "kept": budget // 2, "generated": budget // 2, "classifier_step": None},
                   {"index": 1, "kind": "guided", "kept": budget // 2, "generated": budget // 2, "classifier_step": 40}])
    state = {"phase": phase, "round": rounds[-1]["index"] if rounds else 0, "rounds": rounds,
             "jobs": jobs or [], "error": error, "failed_phase": "train" if phase == "failed" else None}
    (run / "state.json").write_text(json.dumps(state))
    if val is None:
        last = rounds[-1]["index"] if rounds else 0
        val = [(20, 0, 0.5, 1.0), (40, 0, 0.6, 0.8), (60, last, 0.65, 0.9), (100, last, 0.7, 0.6)]
    lines = [{"split": "val", "step": s, "round": r, "pool_size": 1, "acc": a, "loss": 1.0, "train_loss": tl,
              "lr": 0.001, "time": f"2026-01-01T00:0{i}:00.000+00:00"} for i, (s, r, a, tl) in enumerate(val)]
    if test_acc is not None:
        test = {"acc": test_acc, "loss": 0.5, "step": 100, "pool_size": budget, "n_test": 500,
                "rounds": [r["index"] for r in rounds], "time": "2026-01-01T00:09:00.000+00:00"}
        if test_round:
            test["round"] = rounds[-1]["index"]
        lines.append({"split": "test", **test})
        (run / "eval.json").write_text(json.dumps(test))
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"torn": ')
    if complete is not None:
        for i in complete:
            (run / "pool_markers" / f"round_{i:03d}").mkdir(parents=True)
            (run / "pool_markers" / f"round_{i:03d}" / "COMPLETE").touch()
    return run


def make_grid_sweep(tmp: Path, threads: int = 1) -> Path:
    sweep = tmp / "grid"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "grid", "executor": {"threads_per_job": threads}}))
    for (method, budget), accs in ACC.items():
        for seed, acc in enumerate(accs):
            make_run(sweep, f"{method}-budget{budget}-seed{seed}", method, budget, seed, test_acc=acc)
    return sweep


@pytest.fixture
def grid(tmp_path):
    return make_grid_sweep(tmp_path)


# -- collect ----------------------------------------------------------------------------------

def test_collect_one_row_per_evaluation_with_flat_config(grid):
    df = R.collect(grid)
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
    df = R.collect(sweep)
    runs = R.per_run(df).set_index("run")
    assert runs.loc["dp-failed", "phase"] == "failed"
    assert runs.loc["dp-failed", "error"] == "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    assert runs.loc["dp-failed", "generated"] == 100
    assert runs.loc["dp-running", ["phase", "generated", "n_rounds", "steps"]].tolist() == ["generate", 50, 1, 40]
    assert runs.loc["static-gen", ["phase", "generated", "n_rounds"]].tolist() == ["generate", 0, 0]
    assert runs.loc["static-new", "phase"] == "new" and len(df[df["run"] == "static-new"]) == 1
    assert runs["test_acc"].isna().all()
    summ = R.summary(df)
    dp = summ[summ["method"] == "dp"].iloc[0]
    assert (dp["n_runs"], dp["n_seeds"]) == (2, 0) and math.isnan(dp["acc_mean"])


def test_old_test_line_without_round_takes_the_last_trained_round(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    make_run(sweep, "dp", "dp", 100, 0, test_acc=0.9, test_round=False)  # no sweep.yaml: run folders suffice
    df = R.collect(sweep)
    assert df[df["split"] == "test"]["round"].tolist() == [1]


def test_addition_steps_from_state_or_from_metrics():
    rounds = [{"index": 0, "classifier_step": None}, {"index": 1, "classifier_step": 120},
              {"index": 2, "classifier_step": None}]
    metrics = [{"split": "val", "step": s, "round": r} for s, r in [(100, 0), (120, 0), (140, 1), (180, 1), (200, 2)]]
    assert R.addition_steps(rounds, metrics) == [120, 180]
    assert R.addition_steps(rounds[:1], metrics) == []


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
    j = R.collect_jobs(sweep).set_index("job_id")
    assert j["wall_s"].tolist()[:4] == [60, 30, 180, 36]
    assert j["time_source"].tolist() == ["log timestamps"] * 3 + ["submitted to result mtime", "none"]
    assert j.loc["13", "cpu_h"] == pytest.approx(180 * 2 / 3600)
    run = R.per_run(R.collect(sweep)).iloc[0]
    assert run["generate_cpu_h"] == pytest.approx(90 * 2 / 3600)
    assert run["train_cpu_h"] == pytest.approx(180 * 2 / 3600)
    assert run["eval_cpu_h"] == pytest.approx(36 * 2 / 3600)
    assert run["cpu_h"] == pytest.approx(306 * 2 / 3600)


# -- summary, samples to target ---------------------------------------------------------------

def test_summary_means_stds_and_counts(grid):
    s = R.summary(R.collect(grid))
    assert list(zip(s["method"], s["budget"])) == [("static", 100), ("static", 1000), ("static", 10000),
                                                   ("dp", 100), ("dp", 1000), ("dp", 10000)]
    st = s.set_index(["method", "budget"])
    assert st.loc[("static", 100), "acc_mean"] == pytest.approx(0.61, abs=1e-12)
    assert st.loc[("static", 100), "acc_std"] == pytest.approx(0.02 / math.sqrt(2), abs=1e-12)
    assert st.loc[("static", 10000), "acc_std"] == 0.0
    assert st.loc[("dp", 1000), ["n_runs", "n_seeds", "generated", "kept", "steps"]].tolist() == [2, 2, 1000, 1000, 100]
    assert st.loc[("dp", 1000), "val_acc_mean"] == pytest.approx(0.7)


def test_samples_to_target_interpolates_in_log_samples(grid):
    stt = R.samples_to_target(R.summary(R.collect(grid)))
    assert stt["target"] == pytest.approx(0.80)
    rows = {r["method"]: r for r in stt["rows"]}
    # dp: 0.76 at 100, 0.85 at 1000 -> log10 n = 2 + (0.80 - 0.76) / (0.85 - 0.76)
    assert rows["dp"]["kind"] == "interpolated"
    assert rows["dp"]["samples"] == pytest.approx(10 ** (2 + 4 / 9), rel=1e-9)
    assert rows["static"]["samples"] == pytest.approx(10000) and rows["static"]["kind"] == "measured"
    assert rows["dp"]["ratio"] == pytest.approx(10000 / 10 ** (2 + 4 / 9), rel=1e-9)
    assert rows["dp"]["ratio_kind"] == "interpolated"  # never "exact": it rests on an interpolation
    assert rows["static"]["ratio_kind"] == "baseline"


def _summ(points: dict) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "budget": n, "generated": n, "acc_mean": a, "acc_std": 0.01, "n_seeds": 2,
                          "n_runs": 2} for m, pts in points.items() for n, a in pts])


def test_samples_to_target_not_reached_and_bounds():
    s = _summ({"static": [(100, 0.7), (1000, 0.8)], "dp": [(100, 0.6), (1000, 0.79)],
               "prune": [(200, 0.81), (2000, 0.9)]})
    rows = {r["method"]: r for r in R.samples_to_target(s)["rows"]}
    assert rows["dp"]["kind"] == "not reached" and math.isnan(rows["dp"]["samples"])
    assert math.isnan(rows["dp"]["ratio"]) and rows["dp"]["best_acc"] == 0.79
    assert (rows["prune"]["kind"], rows["prune"]["samples"]) == ("upper bound", 200)
    assert rows["prune"]["ratio"] == 5.0 and rows["prune"]["ratio_kind"] == ">="
    text = R.target_text(R.samples_to_target(s), s)
    assert "**dp does not reach the static target**" in text and "1.00 points below" in text
    assert "at least 5.00x fewer samples than static" in text


def test_samples_to_target_without_baseline():
    stt = R.samples_to_target(_summ({"dp": [(100, 0.6)]}))
    assert stt["rows"] == [] and math.isnan(stt["target"])


# -- power-law fit ----------------------------------------------------------------------------

def test_power_law_fit_recovers_known_parameters():
    n = np.array([100, 300, 1000, 3000, 10000], float)
    fit = R.fit_power_law(n, 2.0 * n ** -0.5 + 0.05)
    assert fit["status"] == "ok" and fit["dof"] == 2
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((2.0, 0.5, 0.05), rel=1e-5)
    assert fit["b_se"] < 1e-5  # exact data: vanishing standard errors


def test_power_law_fit_refuses_three_budgets_without_a_fallback():
    n = np.array([100, 1000, 10000], float)
    err = 3.0 * n ** -0.4  # exact power-law data: a fit would be easy, and is still refused
    fit = R.fit_power_law(n, err)
    assert fit["status"] == "needs >= 4 budgets (has 3)" and "a" not in fit and "b" not in fit
    # repeated budgets (seeds as points) do not count as budgets
    assert R.fit_power_law(np.repeat(n, 2), np.repeat(err, 2))["status"] == "needs >= 4 budgets (has 3)"
    fits = R.power_law_fits(_summ({"dp": [(x, 1 - 3 * x ** -0.4) for x in n]}))
    assert fits == [{"method": "dp", "full": fit}]
    text = R.fits_text(fits)
    assert "| dp | needs >= 4 budgets (has 3) |" in text and "fallback" not in text
    assert R.fit_power_law(np.array([100, 300, 1000, 3000.]), 3.0 * np.array([100, 300, 1000, 3000.]) ** -0.4 + 0.01)[
        "status"] == "ok"


# -- the command line -------------------------------------------------------------------------

def test_cli_writes_report_tables_and_pngs(grid, tmp_path):
    make_run(grid, "dp-budget100-seed2", "dp", 100, 2, test_acc=None, phase="failed",
             error="Traceback\nRuntimeError: boom")
    make_run(grid, "dp-budget100-seed3", "dp", 100, 3, test_acc=None, phase="train")
    out = tmp_path / "rep"
    assert R.main([str(grid), "--out", str(out)]) == 0
    for f in ("report.md", "runs.parquet", "runs.csv", "jobs.csv", "summary.csv", "rounds.csv",
              "acc_vs_samples.png", "acc_vs_compute.png", "dynamics.png"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "acc_vs_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_parquet(out / "runs.parquet").shape == pd.read_csv(out / "runs.csv").shape == (12 * 5 + 2 * 4, R.collect(grid).shape[1])
    md = (out / "report.md").read_text()
    assert "# Sweep report: grid" in md and "per phase: train 1, done 12, failed 1" in md
    assert "**failed** `dp-budget100-seed2` (in phase train): Traceback … RuntimeError: boom" in md
    assert "**in progress** `dp-budget100-seed3`: phase train" in md
    assert "| dp | 76.00 [" in md and "(n=2) | 85.00 [" in md
    assert f"dp reaches the static target with {10 ** (2 + 4 / 9):,.0f} generated samples (interpolated" in md
    assert "needs >= 4 budgets (has 3)" in md and "exact" not in md.lower()
    assert "Test images per run: 500; seeds per cell: 2." in md
    assert "No per-round generation statistics recorded" in md
    assert "no job recorded its own compute seconds" in md and not (out / "acc_vs_model_compute.png").exists()
    assert (out / "rounds.csv").stat().st_size > 0
    for png in ("acc_vs_samples.png", "acc_vs_compute.png", "dynamics.png"):
        assert f"]({png})" in md


def test_cli_default_out_is_inside_the_sweep(grid):
    assert R.main([str(grid)]) == 0
    assert (grid / "report" / "report.md").exists()


def test_not_a_sweep_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "empty")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "not a sweep folder" in p.stderr
    assert not (tmp_path / "empty" / "report").exists()


def test_branch_outs_are_extra_points_not_budget_cells(grid, tmp_path):
    parent = grid / "dp-budget1000-seed0"
    branch = make_run(parent / "branches", "round_000", "dp", 1000, 0, test_acc=0.99,
                      rounds=[{"index": 0, "kind": "plain", "kept": 500, "generated": 500, "classifier_step": None}])
    cfg = yaml.safe_load((branch / "config.yaml").read_text())
    (branch / "config.yaml").write_text(yaml.safe_dump({**cfg, "name": "dp-budget1000-seed0-branch0"}))
    (branch / "branch.json").write_text(json.dumps({"parent": "dp-budget1000-seed0", "round": 0,
                                                    "checkpoint_step": 40, "generated": 500, "kept": 500}))
    df = R.collect(grid)
    runs = R.per_run(df).set_index("run")
    b = runs.loc["dp-budget1000-seed0-branch0"]
    assert (b["branch_of"], b["branch_round"], b["generated"], b["test_acc"]) == ("dp-budget1000-seed0", 0, 500, 0.99)
    st = R.summary(df).set_index(["method", "budget"])
    # the branch (0.99) must not enter the dp/1000 cell: still the mean of the two seeds
    assert st.loc[("dp", 1000), "acc_mean"] == pytest.approx(0.85) and st.loc[("dp", 1000), "n_runs"] == 2
    text = R.branch_text(R.per_run(df))
    assert "| dp-budget1000-seed0 | 0 | done | 500 | 500 | 99.00 | 1,000 | 84.00 |" in text
    out = R.write_report(grid, tmp_path / "rep")
    assert "## Branch-outs" in out.read_text() and (tmp_path / "rep" / "acc_vs_samples.png").stat().st_size > 0
