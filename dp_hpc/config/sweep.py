"""A sweep file read, validated and expanded into its runs: `load_sweep` (every error names the file
and the key), the grid's cartesian product (`expand_grid`) and the run names it gives (`run_name`).

Precedence: dataclass defaults -> sweep YAML `base` -> `--set key=value` -> the sweep's `grid`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dp_hpc.config.loader import convert, from_dict, parse_override, set_dotted, to_dict
from dp_hpc.config.schema import ExecutorConfig, RunConfig, SweepConfig
from dp_hpc.coordinate.config import SlurmConfig
from dp_hpc.errors import ConfigError
from dp_hpc.train.config import TrackingConfig


@dataclass(frozen=True)
class PlannedRun:
    name: str
    config: RunConfig
    overrides: dict[str, Any]


def _short(key: str) -> str:
    return key.split(".")[-1]


def run_name(overrides: dict[str, Any]) -> str:
    """`method.name=dp, method.budget=1000, seed=0` -> `dp-budget1000-seed0`. For zipped keys
    (`"a.b,a.c": [[1, 2]]`) only the first key names the run."""
    parts = []
    for k, v in overrides.items():
        if "," in k:
            k, v = k.split(",")[0].strip(), v[0]
        parts.append(str(v) if k == "method.name" else f"{_short(k)}{v}")
    return "-".join(parts) or "run"


def expand_grid(grid: list[dict[str, list]]) -> list[dict[str, Any]]:
    """Cartesian product of each mapping, in key order; the union over the list. Pure.
    A key "k1,k2" takes a list of [v1, v2] tuples: values that vary together."""
    combos = []
    for g in grid:
        keys = list(g)
        for values in itertools.product(*(g[k] for k in keys)):
            combos.append(dict(zip(keys, values)))
    return combos


def _assignments(combo: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for k, v in combo.items():
        if "," in k:
            out.extend(zip([p.strip() for p in k.split(",")], v))
        else:
            out.append((k, v))
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error (PyYAML keeps
    the last value silently, so a sweep file's earlier setting would be ignored without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (first at line "
                        f"{seen[key].line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
            except TypeError:  # an unhashable key: leave it to the base class
                pass
        return super().construct_mapping(node, deep=deep)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> tuple[SweepConfig, list[PlannedRun]]:
    """Read, validate and expand a sweep file. Every error names the file and the key."""
    path = Path(path)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}" if key else str(path), message)

    if not path.is_file():
        raise fail("", "sweep file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as e:
        raise fail("", f"not UTF-8 text (byte {e.start}: {e.reason}); save the sweep file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise fail("", f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise fail("", "must be a mapping with keys name, base, grid, executor, slurm, tracking")
    valid = {"name", "base", "grid", "executor", "slurm", "tracking"}
    for k in raw:
        if k not in valid:
            raise fail(str(k), f"unknown key; valid keys: {', '.join(sorted(valid))}")
    if not isinstance(raw.get("name"), str) or not raw["name"] or "/" in raw["name"]:
        raise fail("name", "required: a non-empty string without '/'")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise fail("base", "must be a mapping (a run config)")
    executor = raw.get("executor") or {}
    slurm = raw.get("slurm") or {}
    tracking = raw.get("tracking") or {}
    grid = raw.get("grid") or [{}]
    if isinstance(grid, dict):
        grid = [grid]
    grid_keys = {k for g in grid if isinstance(g, dict) for zipped in g for k in str(zipped).split(",")}
    for text in overrides:
        key, value = parse_override(text)
        if key.removeprefix("base.") == "name":
            raise fail("--set name", "a run's name comes from its grid values; the sweep's folder is "
                                     "the sweep file's `name`")
        if key.removeprefix("base.") in grid_keys:
            zipped = next(z for g in grid for z in g if key.removeprefix("base.") in str(z).split(","))
            raise fail(f"--set {key}", f"the grid also sets it (grid key {zipped!r}), and the grid would win; "
                                       f"change the grid, or drop the --set")
        if key.startswith("executor."):
            set_dotted(executor, key[len("executor."):], value)
        elif key.startswith("slurm."):
            set_dotted(slurm, key[len("slurm."):], value)
        elif key.startswith("tracking."):
            set_dotted(tracking, key[len("tracking."):], value)
        else:
            set_dotted(base, key.removeprefix("base."), value)
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise fail("grid", "must be a mapping of dotted keys to lists of values (or a list of such mappings)")
    for i, g in enumerate(grid):
        for k, vs in g.items():
            if not isinstance(vs, list) or not vs:
                raise fail(f"grid.{k}", "must be a non-empty list of values")
            width = len(k.split(","))
            if width > 1 and not all(isinstance(v, list) and len(v) == width for v in vs):
                raise fail(f"grid.{k}", f"zipped keys take a list of {width}-element lists")
    try:
        base_cfg = from_dict(RunConfig, base)
        executor_cfg = from_dict(ExecutorConfig, executor, "executor")
        slurm_cfg = from_dict(SlurmConfig, slurm, "slurm")
        tracking_cfg = convert(TrackingConfig, tracking, "tracking")  # checks it is a mapping
    except ConfigError as e:
        prefix = "" if e.key.startswith(("executor", "slurm", "tracking")) else "base."
        raise fail(prefix + e.key, e.message) from None

    runs: list[PlannedRun] = []
    seen: dict[str, dict] = {}
    for combo in expand_grid(grid):
        data = json.loads(json.dumps(to_dict(base_cfg)))  # deep copy
        for k, v in _assignments(combo):
            set_dotted(data, k, v)
        name = run_name(combo)
        if name in seen:
            raise fail("grid", f"two grid points give the same run name {name!r}: {seen[name]} and {combo}")
        seen[name] = combo
        data["name"] = name
        try:
            cfg = from_dict(RunConfig, data)
        except ConfigError as e:
            raise fail(f"grid ({name}): {e.key}", e.message) from None
        runs.append(PlannedRun(name=name, config=cfg, overrides=combo))
    sweep = SweepConfig(name=raw["name"], base=base_cfg, grid=grid, executor=executor_cfg, slurm=slurm_cfg,
                        tracking=tracking_cfg)
    return sweep, runs
