"""The sweep's generator, trained once and shared by all runs with the same data and generator
config: `<out>/<sweep>/generators/<key>/` (key = hash of those configs, see
`dp_hpc.config.generator_key`). `config.yaml` there is written by the launcher."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from dp_hpc.config import from_dict
from dp_hpc.data.config import DataConfig
from dp_hpc.data.digits import NUM_CLASSES, load_digit_splits
from dp_hpc.generate.config import GeneratorConfig, SamplerConfig


def build_generator(generator_dir: Path) -> dict:
    from dp_hpc.generate.unet import train_generator

    raw = yaml.safe_load((generator_dir / "config.yaml").read_text())
    data = from_dict(DataConfig, raw["data"], "data")
    gen = from_dict(GeneratorConfig, raw["generator"], "generator")
    sampler = dataclasses.replace(from_dict(SamplerConfig, raw["sampler"], "sampler"), omega=0.0)
    splits = load_digit_splits(data)
    return train_generator(gen, splits.gen_train.images, splits.gen_train.labels, generator_dir, NUM_CLASSES,
                           eval_splits=splits, sampler_cfg=sampler)
