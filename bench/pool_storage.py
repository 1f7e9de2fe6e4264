"""Pool storage for 256x256 RGB images: bytes per image, quality and decode cost of candidate codecs,
side by side in one run, and the end-to-end random read through the pool's chosen layout.

    uv run python bench/pool_storage.py [--n 128] [--gpu-img-s 3500] [--gpus 8] [--cores 112]

Images: real photos, not noise or synthetic patterns. scikit-learn ships two photographs offline
(`load_sample_images`: china.jpg and flower.jpg, 427x640); each test image is a random square crop
of side 256-427 px resized (bilinear, antialiased) to 256x256, i.e. downscaled like Stable
Diffusion's 512 px samples saved at 256 px. Two photos are a small sample: treat sizes as +-20%.

Candidates, each image coded alone (what random access needs), one thread, this process:
  zstd-chunk  lossless zstd (zarr's default codec) on whole chunks of 64 images (the digits layout)
  png, webp-lossless   lossless image codecs
  jpeg qQ 420/444      baseline JPEG via Pillow's libjpeg-turbo, quality Q, chroma 4:2:0 or 4:4:4
  webp q90             lossy WebP
Throughputs are images per CPU-second (= per core); pool size is the mean size x 9.1M images
(the largest ImageNet-1k DP run of the paper), against a 500 GB budget.

End to end: `Pool` rounds of 3x256x256 (the chosen layout: shards of 64, one JPEG per image) read by
`PoolReader` with its cache off, in uniformly random batches of 128 (what training does), timed in
CPU seconds of this process (zarr's threads included). The node demand is an assumption: ViT-B/16
training at `--gpu-img-s` images/s per GPU (default 3,500 on an H100: ~105 GFLOP per training image
at 224 px, 37% of 989 dense bf16 TFLOPS; measured references: timm's ViT-B/16 benchmark, 391 img/s
on an RTX 3090 with AMP, ~58% of its 71 TFLOPS; a torch.compile'd ViT-S on an H100 at 22%).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
from PIL import Image

POOL_IMAGES = 9_100_000
BUDGET_BYTES = 500e9
R = 256


def photo_patches(n: int, seed: int = 0) -> np.ndarray:
    """n real-photo images, uint8 (n, 256, 256, 3)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        src = photos[k % len(photos)]
        h, w, _ = src.shape
        s = int(rng.integers(R, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append(np.asarray(Image.fromarray(src[y : y + s, x : x + s]).resize((R, R), Image.BILINEAR)))
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def pil_codec(fmt: str, **options):
    def encode(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **options)
        return buf.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    return encode, decode


def cpu_time(fn, items) -> tuple[list, float]:
    t0 = time.process_time()
    out = [fn(x) for x in items]
    return out, time.process_time() - t0


def per_image(name: str, encode, decode, images: np.ndarray) -> dict:
    blobs, t_enc = cpu_time(encode, images)
    decoded, t_dec = cpu_time(decode, blobs)
    return {"name": name, "bytes": float(np.mean([len(b) for b in blobs])), "enc": len(images) / t_enc,
            "dec": len(images) / t_dec, "psnr": float(np.mean([psnr(a, b) for a, b in zip(images, decoded)]))}


def zstd_chunks(images: np.ndarray, chunk: int = 64) -> dict:
    from numcodecs import Zstd

    codec = Zstd(level=3)  # zarr v3's default ZstdCodec(level=0) means zstd's default level, 3
    chunks = [np.ascontiguousarray(images[i : i + chunk]) for i in range(0, len(images), chunk)]
    blobs, t_enc = cpu_time(codec.encode, chunks)
    _, t_dec = cpu_time(codec.decode, blobs)
    return {"name": f"zstd-chunk{chunk}", "bytes": sum(map(len, blobs)) / len(images), "enc": len(images) / t_enc,
            "dec": len(images) / t_dec, "psnr": float("inf")}


def pool_read(images: np.ndarray, n: int, batch: int, batches: int) -> dict:
    """Random reads of a JPEG Pool round: PoolReader (its direct shard reader) and zarr's own
    per-item path on the same samples, in images per CPU-second; stored bytes per image."""
    from dp_hpc.pool import Pool, PoolReader, RoundSpec

    chw = images.transpose(0, 3, 1, 2)
    with tempfile.TemporaryDirectory() as d:
        pool = Pool(d)
        pool.create_round(RoundSpec(round_index=0, n=n, image_shape=(3, R, R), chunk_size=64, num_classes=10,
                                    run_seed=0, kind="plain"))
        for c in range(-(-n // 64)):
            a, b = pool.chunk_bounds(0, c)
            pool.write_chunk(0, c, chw[np.arange(a, b) % len(chw)], np.zeros(b - a, np.float32))
        pool.complete_round(0)
        stored = sum(p.stat().st_size for p in (pool.root / "round_000" / "images").rglob("*") if p.is_file())
        reader = PoolReader(d, cache_bytes=0)
        zarr_images = pool.group(0)["images"]
        rng = np.random.default_rng(1)
        idx = [rng.integers(0, n, batch) for _ in range(batches + 1)]
        reader.read(idx[0])  # warm-up: opening, imports
        zarr_images[int(idx[0][0])]
        _, t_reader = cpu_time(reader.read, idx[1:])
        _, t_zarr = cpu_time(lambda b: [zarr_images[i : i + 1] for i in b.tolist()], idx[1:])
    return {"reader": batch * batches / t_reader, "zarr": batch * batches / t_zarr, "bytes": stored / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128, help="test images for the codec table")
    p.add_argument("--pool-n", type=int, default=1024, help="samples in the end-to-end pool")
    p.add_argument("--batches", type=int, default=10, help="random batches of 128 read end to end")
    p.add_argument("--gpu-img-s", type=float, default=3500.0, help="assumed training images/s per GPU")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--cores", type=int, default=112, help="CPU cores per node (DGX H100: 2 x 56)")
    args = p.parse_args()
    images = photo_patches(args.n)
    raw = R * R * 3
    rows = [{"name": "raw", "bytes": float(raw), "enc": float("nan"), "dec": float("nan"), "psnr": float("inf")},
            zstd_chunks(images)]
    for name, fmt, opts in [("png", "PNG", {}), ("webp-lossless", "WEBP", {"lossless": True}),
                            ("jpeg q90 420", "JPEG", {"quality": 90}), ("jpeg q95 420", "JPEG", {"quality": 95}),
                            ("jpeg q90 444", "JPEG", {"quality": 90, "subsampling": 0}),
                            ("jpeg q95 444 *", "JPEG", {"quality": 95, "subsampling": 0}),
                            ("webp q90", "WEBP", {"quality": 90})]:
        rows.append(per_image(name, *pil_codec(fmt, **opts), images))
    demand = args.gpu_img_s * args.gpus
    print(f"{args.n} real-photo images 3x{R}x{R} (crops of scikit-learn's china.jpg / flower.jpg); "
          f"pool of {POOL_IMAGES / 1e6:.1f}M images, budget {BUDGET_BYTES / 1e9:.0f} GB; "
          f"node demand {demand:,.0f} img/s ({args.gpus} GPUs x {args.gpu_img_s:,.0f})")
    print(f"{'codec':<16} {'KB/img':>7} {'ratio':>6} {'PSNR dB':>8} {'enc img/s':>10} {'dec img/s':>10} "
          f"{'pool GB':>8} {'fits':>5} {'decode cores/node':>18}")
    for r in rows:
        gb = r["bytes"] * POOL_IMAGES / 1e9
        cores = demand / r["dec"] if r["dec"] == r["dec"] else float("nan")
        print(f"{r['name']:<16} {r['bytes'] / 1e3:>7.1f} {raw / r['bytes']:>6.2f} {r['psnr']:>8.2f} "
              f"{r['enc']:>10,.0f} {r['dec']:>10,.0f} {gb:>8,.0f} {'yes' if gb * 1e9 <= BUDGET_BYTES else 'no':>5} "
              f"{cores:>18.1f}")
    e2e = pool_read(images, args.pool_n, 128, args.batches)
    print(f"\n* chosen. End to end: a Pool round 3x{R}x{R} (shards of 64, one JPEG q95 4:4:4 per image), "
          f"{args.batches} uniformly random batches of 128, in images per CPU-second:")
    print(f"  stored {e2e['bytes'] / 1e3:.1f} KB/img with the shard index -> "
          f"{e2e['bytes'] * POOL_IMAGES / 1e9:,.0f} GB for {POOL_IMAGES / 1e6:.1f}M images")
    for key, what in (("reader", "PoolReader (cache off: direct shard reads)"), ("zarr", "zarr, one item at a time")):
        print(f"  {what:<42} {e2e[key]:>6,.0f} img/s/core -> {demand / e2e[key]:>3.0f} of {args.cores} cores "
              f"per node for {demand:,.0f} img/s")


if __name__ == "__main__":
    from dp_hpc.errors import run_main

    raise SystemExit(run_main(main))
