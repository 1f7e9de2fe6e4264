"""The embedded real data: three disjoint, deterministic, stratified splits."""

import numpy as np

from dp_hpc.data.config import DataConfig
from dp_hpc.data.digits import load_digit_splits, split_digits, split_indices


def test_splits_are_disjoint_deterministic_and_cover_every_class(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_HPC_CACHE", str(tmp_path))
    cfg = DataConfig()
    s = split_digits(cfg)
    sizes = (len(s.gen_train), len(s.val), len(s.test))
    assert sum(sizes) == 1797 and sizes == (899, 359, 539)
    labels = np.concatenate([s.gen_train.labels, s.val.labels, s.test.labels])
    idx = split_indices(np.sort(labels), cfg)  # any labels array with the same class counts
    all_idx = np.concatenate(list(idx.values()))
    assert len(all_idx) == len(set(all_idx.tolist())) == 1797, "splits overlap or miss images"
    for part in (s.gen_train, s.val, s.test):
        assert part.images.dtype == np.uint8 and part.images.shape[1:] == (1, 8, 8)
        assert set(np.unique(part.labels)) == set(range(10))
    cached = load_digit_splits(cfg)  # computes and caches
    again = load_digit_splits(cfg)  # from the cache file
    assert list(tmp_path.glob("digits-*.npz"))
    for a, b, c in ((s.gen_train, cached.gen_train, again.gen_train), (s.test, cached.test, again.test)):
        assert (a.images == b.images).all() and (a.images == c.images).all() and (a.labels == c.labels).all()
    other = split_digits(DataConfig(split_seed=1))
    assert not (other.test.labels.shape == s.test.labels.shape and (other.test.images == s.test.images).all())
