"""A run folder's configuration: `<run>/config.yaml` written (`dump_run_config`) and read back
(`load_run_config`), and the `tracking:` section of the sweep the run belongs to
(`load_sweep_tracking`). The paths are dp_hpc/layout.py's.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dp_hpc.config.loader import convert, from_dict, to_dict
from dp_hpc.config.schema import RunConfig
from dp_hpc.errors import ConfigError
from dp_hpc.layout import RunDir
from dp_hpc.train.config import TrackingConfig


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = RunDir(run_dir).config
    try:
        return from_dict(RunConfig, yaml.safe_load(path.read_text()))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.key}", e.message) from None


def load_sweep_tracking(run_dir: str | Path) -> tuple[str, TrackingConfig] | None:
    """The name and `tracking:` section of the sweep a run belongs to, for its jobs: read from
    `<sweep>/sweep.yaml`, which every launch rewrites, so a relaunch that changes the section
    reaches the next job of every run. None for a run folder outside a sweep."""
    sweep = RunDir(run_dir).sweep
    if not sweep.sweep_file.is_file():
        return None
    path = sweep.sweep_file
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return str(raw.get("name") or sweep.name), convert(TrackingConfig, raw.get("tracking") or {}, "tracking")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.key}", e.message) from None
