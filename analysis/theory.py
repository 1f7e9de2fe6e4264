"""Random-matrix toy model of the paper's Section 3 (Askari-Hemmat et al., ICML 2025, Fig. 3).

Model
-----
* Candidates ``x_i ~ N(0, I_d)``, ``i = 1..n``; labels ``y_i = sign(w0 . x_i)``, ``|w0| = 1``.
* Pruning oracle ``w_s = rho * w0 + sqrt(1 - rho^2) * e`` with ``e`` a unit vector orthogonal to
  ``w0`` (so ``|w_s| = 1`` and the paper's ``alpha = xi / |w_s|`` equals ``xi``).
* Selection ``q_i = q(x_i . w_s)``: keep-hard ``q(t) = 1[|t| <= xi]``, keep-easy
  ``q(t) = 1[|t| > xi]``, random ``q_i ~ Bernoulli(p)`` independent of ``x_i``. ``xi`` is set
  from the selection ratio ``p = E[q]``.
* Ridge on the kept samples, normalised by the number of *candidates* ``n``::

      w_hat = argmin_w (1/n) sum_i q_i (y_i - w . x_i)^2 + lam |w|^2
            = (X^T Q X / n + lam I)^{-1} X^T Q y / n.

  This normalisation is the one under which the resolvent of Theorem 1,
  ``m(z) = [p - phi - z - sqrt((p - phi - z)^2 - 4 phi z)] / (2 phi z)``, is the Stieltjes
  transform of ``X^T Q X / n`` (``phi = d / n``).
* Test error: the 0-1 classification error of ``sign(w_hat . x)`` on a fresh ``x ~ N(0, I_d)``,
  which for isotropic Gaussian ``x`` is exactly ``arccos(<w_hat, w0> / |w_hat|) / pi``.

Closed form (derived here; same moments and resolvent as the paper's Theorem 1)
-------------------------------------------------------------------------------
Write ``x = u w_s + v e' + z`` with ``u = x . w_s`` (the score), ``e'`` the unit vector in
``span(w0, w_s)`` orthogonal to ``w_s`` (so ``w0 = rho w_s + s e'``, ``s = sqrt(1 - rho^2)``),
and ``z`` the ``d - 2`` remaining ("bulk") coordinates. Selection acts on ``u`` only, so among the
``k ~ p n`` kept rows ``v`` and ``z`` stay i.i.d. standard normal and ``z`` is independent of
``(u, v, y)``. Profiling the bulk part ``c`` out of the ridge objective for a fixed low-dimensional
part ``a = (a_u, a_v)`` leaves ``lam [r^T (Z Z^T / n + lam)^{-1} r / n + |a|^2]`` with residual
``r = y - T a``; ``r`` is independent of the left-rotation-invariant ``Z``, so the quadratic form
concentrates on ``|r|^2 tr(.)/k`` (the same argument gives ``|c|^2 = r^T Z (Z^T Z + n lam)^{-2}
Z^T r ~ (|r|^2 / k) tr[A (A + lam)^{-2}] / n`` with ``A = Z^T Z / n``). With ``kappa = (1/k) tr(Z Z^T / n + lam)^{-1}
= (phi/p) m + (1 - phi/p) / lam`` (``m = m(-lam)``) this gives a 2-d ridge with ridge ``1/kappa``::

    a_u = beta_tilde / (gamma + 1/kappa),      a_v = beta / (p + 1/kappa),
    R   = E[(y - t.a)^2 | kept]
        = 1 - 2 (a_u beta_tilde + a_v beta) / p + (gamma a_u^2 + p a_v^2) / p,
    |c|^2 = R * phi * (m - lam m'),            m' = dm/dz at z = -lam,
    cos = (rho a_u + s a_v) / sqrt(a_u^2 + a_v^2 + |c|^2),   error = arccos(cos) / pi,

with the selection moments ``gamma = E[q(G) G^2]``, ``beta = 2 E[q(G) phi(tau G)]``,
``beta_tilde = 2 E[q(G) Phi(tau G) G]``, ``tau = rho / s`` (they are ``p E[u^2|kept]``,
``p E[v y|kept]`` and ``p E[u y|kept]``). The result depends on ``n`` and ``d`` only through
``phi = d / n``; it is the proportional limit ``n, d -> inf`` and ignores the O(1/d) effect of the
2 structured directions being taken out of the bulk and of the binomial kept count.

What it shows (``p = 0.1``, ``rho = 1``): at ``lam = 1e-4`` keep-hard is worse than random below
the kept-set interpolation point ``p n = d`` and better from ``n/d ~ 9.8`` on, with a steeper
log-log slope over ``n/d`` in [16, 128] (-0.87 vs -0.61); at fixed ``lam`` every rule's slope
tends to -1/2 as ``n/d -> inf`` (keep-hard keeps a constant-factor lead). At ``lam = 1e-2``
keep-hard stays above random up to ``n/d = 4096``. With ``rho < 1`` keep-hard has an error floor
(biased population least squares on non-Gaussian kept data).

Run::

    python -m analysis.theory --out DIR        # DIR/theory_fig3.png and DIR/theory_fig3.csv
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

from dp_hpc.errors import run_main

logger = logging.getLogger(__name__)

KINDS = ("random", "keep_hard", "keep_easy")
_PHI0 = 1.0 / math.sqrt(2.0 * math.pi)  # standard normal density at 0


# --------------------------------------------------------------------------------------------
# Selection rule and its moments
# --------------------------------------------------------------------------------------------
def _check(kind: str, p: float, rho: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; valid kinds are {KINDS}")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p={p} must be in (0, 1] (the fraction of candidates kept)")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho={rho} must be in [0, 1] (overlap of the oracle w_s with w0)")


def threshold(kind: str, p: float) -> float:
    """Score threshold ``xi`` (for ``|w_s| = 1``) that keeps a fraction ``p`` in expectation.

    keep-hard: ``P(|G| <= xi) = p``; keep-easy: ``P(|G| > xi) = p``; random: ``nan`` (no threshold).
    """
    _check(kind, p, 1.0)
    if kind == "keep_hard":
        return float(norm.ppf((1.0 + p) / 2.0))
    if kind == "keep_easy":
        return float(norm.isf(p / 2.0))
    return float("nan")


def selection_moments(kind: str, p: float, rho: float) -> dict:
    """Selection moments of Theorem 1 for ``G ~ N(0, 1)`` (the oracle score, ``|w_s| = 1``).

    Returns ``dict(p, xi, gamma, beta, beta_tilde)`` with ``gamma = E[q G^2]``,
    ``beta = 2 E[q phi(tau G)]``, ``beta_tilde = 2 E[q Phi(tau G) G]``, ``tau = rho/sqrt(1-rho^2)``.

    Closed forms (``s = sqrt(1 - rho^2)``, ``alpha = xi``):
      * no selection (``q = 1``): ``gamma = 1``, ``beta = 2 phi(0) s``,
        ``beta_tilde = 2 rho phi(0)``.
      * keep-hard: ``gamma = (2 Phi(alpha) - 1) - 2 alpha phi(alpha)``,
        ``beta = 2 phi(0) s eps1``, ``beta_tilde = 2 (rho phi(0) eps1 - phi(alpha) eps2)`` with
        ``eps1 = 2 Phi(alpha/s) - 1``, ``eps2 = 2 Phi(tau alpha) - 1`` (the paper's expressions).
      * keep-easy: ``q = 1 - q_hard``, so no-selection moments minus keep-hard moments.
      * random: ``q`` independent of ``G``, so ``p`` times the no-selection moments.
    ``rho = 1`` is handled as the limit ``s -> 0``, ``tau -> inf``.
    """
    _check(kind, p, rho)
    s = math.sqrt(max(0.0, 1.0 - rho * rho))
    full = dict(gamma=1.0, beta=2.0 * _PHI0 * s, beta_tilde=2.0 * rho * _PHI0)
    xi = threshold(kind, p)
    if kind == "random":
        return dict(p=p, xi=xi, **{k: p * v for k, v in full.items()})
    if p == 1.0:  # either rule keeps (almost) every candidate; avoids inf * 0 at xi = inf
        return dict(p=p, xi=xi, **full)
    a = threshold("keep_hard", p) if kind == "keep_hard" else threshold("keep_hard", 1.0 - p)
    eps1 = 2.0 * norm.cdf(a / s) - 1.0 if s > 0 else 1.0
    eps2 = 2.0 * norm.cdf(rho / s * a) - 1.0 if s > 0 else (1.0 if a > 0 else 0.0)
    hard = dict(
        gamma=(2.0 * norm.cdf(a) - 1.0) - 2.0 * a * norm.pdf(a),
        beta=2.0 * _PHI0 * s * eps1,
        beta_tilde=2.0 * (rho * _PHI0 * eps1 - norm.pdf(a) * eps2),
    )
    if kind == "keep_hard":
        return dict(p=p, xi=xi, **hard)
    return dict(p=p, xi=xi, **{k: full[k] - hard[k] for k in full})


# --------------------------------------------------------------------------------------------
# Resolvent
# --------------------------------------------------------------------------------------------
def resolvent_m(phi, p: float, lam) -> np.ndarray:
    """``m(-lam)``: Stieltjes transform of ``X_S^T X_S / n`` at ``z = -lam`` (``lam > 0``).

    ``X_S`` is ``(p n) x d`` with i.i.d. N(0, 1) entries and ``phi = d / n``; equivalently
    ``m = lim (1/d) tr(X_S^T X_S / n + lam I)^{-1}``. This is the paper's
    ``m(z) = [p - phi - z - sqrt((p - phi - z)^2 - 4 phi z)] / (2 phi z)`` on the branch with
    ``m > 0`` for ``z < 0``. Written without cancellation: with ``B = p - phi + lam`` and
    ``D = sqrt(B^2 + 4 phi lam)``, ``m = (D - B) / (2 phi lam) = 2 / (D + B)``; the first form is
    used when ``B < 0``, the second when ``B >= 0``. Broadcasts over ``phi`` and ``lam``.
    """
    phi, lam = np.broadcast_arrays(np.asarray(phi, float), np.asarray(lam, float))
    if np.any(lam <= 0) or np.any(phi <= 0):
        raise ValueError("resolvent_m needs lam > 0 and phi > 0")
    b = p - phi + lam
    disc = np.sqrt(b * b + 4.0 * phi * lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(b >= 0, 2.0 / (disc + b), (disc - b) / (2.0 * phi * lam))
    return m


def resolvent_dm(phi, p: float, lam) -> np.ndarray:
    """``m'(z) = (1/d) tr(X_S^T X_S/n - z)^{-2}`` at ``z = -lam``.

    From differentiating the self-consistent equation ``phi z m^2 - (p - phi - z) m + 1 = 0``:
    ``m' = m (1 + phi m) / sqrt((p - phi + lam)^2 + 4 phi lam)``.
    """
    phi, lam = np.broadcast_arrays(np.asarray(phi, float), np.asarray(lam, float))
    m = resolvent_m(phi, p, lam)
    disc = np.sqrt((p - phi + lam) ** 2 + 4.0 * phi * lam)
    return m * (1.0 + phi * m) / disc


# --------------------------------------------------------------------------------------------
# Closed form
# --------------------------------------------------------------------------------------------
def closed_form_state(kind: str, n, d: int, p: float, rho: float, lam: float) -> dict:
    """Deterministic equivalent of the ridge estimator; see the module docstring for the algebra.

    Returns arrays (broadcast over ``n``): ``a_u`` (component on ``w_s``), ``a_v`` (on the part of
    ``w0`` orthogonal to ``w_s``), ``c2`` (squared norm of the bulk noise component), ``overlap``
    (``<w_hat, w0>``), ``norm2`` (``|w_hat|^2``), ``cos`` and ``error``.
    """
    mom = selection_moments(kind, p, rho)
    if lam <= 0:
        raise ValueError(f"lam={lam} must be > 0 (the closed form is for ridge, not least squares)")
    phi = d / np.asarray(n, float)
    g, b, bt = mom["gamma"], mom["beta"], mom["beta_tilde"]
    s = math.sqrt(max(0.0, 1.0 - rho * rho))
    m = resolvent_m(phi, p, lam)
    dm = resolvent_dm(phi, p, lam)
    kappa = (phi / p) * m + (1.0 - phi / p) / lam  # (1/k) tr(Z Z^T/n + lam)^{-1}, k = p n
    a_u = bt / (g + 1.0 / kappa)
    a_v = b / (p + 1.0 / kappa)
    resid = 1.0 - 2.0 * (a_u * bt + a_v * b) / p + (g * a_u**2 + p * a_v**2) / p
    c2 = resid * phi * (m - lam * dm)
    overlap = rho * a_u + s * a_v
    norm2 = a_u**2 + a_v**2 + c2
    cos = np.clip(overlap / np.sqrt(norm2), -1.0, 1.0)
    return dict(a_u=a_u, a_v=a_v, c2=c2, overlap=overlap, norm2=norm2, cos=cos,
                error=np.arccos(cos) / np.pi, m=m, kappa=kappa, resid=resid)


def closed_form_error(kind: str, n, d: int, p: float, rho: float, lam: float):
    """Asymptotic 0-1 test error ``arccos(<w_hat,w0>/|w_hat|)/pi`` of ridge on the selected data.

    ``n`` may be an array (vectorised); returns a float for scalar ``n``.
    """
    err = closed_form_state(kind, n, d, p, rho, lam)["error"]
    return float(err) if np.ndim(err) == 0 else err


# --------------------------------------------------------------------------------------------
# Monte-Carlo simulation of the same model
# --------------------------------------------------------------------------------------------
def draw_teacher_oracle(d: int, rho: float, rng: np.random.Generator):
    """Random unit ``w0`` and an oracle ``w_s`` with ``|w_s| = 1`` and ``w_s . w0 = rho``."""
    w0 = rng.standard_normal(d)
    w0 /= np.linalg.norm(w0)
    e = rng.standard_normal(d)
    e -= (e @ w0) * w0
    e /= np.linalg.norm(e)
    return w0, rho * w0 + math.sqrt(max(0.0, 1.0 - rho * rho)) * e


def fit_selected_ridge(kind: str, n: int, d: int, p: float, rho: float, lam: float,
                       rng: np.random.Generator, chunk_rows: int = 1 << 14):
    """One draw of the model: ``n`` candidates, select, ridge. Returns ``(w_hat, w0, k_kept)``.

    All ``n`` candidates are drawn in full (literal simulation, no conditional-sampling shortcut),
    in chunks of ``chunk_rows`` so memory is ``O(chunk_rows * d + d^2)``; the Gram matrix
    ``X^T Q X`` (``(d, d)``) and ``X^T Q y`` (``(d,)``) are accumulated over kept rows.
    """
    w0, ws = draw_teacher_oracle(d, rho, rng)
    xi = threshold(kind, p)
    gram = np.zeros((d, d))
    xty = np.zeros(d)
    kept = 0
    for start in range(0, n, chunk_rows):
        x = rng.standard_normal((min(chunk_rows, n - start), d))  # (rows, d)
        if kind == "random":
            keep = rng.random(x.shape[0]) < p
        else:
            score = np.abs(x @ ws)
            keep = score <= xi if kind == "keep_hard" else score > xi
        xs = x[keep]
        y = np.sign(xs @ w0)
        gram += xs.T @ xs
        xty += xs.T @ y
        kept += xs.shape[0]
    w_hat = np.linalg.solve(gram / n + lam * np.eye(d), xty / n)
    return w_hat, w0, kept


def population_error(w_hat: np.ndarray, w0: np.ndarray) -> float:
    """Exact 0-1 error of ``sign(w_hat . x)`` vs ``sign(w0 . x)`` for ``x ~ N(0, I)``."""
    cos = float(w_hat @ w0 / (np.linalg.norm(w_hat) * np.linalg.norm(w0)))
    return math.acos(max(-1.0, min(1.0, cos))) / math.pi


def empirical_error(w_hat: np.ndarray, w0: np.ndarray, n_test: int,
                    rng: np.random.Generator) -> float:
    """0-1 error of ``sign(w_hat . x)`` on ``n_test`` fresh Gaussian test points (for checks)."""
    x = rng.standard_normal((n_test, w0.shape[0]))
    return float(np.mean(np.sign(x @ w_hat) != np.sign(x @ w0)))


def simulate_error(kind: str, n: int, d: int, p: float, rho: float, lam: float,
                   seeds: int, rng: np.random.Generator):
    """Monte-Carlo ``(mean, std)`` over ``seeds`` independent draws of the population 0-1 error.

    ``std`` is the sample standard deviation (ddof=1) across draws; the standard error of the
    mean is ``std / sqrt(seeds)``. Cost per draw: ``n d`` normals plus ``p n d^2`` flops.
    """
    _check(kind, p, rho)
    errs = [population_error(*fit_selected_ridge(kind, n, d, p, rho, lam, rng)[:2])
            for _ in range(seeds)]
    return float(np.mean(errs)), float(np.std(errs, ddof=1)) if seeds > 1 else 0.0


# --------------------------------------------------------------------------------------------
# Figure 3
# --------------------------------------------------------------------------------------------
def crossover_n_over_d(p: float, rho: float, lam: float, lo: float = 1.0, hi: float = 4096.0,
                       points: int = 2001) -> float:
    """Smallest ``n/d`` on a log grid over ``[lo, hi]`` from which on keep-hard beats random.

    "Beats" means a strictly lower closed-form error at every grid point from there up to ``hi``;
    returns ``inf`` if keep-hard is not below random at ``hi``. Grid resolution: ``points`` log-
    spaced values (2001 over [1, 4096] is a 0.4% step).
    """
    r = np.geomspace(lo, hi, points)
    better = closed_form_error("keep_hard", r, 1, p, rho, lam) < closed_form_error(
        "random", r, 1, p, rho, lam)
    if not better[-1]:
        return float("inf")
    worse = np.flatnonzero(~better)
    return float(r[0] if worse.size == 0 else r[worse[-1] + 1])


def loglog_slope(kind: str, r1: float, r2: float, p: float, rho: float, lam: float) -> float:
    """Closed-form ``d log(error) / d log(n)`` between ``n/d = r1`` and ``n/d = r2`` (secant)."""
    e1, e2 = closed_form_error(kind, np.array([r1, r2]), 1, p, rho, lam)
    return float(np.log(e2 / e1) / np.log(r2 / r1))


def figure3_table(d: int = 512, p: float = 0.1, rho: float = 1.0, lams=(1e-4, 1e-2),
                  n_over_d=None, mc_d: int = 128, mc_n_over_d=(2, 4, 8, 16, 32, 128, 512),
                  mc_seeds: int = 8, seed: int = 0):
    """Closed-form curves (at ``d``) and Monte-Carlo points (at ``mc_d``) as a pandas DataFrame.

    Columns: ``source`` (closed_form | monte_carlo), ``kind``, ``lam``, ``rho``, ``p``, ``d``,
    ``n``, ``n_over_d``, ``error``, ``std`` (MC only), ``seeds`` (MC only).
    """
    import pandas as pd

    if n_over_d is None:
        n_over_d = np.geomspace(1.0, 4096.0, 121)
    rng = np.random.default_rng(seed)
    rows = []
    for lam in lams:
        for kind in KINDS:
            n = np.asarray(n_over_d) * d
            err = closed_form_error(kind, n, d, p, rho, lam)
            rows += [dict(source="closed_form", kind=kind, lam=lam, rho=rho, p=p, d=d, n=float(ni),
                          n_over_d=float(r), error=float(e), std=np.nan, seeds=0)
                     for ni, r, e in zip(n, n_over_d, err)]
            for r in mc_n_over_d:
                mean, std = simulate_error(kind, int(r * mc_d), mc_d, p, rho, lam, mc_seeds, rng)
                rows.append(dict(source="monte_carlo", kind=kind, lam=lam, rho=rho, p=p, d=mc_d,
                                 n=float(r * mc_d), n_over_d=float(r), error=mean, std=std,
                                 seeds=mc_seeds))
                logger.info("MC %s lam=%g n/d=%g: %.4f +- %.4f", kind, lam, r, mean, std)
    return pd.DataFrame(rows)


def plot_figure3(df, path: Path) -> None:
    """One panel per ``lam``: error vs ``n/d`` on log-log axes, lines = closed form, dots = MC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams = sorted(df["lam"].unique())
    colors = dict(random="tab:gray", keep_hard="tab:red", keep_easy="tab:blue")
    labels = dict(random="random", keep_hard="keep hardest", keep_easy="keep easiest")
    fig, axes = plt.subplots(1, len(lams), figsize=(5.5 * len(lams), 4.3), squeeze=False)
    for ax, lam in zip(axes[0], lams):
        sub = df[df["lam"] == lam]
        for kind in KINDS:
            cf = sub[(sub.source == "closed_form") & (sub.kind == kind)]
            mc = sub[(sub.source == "monte_carlo") & (sub.kind == kind)]
            ax.loglog(cf.n_over_d, cf.error, color=colors[kind],
                      label=f"{labels[kind]} (closed form, n, d -> inf)")
            ax.errorbar(mc.n_over_d, mc.error, yerr=mc["std"] / np.sqrt(mc.seeds), fmt="o",
                        ms=4, color=colors[kind], mfc="white",
                        label=f"{labels[kind]} (Monte-Carlo, d={int(mc.d.iloc[0])})")
        p, rho = float(sub.p.iloc[0]), float(sub.rho.iloc[0])
        r_cross = crossover_n_over_d(p, rho, lam)
        if math.isfinite(r_cross):
            ax.axvline(r_cross, color="k", ls=":", lw=1,
                       label=f"keep-hard < random for n/d >= {r_cross:.1f}")
        else:
            ax.plot([], [], " ", label="keep-hard never below random (n/d <= 4096)")
        ax.set_title(f"ridge lambda={lam:g}, oracle rho={rho:g}, kept fraction p={p:g}")
        ax.set_xlabel("candidates n / d   (kept: p n)")
        ax.set_ylabel("test 0-1 error")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Toy model of Sec. 3 (Fig. 3): keep hardest p vs random vs easiest", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.theory", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder for the PNG and CSV")
    ap.add_argument("--d", type=int, default=512, help="dimension for the closed-form curves")
    ap.add_argument("--p", type=float, default=0.1, help="kept fraction")
    ap.add_argument("--rho", type=float, default=1.0, help="oracle overlap with w0")
    ap.add_argument("--lams", type=float, nargs="+", default=[1e-4, 1e-2], help="ridge lambdas")
    ap.add_argument("--mc-d", type=int, default=128, help="dimension for the Monte-Carlo points")
    ap.add_argument("--mc-seeds", type=int, default=8, help="Monte-Carlo draws per point")
    ap.add_argument("--seed", type=int, default=0, help="Monte-Carlo RNG seed")
    args = ap.parse_args(argv)
    # bad values: one line and exit 2 (argparse's convention), before any work
    problems = [f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}" for k in ("d", "mc_d", "mc_seeds")
                if getattr(args, k) < 1]
    if not 0 < args.p <= 1:
        problems.append(f"--p must be in (0, 1] (the fraction of candidates kept), got {args.p}")
    if not 0 <= args.rho <= 1:
        problems.append(f"--rho must be in [0, 1] (the oracle's overlap with w0), got {args.rho}")
    problems += [f"--lams must be > 0 (ridge), got {lam}" for lam in args.lams if not lam > 0]
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    df = figure3_table(d=args.d, p=args.p, rho=args.rho, lams=tuple(args.lams), mc_d=args.mc_d,
                       mc_seeds=args.mc_seeds, seed=args.seed)
    df.to_csv(args.out / "theory_fig3.csv", index=False)
    plot_figure3(df, args.out / "theory_fig3.png")
    print(f"wrote {args.out / 'theory_fig3.png'} and {args.out / 'theory_fig3.csv'}")
    for lam in args.lams:
        slopes = {k: (loglog_slope(k, 16, 128, args.p, args.rho, lam),
                      loglog_slope(k, 1024, 4096, args.p, args.rho, lam)) for k in KINDS}
        print(f"lam={lam:g} rho={args.rho:g} p={args.p:g}: keep-hard below random from n/d = "
              f"{crossover_n_over_d(args.p, args.rho, lam):.2f}; log-log slopes "
              "(n/d 16->128, 1024->4096): "
              + ", ".join(f"{k} {a:.3f} / {b:.3f}" for k, (a, b) in slopes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
