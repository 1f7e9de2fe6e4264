"""`train.jpeg_decode: cuda`: the reader hands over a batch's JPEG bytes and `decode_jpeg_batch` decodes
them in one call on the training device. The device is a parameter, so the batched-list path runs
here on the CPU (libjpeg-turbo, as Pillow in the default path): it must give exactly the pixels of
the default path. nvjpeg on a GPU may differ by a grey level or so; no GPU runs here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from dp_hpc.config import PlannedRun, RunConfig, SweepConfig, from_dict
from dp_hpc.coordinate.config import SlurmConfig, SlurmJobConfig
from dp_hpc.errors import ConfigError
from dp_hpc.jpeg_batch import decode_jpeg_batch
from dp_hpc.pool import Pool, PoolReader, RoundSpec
from dp_hpc.train.distributed import Dist
from dp_hpc.train.loop import PoolBatches

SIDE = 64  # the smallest side stored as JPEG


def photo_crops(n: int, seed: int) -> np.ndarray:
    """Crops of the two sample photos shipped with scikit-learn, resized to SIDE. (n, 3, SIDE, SIDE)"""
    photos, rng, out = load_sample_images().images, np.random.default_rng(seed), []
    for k in range(n):
        p = photos[k % 2]
        s = int(rng.integers(SIDE, 300))
        y, x = int(rng.integers(0, p.shape[0] - s + 1)), int(rng.integers(0, p.shape[1] - s + 1))
        out.append(np.asarray(Image.fromarray(p[y : y + s, x : x + s]).resize((SIDE, SIDE), Image.BILINEAR)))
    return np.stack(out).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def jpeg_pool(tmp_path_factory):
    """Two complete JPEG rounds of 12 and 8 images; round 0's image 5 is all black (never stored:
    zarr's fill value), round 1 is a prune round keeping 8 of 10."""
    run = tmp_path_factory.mktemp("run")
    pool = Pool(run)
    for r, n in ((0, 12), (1, 10)):
        images = photo_crops(n, seed=r)
        if r == 0:
            images[5] = 0
        pool.create_round(RoundSpec(round_index=r, n=n, image_shape=(3, SIDE, SIDE), chunk_size=4, num_classes=10,
                                    run_seed=0, kind="plain" if r == 0 else "prune"))
        for c in range(-(-n // 4)):
            a, b = pool.chunk_bounds(r, c)
            pool.write_chunk(r, c, images[a:b], np.arange(a, b, dtype=np.float32))
        pool.complete_round(r, keep=8 if r == 1 else None)
    assert pool.group(0)["images"].shards is not None, "a JPEG round"
    return run


@pytest.mark.parametrize("cache_bytes", [0, 256 << 20], ids=["streamed", "rounds-in-memory"])
def test_batched_decode_on_cpu_gives_exactly_the_pixels_of_the_cpu_path(jpeg_pool, cache_bytes):
    reader = PoolReader(jpeg_pool, cache_bytes=cache_bytes)
    assert len(reader) == 20
    everything = np.arange(20)
    drawn = np.array([14, 3, 5, 3, 19, 0, 12, 5, 11])  # rounds interleaved, repeats, the black image (5)
    for idx in (everything, drawn, np.array([16, 2])):
        expected, labels = reader.read(idx)
        encoded, labels_enc = reader.read_encoded(idx)
        got = decode_jpeg_batch(encoded, "cpu")
        assert got.dtype == torch.uint8 and got.shape == expected.shape and got.is_contiguous()
        assert torch.equal(got, torch.from_numpy(expected)), "libjpeg-turbo both sides: exact"
        assert np.array_equal(labels, labels_enc)
    black = reader.read_encoded(np.array([5, 1]))[0]
    assert black.jpeg_rows.tolist() == [1] and (black.pixels == 0).all(), "a never-written image stays all zero"
    assert reader.read_encoded(np.array([7, 1, 13]))[0].pixels is None, "all JPEG rows: no pixel buffer to send"


def test_the_training_sees_the_same_tensors_either_way(jpeg_pool):
    """PoolBatches' encoded path (read bytes in the prefetch thread, decode in __call__), run on the CPU
    with the CUDA-only guard bypassed: the same float batches, labels, dtype and layout as the default."""
    cpu = PoolBatches(PoolReader(jpeg_pool), seed=3, batch_size=16, d=Dist())
    encoded = PoolBatches(PoolReader(jpeg_pool), seed=3, batch_size=16, d=Dist())
    encoded.encoded = True  # what jpeg_decode="cuda" sets, on a CUDA device
    for step in (0, 1, 2, 7):
        (x, y), (xe, ye) = cpu(step), encoded(step)
        assert xe.dtype == torch.float32 and xe.stride() == x.stride()
        assert torch.equal(x, xe) and torch.equal(y, ye), step


def test_jpeg_decode_cuda_is_refused_on_a_process_without_cuda(jpeg_pool):
    with pytest.raises(ConfigError, match="train.jpeg_decode: cuda decodes on the training GPU.*cpu"):
        PoolBatches(PoolReader(jpeg_pool), seed=0, batch_size=4, d=Dist(), jpeg_decode="cuda")
    with pytest.raises(ConfigError, match=r"train.jpeg_decode: must be one of 'cpu', 'cuda'; got 'gpu'"):
        from_dict(RunConfig, {"train": {"jpeg_decode": "gpu"}})
    assert RunConfig().train.jpeg_decode == "cpu"


IMAGENET = {"dataset": "imagenet", "classes": "imagenet100", "val_h5": "unused.h5", "test_h5": "unused.h5"}


def planned(data: dict, jpeg_decode: str = "cuda") -> PlannedRun:
    cfg = from_dict(RunConfig, {"data": data, "train": {"jpeg_decode": jpeg_decode}})
    return PlannedRun(name="r0", config=cfg, overrides={})


def sweep_with(training_gpus: int) -> SweepConfig:
    return SweepConfig(name="s", base=RunConfig(), grid=[],
                       slurm=SlurmConfig(training=SlurmJobConfig(gpus_per_node=training_gpus)))


def test_launch_refuses_jpeg_decode_cuda_where_training_has_no_gpu(monkeypatch):
    from dp_hpc import preflight
    from dp_hpc.preflight import check_train_device

    run = planned(IMAGENET)
    check_train_device([run], sweep_with(8), "slurm")
    with pytest.raises(ConfigError, match="run r0: train.jpeg_decode: .*slurm.training.gpus_per_node is 0"):
        check_train_device([run], sweep_with(0), "slurm")
    monkeypatch.setattr(preflight, "_torch_sees_cuda", lambda: False)
    for kind in ("local", "debug"):
        with pytest.raises(ConfigError, match=f"{kind} jobs run on this machine, where torch sees no CUDA device"):
            check_train_device([run], sweep_with(8), kind)
    check_train_device([planned(IMAGENET, "cpu")], sweep_with(0), "local")  # the default needs nothing
    monkeypatch.setattr(preflight, "_torch_sees_cuda", lambda: True)
    check_train_device([run], sweep_with(0), "local")
    for data in ({"dataset": "digits"}, {**IMAGENET, "resolution": 32}):
        with pytest.raises(ConfigError, match="is stored losslessly"):
            check_train_device([planned(data)], sweep_with(8), "slurm")


def test_launch_stops_before_writing_anything(tmp_path, capsys):
    from e2e_helpers import SMOKE

    from dp_hpc.launch import main

    assert main(["--sweep", str(SMOKE), "--out", str(tmp_path), "--set", "train.jpeg_decode=cuda"]) == 2
    assert "train.jpeg_decode: cuda decodes pool JPEGs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
