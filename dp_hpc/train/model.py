"""Classifiers. Every classifier takes float images in [0, 1], shape (B, C, H, W) at the pool's
stored resolution, and normalises internally, so the sampler's entropy guidance and the
training loop feed it the same thing."""

from __future__ import annotations

import torch
from torch import nn


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


def build_classifier(name: str, num_classes: int, in_channels: int) -> nn.Module:
    if name == "digits_cnn":
        return DigitsCNN(num_classes=num_classes, in_channels=in_channels)
    raise ValueError(f"unknown classifier {name!r}; allowed: digits_cnn")


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) per sample, in nats. (B, K) -> (B,)"""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
