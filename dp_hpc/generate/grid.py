"""A small picture of each generated round: a few samples per class, and for guided rounds the
plain samples of the same seeds beside them (the paper's plain-vs-guided figures), written by the
job that generates the round's first chunk to `pool_markers/round_XXX/samples.png`.

Pure numpy + PIL (no matplotlib: a job must not pay its import for a thumbnail).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from dp_hpc.io import atomic_write_bytes

GAP = 4  # pixels between tiles (and twice that between the plain and the guided block)


def pick_per_class(labels: np.ndarray, per_class: int) -> dict[int, np.ndarray]:
    """The first `per_class` indices of each class present, in label order."""
    return {int(c): np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)}


def tile_rows(images: np.ndarray, picks: dict[int, np.ndarray], per_class: int, tile: int) -> np.ndarray:
    """(rows = classes, columns = samples) grid of uint8 (B, C, S, S) images -> (H, W, C) uint8,
    each image resized to `tile` px (nearest when enlarging, so 8x8 digits stay crisp)."""
    channels = images.shape[1]
    rows = len(picks)
    out = np.full((rows * (tile + GAP) - GAP, per_class * (tile + GAP) - GAP, channels), 255, np.uint8)
    for r, idx in enumerate(picks.values()):
        for c, i in enumerate(idx):
            y, x = r * (tile + GAP), c * (tile + GAP)
            out[y : y + tile, x : x + tile] = _resize(images[i].transpose(1, 2, 0), tile)
    return out


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    s = img.shape[0]
    if s == size:
        return img
    if size % s == 0:
        return img.repeat(size // s, axis=0).repeat(size // s, axis=1)
    from PIL import Image

    mode = "L" if img.shape[2] == 1 else "RGB"
    small = Image.fromarray(img.squeeze(2) if mode == "L" else img, mode).resize((size, size), Image.BILINEAR)
    return np.asarray(small).reshape(size, size, img.shape[2])


def round_grid(images: np.ndarray, labels: np.ndarray, plain: np.ndarray | None = None, per_class: int = 4,
               tile: int | None = None) -> np.ndarray:
    """The round's picture as an (H, W, C) uint8 array: `images` per class; with `plain` (the same
    seeds sampled without guidance, aligned with `images`) the plain block left, the guided right."""
    s = images.shape[-1]
    tile = tile or (s * max(1, 32 // s) if s < 32 else min(s, 96))
    picks = pick_per_class(labels, per_class)
    guided = tile_rows(images, picks, per_class, tile)
    if plain is None:
        return guided
    left = tile_rows(plain, picks, per_class, tile)
    sep = np.full((guided.shape[0], 2 * GAP, guided.shape[2]), 255, np.uint8)
    return np.concatenate([left, sep, guided], axis=1)


def write_round_grid(path: Path, images: np.ndarray, labels: np.ndarray, plain: np.ndarray | None = None,
                     per_class: int = 4) -> None:
    """Write the round's picture as a PNG, atomically (a rerun of the chunk rewrites the same file)."""
    from PIL import Image

    grid = round_grid(images, labels, plain, per_class)
    buf = io.BytesIO()
    Image.fromarray(grid.squeeze(2) if grid.shape[2] == 1 else grid).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
