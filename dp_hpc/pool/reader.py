"""Reading a run's pool: `PoolReader`, random access to the union of its completed rounds (the
training job's dataset), with a bounded cache; JPEG rounds image by image through
dp_hpc.pool_jpeg.JpegShardReader, or still encoded for decoding on the GPU (dp_hpc.jpeg_batch).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from dp_hpc.jpeg_batch import EncodedImages
from dp_hpc.pool.writer import Pool
from dp_hpc.pool_jpeg import JpegShardReader


class PoolReader:
    """Random access to the union of completed rounds, in round order.

    Global index i maps to (round, local index) through the rounds' sizes; prune rounds map
    through their `selected` indices. A round that fits in `cache_bytes` is read whole, once, and
    indexed in memory (the digits pool). Larger rounds stream: JPEG rounds image by image (a
    uniformly random batch from millions of samples touches a different shard per sample, so any
    cache of whole chunks would decode chunk_size images per image used), others chunk by chunk
    through a bounded LRU cache of decoded chunks.

    Picklable by path; zarr arrays are opened lazily in the process that reads (DataLoader
    workers must not share the parent's zarr event loop)."""

    def __init__(self, run_dir: str | os.PathLike, rounds: list[int] | None = None,
                 cache_bytes: int = 256 << 20):
        self.pool = Pool(run_dir)
        self.rounds = list(self.pool.complete_rounds() if rounds is None else rounds)
        self.cache_bytes = cache_bytes
        self._sizes = [self.pool.round_size(r) for r in self.rounds]
        self.offsets = np.concatenate([[0], np.cumsum(self._sizes)]).astype(np.int64)
        self._opened: dict[int, tuple] | None = None
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached = 0
        self._whole: dict[int, np.ndarray] = {}  # rounds held entirely in memory
        self._jpeg: dict[int, JpegShardReader] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_opened=None, _cache=OrderedDict(), _cached=0, _whole={}, _jpeg={})
        return state

    def _open(self) -> dict[int, tuple]:
        if self._opened is None:
            opened = {}
            for r in self.rounds:
                g = self.pool.group(r)
                sel = g["selected"][:] if "selected" in g else None
                opened[r] = (g["images"], g["labels"][:], sel, int(g.attrs["chunk_size"]))
            self._opened = opened
        return self._opened

    def labels(self) -> np.ndarray:
        """Labels of the whole union, in global order. (len,)"""
        out = []
        for r in self.rounds:
            _, labels, sel, _ = self._open()[r]
            out.append(labels if sel is None else labels[sel])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _whole_round(self, r: int) -> np.ndarray | None:
        """The round's images in memory if they fit in what the cache budget has left."""
        if r in self._whole:
            return self._whole[r]
        images = self._open()[r][0]
        nbytes = int(np.prod(images.shape))  # uint8
        held = sum(a.nbytes for a in self._whole.values())
        if held + nbytes > self.cache_bytes:
            return None
        self._whole[r] = images[:]
        return self._whole[r]

    def _jpeg_reader(self, r: int) -> JpegShardReader:
        if r not in self._jpeg:
            self._jpeg[r] = JpegShardReader(self._open()[r][0], self.pool.layout.pool_round(r) / "images")
        return self._jpeg[r]

    def _chunk(self, r: int, c: int) -> np.ndarray:
        key = (r, c)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        images, _, _, cs = self._open()[r]
        data = images[c * cs : (c + 1) * cs]  # one whole chunk: one store read, one decode
        self._cache[key] = data
        self._cached += data.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return data

    def _by_round(self, indices: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(round, mask of the batch rows in it, their indices in the round) for each round that
        global `indices` (B,) touch, in round order."""
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"pool index out of range [0, {len(self)})")
        opened = self._open()
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for k, r in enumerate(self.rounds):
            mask = which == k
            if not mask.any():
                continue
            sel = opened[r][2]
            local = indices[mask] - self.offsets[k]
            yield r, mask, (local if sel is None else sel[local])

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (B, C, H, W) and labels int64 (B,) for global indices (B,)."""
        indices = np.asarray(indices, dtype=np.int64)
        opened = self._open()
        images_out: np.ndarray | None = None
        labels_out = np.empty(len(indices), dtype=np.int64)
        for r, mask, local in self._by_round(indices):
            images, labels, _, cs = opened[r]
            if images_out is None:
                images_out = np.empty((len(indices), *images.shape[1:]), dtype=np.uint8)
            labels_out[mask] = labels[local]
            whole = self._whole_round(r)
            if whole is not None:
                images_out[mask] = whole[local]
                continue
            if images.shards is not None:
                images_out[mask] = self._jpeg_reader(r).read(local)
                continue
            chunk_ids = local // cs
            pos = np.flatnonzero(mask)
            for c in np.unique(chunk_ids):
                m = chunk_ids == c
                images_out[pos[m]] = self._chunk(r, int(c))[local[m] - c * cs]
        if images_out is None:
            images_out = np.zeros((0, 1, 1, 1), dtype=np.uint8)
        return images_out, labels_out

    def read_encoded(self, indices: np.ndarray) -> tuple[EncodedImages, np.ndarray]:
        """As `read`, but the images of JPEG rounds stay encoded, for `decode_jpeg_batch` on the
        training device (`train.jpeg_decode: cuda`): the prefetch thread only reads files. JPEG
        rounds are read from their shards even when they would fit in the cache (it holds decoded
        images); lossless rounds are read as by `read`."""
        indices = np.asarray(indices, dtype=np.int64)
        opened = self._open()
        labels_out = np.empty(len(indices), dtype=np.int64)
        streams: list[np.ndarray | None] = [None] * len(indices)  # per batch row; None: a row of `pixels`
        pixels: np.ndarray | None = None
        shape = opened[self.rounds[0]][0].shape[1:] if self.rounds else (1, 1, 1)
        for r, mask, local in self._by_round(indices):
            images, labels, _, _ = opened[r]
            labels_out[mask] = labels[local]
            rows = np.flatnonzero(mask)
            if images.shards is not None:
                for row, stream in zip(rows.tolist(), self._jpeg_reader(r).read_streams(local)):
                    streams[row] = stream
                continue
            if pixels is None:
                pixels = np.zeros((len(indices), *shape), dtype=np.uint8)
            pixels[rows] = self.read(indices[mask])[0]
        jpeg_rows = [i for i, s in enumerate(streams) if s is not None]
        if pixels is None and len(jpeg_rows) < len(indices):  # images never written: all zero
            pixels = np.zeros((len(indices), *shape), dtype=np.uint8)
        kept = [streams[i] for i in jpeg_rows]
        return EncodedImages(
            shape=(len(indices), *shape),
            jpeg=np.concatenate(kept) if kept else np.zeros(0, np.uint8),
            jpeg_ends=np.cumsum([len(s) for s in kept], dtype=np.int64),
            jpeg_rows=np.array(jpeg_rows, dtype=np.int64),
            pixels=pixels,
        ), labels_out
