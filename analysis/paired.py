"""Paired comparisons of arms: every arm is scored on the same test images and, seed by seed, shares
its generator and its round-0 schedule, so two arms are compared image by image and seed by seed.

Pure functions over per-image results (`correct[seed]`: a bool vector over the test images, from
each run's test_predictions.npz, read by analysis.read); no I/O, no plotting.

- `joint_bootstrap`: every cell's replicate mean accuracy from draws shared by all cells: a
  replicate resamples the seeds (with replacement) and the test images (with replacement), the same
  seeds and the same images for every arm and budget. A difference of two cells' replicates is then
  a paired bootstrap of their difference, and the curves of one replicate feed samples-to-target.
- `compare`: one pair of arms at one budget: the mean accuracy difference over the matched seeds,
  its percentile interval and two-sided p-value from the joint bootstrap, the seeds won / tied /
  lost, and McNemar's exact test per matched seed on the discordant images.
- `variance_components` and `seeds_needed`: a power calculation for the next sweep from the
  measured spread of the differences by seed and by image.
- `correct_cells`, `paired_replicates`, `paired_table`: a sweep's runs into the report's
  "Paired comparisons" table and samples-to-target's paired intervals.

Why both seeds and images: the seeds are a sample of training randomness (generator samples,
initialisation, batches), the test images a sample of the data distribution; a claim about the
method needs both. The joint ("two-way", "pigeonhole") bootstrap counts the seed x image residual
about three times; `paired_interval` rescales its replicates to the variance the variance
components give, so that its level is the nominal one (tests/test_paired.py measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats import LEVEL, percentile_interval

# the comparisons the paper's claims need, first arm minus second (docs/results-digits.md)
PAIRS = (("dp", "static"), ("dp", "dp (ω=0)"), ("dp (ω=0)", "static"), ("dp", "prune"), ("prune", "static"))

Cells = Mapping[Hashable, Mapping[int, np.ndarray]]  # cell -> seed -> bool (n_images,)


def n_images(cells: Cells) -> int:
    """The common number of test images; ValueError if two runs were scored on different sets."""
    sizes = {len(v) for per_seed in cells.values() for v in per_seed.values()}
    if len(sizes) > 1:
        raise ValueError(f"runs scored on test sets of different sizes: {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def joint_bootstrap(cells: Cells, b: int, rng: np.random.Generator,
                    max_elements: int = 1 << 24) -> dict[Hashable, np.ndarray]:
    """Per cell, `b` replicate mean accuracies (float (b,)) from shared draws (cells of bools: each
    image right or wrong; other numbers are averaged the same way): replicate j draws
    seed counts w_j over the union of seeds and image counts v_j over the test images, and a cell's
    replicate mean is sum_s w_js * (c_s . v_j) / (N * sum_s w_js) over the seeds the cell has (NaN
    if the replicate drew none of them). Replicates are made in chunks of at most `max_elements`
    image counts, so 50k test images cost memory in proportion to the chunk, not to b."""
    seeds = sorted({s for per_seed in cells.values() for s in per_seed})
    n = n_images(cells)
    out = {k: np.full(b, np.nan) for k in cells}
    if not seeds or n == 0 or b == 0:
        return out
    pos = {s: i for i, s in enumerate(seeds)}
    # integer matrices: exact sums, and numpy's integer matmul is a plain loop, not a BLAS call whose
    # threads spin on a busy machine (measured 2 ms vs 7-24 ms for (10 x 400) @ (400 x 400))
    mats = {k: (np.array([pos[s] for s in sorted(per_seed)]), _as_matrix([per_seed[s] for s in sorted(per_seed)]))
            for k, per_seed in cells.items()}
    chunk = max(1, min(b, max_elements // n))
    for start in range(0, b, chunk):
        m = min(chunk, b - start)
        w = _counts(rng.integers(len(seeds), size=(m, len(seeds))), len(seeds)).astype(float)  # (m, S)
        v = _counts(rng.integers(n, size=(m, n)), n)  # (m, N)
        for k, (idx, c) in mats.items():
            per_seed = (c @ v.T.astype(c.dtype)) / n  # (S_cell, m): each seed's accuracy on the drawn images
            ws = w[:, idx]  # (m, S_cell)
            total = ws.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k][start : start + m] = np.where(total > 0, (ws * per_seed.T).sum(axis=1) / total, np.nan)
    return out


def _as_matrix(rows: list[np.ndarray]) -> np.ndarray:
    """(seeds, images): int64 for correctness (bools) and other integers, float64 for other values
    (their mean is bootstrapped the same way)."""
    m = np.stack([np.asarray(r) for r in rows])
    return m.astype(np.int64) if m.dtype == bool or np.issubdtype(m.dtype, np.integer) else m.astype(float)


def _counts(draws: np.ndarray, k: int) -> np.ndarray:
    """Row-wise counts of the values 0..k-1 in (m, draws) integer draws, (m, k)."""
    m = len(draws)
    flat = (draws + (np.arange(m) * k)[:, None]).ravel()
    return np.bincount(flat, minlength=m * k).reshape(m, k)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict:
    """McNemar's exact test of two classifiers on the same images: `a_only` images right by a
    only, `b_only` by b only; two-sided p = P(|Binomial(a_only + b_only, 1/2) - n/2| >= observed)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap replicates of a difference: twice the
    smaller share of replicates on either side of 0 (the level at which the percentile interval
    would just touch 0), capped at 1. NaN replicates (cells not drawn) are left out."""
    r = np.asarray(replicates, float)
    r = r[np.isfinite(r)]
    if not len(r):
        return math.nan
    return float(min(1.0, 2 * min(np.mean(r <= 0), np.mean(r >= 0))))


def compare(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray], rep_a: np.ndarray | None = None,
            rep_b: np.ndarray | None = None, level: float = LEVEL, alpha: float = 0.05) -> dict:
    """Arm a minus arm b at one budget, over the seeds both have. `rep_a`/`rep_b`: the two cells'
    replicates from one `joint_bootstrap` (the interval and p-value, `paired_interval`; without them
    only the point figures). Returns `seeds` (matched), `diff` (mean of the per-seed accuracy
    differences), `diff_lo`/`diff_hi`, `p`, `scale`, `wins`/`ties`/`losses` (seeds where a's
    accuracy is above / equal to / below b's), `mcnemar` (per seed), `mcnemar_below` (seeds whose
    McNemar p < `alpha`, either way)."""
    seeds = sorted(set(a) & set(b))
    per_seed = np.array([np.mean(a[s]) - np.mean(b[s]) for s in seeds], float)
    mc = [{"seed": s, **mcnemar_exact(a[s], b[s])} for s in seeds]
    out = {"seeds": len(seeds), "diff": float(per_seed.mean()) if len(seeds) else math.nan,
           "wins": int(np.sum(per_seed > 0)), "ties": int(np.sum(per_seed == 0)),
           "losses": int(np.sum(per_seed < 0)), "mcnemar": mc,
           "mcnemar_below": sum(m["p"] < alpha for m in mc), "diff_lo": math.nan, "diff_hi": math.nan,
           "p": math.nan, "scale": math.nan}
    if rep_a is not None and rep_b is not None and len(seeds):
        d = np.stack([np.asarray(a[s], np.int64) - np.asarray(b[s], np.int64) for s in seeds])
        reps = np.asarray(rep_a, float) - np.asarray(rep_b, float)
        out["diff_lo"], out["diff_hi"], out["p"], out["scale"] = paired_interval(d, reps, level)
    return out


def paired_interval(d: np.ndarray, replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(lo, hi, p, scale) for the mean of a (seeds, images) matrix of paired differences, from its
    `joint_bootstrap` replicates rescaled about the mean:
    - to the mean's variance: resampling seeds and images jointly counts the seed x image residual
      about three times (the replicate weights w_s v_i have E[(w v)^2] ~ 4), so the raw replicates
      overstate the variance wherever that residual dominates, as it does for two classifiers'
      per-image differences: sqrt(`VarianceComponents.se`^2 / `boot_var`), from the same matrix;
    - then by t_{S-1} / z at `level`: a variance estimated from S seeds (a seed-level spread that
      ten seeds barely pin down made the first factor alone find a null difference 9% of the time).
    1 with one seed (no components). tests/test_paired.py measures the level it holds: at most the
    nominal one over the regimes tried (2-5% for 5% with 5-30 seeds), the raw replicates 1-3%."""
    from scipy.stats import norm, t

    d = np.asarray(d, float)
    r = np.asarray(replicates, float)
    r = r[np.isfinite(r)]
    center = float(d.mean())
    scale = 1.0
    if d.shape[0] >= 2 and d.shape[1] >= 2:
        vc = variance_components(d)
        boot = vc.boot_var(d.shape[0])
        scale = math.sqrt(vc.se(d.shape[0]) ** 2 / boot) if boot > 0 else 1.0
        scale *= t.ppf((1 + level) / 2, d.shape[0] - 1) / norm.ppf((1 + level) / 2)
    r = center + scale * (r - center)
    lo, hi = percentile_interval(r, level)
    return lo, hi, bootstrap_p(r), scale


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error over the comparisons of one table); NaN
    entries stay NaN and are not counted."""
    p = np.asarray(pvalues, float)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), np.nan)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


# --------------------------------------------------------------------------------------------
# Power: how many seeds the next sweep needs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VarianceComponents:
    """The spread of a paired difference d[s, i] (1: only a right on image i with seed s, -1: only
    b, 0: both or neither), split as d = mu + seed_s + image_i + residual_si (two-way crossed
    random effects, one observation per cell; method-of-moments estimates, clipped at 0)."""

    seeds: int
    images: int
    mean: float
    seed_var: float  # variance of the seed effect: training randomness
    image_var: float  # variance of the image effect: which images an arm finds easier
    residual_var: float  # seed x image interaction and per-image noise

    def se(self, seeds: int, images: int | None = None) -> float:
        """Standard error of the mean difference over `seeds` seeds and `images` test images
        (default: this test set), both drawn afresh: var = seed/S + image/N + residual/(S N)."""
        n = self.images if images is None else images
        return math.sqrt(self.seed_var / seeds + self.image_var / n + self.residual_var / (seeds * n))

    def boot_var(self, seeds: int, images: int | None = None) -> float:
        """What `joint_bootstrap`'s replicate means of such a matrix vary by, in expectation:
        (1 - 1/S) seed/S + (1 - 1/N) image/N + (3 - 2/S - 2/N) residual/(S N) (multinomial weights:
        E[w_s w_t] = 1 - 1/S + [s = t], likewise for images)."""
        s, n = seeds, self.images if images is None else images
        return ((1 - 1 / s) * self.seed_var / s + (1 - 1 / n) * self.image_var / n
                + (3 - 2 / s - 2 / n) * self.residual_var / (s * n))


def variance_components(d: np.ndarray) -> VarianceComponents:
    """From a (seeds, images) matrix of paired differences (at least 2 x 2)."""
    d = np.asarray(d, float)
    s, n = d.shape
    if s < 2 or n < 2:
        raise ValueError(f"needs at least 2 seeds and 2 images, has {s} x {n}")
    m = d.mean()
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    ms_row = n * np.sum((rows - m) ** 2) / (s - 1)
    ms_col = s * np.sum((cols - m) ** 2) / (n - 1)
    resid = d - rows[:, None] - cols[None, :] + m
    ms_err = np.sum(resid ** 2) / ((s - 1) * (n - 1))
    return VarianceComponents(seeds=s, images=n, mean=float(m), seed_var=max(0.0, (ms_row - ms_err) / n),
                              image_var=max(0.0, (ms_col - ms_err) / s), residual_var=float(ms_err))


def power(vc: VarianceComponents, delta: float, seeds: int, level: float = LEVEL) -> float:
    """Probability that the two-sided `level` interval excludes 0 when the true difference is
    `delta`: the estimate is normal around `delta` with `VarianceComponents.se`, the interval
    reaches t_{S-1} of those from it (`paired_interval`)."""
    from scipy.stats import norm, t

    q = t.ppf((1 + level) / 2, max(seeds - 1, 1))
    se = vc.se(seeds)
    return float(norm.cdf(abs(delta) / se - q) + norm.cdf(-abs(delta) / se - q))


def seeds_needed(vc: VarianceComponents, delta: float, target_power: float = 0.8, level: float = LEVEL,
                 max_seeds: int = 1000) -> int | None:
    """Fewest seeds (>= 2) with `power` >= target_power for a true difference `delta` on this test
    set; None when even `max_seeds` seeds do not reach it (the test set's image term alone is too
    large: more seeds cannot shrink it)."""
    for s in range(2, max_seeds + 1):
        if power(vc, delta, s, level) >= target_power:
            return s
    return None


# --------------------------------------------------------------------------------------------
# A sweep's paired comparisons, as frames
# --------------------------------------------------------------------------------------------

POWER_DELTA = 0.005  # the paired difference a digits sweep is sized to detect (0.5 points)
POWER_TARGET = 0.8


def correct_cells(runs: pd.DataFrame, correct: Mapping[str, np.ndarray | None]) -> dict[tuple[str, int], dict[int, np.ndarray]]:
    """(arm, budget) -> seed -> bool (n_test,), for the evaluated runs of the grid (`per_run`'s rows;
    branch-outs left out) that have per-image results (`correct`, by run name)."""
    cells: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    f = runs[runs["test_acc"].notna()]
    if "branch_of" in f:
        f = f[f["branch_of"].isna()]
    for r in f.itertuples(index=False):
        c = correct.get(r.run)
        if c is not None and r.seed == r.seed:
            cells.setdefault((r.arm, int(r.budget)), {})[int(r.seed)] = np.asarray(c, bool)
    return cells


def is_complete(cells: Mapping[tuple[str, int], Mapping[int, np.ndarray]], runs: pd.DataFrame) -> bool:
    """Every evaluated run of the grid has per-image results and every cell has the same seeds: then
    samples-to-target takes its intervals from the joint bootstrap (a replicate holds every cell)."""
    f = runs[runs["test_acc"].notna()]
    if "branch_of" in f:
        f = f[f["branch_of"].isna()]
    seed_sets = {frozenset(v) for v in cells.values()}
    return bool(cells) and len(seed_sets) == 1 and sum(len(v) for v in cells.values()) == len(f)


def paired_replicates(cells: Mapping[tuple[str, int], Mapping[int, np.ndarray]], generated: Mapping[tuple[str, int], float],
                      b: int = 10_000, seed: int = 20250221) -> dict[tuple[str, int], dict]:
    """Every cell's `joint_bootstrap` replicates in the form of `analysis.stats.cell_replicates`
    (`seeds`: replicate means, `both`: None, `generated`), for samples-to-target's intervals."""
    reps = joint_bootstrap(cells, b, np.random.default_rng([seed, 1]))
    return {k: {"accs": np.array([np.mean(v) for v in cells[k].values()]), "n_test": n_images(cells),
                "seeds": r, "both": None, "generated": float(generated[k]), "paired": True} for k, r in reps.items()}


def paired_table(cells: Mapping[tuple[str, int], Mapping[int, np.ndarray]], reps: Mapping[tuple[str, int], dict],
                 pairs: Sequence[tuple[str, str]] = PAIRS, level: float = LEVEL) -> pd.DataFrame:
    """One row per pair of arms (`pairs`, first minus second) and budget both have: `compare`'s
    figures, `p_holm` (Holm over the table's rows), McNemar's tally (`mcnemar_first`/`_second`:
    seeds where it finds the first / second arm better at p < 0.05) and the power figures of
    `variance_components` for a POWER_DELTA difference (`se`, `power` with these seeds, `power_max`
    with unlimited seeds, `seeds_needed`: inf when even 1,000 seeds do not reach POWER_TARGET)."""
    rows = []
    for first, second in pairs:
        for budget in sorted({bud for arm, bud in cells if arm == first} & {bud for arm, bud in cells if arm == second}):
            a, b = cells[(first, budget)], cells[(second, budget)]
            c = compare(a, b, reps[(first, budget)]["seeds"], reps[(second, budget)]["seeds"], level)
            mc = c.pop("mcnemar")
            row = {"first": first, "second": second, "budget": budget, **c,
                   "mcnemar_first": sum(m["p"] < 0.05 and m["a_only"] > m["b_only"] for m in mc),
                   "mcnemar_second": sum(m["p"] < 0.05 and m["a_only"] < m["b_only"] for m in mc)}
            seeds = sorted(set(a) & set(b))
            if len(seeds) >= 2:
                vc = variance_components(np.stack([a[s].astype(np.int8) - b[s].astype(np.int8) for s in seeds]))
                row.update({"seed_sd": math.sqrt(vc.seed_var), "image_sd": math.sqrt(vc.image_var),
                            "residual_sd": math.sqrt(vc.residual_var), "se": vc.se(len(seeds)),
                            "power": power(vc, POWER_DELTA, len(seeds), level),
                            # with unlimited seeds only the test set's image term is left
                            "power_max": power(vc, POWER_DELTA, 10 ** 9, level),
                            "seeds_needed": seeds_needed(vc, POWER_DELTA, POWER_TARGET, level) or math.inf})
            rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["p"].tolist())
    return out
