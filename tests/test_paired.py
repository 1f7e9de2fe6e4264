"""analysis.paired on constructed data with known answers: a null difference is found no more often
than the nominal 5%, a real one is found, McNemar's test holds its level, and the power calculation
gives the power it promises."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import paired as P

NULL_REPS = 400  # repetitions for a rate: the binomial sd of a 5% rate is 1.1 points


def two_arms(rng, seeds: int, images: int, shift: float = 0.0, interaction: float = 0.8):
    """Per-image correctness of two arms, as a classifier's: image difficulty shared by both arms,
    a seed effect (partly shared by the two arms of a seed: same generator and round 0), an
    arm x image effect (which images an arm finds easier: a fresh draw per test set), `shift` (in
    logits) added to arm a. Returns (cells, true difference in accuracy of a minus b)."""
    theta = rng.normal(3.5, 1.5, images)
    eta = {arm: rng.normal(0, interaction, images) for arm in "ab"}
    shared = rng.normal(0, 0.2, seeds)
    cells = {}
    for arm, a in (("a", shift), ("b", 0.0)):
        logit = theta[None] + eta[arm][None] + a + (shared + rng.normal(0, 0.25, seeds))[:, None]
        c = rng.random((seeds, images)) < 1 / (1 + np.exp(-logit))
        cells[arm] = {s: c[s] for s in range(seeds)}
    return cells


def true_difference(shift: float, interaction: float = 0.8, n: int = 400_000) -> float:
    """The population difference of `two_arms` (over images and seeds), by Monte Carlo."""
    rng = np.random.default_rng(0)
    theta = rng.normal(3.5, 1.5, n)
    seed = rng.normal(0, 0.2, n) + rng.normal(0, 0.25, n)
    acc = lambda a: np.mean(1 / (1 + np.exp(-(theta + rng.normal(0, interaction, n) + a + seed))))  # noqa: E731
    return float(acc(shift) - acc(0.0))


def test_joint_bootstrap_draws_the_same_seeds_and_images_for_every_cell():
    rng = np.random.default_rng(3)
    c = {s: rng.random(50) < 0.8 for s in range(4)}
    reps = P.joint_bootstrap({"x": c, "same": dict(c), "half": {s: c[s] for s in (0, 1)}}, 200, np.random.default_rng(1))
    np.testing.assert_array_equal(reps["x"], reps["same"])  # same data, same draws: a zero difference
    assert np.all(np.isnan(reps["half"]) | ((reps["half"] >= 0) & (reps["half"] <= 1)))
    assert np.isnan(reps["half"]).any()  # replicates that drew neither of its seeds
    # one replicate by hand: replicate 0's draws are the first (seeds, images) integers of the rng
    draw = np.random.default_rng(1)
    w = np.bincount(draw.integers(4, size=(200, 4))[0], minlength=4)  # seeds of all replicates, then images
    v = np.bincount(draw.integers(50, size=(200, 50))[0], minlength=50)
    by_hand = sum(w[s] * (c[s].astype(float) @ v) / 50 for s in range(4)) / w.sum()
    assert reps["x"][0] == pytest.approx(by_hand, abs=1e-12)


def test_joint_bootstrap_in_chunks_equals_one_pass():
    rng = np.random.default_rng(4)
    cells = {k: {s: rng.random(30) < 0.7 for s in range(3)} for k in "ab"}
    one = P.joint_bootstrap(cells, 50, np.random.default_rng(2))
    chunked = P.joint_bootstrap(cells, 50, np.random.default_rng(2), max_elements=30 * 7)
    # chunks draw in another order, so not equal draws; but the same distribution: same mean to ~sd/sqrt(50)
    for k in "ab":
        assert abs(one[k].mean() - chunked[k].mean()) < 3 * one[k].std() / math.sqrt(50) * 2


def test_runs_on_different_test_sets_are_refused():
    with pytest.raises(ValueError, match="different sizes"):
        P.joint_bootstrap({"a": {0: np.ones(5, bool)}, "b": {0: np.ones(6, bool)}}, 10, np.random.default_rng(0))


def test_mcnemar_exact_known_values():
    a = np.array([1] * 10 + [0] * 0 + [1] * 5, bool)
    b = np.array([0] * 10 + [1] * 5, bool)
    r = P.mcnemar_exact(a, b)  # a right alone on 10 images, b on none
    assert (r["a_only"], r["b_only"]) == (10, 0) and r["p"] == pytest.approx(2 * 0.5 ** 10)
    assert P.mcnemar_exact(a, a)["p"] == 1.0
    r = P.mcnemar_exact(np.array([1, 1, 0, 0], bool), np.array([0, 0, 1, 1], bool))  # 2 vs 2
    assert r["p"] == pytest.approx(1.0)


def test_holm_known_values():
    assert P.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = P.holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def _diff(cells) -> np.ndarray:
    return np.stack([cells["a"][s].astype(np.int64) - cells["b"][s].astype(np.int64) for s in sorted(cells["a"])])


def test_null_difference_is_found_no_more_often_than_the_nominal_rate():
    """Two arms drawn from the same distribution (with seed and per-image effects like real
    classifiers'), 10 seeds x 400 images: the 95% interval excludes 0 in at most 5% of test sets
    (within 3 binomial sd of the rate), and less rarely than the raw joint bootstrap (`bootstrap_p`
    of the unscaled replicates), which counts the seed x image residual three times. Measured: 5.0%
    and 3.25% here; over 5-30 seeds and weaker seed effects 1-5% and 1-3%."""
    rng = np.random.default_rng(20)
    found = raw = 0
    for _ in range(NULL_REPS):
        cells = two_arms(rng, seeds=10, images=400)
        reps = P.joint_bootstrap(cells, 400, rng)
        found += P.paired_interval(_diff(cells), reps["a"] - reps["b"])[2] < 0.05
        raw += P.bootstrap_p(reps["a"] - reps["b"]) < 0.05
    assert found / NULL_REPS <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / NULL_REPS), (found, raw)
    assert raw < found


def test_the_bootstrap_varies_as_boot_var_says_and_the_scaled_one_as_the_mean():
    """Gaussian seed, image and residual effects of known size: the raw replicates' variance is
    `boot_var` (residual counted ~3 times), and the variance of the mean over fresh seeds and images
    is `se`^2, which `paired_interval`'s scale (less its t factor) brings the replicates to."""
    rng = np.random.default_rng(8)
    s, n = 10, 300
    vc = P.VarianceComponents(seeds=s, images=n, mean=0.0, seed_var=0.02 ** 2, image_var=0.05 ** 2, residual_var=0.3 ** 2)
    raw_var, means, scaled_var = [], [], []
    for _ in range(120):
        d = (rng.normal(0, 0.02, (s, 1)) + rng.normal(0, 0.05, (1, n)) + rng.normal(0, 0.3, (s, n)))
        d = np.round(d * 1e6).astype(np.int64)  # integers: no BLAS in joint_bootstrap (see below)
        reps = P.joint_bootstrap({"a": dict(enumerate(d))}, 1000, rng)["a"]
        raw_var.append(np.var(reps) / 1e12)
        means.append(d.mean() / 1e6)
        scale = P.paired_interval(d, reps)[3] / (2.2621571627409915 / 1.959963984540054)  # less t_9 / z
        scaled_var.append(np.var(d.mean() + scale * (reps - d.mean())) / 1e12)
    assert np.mean(raw_var) == pytest.approx(vc.boot_var(s), rel=0.08)
    assert np.var(means) == pytest.approx(vc.se(s) ** 2, rel=0.3)  # 120 draws: sd of a variance ~13%
    assert np.mean(scaled_var) == pytest.approx(vc.se(s) ** 2, rel=0.12)


def test_real_difference_is_found_and_covered():
    """Arm a better by 0.75 logits (about +3 points at these accuracies), 10 seeds x 400 images:
    the interval excludes 0 in >= 90% of test sets and covers the population difference in 95%
    (within 3 binomial sd)."""
    truth = true_difference(0.75)
    assert 0.025 < truth < 0.04, truth
    rng = np.random.default_rng(21)
    found = covered = 0
    reps_n = 200
    for _ in range(reps_n):
        cells = two_arms(rng, seeds=10, images=400, shift=0.75)
        reps = P.joint_bootstrap(cells, 400, rng)
        c = P.compare(cells["a"], cells["b"], reps["a"], reps["b"])
        found += c["p"] < 0.05 and c["diff"] > 0
        covered += c["diff_lo"] <= truth <= c["diff_hi"]
    assert found / reps_n >= 0.9, found
    assert abs(covered / reps_n - 0.95) <= 3 * math.sqrt(0.05 * 0.95 / reps_n), covered


def test_mcnemar_holds_its_level_and_finds_a_difference():
    """McNemar's hypothesis is about two classifiers: same per-image chance of being right. Two
    classifiers with identical per-image probabilities: p < 0.05 in at most 5% of test sets (the
    exact test is conservative); one with higher chances everywhere is found."""
    rng = np.random.default_rng(22)
    null = alt = 0
    for _ in range(NULL_REPS):
        p = 1 / (1 + np.exp(-rng.normal(2.5, 1.5, 400)))
        a, b = rng.random(400) < p, rng.random(400) < p
        null += P.mcnemar_exact(a, b)["p"] < 0.05
        better = rng.random(400) < 1 / (1 + np.exp(-(np.log(p / (1 - p)) + 1.0)))
        alt += P.mcnemar_exact(better, b)["p"] < 0.05
    assert null / NULL_REPS <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / NULL_REPS)
    assert alt / NULL_REPS >= 0.8


def test_variance_components_recover_known_ones():
    rng = np.random.default_rng(5)
    s, n = 40, 2000
    d = 0.01 + rng.normal(0, 0.02, (s, 1)) + rng.normal(0, 0.1, (1, n)) + rng.normal(0, 0.3, (s, n))
    vc = P.variance_components(d)
    assert vc.mean == pytest.approx(0.01, abs=0.01)
    assert vc.seed_var == pytest.approx(0.02 ** 2, rel=0.35)
    assert vc.image_var == pytest.approx(0.1 ** 2, rel=0.15)
    assert vc.residual_var == pytest.approx(0.3 ** 2, rel=0.05)


def test_seeds_needed_gives_the_power_it_promises():
    """Components and a true difference chosen; `seeds_needed` says S seeds give 80% power; data
    drawn with those components and S seeds are found (`paired_interval`, p < 0.05) in 80% of
    repetitions, within 3 binomial sd; with half the seeds, clearly less often."""
    vc = P.VarianceComponents(seeds=0, images=300, mean=0.0, seed_var=0.015 ** 2, image_var=0.05 ** 2,
                              residual_var=0.3 ** 2)
    delta = 0.025
    s = P.seeds_needed(vc, delta)
    assert s is not None and 6 <= s <= 20, s
    assert P.power(vc, delta, s) >= 0.8 > P.power(vc, delta, s - 1)
    rng = np.random.default_rng(6)

    def rate(seeds: int, reps_n: int = 200) -> float:
        hits = 0
        for _ in range(reps_n):
            d = (delta + rng.normal(0, math.sqrt(vc.seed_var), (seeds, 1)) + rng.normal(0, math.sqrt(vc.image_var), (1, 300))
                 + rng.normal(0, math.sqrt(vc.residual_var), (seeds, 300)))
            # in units of 1e-6, as integers: integer matrices skip BLAS, whose threads spin on a busy machine
            d = np.round(d * 1e6).astype(np.int64)
            reps = P.joint_bootstrap({"a": dict(enumerate(d))}, 400, rng)["a"]
            hits += P.paired_interval(d, reps)[2] < 0.05
        return hits / reps_n

    measured = rate(s)
    assert abs(measured - 0.8) <= 3 * math.sqrt(0.8 * 0.2 / 200), measured
    assert rate(max(2, s // 2)) < measured


def test_seeds_needed_is_none_when_the_test_set_alone_is_too_small():
    vc = P.VarianceComponents(seeds=0, images=100, mean=0.0, seed_var=0.0, image_var=0.1 ** 2, residual_var=0.0)
    assert P.seeds_needed(vc, 0.005) is None  # image term alone: se >= 0.01, twice the difference
