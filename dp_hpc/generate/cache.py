"""The sweep's generator, made once and shared by all runs with the same data and generator
config: `<out>/<sweep>/generators/<key>/` (key = `generator_key`, a hash of those configs).
`config.yaml` there is written by the launcher.

digits_unet trains a UNet there (dp_hpc.generate.unet); stable-diffusion checks the model folder and
caches the prompt embeddings there (dp_hpc.generate.stable_diffusion). The launcher calls
`validate_generator_inputs` for every run before it submits any job."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dp_hpc.config import from_dict, to_dict
from dp_hpc.data.config import DataConfig
from dp_hpc.data.digits import NUM_CLASSES, load_digit_splits
from dp_hpc.data.spec import dataset_spec
from dp_hpc.generate.config import GeneratorConfig, SamplerConfig
from dp_hpc.layout import GeneratorDir

if TYPE_CHECKING:
    from dp_hpc.config import RunConfig


def validate_generator_inputs(cfg: RunConfig) -> None:
    """Check what the generator needs from outside the config, so that a bad model folder fails the
    launch (ConfigError naming the key, the folder and what is missing) instead of a job. digits_unet:
    nothing (its data ships with scikit-learn). stable-diffusion: the model folder's layout, and that
    its images fit the dataset's pool (channels, square, generation_resolution); reads no weights."""
    if cfg.generator.backend == "stable-diffusion":
        from dp_hpc.generate.stable_diffusion import check_model_fits

        check_model_fits(cfg.generator, dataset_spec(cfg.data).image_shape)


def build_generator(generator_dir: Path) -> dict:
    """The generator job: make the generator in `generator_dir` (idempotent); its generator.json."""
    raw = yaml.safe_load(GeneratorDir(generator_dir).config.read_text())
    data = from_dict(DataConfig, raw["data"], "data")
    gen = from_dict(GeneratorConfig, raw["generator"], "generator")
    if gen.backend == "stable-diffusion":
        from dp_hpc.generate.stable_diffusion import prepare_generator

        return prepare_generator(gen, dataset_spec(data).class_names, generator_dir)
    from dp_hpc.generate.unet import train_generator

    sampler = dataclasses.replace(from_dict(SamplerConfig, raw["sampler"], "sampler"), omega=0.0)
    splits = load_digit_splits(data)
    return train_generator(gen, splits.gen_train.images, splits.gen_train.labels, generator_dir, NUM_CLASSES,
                           eval_splits=splits, sampler_cfg=sampler)


# what a generator depends on, per dataset: the images it learns from (digits) or the classes it
# is prompted with and the stored resolution (imagenet; the evaluation files do not matter)
GENERATOR_DATA_FIELDS = {"digits": ("dataset", "split_seed", "val_fraction", "test_fraction"),
                         "imagenet": ("dataset", "classes", "resolution")}


def generator_key(cfg: RunConfig) -> str:
    """Runs whose generators would be the same share one trained (or prepared) generator. Only
    the fields that make the generator count, so that adding config keys keeps existing keys."""
    data = to_dict(cfg.data)
    blob = json.dumps({"data": {k: data[k] for k in GENERATOR_DATA_FIELDS[cfg.data.dataset]},
                       "generator": cfg.generator.identity()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
