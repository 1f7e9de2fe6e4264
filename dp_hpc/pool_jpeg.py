"""JPEG in zarr: the "dp_hpc.jpeg" codec that stores each image of a pool chunk as one JPEG, and a
reader of single images straight from the shard files. The only module that depends on zarr's
internals (`zarr.core.common`, the sharding index layout of ZEP 2); dp_hpc.pool uses both for
RGB rounds of 64 px and up.
"""

from __future__ import annotations

import asyncio
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

JPEG_QUALITY = 95
"""JPEG quality of pooled natural images, with 4:4:4 chroma (bench/pool_storage.py, real photos at
256x256): ~41 dB PSNR where quality 90 or 4:2:0 chroma give 35-38 dB, at ~38 KB per image: 1.4x
headroom under the 55 KB that 500 GB allows for 9.1M images."""


JPEG_BYTES_PER_PIXEL = 37.7e3 / (256 * 256)
"""Stored bytes per pixel of a JPEG round (37.7 KB per 256x256 image, shard index included;
bench/pool_storage.py on real photos). Synthetic images may compress somewhat differently."""


def estimated_bytes_per_image(image_shape: tuple[int, int, int]) -> float:
    """For planning (`--dry-run`): JPEG rounds as measured, others at their raw size (an upper bound)."""
    c, h, w = image_shape
    return JPEG_BYTES_PER_PIXEL * h * w if uses_jpeg(image_shape) else float(c * h * w)


def uses_jpeg(image_shape: tuple[int, int, int]) -> bool:
    """RGB images of at least 64x64 are stored as JPEG; smaller ones (digits) losslessly, as before."""
    c, h, w = image_shape
    return c == 3 and min(h, w) >= 64


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Zarr v3 array->bytes codec "dp_hpc.jpeg": every image of a uint8 (..., 3, H, W) chunk as one
    baseline JPEG (Pillow's libjpeg-turbo, 4:4:4 chroma, fixed quality). Encoded chunk: uint32 count,
    uint32 lengths, then the JPEG streams. Deterministic: the same pixels, quality and library give
    the same bytes, so a redone chunk rewrites identical bytes. Readers must import dp_hpc.pool
    (which registers it); every reader in this package does."""

    is_fixed_size = False
    quality: int

    def __init__(self, *, quality: int = JPEG_QUALITY) -> None:
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict) -> JpegCodec:
        _, config = parse_named_configuration(data, "dp_hpc.jpeg")
        return cls(**config)

    def to_dict(self) -> dict:
        return {"name": "dp_hpc.jpeg", "configuration": {"quality": self.quality}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if dtype.to_native_dtype() != np.uint8 or len(shape) < 3 or shape[-3] != 3:
            raise ValueError(f"dp_hpc.jpeg stores uint8 (..., 3, H, W) images, not {dtype} {shape}")

    def _encode_sync(self, chunk_array, chunk_spec):
        from PIL import Image

        images = chunk_array.as_numpy_array().reshape(-1, *chunk_spec.shape[-3:])
        streams = []
        for img in images:  # (3, H, W)
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(
                buf, format="JPEG", quality=self.quality, subsampling=0)
            streams.append(buf.getvalue())
        header = np.array([len(streams), *map(len, streams)], dtype="<u4").tobytes()
        return chunk_spec.prototype.buffer.from_bytes(header + b"".join(streams))

    @staticmethod
    def decode_into(raw: bytes, out: np.ndarray) -> None:
        """Decode an encoded chunk into `out`, uint8 (n, 3, H, W)."""
        from PIL import Image

        n = int(np.frombuffer(raw, "<u4", 1)[0])
        pos = 4 * (n + 1)
        for i, length in enumerate(np.frombuffer(raw, "<u4", n, 4).tolist()):
            with Image.open(io.BytesIO(raw[pos : pos + length])) as im:
                out[i] = np.asarray(im).transpose(2, 0, 1)
            pos += length

    def _decode_sync(self, chunk_bytes, chunk_spec):
        raw = chunk_bytes.to_bytes()
        out = np.empty((int(np.frombuffer(raw, "<u4", 1)[0]), *chunk_spec.shape[-3:]), dtype=np.uint8)
        self.decode_into(raw, out)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array, chunk_spec):
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes, chunk_spec):
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError  # variable size


register_codec("dp_hpc.jpeg", JpegCodec)


DECODE_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
"""Threads that decode the JPEG images of one training batch (per training process)."""

EMPTY_CHUNK = 2**64 - 1
"""Index entry (offset and nbytes) of an inner chunk that was not stored (all fill value)."""


class JpegShardReader:
    """Single images of a JPEG round, read straight from its shard files by the zarr v3 sharding
    format (ZEP 2; index at the end: per inner chunk a little-endian uint64 (offset, nbytes), then a
    crc32c): per image one open, two small reads and one JPEG decode. zarr's own per-item path
    costs about twice the CPU per image (it rebuilds indexers and buffers for every item;
    bench/pool_storage.py times both), i.e. about twice the cores per node to feed the GPUs. The
    index checksum is not checked: shards are written whole and atomically. The constructor
    checks that the array has exactly the layout `create_round` makes."""

    def __init__(self, images: zarr.Array, array_dir: Path):
        codecs = images.metadata.codecs
        inner = codecs[0].codecs if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else ()
        expected = ShardingCodec(chunk_shape=(1, *images.shape[1:]), codecs=inner,
                                 index_codecs=(BytesCodec(endian="little"), Crc32cCodec()), index_location="end")
        if len(inner) != 1 or not isinstance(inner[0], JpegCodec) or codecs[0] != expected:
            raise RuntimeError(f"{array_dir}: not the sharded JPEG layout of dp_hpc.pool: {codecs}")
        self.images, self.dir, self.per_shard = images, array_dir, images.shards[0]
        self._threads: ThreadPoolExecutor | None = None  # made on first use, never pickled

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_threads": None}

    def read(self, local: np.ndarray) -> np.ndarray:
        """Images at round indices `local` (each decoded once), decoded by DECODE_THREADS threads
        (libjpeg releases the GIL; each image has its own slot, so the result is the same).
        (len(local), 3, H, W)"""
        uniq, inverse = np.unique(local, return_inverse=True)
        out = np.zeros((len(uniq), *self.images.shape[1:]), dtype=np.uint8)  # fill value: never-written = all 0
        if self._threads is None:
            self._threads = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="jpeg-decode")
        list(self._threads.map(lambda k: self._read_one(int(uniq[k]), out[k : k + 1]), range(len(uniq))))
        return out[inverse]

    def read_streams(self, local: np.ndarray) -> list[np.ndarray | None]:
        """The JPEG stream of each image at round indices `local`, undecoded: uint8 (nbytes,) each
        (a read-only view of the bytes read); None for an image never written (all zeros). Read by
        DECODE_THREADS threads (file reads release the GIL); for `train.jpeg_decode: cuda`."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="jpeg-decode")
        return list(self._threads.map(lambda i: self._stream(int(i)), local))

    def _read_one(self, i: int, out: np.ndarray) -> None:
        raw = self._stored(i)
        if raw is not None:
            JpegCodec.decode_into(raw, out)

    def _stream(self, i: int) -> np.ndarray | None:
        raw = self._stored(i)
        if raw is None:
            return None
        count, length = np.frombuffer(raw, "<u4", 2).tolist()  # the codec's header: one image, its length
        if count != 1 or 8 + length != len(raw):
            raise RuntimeError(f"{self.dir}: image {i} is not one JPEG stream as dp_hpc.jpeg stores it")
        return np.frombuffer(raw, np.uint8, length, 8)

    def _stored(self, i: int) -> bytes | None:
        """Image i's inner chunk as the codec wrote it (header + one JPEG stream); None if never written."""
        shard, inner = divmod(i, self.per_shard)
        try:
            with open(self.dir / self.images.metadata.encode_chunk_key((shard, 0, 0, 0)), "rb") as f:
                f.seek(16 * inner - 16 * self.per_shard - 4, os.SEEK_END)  # the index: (offset, nbytes) + crc32c
                offset, nbytes = np.frombuffer(f.read(16), "<u8").tolist()
                if offset == EMPTY_CHUNK:
                    return None
                f.seek(offset)
                return f.read(nbytes)
        except FileNotFoundError:  # a shard of all-zero images is never written
            return None
