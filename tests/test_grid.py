"""The per-round picture (dp_hpc.generate.grid): rows are classes, columns the first samples of each
class; guided rounds put the plain samples of the same seeds on the left."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dp_hpc.generate.grid import GAP, pick_per_class, round_grid, write_round_grid


def test_rows_are_classes_and_columns_their_first_samples():
    labels = np.array([2, 0, 2, 1, 0, 2, 2])
    images = (np.arange(7, dtype=np.uint8)[:, None, None, None] * 30).repeat(8, 2).repeat(8, 3)  # image i is 30*i
    assert {c: list(i) for c, i in pick_per_class(labels, 2).items()} == {0: [1, 4], 1: [3], 2: [0, 2]}
    g = round_grid(images, labels, per_class=2, tile=8)
    assert g.shape == (3 * 8 + 2 * GAP, 2 * 8 + GAP, 1)
    cell = lambda r, c: g[r * (8 + GAP) : r * (8 + GAP) + 8, c * (8 + GAP) : c * (8 + GAP) + 8, 0]  # noqa: E731
    assert (cell(0, 0) == 30).all() and (cell(0, 1) == 120).all()  # class 0: samples 1 and 4
    assert (cell(1, 0) == 90).all() and (cell(1, 1) == 255).all()  # class 1: sample 3, then blank
    assert (cell(2, 0) == 0).all() and (cell(2, 1) == 60).all()  # class 2: samples 0 and 2


def test_guided_rounds_show_plain_samples_of_the_same_seeds_on_the_left(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 10
    guided = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    plain = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    g = round_grid(guided, labels, plain, per_class=2)
    tile = 32  # 8 px digits enlarged 4x, nearest
    half = 2 * tile + GAP
    assert g.shape == (10 * tile + 9 * GAP, 2 * half + 2 * GAP, 3)
    np.testing.assert_array_equal(g[:tile, :tile], plain[0].transpose(1, 2, 0).repeat(4, 0).repeat(4, 1))
    right = half + 2 * GAP
    np.testing.assert_array_equal(g[:tile, right : right + tile], guided[0].transpose(1, 2, 0).repeat(4, 0).repeat(4, 1))
    path = tmp_path / "samples.png"
    write_round_grid(path, guided, labels, plain, per_class=2)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), g)


def test_large_images_are_shrunk_to_thumbnails():
    images = np.zeros((4, 3, 256, 256), np.uint8)
    g = round_grid(images, np.array([0, 1, 0, 1]), per_class=2)
    assert g.shape == (2 * 96 + GAP, 2 * 96 + GAP, 3)
