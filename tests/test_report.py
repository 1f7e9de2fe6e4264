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
             test_round: bool = True, omega: float = 0.05, n_test: int | None = 500, prune_factor: int = 2) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "sampler": {"omega": omega, "cfg_lambda": 0.5},
           "generator": {"block_out_channels": [16, 32]},
           "train": {"total_steps": 100, "patience": {"initial": 1}},
           "method": {"name": method, "budget": budget, "initial": budget // 2, "per_round": budget // 2,
                      "prune_factor": prune_factor}}
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
        test = {"acc": test_acc, "loss": 0.5, "step": 100, "pool_size": budget,
                "rounds": [r["index"] for r in rounds], "time": "2026-01-01T00:09:00.000+00:00"}
        if n_test is not None:
            test["n_test"] = n_test
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
    # report.html: the same report as one self-contained page (figures embedded, nothing linked)
    import base64
    import re

    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<h1>Sweep report: grid</h1>" in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == md.count("![") and all(src.startswith("data:image/png;base64,") for src in srcs)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in srcs}
    assert (out / "dynamics.png").read_bytes() in embedded
    assert "boom" in page and "<script" not in page
    assert "No round pictures recorded" in md  # the hand-made runs have none; the e2e smoke test has them


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


# -- intervals: bootstrap over seeds and the test set's binomial ------------------------------

def test_seed_bootstrap_of_two_seeds_has_the_analytic_percentile_interval():
    # resampling 2 seeds: mean 0.7 w.p. 1/4, 0.8 w.p. 1/2, 0.9 w.p. 1/4 -> 2.5% / 97.5% points 0.7 / 0.9
    seeds, both = R.bootstrap_means([0.7, 0.9], None, np.random.default_rng(0), b=20_000)
    assert both is None
    assert R.percentile_interval(seeds) == pytest.approx((0.7, 0.9))
    assert np.mean(np.isclose(seeds, 0.8)) == pytest.approx(0.5, abs=0.02)
    assert np.mean(np.isclose(seeds, 0.7)) == pytest.approx(0.25, abs=0.02)


def test_binomial_level_matches_the_binomial_quantiles():
    from scipy.stats import binom

    n, p = 500, 0.8
    _, both = R.bootstrap_means([p], [n], np.random.default_rng(1), b=20_000)
    lo, hi = R.percentile_interval(both)
    assert lo == pytest.approx(binom.ppf(0.025, n, p) / n, abs=1.01 / n)
    assert hi == pytest.approx(binom.ppf(0.975, n, p) / n, abs=1.01 / n)
    # shared test set (default) vs independent per seed: 4 identical seeds, sqrt(4) = 2x narrower
    _, shared = R.bootstrap_means([p] * 4, [n] * 4, np.random.default_rng(2), b=20_000)
    _, indep = R.bootstrap_means([p] * 4, [n] * 4, np.random.default_rng(2), b=20_000, shared_test=False)
    assert np.std(shared) / np.std(indep) == pytest.approx(2.0, rel=0.05)
    assert np.std(shared) == pytest.approx(math.sqrt(p * (1 - p) / n), rel=0.03)


def test_interval_covers_the_true_mean_when_the_test_set_is_shared():
    """Seeds around a true accuracy 0.8, all scored on one test set of 500 images (a shared
    binomial error): the seeds-only interval misses the truth most of the time, the two-level
    interval covers it about 95% of the time."""
    rng = np.random.default_rng(7)
    mu, n, k, reps = 0.8, 500, 8, 300
    cover_seed = cover_both = 0
    for i in range(reps):
        test_err = rng.binomial(n, mu) / n - mu  # the one test set's draw, shared by every seed
        accs = mu + rng.normal(0, 0.01, k) + test_err
        seeds, both = R.bootstrap_means(accs, [n] * k, R.cell_rng("coverage", i), b=2000)
        lo, hi = R.percentile_interval(seeds)
        cover_seed += lo <= mu <= hi
        lo, hi = R.percentile_interval(both)
        cover_both += lo <= mu <= hi
    assert cover_seed / reps < 0.6
    assert 0.90 <= cover_both / reps <= 0.99


def test_seed_bootstrap_coverage_without_test_noise():
    rng = np.random.default_rng(11)
    mu, k, reps, cover = 0.7, 10, 300, 0
    for i in range(reps):
        seeds, _ = R.bootstrap_means(rng.normal(mu, 0.02, k), None, R.cell_rng("seeds", i), b=2000)
        lo, hi = R.percentile_interval(seeds)
        cover += lo <= mu <= hi
    assert 0.86 <= cover / reps <= 0.98  # the percentile bootstrap under-covers a little at k = 10


def test_summary_intervals_are_deterministic_and_cover_the_mean(grid):
    a, b = R.summary(R.collect(grid)), R.summary(R.collect(grid))
    pd.testing.assert_frame_equal(a, b)
    st = a.set_index(["method", "budget"])
    row = st.loc[("dp", 1000)]
    assert row["n_test"] == 500 and row["ci"] == "seeds + test set"
    assert (row["seed_lo"], row["seed_hi"]) == pytest.approx((0.84, 0.86))
    assert row["acc_lo"] < row["seed_lo"] and row["acc_hi"] > row["seed_hi"]  # the test set widens it
    assert row["binom_hw"] == pytest.approx(1.959964 * math.sqrt(0.85 * 0.15 / 500), rel=1e-5)
    assert row["acc_hi"] - row["acc_lo"] == pytest.approx(2 * row["binom_hw"], rel=0.15)


def test_one_seed_and_unknown_test_size(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    make_run(sweep, "a0", "static", 100, 0, test_acc=0.8)
    make_run(sweep, "b0", "static", 200, 0, test_acc=0.8, n_test=None)
    make_run(sweep, "b1", "static", 200, 1, test_acc=0.9, n_test=None)
    st = R.summary(R.collect(sweep)).set_index("budget")
    assert st.loc[100, "ci"] == "test set only (1 seed)" and math.isnan(st.loc[100, "seed_lo"])
    assert st.loc[100, "acc_lo"] < 0.8 < st.loc[100, "acc_hi"]
    assert st.loc[200, "ci"] == "seeds only (test size unknown)" and math.isnan(st.loc[200, "n_test"])
    assert (st.loc[200, "acc_lo"], st.loc[200, "acc_hi"]) == pytest.approx((0.8, 0.9))


# -- samples to target: labels and bootstrap ---------------------------------------------------

def _pl(n, a=0.5, b=0.2, c=0.1):
    return 1 - (a * n ** -b + c)


def test_samples_to_target_labels_interpolated_extrapolated_not_reached():
    budgets = [10.0, 30.0, 100.0, 300.0]
    s = _summ({"static": [(100, 0.6), (1000, 0.7), (10000, 0.8)],
               "dp": [(n, _pl(n)) for n in budgets],  # err > 0.2 at every measured budget, floor 0.1
               "prune": [(n, _pl(n, c=0.3)) for n in budgets],  # floor 0.3: the fit never reaches 0.8
               "other": [(50, 0.65), (500, 0.9)]})
    fits = R.power_law_fits(s)
    stt = R.samples_to_target(s, fits=fits)
    rows = {r["method"]: r for r in stt["rows"]}
    assert rows["other"]["kind"] == "interpolated" and rows["other"]["ratio_kind"] == "interpolated"
    assert rows["other"]["samples"] == pytest.approx(10 ** (math.log10(50) + 0.6 * 1.0))
    # dp: 0.5 n^-0.2 + 0.1 = 0.2 at n = 5^5
    assert rows["dp"]["kind"] == R.EXTRAPOLATED and rows["dp"]["samples"] == pytest.approx(5 ** 5, rel=1e-3)
    assert rows["dp"]["ratio_kind"] == "extrapolated" and rows["dp"]["ratio"] == pytest.approx(10000 / 5 ** 5, rel=1e-3)
    assert rows["prune"]["kind"] == "not reached" and math.isnan(rows["prune"]["samples"])
    assert rows["static"]["kind"] == "measured"
    # without a fit there is no extrapolation
    assert {r["method"]: r["kind"] for r in R.samples_to_target(s)["rows"]}["dp"] == "not reached"
    text = R.target_text(stt, s)
    assert "**dp does not reach the static target within its measured budgets**" in text
    assert "an extrapolation, not a measurement" in text and "exact" not in text.lower()
    assert "**prune does not reach the static target**" in text
    assert "over the fit's bootstrap replicates:" not in text  # no replicates given: no interval claimed
    assert "| other | 199 | interpolated | 50.24x |" in text  # 50 x 10^0.6


def test_first_crossing_codes():
    x = np.array([100.0, 1000.0, 10000.0])
    Y = np.array([[0.5, 0.7, 0.9],    # interpolated between 1000 and 10000, halfway in log
                  [0.5, 0.8, 0.9],    # measured at 1000
                  [0.85, 0.9, 0.95],  # at the smallest budget: an upper bound
                  [0.5, 0.6, 0.7]])   # not reached
    n, code = R.first_crossing(x, Y, 0.8)
    assert code.tolist() == [0, 1, 2, 3]
    assert n[0] == pytest.approx(10 ** 3.5) and n[1] == 1000 and n[2] == 100 and math.isinf(n[3])


def _cell_runs(cells: dict) -> pd.DataFrame:
    """per_run-like rows: {(arm, generated): [seed accuracies]}, 500 test images each."""
    return pd.DataFrame([{"run": f"{a}-{g}-{i}", "arm": a, "method": a, "budget": g, "generated": g,
                          "test_acc": acc, "n_test": 500}
                         for (a, g), accs in cells.items() for i, acc in enumerate(accs)])


def test_samples_to_target_bootstrap_counts_replicates_that_miss():
    cells = {("static", 100): [0.60, 0.62, 0.61], ("static", 1000): [0.70, 0.72, 0.71],
             ("static", 10000): [0.80, 0.80, 0.81],
             ("dp", 100): [0.75, 0.76, 0.77], ("dp", 1000): [0.90, 0.91, 0.92],  # far above: always reached
             ("far", 100): [0.50, 0.51, 0.52], ("far", 1000): [0.55, 0.56, 0.57],  # far below: never
             ("edge", 100): [0.70, 0.71, 0.72], ("edge", 1000): [0.795, 0.80, 0.81]}  # at the target: a coin flip
    runs = _cell_runs(cells)
    reps = R.cell_replicates(runs)
    summ = pd.DataFrame([{"method": a, "budget": g, "generated": g, "acc_mean": np.mean(v), "acc_std": 0.01,
                          "n_seeds": 3, "n_runs": 3} for (a, g), v in cells.items()])
    stt = R.samples_to_target(summ, reps=reps)
    rows = {r["method"]: r for r in stt["rows"]}
    assert rows["dp"]["p_reached"] == 1.0 and 100 <= rows["dp"]["samples_lo"] <= rows["dp"]["samples_hi"] <= 1000
    assert rows["dp"]["ratio_lo"] >= 10 and rows["dp"]["ratio_lo"] <= rows["dp"]["ratio"] <= rows["dp"]["ratio_hi"]
    assert rows["far"]["p_reached"] == 0.0 and math.isinf(rows["far"]["samples_lo"]) and rows["far"]["ratio_hi"] == 0
    assert 0.2 < rows["edge"]["p_reached"] < 0.8
    assert math.isinf(rows["edge"]["samples_hi"]) and rows["edge"]["ratio_lo"] == 0.0
    assert rows["static"]["p_reached"] == 1.0
    text = R.target_text(stt, summ)
    assert "| far | not reached | not reached | - | not reached | [0.00, 0.00]x | 0.0% |" in text
    assert "not reached]" in text  # edge: the upper end of its samples interval
    # deterministic: the same report every time
    again = R.samples_to_target(summ, reps=R.cell_replicates(runs))
    assert [r.get("samples_lo") for r in again["rows"]] == [r.get("samples_lo") for r in stt["rows"]]


# -- power law: intervals ---------------------------------------------------------------------

def test_power_law_bootstrap_interval_holds_the_true_exponent():
    rng = np.random.default_rng(3)
    budgets = [100, 300, 1000, 3000, 10000]
    cells = {("dp", n): list(_pl(n, a=2.0, b=0.5, c=0.05) + rng.normal(0, 0.004, 6)) for n in budgets}
    runs = _cell_runs(cells).assign(n_test=np.nan)  # seeds only: the noise is the seeds'
    reps = R.cell_replicates(runs)
    summ = pd.DataFrame([{"method": "dp", "budget": n, "generated": n, "acc_mean": np.mean(cells[("dp", n)]),
                          "n_seeds": 6} for n in budgets])
    fit = R.power_law_fits(summ, reps)[0]["full"]
    assert fit["status"].startswith("ok") and fit["boot_fitted"] >= 0.9 * fit["boot_total"] == 0.9 * R.BOOT_B_FIT
    assert fit["b_lo"] < 0.5 < fit["b_hi"] and fit["b_hi"] - fit["b_lo"] < 0.4
    assert fit["c_lo"] <= 0.05 <= fit["c_hi"]
    assert not fit["b_lo"] <= 0.8 <= fit["b_hi"]  # a wrong exponent is outside
    assert "[" in R.fits_text([{"method": "dp", "full": fit}])


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
    df = R.collect(sweep)
    runs = R.per_run(df).set_index("run")
    assert runs.loc["dpw0-100-0", "arm"] == "dp (ω=0)" and runs.loc["dp-100-0", "arm"] == "dp"
    assert runs.loc["prune4-100-1", "arm"] == "prune (prune_factor=4)"
    assert runs.loc["static-1000-0", "arm"] == "static"  # initial/per_round follow the budget: no arm
    st = R.summary(df)
    assert st["method"].tolist() == ["static", "static", "dp", "dp", "dp (ω=0)", "dp (ω=0)",
                                     "prune (prune_factor=2)", "prune (prune_factor=2)",
                                     "prune (prune_factor=4)", "prune (prune_factor=4)"]
    by = st.set_index(["method", "budget"])
    assert by.loc[("dp", 100), "acc_mean"] == pytest.approx(0.9) and by.loc[("dp (ω=0)", 100), "acc_mean"] == 0.5
    assert by.loc[("dp (ω=0)", 1000), "n_runs"] == 2 and by.loc[("dp (ω=0)", 1000), "base_method"] == "dp"
    out = R.write_report(sweep, tmp_path / "rep").read_text()
    assert "| dp (ω=0) | 50.00 [" in out and "| dp | 90.00 [" in out
    assert "| dpw0-100-0 | dp (ω=0) | 100 | 0 |" in out


def test_omega_values_all_labelled_when_several_are_guided():
    runs = pd.DataFrame([{"run": f"r{w}-{s}", "method": "dp", "budget": 100, "seed": s, "config.sampler.omega": w,
                          "config.name": f"r{w}-{s}"} for w in (0.0, 0.03, 0.05) for s in (0, 1)])
    assert sorted(set(R.assign_arms(runs))) == ["dp (ω=0)", "dp (ω=0.03)", "dp (ω=0.05)"]
    # in100's layout: the main curve at omega 0.05 over four budgets, the ablation at one budget
    in100 = pd.DataFrame([{"run": f"m{n}-{s}", "method": "dp", "budget": n, "seed": s, "config.sampler.omega": 0.05,
                           "config.name": f"m{n}-{s}"} for n in (1, 2, 3, 4) for s in (0, 1)]
                         + [{"run": f"a{w}-{s}", "method": "dp", "budget": 3, "seed": s, "config.sampler.omega": w,
                             "config.name": f"a{w}-{s}"} for w in (0.0, 0.03, 0.07) for s in (0, 1)])
    arms = R.assign_arms(in100)
    assert sorted(set(arms)) == ["dp", "dp (ω=0)", "dp (ω=0.03)", "dp (ω=0.07)"]
    assert (arms == "dp").sum() == 8
    # dp at omega 0 alone is still the ablation, not dp
    alone = runs[runs["config.sampler.omega"] == 0]
    assert set(R.assign_arms(alone)) == {"dp (ω=0)"}


# -- generation statistics per round, model compute -------------------------------------------

def test_generation_statistics_table_and_skip(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    stats = {"entropy_mean": 0.9, "plain_entropy_mean": 0.4, "label_fidelity": 0.93, "plain_label_fidelity": 0.95}
    for seed, e in ((0, 0.9), (1, 1.1)):
        rounds = [{"index": 0, "kind": "plain", "kept": 50, "generated": 50, "classifier_step": None},
                  {"index": 1, "kind": "guided", "kept": 50, "generated": 50, "classifier_step": 40,
                   **stats, "entropy_mean": e}]
        make_run(sweep, f"dp-{seed}", "dp", 100, seed, test_acc=0.8, rounds=rounds)
    make_run(sweep, "static-0", "static", 100, 0, test_acc=0.7)  # an older run: no statistics
    raws = R.read_sweep(sweep)[1]
    rounds = R.rounds_frame(raws)
    assert len(rounds) == 5 and rounds["entropy_mean"].isna().sum() == 3
    text = R.generation_stats_text(rounds, R.per_run(R.collect(sweep)))
    assert "| 100 | 1 | guided | 50 | 50 | 2 | 1.000 | - | 0.400 | 93.0 | - | 95.0 |" in text  # no paired seeds in this data
    assert "| 100 | 0 | plain | 50 | 50 | 2 | - | - | - | - | - | - |" in text
    assert "**static**: no statistics recorded." in text
    assert "higher mean entropy than plain samples of the same seeds: 2 of 2; with label fidelity within 5 points of plain: 2 of 2" in text
    assert "No per-round generation statistics" in R.generation_stats_text(rounds.iloc[:0], pd.DataFrame())


def test_label_fidelity_exactly_5_points_under_plain_counts_as_within_5_points(tmp_path):
    """2 of 40 samples (0.95 vs 1.0) is 5 points: within; 0.9297 vs 0.9844 (5.47 points) is not."""
    sweep = tmp_path / "s"
    sweep.mkdir()
    for seed, (fid, plain) in enumerate(((0.95, 1.0), (0.9297, 0.9844))):
        rounds = [{"index": 0, "kind": "plain", "kept": 40, "generated": 40, "classifier_step": None},
                  {"index": 1, "kind": "guided", "kept": 40, "generated": 40, "classifier_step": 40,
                   "entropy_mean": 0.9, "plain_entropy_mean": 0.4, "label_fidelity": fid, "plain_label_fidelity": plain}]
        make_run(sweep, f"dp-{seed}", "dp", 80, seed, test_acc=0.8, rounds=rounds)
    rounds = R.rounds_frame(R.read_sweep(sweep)[1])
    text = R.generation_stats_text(rounds, R.per_run(R.collect(sweep)))
    assert "with label fidelity within 5 points of plain: 1 of 2" in text, text


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
    run = R.per_run(R.collect(sweep)).iloc[0]
    assert (run["generate_compute_s"], run["train_compute_s"], run["eval_compute_s"], run["compute_s"]) == \
        (1.5, 10.0, 0.0, 11.5)
    assert run["cpu_h"] == pytest.approx(180 / 3600)  # CPU-h kept beside it
    assert R.collect_jobs(sweep)["compute_s"].fillna(-1).tolist() == [1.5, 10.0, -1]
    md = R.write_report(sweep, tmp_path / "rep").read_text()
    assert "| model compute (s) | classifier iterations |" in md and "| 11.5 |" in md
    assert (tmp_path / "rep" / "acc_vs_model_compute.png").stat().st_size > 0


def test_extrapolated_samples_get_the_fit_bootstrap_interval():
    rng = np.random.default_rng(5)
    budgets = [10, 30, 100, 300]
    cells = {("static", n): [0.6 + 0.1 * i] * 3 for i, n in enumerate([100, 1000, 10000])}
    cells.update({("dp", n): list(_pl(n) + rng.normal(0, 0.003, 4)) for n in budgets})
    runs = _cell_runs(cells).assign(n_test=np.nan)
    reps = R.cell_replicates(runs)
    summ = pd.DataFrame([{"method": a, "budget": n, "generated": n, "acc_mean": np.mean(v), "acc_std": 0.01,
                          "n_seeds": len(v), "n_runs": len(v)} for (a, n), v in cells.items()])
    fits = R.power_law_fits(summ, reps)
    dp = {r["method"]: r for r in R.samples_to_target(summ, reps=reps, fits=fits)["rows"]}["dp"]
    assert dp["kind"] == R.EXTRAPOLATED
    assert dp["extrap_lo"] < dp["samples"] < dp["extrap_hi"] and dp["extrap_lo"] > 300
    assert dp["p_reached"] < 0.05  # within the measured budgets the bootstrap (almost) never reaches it
    text = R.target_text(R.samples_to_target(summ, reps=reps, fits=fits), summ)
    assert "over the fit's bootstrap replicates: [" in text


def test_addition_dynamics_measures_dips_gains_and_timing():
    from analysis.report import addition_dynamics

    val = [(100, 0.50), (200, 0.90), (300, 0.95), (350, 0.80), (400, 0.93), (500, 0.96), (600, 0.94),
           (700, 0.97), (800, 0.97)]
    d = addition_dynamics(val, [300, 500], warmup=200, total=1000)
    assert d["additions"] == 2 and d["last_addition_frac"] == 0.5 and d["warmup_additions"] == 0
    assert d["dips"] == pytest.approx([0.15, 0.02])  # 0.95 -> 0.80 before step 500; 0.96 -> 0.94 after it
    assert d["gains"] == pytest.approx([0.01, 0.01])  # 0.95 -> 0.96 at the next addition; 0.96 -> 0.97 at the end
    early = addition_dynamics(val, [200], warmup=200, total=1000)
    assert early["warmup_additions"] == 1 and early["dips"] == pytest.approx([0.10])  # 0.90 -> 0.80 at step 350


def test_gpu_hours_sum_elapsed_times_allocated_gpus_of_recorded_jobs():
    from analysis.report import gpu_hours

    jobs = [{"kind": "generate", "detail": {"start": 0, "elapsed_s": 1800, "gpus": 1}},
            {"kind": "train", "detail": {"elapsed_s": 3600, "gpus": 8}},
            {"kind": "eval", "detail": {}}]  # a job that ended before accounting was recorded
    assert gpu_hours(jobs) == pytest.approx(0.5 + 8.0)
    assert math.isnan(gpu_hours([{"kind": "train", "detail": {}}]))  # local runs: unknown, not zero
