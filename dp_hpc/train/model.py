"""Classifiers. Every classifier takes float images in [0, 1], shape (B, C, H, W) at the pool's
stored resolution, and does its own preprocessing (resizing, normalisation), so the sampler's
entropy guidance and the training loop feed it the same thing.

- digits_cnn: a small CNN for the 8x8 grey digits.
- vit_b_16, resnet50, resnet18: torchvision's models (random init), behind `TorchvisionClassifier`,
  which resizes to `input_size` and applies the ImageNet mean/std. At 100 classes: ViT-B/16 85.9M
  parameters, ResNet-50 23.7M, ResNet-18 11.2M (the ResNets hold BatchNorm statistics: buffers that
  the trainer keeps equal across ranks and in its EMA). One fp32 training step of ViT-B/16 at 224 px, batch 8, took 14-23 s
  on a shared 2-core CPU (measured): the CPU path is for tests at small `input_size`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIERS = ("digits_cnn", "vit_b_16", "resnet50", "resnet18")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 grey digits (~0.1M parameters): two 3x3 conv blocks at 8x8, one at 4x4,
    global average pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.register_buffer("mean", torch.tensor(0.3), persistent=False)
        self.register_buffer("std", torch.tensor(0.4), persistent=False)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU())

        self.features = nn.Sequential(
            block(in_channels, w), block(w, w),  # (B, w, 8, 8)
            nn.MaxPool2d(2),  # (B, w, 4, 4)
            block(w, 2 * w), block(2 * w, 2 * w),  # (B, 2w, 4, 4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 2w)
        )
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(self.features(x))


class TorchvisionClassifier(nn.Module):
    """An ImageNet backbone behind this module's contract: (B, C, H, W) in [0, 1] at any stored
    resolution -> bilinear (antialiased, differentiable for guidance) resize to `input_size` ->
    ImageNet mean/std -> logits (B, K). Grey pools (C = 1) are repeated to RGB."""

    def __init__(self, net: nn.Module, input_size: int):
        super().__init__()
        self.net, self.input_size = net, input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)  # (B, 3, s, s) -> (B, K)


def build_classifier(name: str, num_classes: int, in_channels: int, *, input_size: int = 224) -> nn.Module:
    """A randomly initialised classifier (draws from torch's global RNG). `input_size` only
    matters to the torchvision models; torchvision is imported only for them (it imports
    torch._dynamo: ~1.2 s that digits jobs need not pay)."""
    if name == "digits_cnn":
        return DigitsCNN(num_classes=num_classes, in_channels=in_channels)
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; allowed: {', '.join(CLASSIFIERS)}")
    if in_channels not in (1, 3):
        raise ValueError(f"{name} takes RGB (or grey) images, got {in_channels} channels")
    from torchvision import models

    if name == "vit_b_16":
        net = models.vit_b_16(weights=None, num_classes=num_classes, image_size=input_size)
    else:
        net = getattr(models, name)(weights=None, num_classes=num_classes)  # resnet50, resnet18
    return TorchvisionClassifier(net, input_size)


def classifier_for(cfg) -> nn.Module:
    """The classifier of a `RunConfig`, shaped by its dataset (classes, stored channels)."""
    from dp_hpc.data.spec import dataset_spec

    spec = dataset_spec(cfg.data)
    return build_classifier(cfg.train.classifier, spec.num_classes, spec.image_shape[0],
                            input_size=cfg.train.input_size)


def autocast(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast to `dtype` (bf16/fp16), or nothing for fp32 (the classifier's and the SD
    generator's precision settings both come here)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


@dataclass(frozen=True)
class Numerics:
    """How forward passes run on a device (config `train.precision`): bf16 autocast or fp32, and
    the memory format of images and conv weights (channels_last on CUDA: tensor cores want NHWC)."""

    device_type: str
    dtype: torch.dtype
    memory_format: torch.memory_format

    @classmethod
    def of(cls, precision: str, device: torch.device) -> Numerics:
        cuda = device.type == "cuda"
        bf16 = precision == "bf16" or (precision == "auto" and cuda)
        return cls(device.type, torch.bfloat16 if bf16 else torch.float32,
                   torch.channels_last if cuda else torch.contiguous_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device_type, self.dtype)

    def place(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device=device, memory_format=self.memory_format)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in the memory format the model's convolutions want (a no-op for fp32 CPU)."""
        return x.contiguous(memory_format=self.memory_format)


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) per sample, in nats. (B, K) -> (B,)"""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
