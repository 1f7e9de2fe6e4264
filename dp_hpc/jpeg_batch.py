"""A training batch of pool images whose JPEGs are still encoded, and its decoding on a device in one
batched call (config `train.jpeg_decode: cuda`; dp_hpc.train.loop.PoolBatches).

    images, labels = PoolReader(run_dir).read_encoded(indices)   # the prefetch thread: file reads only
    x = decode_jpeg_batch(images, "cuda")   # uint8 (B, 3, H, W) on the GPU: one nvjpeg call

The default path (`train.jpeg_decode: cpu`) decodes with Pillow in the reader's threads
(dp_hpc.pool_jpeg.JpegShardReader.read) and never comes here. Only numpy is imported at the top:
dp_hpc.pool imports this module, and torch/torchvision load when a batch is decoded (bench/gpu_check.py
imports it without zarr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class EncodedImages:
    """Pool images of one batch, (B, C, H, W) once decoded, with the JPEG-stored ones undecoded:
    row `jpeg_rows[j]` is the JPEG stream `jpeg[jpeg_ends[j-1]:jpeg_ends[j]]`. The streams sit in
    one buffer so that the training loop pins them with one copy, as it pins decoded batches."""

    shape: tuple[int, int, int, int]
    jpeg: np.ndarray | torch.Tensor
    """uint8 (total bytes,): the streams, one after another (a pinned CPU tensor once the loop pinned it)."""
    jpeg_ends: np.ndarray
    """int64 (J,): the end of each stream in `jpeg`."""
    jpeg_rows: np.ndarray
    """int64 (J,), ascending: the batch row each stream fills (a sample drawn twice: two rows, two streams)."""
    pixels: np.ndarray | None
    """uint8 (B, C, H, W): the rows that are no JPEG -- rounds stored losslessly, and images never
    written (all zero, zarr's fill value); their JPEG rows are left zero. None if every row is a JPEG."""


def decode_jpeg_batch(images: EncodedImages, device: torch.device | str) -> torch.Tensor:
    """The batch decoded on `device`: uint8 (B, C, H, W), contiguous (NCHW), the layout and values of
    `PoolReader.read` (the caller then scales it to float in [0, 1] exactly as the CPU path does; the
    augmentation and the model's channels_last conversion follow on the device, as for CPU batches).
    Every JPEG of the batch goes to torchvision's `decode_jpeg` in one call: on CUDA one batched
    nvjpeg decode (its hardware backend on GPUs with a JPEG engine, A100 and H100), on the CPU
    libjpeg-turbo image by image. Then one stack into the batch: a device copy of the uint8 batch.

    Same pixels: on the CPU the result equals the Pillow decode of the default path exactly (both
    libjpeg-turbo with its default integer IDCT, 4:4:4 so no chroma upsampling; tests/test_jpeg_batch.py).
    nvjpeg on the GPU is another decoder: its IDCT and colour conversion may differ from libjpeg's by
    a grey level or so on some pixels, so a run with `train.jpeg_decode: cuda` does not see
    bit-identical images (unmeasured: no GPU has been lent to this project; bench/gpu_check.py
    prints the difference).

    Stream order: torchvision decodes on nvjpeg's own stream, makes the current stream wait for it,
    and blocks the calling thread until the decode is done; the GPU meanwhile still runs the
    previous step's queued kernels. Nothing returns to the host. torchvision 0.29 deprecates its
    image decoders (for TorchCodec): each call warns with a DeprecationWarning, which Python's
    default filters hide outside __main__."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if images.pixels is None:
        out = None
    else:  # copy=True: on the CPU too, so that `images` is left as it was
        out = torch.from_numpy(images.pixels).to(device, non_blocking=True, copy=True)
    if len(images.jpeg_rows) == 0:
        return torch.zeros(images.shape, dtype=torch.uint8, device=device) if out is None else out
    data = torch.as_tensor(images.jpeg)  # no copy: numpy memory, or the loop's pinned tensor
    starts = np.concatenate([[0], images.jpeg_ends[:-1]])
    streams = [data[a:b] for a, b in zip(starts.tolist(), images.jpeg_ends.tolist())]  # views, no copies
    decoded = torch.stack(decode_jpeg(streams, mode=ImageReadMode.RGB, device=device))  # (J, 3, H, W)
    if decoded.shape[1:] != images.shape[1:]:
        raise RuntimeError(f"pool JPEGs decode to {tuple(decoded.shape[1:])}, the pool holds {images.shape[1:]}")
    if out is None:  # every row a JPEG: jpeg_rows is 0..B-1
        return decoded
    out[torch.from_numpy(images.jpeg_rows).to(device)] = decoded
    return out
