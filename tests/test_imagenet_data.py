"""ImageNet real data and pool storage at scale: class lists, the config, packing an ImageFolder
into HDF5 (killed and resumed), reading it back across ranks, bad inputs, and the JPEG pool codec."""

import hashlib
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from dp_hpc.config import RunConfig, from_dict
from dp_hpc.data import pack
from dp_hpc.data.config import DataConfig
from dp_hpc.data.eval_data import check_data_inputs, open_eval_split
from dp_hpc.data.imagenet import DataInputError, load_class_list
from dp_hpc.data.spec import dataset_spec
from dp_hpc.errors import ConfigError
from dp_hpc.pool import Pool, PoolReader, RoundSpec

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark
PER_CLASS = 6
R = 32


def write_folder(root, wnids=WNIDS, per_class=PER_CLASS, seed=0):
    """An ImageFolder of small JPEGs (and one PNG, one grayscale) of assorted aspect ratios."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(36, 90, 2)
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if i == 1:
                img.convert("L").save(root / wnid / f"{wnid}_{i}.JPEG", quality=90)
            elif i == 2:
                img.save(root / wnid / f"{wnid}_{i}.png")
            else:
                img.save(root / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    classes = root / "classes.txt"
    classes.write_text("# three real WNIDs\n" + "\n".join(reversed(WNIDS)) + "\n")
    return write_folder(root / "val"), str(classes)


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory):
    """An uninterrupted pack: the reference for the resumed one."""
    src, classes = folder
    out = tmp_path_factory.mktemp("ref") / "val.h5"
    pack.pack(src, out, classes, resolution=R, workers=0, block_size=4, progress=False)
    return out


def arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("images", "labels", "paths", "blocks_done")}, dict(f.attrs)


def imagenet_cfg(classes, val, test=None, resolution=R):
    return DataConfig(dataset="imagenet", classes=classes, val_h5=str(val), test_h5=str(test or val),
                      resolution=resolution)


# ----------------------------------------------------------------------------- classes and config


def test_shipped_class_lists_and_spec():
    in1k, in100 = load_class_list("imagenet1k"), load_class_list("imagenet100")
    assert len(in1k.wnids) == len(set(in1k.wnids)) == 1000 and list(in1k.wnids) == sorted(in1k.wnids)
    assert (in1k.wnids[0], in1k.names[0]) == ("n01440764", "tench")
    assert (in1k.wnids[-1], in1k.names[-1]) == ("n15075141", "toilet tissue")
    assert len(set(in1k.names)) == 1000, "prompts must tell classes apart"
    assert len(set(in100.wnids)) == 100 and set(in100.wnids) <= set(in1k.wnids)
    assert list(in100.wnids) == sorted(in100.wnids)
    spec = dataset_spec(DataConfig(dataset="imagenet", val_h5="v.h5", test_h5="t.h5"))
    assert spec.num_classes == 100 and spec.image_shape == (3, 256, 256)
    assert spec.class_names[in100.wnids.index("n01749939")] == in1k.names[in1k.wnids.index("n01749939")]


def test_custom_class_list_file(folder, tmp_path):
    _, classes = folder
    cl = load_class_list(classes)
    assert cl.wnids == tuple(WNIDS) and cl.names == ("tench", "goldfish", "great white shark")
    named = tmp_path / "named.txt"
    named.write_text("n99999999 my class\nn01440764\n")
    assert load_class_list(str(named)).names == ("tench", "my class")
    bad = tmp_path / "bad.txt"
    bad.write_text("n99999999\n")
    with pytest.raises(DataInputError, match=f"{bad}.*not ImageNet-1k classes.*n99999999"):
        load_class_list(str(bad))
    with pytest.raises(DataInputError, match="nope.txt"):
        load_class_list(str(tmp_path / "nope.txt"))


def test_config_validation_names_the_key():
    assert DataConfig().dataset == "digits" and DataConfig().resolution == 256  # digits defaults unchanged
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"data": {"dataset": "imagenet", "val_h5": "v.h5"}})
    assert e.value.key == "data.test_h5"
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"data": {"val_h5": "v.h5"}})
    assert e.value.key == "data.val_h5" and "imagenet" in e.value.message
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"data": {"dataset": "imagenet", "val_h5": "v", "test_h5": "t", "resolution": 100}})
    assert e.value.key == "data.resolution"
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"data": {"dataset": "imagenet21k"}})
    assert e.value.key == "data.dataset"


# ----------------------------------------------------------------------------- packing


def test_pack_output(packed, folder):
    a, attrs = arrays(packed)
    n = len(WNIDS) * PER_CLASS
    assert a["images"].shape == (n, 3, R, R) and a["images"].dtype == np.uint8
    assert a["labels"].tolist() == [c for c in range(len(WNIDS)) for _ in range(PER_CLASS)]
    assert a["paths"][0].decode() == f"{WNIDS[0]}/{WNIDS[0]}_0.JPEG" and a["blocks_done"].all()
    assert attrs["complete"] == 1 and attrs["resolution"] == R and list(attrs["classes"]) == WNIDS
    # shorter side to R, then center crop: the same pixels as torchvision Resize(R) + CenterCrop(R)
    from torchvision import transforms

    tv = transforms.Compose([transforms.Resize(R), transforms.CenterCrop(R)])
    for i in (0, 1, 2):  # a JPEG, a grayscale JPEG, a PNG
        with Image.open(folder[0] / a["paths"][i].decode()) as im:
            want = np.asarray(tv(im.convert("RGB"))).transpose(2, 0, 1)
        assert np.array_equal(a["images"][i], want)


def test_killed_pack_resumes_to_identical_content(folder, packed, tmp_path, capsys):
    src, classes = folder
    out = tmp_path / "val.h5"
    args = ["--src", str(src), "--out", str(out), "--classes", classes, "--resolution", str(R),
            "--block-size", "4", "--workers", "2"]
    # a real process, SIGKILLed after writing the images of block 2 but before marking it done
    script = textwrap.dedent(f"""
        import os, signal, sys
        from dp_hpc.data import pack
        write = pack.write_block
        def dying(f, block, start, images):
            if block == 2:
                f["images"][start : start + len(images)] = images
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            write(f, block, start, images)
        pack.write_block = dying
        sys.exit(pack.main({args!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    a, attrs = arrays(out)
    assert attrs["complete"] == 0 and a["blocks_done"].tolist() == [1, 1, 0, 0, 0]
    with pytest.raises(DataInputError, match=f"{out}: incomplete"):
        open_eval_split(imagenet_cfg(classes, out), "val")

    assert pack.main(args) == 0  # the same command finishes it
    got, got_attrs = arrays(out)
    want, want_attrs = arrays(packed)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    assert {k: str(v) for k, v in got_attrs.items()} == {k: str(v) for k, v in want_attrs.items()}

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    capsys.readouterr()
    assert pack.main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_per_class_subset_is_deterministic(folder, tmp_path):
    src, classes = folder
    a = pack.list_images(src, load_class_list(classes), per_class=2)
    assert a.paths == pack.list_images(src, load_class_list(classes), per_class=2).paths
    assert a.labels.tolist() == [0, 0, 1, 1, 2, 2]
    pack.pack(src, tmp_path / "t.h5", classes, resolution=R, per_class=2, workers=0, progress=False)
    assert arrays(tmp_path / "t.h5")[0]["images"].shape == (6, 3, R, R)


# ----------------------------------------------------------------------------- reading


def test_eval_split_two_ranks_with_workers(packed, folder):
    _, classes = folder
    cfg = imagenet_cfg(classes, packed)
    check_data_inputs(cfg)
    split = open_eval_split(cfg, "test")
    want, _ = arrays(packed)
    assert len(split) == len(want["labels"])
    for world in (2, 4):  # 18 samples: 9/9, and the uneven 5/5/4/4
        images, labels = [], []
        for rank in range(world):
            batches = list(split.batches(rank, world, batch_size=4, workers=2))
            assert all(x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (3, R, R) and len(x) <= 4
                       for x, y in batches)
            x = np.concatenate([b[0].numpy() for b in batches])
            y = np.concatenate([b[1].numpy() for b in batches])
            assert np.array_equal(x, want["images"][rank::world]) and np.array_equal(y, want["labels"][rank::world])
            images.append(x)
            labels.append(y)
        # every sample exactly once over the ranks
        assert sum(len(y) for y in labels) == len(want["labels"])
        assert sorted(hashlib.sha1(im.tobytes()).hexdigest() for x in images for im in x) == \
            sorted(hashlib.sha1(im.tobytes()).hexdigest() for im in want["images"])


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_name_the_path(folder, packed, tmp_path, capsys):
    src, classes = folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataInputError, match=f"{empty}: no images found"):
        pack.pack(empty, tmp_path / "x.h5", classes, resolution=R)

    odd = write_folder(tmp_path / "odd", wnids=WNIDS[:2] + ["cat"], per_class=1)
    with pytest.raises(DataInputError, match=f"{odd}: class folders do not match.*{WNIDS[2]}.*not in the list: cat"):
        pack.pack(odd, tmp_path / "x.h5", classes, resolution=R)
    no_images = write_folder(tmp_path / "no_images", wnids=WNIDS[:2], per_class=1)
    (no_images / WNIDS[2]).mkdir()
    with pytest.raises(DataInputError, match=f"{no_images / WNIDS[2]}: no images found"):
        pack.pack(no_images, tmp_path / "x.h5", classes, resolution=R)
    assert not (tmp_path / "x.h5").exists()

    # an existing output made at another resolution: the CLI says so (naming it) and exits 2
    assert pack.main(["--src", str(src), "--out", str(packed), "--classes", classes, "--resolution", "64",
                      "--block-size", "4"]) == 2
    assert f"{packed}: exists, made with resolution {R}, not 64" in capsys.readouterr().err

    with pytest.raises(DataInputError, match=f"{packed}: packed at resolution {R}"):
        open_eval_split(imagenet_cfg(classes, packed, resolution=64), "val")
    with pytest.raises(DataInputError, match=f"{packed}: packed for another class list"):
        open_eval_split(imagenet_cfg("imagenet100", packed), "val")
    missing = tmp_path / "missing.h5"
    with pytest.raises(ConfigError) as e:
        check_data_inputs(imagenet_cfg(classes, packed, test=missing))
    assert e.value.key == "data.test_h5" and f"{missing}: packed file not found" in e.value.message
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DataInputError, match=f"{junk}: not a readable HDF5 file"):
        open_eval_split(imagenet_cfg(classes, junk), "val")


# ----------------------------------------------------------------------------- pool storage


def photo_images(n, size=256):
    """Real photos (scikit-learn's two sample images, offline): n random crops resized to size. (n, 3, s, s)"""
    from sklearn.datasets import load_sample_images

    photos, rng, out = load_sample_images().images, np.random.default_rng(0), []
    for k in range(n):
        p = photos[k % 2]
        s = int(rng.integers(size, min(p.shape[:2]) + 1))
        y, x = int(rng.integers(0, p.shape[0] - s + 1)), int(rng.integers(0, p.shape[1] - s + 1))
        out.append(np.asarray(Image.fromarray(p[y : y + s, x : x + s]).resize((size, size), Image.BILINEAR)))
    return np.stack(out).transpose(0, 3, 1, 2)


def psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_pool_jpeg_round_trip_is_close_and_rewrites_identical_bytes(tmp_path):
    images = photo_images(10)
    images[7] = 0  # an all-fill image: never stored, read back as zeros
    pool = Pool(tmp_path)
    pool.create_round(RoundSpec(round_index=0, n=10, image_shape=(3, 256, 256), chunk_size=4, num_classes=10,
                                run_seed=0, kind="plain"))
    assert pool.group(0)["images"].shards == (4, 3, 256, 256)

    def write_all():
        for c in range(3):  # the last shard is partial (2 of 4)
            a, b = pool.chunk_bounds(0, c)
            pool.write_chunk(0, c, images[a:b], np.zeros(b - a, np.float32))
        files = sorted(p for p in (tmp_path / "pool.zarr" / "round_000" / "images").rglob("*") if p.is_file())
        return {p.name if p.suffix else str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in files}

    first = write_all()
    assert write_all() == first and len(first) == 4  # 3 shards + zarr.json, the same bytes again
    pool.complete_round(0)
    idx = np.array([9, 0, 7, 3, 3, 5])
    whole, labels = PoolReader(tmp_path).read(idx)  # the round fits in the cache: one zarr read
    streamed, labels2 = PoolReader(tmp_path, cache_bytes=0).read(idx)  # direct shard reads
    assert np.array_equal(whole, streamed) and np.array_equal(labels, labels2)
    assert (streamed[2] == 0).all()
    for k, i in enumerate(idx):
        if i != 7:
            assert psnr(streamed[k], images[i]) > 35, i
    stored = sum((tmp_path / "pool.zarr/round_000/images/c" / f"{c}/0/0/0").stat().st_size for c in range(3))
    assert stored / 9 < 55_000, "over the 500 GB / 9.1M images budget"


def test_digits_pools_keep_their_lossless_layout(tmp_path):
    pool = Pool(tmp_path)
    pool.create_round(RoundSpec(round_index=0, n=64, image_shape=(1, 8, 8), chunk_size=32, num_classes=10,
                                run_seed=0, kind="plain"))
    images = pool.group(0)["images"]
    assert images.shards is None and images.chunks == (32, 1, 8, 8)
    assert [type(c).__name__ for c in images.metadata.codecs] == ["BytesCodec", "ZstdCodec"]
