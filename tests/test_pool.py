"""The Zarr pool: seeds, labels, chunk ownership, markers, reading the union of rounds."""

import numpy as np
import pytest

from dp_hpc.pool import Pool, PoolReader, RoundSpec, balanced_labels, sample_seeds, shard_ranges, top_entropy


def spec(r=0, n=100, kind="plain"):
    return RoundSpec(round_index=r, n=n, image_shape=(1, 8, 8), chunk_size=32, num_classes=10, run_seed=7, kind=kind)


def fill(pool, r, n, value_of=lambda i: i % 251):
    for c in range(-(-n // 32)):
        a, b = pool.chunk_bounds(r, c)
        imgs = np.stack([np.full((1, 8, 8), value_of(i), np.uint8) for i in range(a, b)])
        pool.write_chunk(r, c, imgs, np.arange(a, b, dtype=np.float32))


def test_seeds_and_labels_are_pure_functions_of_run_seed_round_index():
    s = sample_seeds(7, 2, 1000)
    assert (s == sample_seeds(7, 2, 1000)).all() and (s[:10] == sample_seeds(7, 2, 10)).all()
    assert len(np.unique(s)) == 1000 and (s >= 0).all()
    assert not (s == sample_seeds(7, 3, 1000)).any() and not (s == sample_seeds(8, 2, 1000)).any()
    counts = np.bincount(balanced_labels(7, 2, 1003, 10), minlength=10)
    assert counts.max() - counts.min() <= 1


def test_shard_ranges_cover_every_chunk_once():
    ranges = shard_ranges(1000, 32, 128)
    chunks = [c for r in ranges for c in range(r.start, r.stop)]
    assert chunks == list(range(32)) and all(r.stop - r.start <= 4 for r in ranges)


def test_round_lifecycle_and_union_reader(tmp_path):
    pool = Pool(tmp_path)
    pool.create_round(spec(0, 100))
    pool.create_round(spec(0, 100))  # idempotent
    assert pool.has_round(0) and not pool.is_complete(0)
    with pytest.raises(RuntimeError, match="unwritten chunks"):
        pool.complete_round(0)
    fill(pool, 0, 100)
    pool.complete_round(0)
    pool.create_round(spec(1, 64, kind="prune"))
    fill(pool, 1, 64, value_of=lambda i: 200)
    pool.complete_round(1, keep=10, per_class=False)  # the 10 highest entropies = the last 10 indices
    reader = PoolReader(tmp_path)
    assert reader.rounds == [0, 1] and len(reader) == 110
    imgs, labels = reader.read(np.array([0, 99, 100, 109, 5]))
    assert imgs[:, 0, 0, 0].tolist() == [0, 99, 200, 200, 5]
    g1 = pool.group(1)
    assert g1["selected"][:].tolist() == list(range(54, 64))
    assert labels[2] == g1["labels"][54] and labels[1] == pool.group(0)["labels"][99]
    with pytest.raises(IndexError):
        reader.read(np.array([110]))


def test_incomplete_rounds_are_invisible_to_training(tmp_path):
    pool = Pool(tmp_path)
    pool.create_round(spec(0, 64))
    fill(pool, 0, 64)
    pool.complete_round(0)
    pool.create_round(spec(1, 64))
    fill(pool, 1, 32)
    assert PoolReader(tmp_path).rounds == [0] and len(PoolReader(tmp_path)) == 64


def test_streaming_and_in_memory_reads_agree(tmp_path):
    pool = Pool(tmp_path)
    for r in range(2):
        pool.create_round(spec(r, 100))
        fill(pool, r, 100, value_of=lambda i, r=r: (7 * i + 50 * r) % 256)
        pool.complete_round(r)
    idx = np.random.default_rng(0).integers(0, 200, 500)
    a_img, a_lab = PoolReader(tmp_path).read(idx)  # whole rounds in memory
    b_img, b_lab = PoolReader(tmp_path, cache_bytes=0).read(idx)  # chunk by chunk from disk
    assert (a_img == b_img).all() and (a_lab == b_lab).all()
    assert a_img[:, 0, 0, 0].tolist() == [(7 * (i % 100) + 50 * (i // 100)) % 256 for i in idx]


def test_prune_selection_is_class_balanced_by_default():
    """Entropy concentrated in two classes: the global top-P takes only those, the per-class top-P
    keeps the class counts of a plain round and the hardest samples within each class."""
    labels = balanced_labels(0, 1, 400, 10)
    entropy = np.where(np.isin(labels, [2, 7]), 2.0, 0.1) + np.arange(400) * 1e-4  # classes 2, 7 hardest
    glob = top_entropy(entropy, labels, 64, per_class=False)
    assert set(labels[glob].tolist()) == {2, 7}
    bal = top_entropy(entropy, labels, 64, per_class=True)
    counts = np.bincount(labels[bal], minlength=10)
    assert counts.tolist() == np.bincount(balanced_labels(0, 1, 64, 10), minlength=10).tolist()  # 7 x4, 6 x6
    assert len(bal) == 64 and np.all(np.diff(bal) > 0)
    for c in range(10):  # within each class: its highest-entropy candidates
        cand = np.flatnonzero(labels == c)
        top = cand[np.argsort(-entropy[cand], kind="stable")][: counts[c]]
        assert set(bal[labels[bal] == c].tolist()) == set(top.tolist())


def test_complete_round_stores_the_class_balanced_selection(tmp_path):
    pool = Pool(tmp_path)
    pool.create_round(spec(1, 64, kind="prune"))
    fill(pool, 1, 64)
    pool.complete_round(1, keep=20)
    g = pool.group(1)
    sel = g["selected"][:]
    kept = np.bincount(g["labels"][:][sel], minlength=int(g["labels"][:].max()) + 1)
    assert kept.max() - kept.min() <= 1 and kept.sum() == 20


def test_round_stats_guided_prune_and_plain_rounds():
    from dp_hpc.pool import round_stats

    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    entropy = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], dtype=np.float32)
    oracle = np.array([0, 1, 2, 0, 0, 1, 2, 3])  # sample 3 misread
    guided = round_stats(entropy, labels, oracle, None, {"n": 4, "entropy_mean": 0.05, "label_fidelity": 1.0})
    assert guided["entropy_mean"] == pytest.approx(0.45) and guided["label_fidelity"] == 0.875
    assert (guided["plain_entropy_mean"], guided["plain_label_fidelity"], guided["plain_n"]) == (0.05, 1.0, 4)
    assert guided["paired_entropy_mean"] == pytest.approx(0.25) and guided["paired_label_fidelity"] == 0.75
    prune = round_stats(entropy, labels, oracle, np.array([4, 5, 6, 7]), None)  # kept: the top half
    assert prune["n"] == 4 and prune["entropy_mean"] == pytest.approx(0.65) and prune["label_fidelity"] == 1.0
    assert prune["plain_entropy_mean"] == pytest.approx(0.45) and prune["plain_label_fidelity"] == 0.875
    plain = round_stats(np.full(8, np.nan, np.float32), labels, None, None, None)  # round 0, no oracle
    assert plain == {"n": 8, "entropy_mean": None, "label_fidelity": None}
    unjudged = round_stats(entropy, labels, np.full(8, -1), None, None)  # an oracle array never written
    assert unjudged["label_fidelity"] is None
