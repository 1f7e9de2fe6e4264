"""analysis.stats: the summary and its bootstrap intervals, samples to target, power-law fits and
accuracy around data additions; known numbers in, exact numbers out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.frames import collect
from analysis.stats import (BOOT_B_FIT, EXTRAPOLATED, bootstrap_means, cell_replicates, cell_rng, first_crossing,
                            fit_power_law, percentile_interval, power_law_fits, samples_to_target, summary)
from analysis.tables import fits_text, target_text
from report_helpers import make_grid_sweep, make_run


@pytest.fixture
def grid(tmp_path):
    return make_grid_sweep(tmp_path)


# -- summary, samples to target ---------------------------------------------------------------

def test_summary_means_stds_and_counts(grid):
    s = summary(collect(grid))
    assert list(zip(s["method"], s["budget"])) == [("static", 100), ("static", 1000), ("static", 10000),
                                                   ("dp", 100), ("dp", 1000), ("dp", 10000)]
    st = s.set_index(["method", "budget"])
    assert st.loc[("static", 100), "acc_mean"] == pytest.approx(0.61, abs=1e-12)
    assert st.loc[("static", 100), "acc_std"] == pytest.approx(0.02 / math.sqrt(2), abs=1e-12)
    assert st.loc[("static", 10000), "acc_std"] == 0.0
    assert st.loc[("dp", 1000), ["n_runs", "n_seeds", "generated", "kept", "steps"]].tolist() == [2, 2, 1000, 1000, 100]
    assert st.loc[("dp", 1000), "val_acc_mean"] == pytest.approx(0.7)


def test_samples_to_target_interpolates_in_log_samples(grid):
    stt = samples_to_target(summary(collect(grid)))
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
    rows = {r["method"]: r for r in samples_to_target(s)["rows"]}
    assert rows["dp"]["kind"] == "not reached" and math.isnan(rows["dp"]["samples"])
    assert math.isnan(rows["dp"]["ratio"]) and rows["dp"]["best_acc"] == 0.79
    assert (rows["prune"]["kind"], rows["prune"]["samples"]) == ("upper bound", 200)
    assert rows["prune"]["ratio"] == 5.0 and rows["prune"]["ratio_kind"] == ">="
    text = target_text(samples_to_target(s), s)
    assert "**dp does not reach the static target**" in text and "1.00 points below" in text
    assert "at least 5.00x fewer samples than static" in text


def test_samples_to_target_without_baseline():
    stt = samples_to_target(_summ({"dp": [(100, 0.6)]}))
    assert stt["rows"] == [] and math.isnan(stt["target"])


# -- power-law fit ----------------------------------------------------------------------------

def test_power_law_fit_recovers_known_parameters():
    n = np.array([100, 300, 1000, 3000, 10000], float)
    fit = fit_power_law(n, 2.0 * n ** -0.5 + 0.05)
    assert fit["status"] == "ok" and fit["dof"] == 2
    assert (fit["a"], fit["b"], fit["c"]) == pytest.approx((2.0, 0.5, 0.05), rel=1e-5)
    assert fit["b_se"] < 1e-5  # exact data: vanishing standard errors


def test_power_law_fit_refuses_three_budgets_without_a_fallback():
    n = np.array([100, 1000, 10000], float)
    err = 3.0 * n ** -0.4  # exact power-law data: a fit would be easy, and is still refused
    fit = fit_power_law(n, err)
    assert fit["status"] == "needs >= 4 budgets (has 3)" and "a" not in fit and "b" not in fit
    # repeated budgets (seeds as points) do not count as budgets
    assert fit_power_law(np.repeat(n, 2), np.repeat(err, 2))["status"] == "needs >= 4 budgets (has 3)"
    fits = power_law_fits(_summ({"dp": [(x, 1 - 3 * x ** -0.4) for x in n]}))
    assert fits == [{"method": "dp", "full": fit}]
    text = fits_text(fits)
    assert "| dp | needs >= 4 budgets (has 3) |" in text and "fallback" not in text
    assert fit_power_law(np.array([100, 300, 1000, 3000.]), 3.0 * np.array([100, 300, 1000, 3000.]) ** -0.4 + 0.01)[
        "status"] == "ok"


# -- intervals: bootstrap over seeds and the test set's binomial ------------------------------

def test_seed_bootstrap_of_two_seeds_has_the_analytic_percentile_interval():
    # resampling 2 seeds: mean 0.7 w.p. 1/4, 0.8 w.p. 1/2, 0.9 w.p. 1/4 -> 2.5% / 97.5% points 0.7 / 0.9
    seeds, both = bootstrap_means([0.7, 0.9], None, np.random.default_rng(0), b=20_000)
    assert both is None
    assert percentile_interval(seeds) == pytest.approx((0.7, 0.9))
    assert np.mean(np.isclose(seeds, 0.8)) == pytest.approx(0.5, abs=0.02)
    assert np.mean(np.isclose(seeds, 0.7)) == pytest.approx(0.25, abs=0.02)


def test_binomial_level_matches_the_binomial_quantiles():
    from scipy.stats import binom

    n, p = 500, 0.8
    _, both = bootstrap_means([p], [n], np.random.default_rng(1), b=20_000)
    lo, hi = percentile_interval(both)
    assert lo == pytest.approx(binom.ppf(0.025, n, p) / n, abs=1.01 / n)
    assert hi == pytest.approx(binom.ppf(0.975, n, p) / n, abs=1.01 / n)
    # shared test set (default) vs independent per seed: 4 identical seeds, sqrt(4) = 2x narrower
    _, shared = bootstrap_means([p] * 4, [n] * 4, np.random.default_rng(2), b=20_000)
    _, indep = bootstrap_means([p] * 4, [n] * 4, np.random.default_rng(2), b=20_000, shared_test=False)
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
        seeds, both = bootstrap_means(accs, [n] * k, cell_rng("coverage", i), b=2000)
        lo, hi = percentile_interval(seeds)
        cover_seed += lo <= mu <= hi
        lo, hi = percentile_interval(both)
        cover_both += lo <= mu <= hi
    assert cover_seed / reps < 0.6
    assert 0.90 <= cover_both / reps <= 0.99


def test_seed_bootstrap_coverage_without_test_noise():
    rng = np.random.default_rng(11)
    mu, k, reps, cover = 0.7, 10, 300, 0
    for i in range(reps):
        seeds, _ = bootstrap_means(rng.normal(mu, 0.02, k), None, cell_rng("seeds", i), b=2000)
        lo, hi = percentile_interval(seeds)
        cover += lo <= mu <= hi
    assert 0.86 <= cover / reps <= 0.98  # the percentile bootstrap under-covers a little at k = 10


def test_summary_intervals_are_deterministic_and_cover_the_mean(grid):
    a, b = summary(collect(grid)), summary(collect(grid))
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
    st = summary(collect(sweep)).set_index("budget")
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
    fits = power_law_fits(s)
    stt = samples_to_target(s, fits=fits)
    rows = {r["method"]: r for r in stt["rows"]}
    assert rows["other"]["kind"] == "interpolated" and rows["other"]["ratio_kind"] == "interpolated"
    assert rows["other"]["samples"] == pytest.approx(10 ** (math.log10(50) + 0.6 * 1.0))
    # dp: 0.5 n^-0.2 + 0.1 = 0.2 at n = 5^5
    assert rows["dp"]["kind"] == EXTRAPOLATED and rows["dp"]["samples"] == pytest.approx(5 ** 5, rel=1e-3)
    assert rows["dp"]["ratio_kind"] == "extrapolated" and rows["dp"]["ratio"] == pytest.approx(10000 / 5 ** 5, rel=1e-3)
    assert rows["prune"]["kind"] == "not reached" and math.isnan(rows["prune"]["samples"])
    assert rows["static"]["kind"] == "measured"
    # without a fit there is no extrapolation
    assert {r["method"]: r["kind"] for r in samples_to_target(s)["rows"]}["dp"] == "not reached"
    text = target_text(stt, s)
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
    n, code = first_crossing(x, Y, 0.8)
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
    reps = cell_replicates(runs)
    summ = pd.DataFrame([{"method": a, "budget": g, "generated": g, "acc_mean": np.mean(v), "acc_std": 0.01,
                          "n_seeds": 3, "n_runs": 3} for (a, g), v in cells.items()])
    stt = samples_to_target(summ, reps=reps)
    rows = {r["method"]: r for r in stt["rows"]}
    assert rows["dp"]["p_reached"] == 1.0 and 100 <= rows["dp"]["samples_lo"] <= rows["dp"]["samples_hi"] <= 1000
    assert rows["dp"]["ratio_lo"] >= 10 and rows["dp"]["ratio_lo"] <= rows["dp"]["ratio"] <= rows["dp"]["ratio_hi"]
    assert rows["far"]["p_reached"] == 0.0 and math.isinf(rows["far"]["samples_lo"]) and rows["far"]["ratio_hi"] == 0
    assert 0.2 < rows["edge"]["p_reached"] < 0.8
    assert math.isinf(rows["edge"]["samples_hi"]) and rows["edge"]["ratio_lo"] == 0.0
    assert rows["static"]["p_reached"] == 1.0
    text = target_text(stt, summ)
    assert "| far | not reached | not reached | - | not reached | [0.00, 0.00]x | 0.0% |" in text
    assert "not reached]" in text  # edge: the upper end of its samples interval
    # deterministic: the same report every time
    again = samples_to_target(summ, reps=cell_replicates(runs))
    assert [r.get("samples_lo") for r in again["rows"]] == [r.get("samples_lo") for r in stt["rows"]]


# -- power law: intervals ---------------------------------------------------------------------

def test_power_law_bootstrap_interval_holds_the_true_exponent():
    rng = np.random.default_rng(3)
    budgets = [100, 300, 1000, 3000, 10000]
    cells = {("dp", n): list(_pl(n, a=2.0, b=0.5, c=0.05) + rng.normal(0, 0.004, 6)) for n in budgets}
    runs = _cell_runs(cells).assign(n_test=np.nan)  # seeds only: the noise is the seeds'
    reps = cell_replicates(runs)
    summ = pd.DataFrame([{"method": "dp", "budget": n, "generated": n, "acc_mean": np.mean(cells[("dp", n)]),
                          "n_seeds": 6} for n in budgets])
    fit = power_law_fits(summ, reps)[0]["full"]
    assert fit["status"].startswith("ok") and fit["boot_fitted"] >= 0.9 * fit["boot_total"] == 0.9 * BOOT_B_FIT
    assert fit["b_lo"] < 0.5 < fit["b_hi"] and fit["b_hi"] - fit["b_lo"] < 0.4
    assert fit["c_lo"] <= 0.05 <= fit["c_hi"]
    assert not fit["b_lo"] <= 0.8 <= fit["b_hi"]  # a wrong exponent is outside
    assert "[" in fits_text([{"method": "dp", "full": fit}])


def test_extrapolated_samples_get_the_fit_bootstrap_interval():
    rng = np.random.default_rng(5)
    budgets = [10, 30, 100, 300]
    cells = {("static", n): [0.6 + 0.1 * i] * 3 for i, n in enumerate([100, 1000, 10000])}
    cells.update({("dp", n): list(_pl(n) + rng.normal(0, 0.003, 4)) for n in budgets})
    runs = _cell_runs(cells).assign(n_test=np.nan)
    reps = cell_replicates(runs)
    summ = pd.DataFrame([{"method": a, "budget": n, "generated": n, "acc_mean": np.mean(v), "acc_std": 0.01,
                          "n_seeds": len(v), "n_runs": len(v)} for (a, n), v in cells.items()])
    fits = power_law_fits(summ, reps)
    dp = {r["method"]: r for r in samples_to_target(summ, reps=reps, fits=fits)["rows"]}["dp"]
    assert dp["kind"] == EXTRAPOLATED
    assert dp["extrap_lo"] < dp["samples"] < dp["extrap_hi"] and dp["extrap_lo"] > 300
    assert dp["p_reached"] < 0.05  # within the measured budgets the bootstrap (almost) never reaches it
    text = target_text(samples_to_target(summ, reps=reps, fits=fits), summ)
    assert "over the fit's bootstrap replicates: [" in text


def test_addition_dynamics_measures_dips_gains_and_timing():
    from analysis.stats import addition_dynamics

    val = [(100, 0.50), (200, 0.90), (300, 0.95), (350, 0.80), (400, 0.93), (500, 0.96), (600, 0.94),
           (700, 0.97), (800, 0.97)]
    d = addition_dynamics(val, [300, 500], warmup=200, total=1000)
    assert d["additions"] == 2 and d["last_addition_frac"] == 0.5 and d["warmup_additions"] == 0
    assert d["dips"] == pytest.approx([0.15, 0.02])  # 0.95 -> 0.80 before step 500; 0.96 -> 0.94 after it
    assert d["gains"] == pytest.approx([0.01, 0.01])  # 0.95 -> 0.96 at the next addition; 0.96 -> 0.97 at the end
    early = addition_dynamics(val, [200], warmup=200, total=1000)
    assert early["warmup_additions"] == 1 and early["dips"] == pytest.approx([0.10])  # 0.90 -> 0.80 at step 350
