"""The paper's classifiers and recipe in the trainer: torchvision ViT-B/16 and ResNet-50 behind the
[0, 1]-at-stored-resolution contract, Mixup/CutMix with soft targets, batched crops and flips
seeded by (seed, step, rank), precision settings, evaluation through `open_eval_split`, and exact
resumption of a run that uses all of it. The torchvision models run at input_size 32 here (a step
of ViT-B/16 at 224 px takes ~14 s on one 2-core CPU machine), except where the default is checked."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dp_hpc.config import RunConfig, from_dict
from dp_hpc.data.config import DataConfig
from dp_hpc.data.eval_data import open_eval_split
from dp_hpc.errors import ConfigError
from dp_hpc.train.augment import BatchAugment, random_resized_crop_flip
from dp_hpc.train.config import TrainConfig
from dp_hpc.train.loop import Dist, EvalBatches, Trainer, evaluate, train_until_stop
from dp_hpc.train.model import Numerics, build_classifier, classifier_for
from test_train import assert_same_state, final_state, make_run, val_lines

RECIPE = {"mixup_alpha": 0.5, "cutmix_alpha": 1.0, "augment": True}


class NoFlag:
    set = False


def run_config(**train) -> RunConfig:
    return from_dict(RunConfig, {"train": {"batch_size": 8, **train}})


# ----------------------------------------------------------------------------- classifiers


def test_default_vit_is_the_real_vit_b_16():
    """classifier: vit_b_16 with the defaults is ViT-B/16 at 224 px; it resizes the pool's 8x8 grey
    digits itself."""
    model = classifier_for(run_config(classifier="vit_b_16")).eval()
    assert model.input_size == 224 and model.net.image_size == 224 and model.net.patch_size == 16
    assert (model.net.hidden_dim, len(model.net.encoder.layers)) == (768, 12)
    assert sum(p.numel() for p in model.parameters()) == 85_806_346  # ViT-B/16, 10 classes
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["vit_b_16", "resnet50", "resnet18"])
@pytest.mark.parametrize("channels,stored", [(3, 48), (3, 32), (1, 8)])
def test_classifier_takes_unit_images_at_stored_resolution(name, channels, stored):
    torch.manual_seed(0)
    model = build_classifier(name, 7, channels, input_size=32).eval()
    x = torch.rand(3, channels, stored, stored)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()
    # the preprocessing is the module's: resize to input_size, then ImageNet mean/std
    rgb = x.expand(-1, 3, -1, -1)
    resized = F.interpolate(rgb, size=(32, 32), mode="bilinear", antialias=True) if stored != 32 else rgb
    with torch.no_grad():
        direct = model.net((resized - model.mean) / model.std)
    torch.testing.assert_close(logits, direct)


@pytest.mark.parametrize("name", ["vit_b_16", "resnet50", "resnet18"])
def test_training_step_with_mixup_cutmix(name):
    """One full step (crop/flip, Mixup or CutMix, soft-target loss, AdamW, EMA) on CPU."""
    cfg = run_config(classifier=name, input_size=32)
    assert cfg.train.mix_alphas == (0.5, 1.0) and cfg.train.augments  # the recipe by default
    trainer = Trainer(cfg, Dist())
    augment = BatchAugment(cfg.train, 10, seed=0, rank=0)
    gen = torch.Generator().manual_seed(0)
    x, y = augment(torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen), step=0)
    assert y.shape == (8, 10) and torch.allclose(y.sum(1), torch.ones(8))  # soft targets
    before = [p.clone() for p in trainer.params[:3]]
    trainer.step(x, y, lr=1e-3, flag=NoFlag())
    loss = trainer.pop_train_loss()
    assert torch.isfinite(loss) and 0 < loss.item() < 10
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params[:3]))
    # BatchNorm statistics are copied to the EMA model (evaluation uses it)
    for b, e in zip(trainer.buffers, trainer.ema_buffers, strict=True):
        assert torch.equal(b, e)
    assert (len(trainer.buffers) > 0) == name.startswith("resnet")


def test_bf16_autocast_step_on_cpu():
    cfg = run_config(precision="bf16")
    trainer = Trainer(cfg, Dist())
    assert trainer.num.dtype == torch.bfloat16
    trainer.step(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)), lr=1e-3, flag=NoFlag())
    assert torch.isfinite(trainer.pop_train_loss())
    assert all(p.dtype == torch.float32 for p in trainer.params)  # weights stay fp32


def test_numerics_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert Numerics.of("auto", cpu) == Numerics("cpu", torch.float32, torch.contiguous_format)
    assert Numerics.of("auto", cuda) == Numerics("cuda", torch.bfloat16, torch.channels_last)
    assert Numerics.of("fp32", cuda).dtype == torch.float32
    assert Numerics.of("bf16", cpu).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- augmentation


def test_soft_targets_get_the_same_label_smoothing():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    hard = F.cross_entropy(logits, y, label_smoothing=0.11)
    soft = F.cross_entropy(logits, F.one_hot(y, 10).float(), label_smoothing=0.11)
    torch.testing.assert_close(hard, soft)


def test_crop_geometry():
    """min scale 1 and a square image: every crop is the whole image, flipped or not."""
    x = torch.rand(16, 3, 12, 12)
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(0), min_scale=1.0)
    same = (out - x).abs().amax((1, 2, 3)) < 1e-5
    flipped = (out - x.flip(-1)).abs().amax((1, 2, 3)) < 1e-5
    assert (same ^ flipped).all() and same.any() and flipped.any()


def test_augmentation_is_a_function_of_seed_step_rank():
    tc = TrainConfig(**RECIPE)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    aug = BatchAugment(tc, 10, seed=3, rank=0)
    rng = torch.get_rng_state()
    a = aug(x, y, step=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    b = BatchAugment(tc, 10, seed=3, rank=0)(x.clone(), y.clone(), step=5)  # a new process, same step
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for other in (aug(x, y, step=6), BatchAugment(tc, 10, seed=3, rank=1)(x, y, step=5),
                  BatchAugment(tc, 10, seed=4, rank=0)(x, y, step=5)):
        assert not torch.equal(a[0], other[0])
    # without crops, CutMix leaves every pixel from the image or its batch neighbour; Mixup blends
    mix_only = BatchAugment(TrainConfig(mixup_alpha=0.5, cutmix_alpha=1.0), 10, seed=0, rank=0)
    kinds = set()
    for step in range(20):
        out, soft = mix_only(x, y, step)
        assert soft.shape == (16, 10)
        kinds.add("cutmix" if ((out == x) | (out == x.roll(1, 0))).all() else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_digits_default_has_no_augmentation():
    tc = TrainConfig()
    assert tc.mix_alphas == (0.0, 0.0) and not tc.augments
    aug = BatchAugment(tc, 10, seed=0, rank=0)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    out = aug(x, y, step=0)
    assert out[0] is x and out[1] is y


@pytest.mark.parametrize("train,key", [
    ({"classifier": "vit_b_16", "input_size": 200}, "train.input_size"),
    ({"classifier": "resnet50", "input_size": 16}, "train.input_size"),
    ({"mixup_alpha": -0.5}, "train.mixup_alpha"),
    ({"cutmix_alpha": -1}, "train.cutmix_alpha"),
    ({"crop_min_scale": 0.0}, "train.crop_min_scale"),
    ({"precision": "fp16"}, "train.precision"),
    ({"augment": "yes"}, "train.augment"),
    ({"classifier": "vit_b_32"}, "train.classifier"),
    ({"eval_workers": -1}, "train.eval_workers"),
    ({"eval_crop": 0.0}, "train.eval_crop"),
])
def test_recipe_keys_are_validated(train, key):
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"train": train})
    assert e.value.key == key


# ----------------------------------------------------------------------------- evaluation and resumption


def test_eval_cached_and_streamed_agree_with_direct_computation():
    split = open_eval_split(DataConfig(), "val")
    torch.manual_seed(0)
    model = build_classifier("digits_cnn", 10, 1)
    num, d = Numerics.of("fp32", torch.device("cpu")), Dist()
    cached = evaluate(model, EvalBatches.for_training(split, (1, 8, 8), d, workers=0), d, num)
    streamed = evaluate(model, EvalBatches(split, d, workers=0, cache=False), d, num)
    with torch.no_grad():  # what the trainer computed before open_eval_split: one float batch
        logits = model(torch.from_numpy(split.images).float().div_(255.0))
    labels = torch.from_numpy(split.labels)
    direct = ((logits.argmax(-1) == labels).double().mean().item(),
              F.cross_entropy(logits, labels, reduction="sum").double().item() / len(labels))
    assert cached == streamed == direct


def test_recipe_run_resumes_exactly(tmp_path):
    """Mixup, CutMix, crops and flips on a digits pool: interrupted twice, the run reproduces the
    uninterrupted one bit for bit (every draw depends on (seed, step, rank) only)."""
    train = {**RECIPE, "total_steps": 40, "warmup_steps": 4, "cooldown_steps": 8}
    ref = make_run(tmp_path / "ref", train=train)
    assert train_until_stop(ref, plateau_exit=False).stop_reason == "budget"
    run = make_run(tmp_path / "run", train=train)
    assert train_until_stop(run, plateau_exit=False, max_steps=15).step == 15
    assert train_until_stop(run, plateau_exit=False, max_steps=7).step == 22
    assert train_until_stop(run, plateau_exit=False).stop_reason == "budget"
    assert_same_state(final_state(run), final_state(ref))
    assert val_lines(run) == val_lines(ref)
    # and the recipe did change training: a plain run ends elsewhere
    plain = make_run(tmp_path / "plain", train={k: v for k, v in train.items() if k not in RECIPE})
    train_until_stop(plain, plateau_exit=False)
    assert not torch.equal(final_state(plain)["model"]["head.weight"], final_state(ref)["model"]["head.weight"])


def test_vit_and_resnet_keep_biases_norms_and_embeddings_out_of_weight_decay():
    """DeiT/timm's recipe for ViT-B; digits_cnn keeps decaying everything (docs/results-digits.md's numbers)."""
    from dp_hpc.train.config import TrainConfig
    from dp_hpc.train.loop import decays
    from dp_hpc.train.optim import AdamW

    vit = build_classifier("vit_b_16", 10, 3, input_size=32)
    exempt = {n.removeprefix("net.") for n, p in vit.named_parameters() if not decays(n, p)}
    assert {"class_token", "encoder.pos_embedding", "conv_proj.bias", "heads.head.bias",
            "encoder.layers.encoder_layer_0.ln_1.weight", "encoder.ln.weight"} <= exempt
    assert not {"conv_proj.weight", "heads.head.weight", "encoder.layers.encoder_layer_0.mlp.0.weight"} & exempt
    assert not TrainConfig(classifier="vit_b_16").decays_everything and TrainConfig().decays_everything

    a, b = torch.ones(3), torch.ones(3)
    opt = AdamW([a, b], lr=1.0, weight_decay=0.1, decay=[True, False])
    a.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    assert torch.allclose(a, torch.full((3,), 0.9)) and torch.equal(b, torch.ones(3))


def test_imagenet_classifiers_are_evaluated_on_the_standard_center_crop():
    """Packed images are 256 px; evaluation keeps the central 224 (Resize(256) + CenterCrop(224))."""
    from dp_hpc.train.loop import center_crop

    x = torch.arange(2 * 3 * 256 * 256).reshape(2, 3, 256, 256)
    c = center_crop(x, TrainConfig(classifier="vit_b_16").eval_crop_fraction)
    assert c.shape == (2, 3, 224, 224) and torch.equal(c, x[..., 16:240, 16:240])
    assert TrainConfig().eval_crop_fraction == 1.0 and center_crop(x, 1.0) is x
