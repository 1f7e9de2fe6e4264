"""Which samples a round holds and which it keeps, as pure functions of the run seed and round
(numpy only): per-sample seeds, class-balanced labels, the prune selection (`top_entropy`), and a
round's difficulty and label fidelity (`round_stats`). The writer (dp_hpc.pool.writer) stores them.
"""

from __future__ import annotations

import numpy as np


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed 64-bit mixing function: our per-sample seeds must not depend on numpy's RNG
    algorithms, which may change between versions."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def sample_seeds(run_seed: int, round_index: int, n: int) -> np.ndarray:
    """Seed of sample i of a round = hash(run seed, round, i), as int64 >= 0. (n,)"""
    base = _splitmix64(np.array([run_seed * 1_000_003 + round_index], dtype=np.uint64))[0]
    idx = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(idx ^ base)
    return (mixed >> np.uint64(1)).astype(np.int64)  # keep it positive for torch.manual_seed


def balanced_labels(run_seed: int, round_index: int, n: int, num_classes: int) -> np.ndarray:
    """Class-balanced labels (counts differ by at most one), in a seeded random order. (n,)"""
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng = np.random.default_rng([run_seed, round_index, 0xB1])
    return labels[rng.permutation(n)]


def top_entropy(entropy: np.ndarray, labels: np.ndarray, keep: int, per_class: bool,
                num_classes: int | None = None) -> np.ndarray:
    """Indices (sorted) of the `keep` highest-entropy samples (ties broken by index: deterministic).
    per_class: the top within each class, with the class counts of `balanced_labels(keep)` (class c
    keeps keep // K, plus one for c < keep % K), so a pruned round is as class-balanced as a plain or
    guided one; else the global top `keep`, whatever the classes. (keep,)"""
    order = np.lexsort((np.arange(len(entropy)), -entropy))  # by entropy desc, then index
    if not per_class:
        return np.sort(order[:keep]).astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if len(labels) else 1
    quota = keep // num_classes + (np.arange(num_classes) < keep % num_classes)
    by_class = labels[order]
    picked = [order[by_class == c][: quota[c]] for c in range(num_classes)]
    out = np.sort(np.concatenate(picked)).astype(np.int64)
    if len(out) != keep:
        raise ValueError(f"per-class selection found {len(out)} of {keep} samples: a class has fewer "
                         f"candidates than its quota {quota.tolist()}")
    return out


def _mean_or_none(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return None if len(x) == 0 or np.isnan(x).any() else round(float(x.mean()), 4)


def round_stats(entropy: np.ndarray, labels: np.ndarray, oracle_label: np.ndarray | None,
                selected: np.ndarray | None, paired_plain: dict | None) -> dict:
    """A round's difficulty and label fidelity, for state.json and the report.

    entropy_mean: mean predictive entropy of the kept samples under the classifier that steered (dp)
    or scored (prune) the round (None for round 0: no classifier). label_fidelity: fraction of kept
    samples that the oracle (a classifier trained on the real generator-train images) reads as their
    conditioning label (None without an oracle). The plain reference, same classifier and oracle:
    prune -- all candidates (they are plain samples; the kept ones are the top of them); dp -- plain
    samples from the round's first seeds (`paired_plain`), with `paired_*` the guided samples of the
    same seeds."""
    keep = np.arange(len(labels)) if selected is None else selected
    fid = None if oracle_label is None or (oracle_label < 0).any() else oracle_label == labels
    out = {"n": int(len(keep)), "entropy_mean": _mean_or_none(entropy[keep]),
           "label_fidelity": None if fid is None else _mean_or_none(fid[keep])}
    if selected is not None:
        out.update(plain_entropy_mean=_mean_or_none(entropy),
                   plain_label_fidelity=None if fid is None else _mean_or_none(fid), plain_n=int(len(labels)))
    elif paired_plain is not None:
        n = int(paired_plain["n"])
        out.update(plain_entropy_mean=paired_plain["entropy_mean"],
                   plain_label_fidelity=paired_plain["label_fidelity"], plain_n=n,
                   paired_entropy_mean=_mean_or_none(entropy[:n]),
                   paired_label_fidelity=None if fid is None else _mean_or_none(fid[:n]))
    return out
