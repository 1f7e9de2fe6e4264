"""The run and sweep configuration: one typed dataclass per component (beside its code), nested
into `RunConfig`; a sweep is a `base` run config plus a `grid` of overrides.

Everything is validated once, here at the edge: unknown keys, wrong types and impossible values
raise `ConfigError` naming the file, the dotted key and what is allowed.

Precedence: dataclass defaults -> sweep YAML `base` -> `--set key=value` -> the sweep's `grid`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dp_hpc.coordinate.config import MethodConfig, PoolConfig, SlurmConfig
from dp_hpc.data.config import DataConfig
from dp_hpc.errors import ConfigError
from dp_hpc.generate.config import GeneratorConfig, SamplerConfig
from dp_hpc.layout import RunDir
from dp_hpc.train.config import TrackingConfig, TrainConfig


@dataclass(kw_only=True, slots=True)
class RunConfig:
    """Everything one run needs; written resolved into `<run>/config.yaml` before any work."""

    name: str = "run"
    """Run name (set by the sweep expansion); the run's folder name."""
    seed: int = 0
    """Run seed: classifier init, batch order, per-sample generation seeds."""
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)


@dataclass(kw_only=True, slots=True)
class ExecutorConfig:
    """How jobs run. The `--executor` flag overrides `kind`."""

    kind: Literal["local", "debug", "slurm", "auto"] = "local"
    """local: real subprocesses, one per job (see `warm_start`). debug: in-process, one job at a time.
    slurm: sbatch through submitit, resources from the sweep's `slurm:` section.
    auto: slurm where `sbatch` is on PATH, else local."""
    max_parallel_jobs: int = 2
    """Jobs (array tasks included) running at once across the sweep (local and debug executors;
    on SLURM the cluster schedules, see slurm.max_queued_jobs)."""
    threads_per_job: int = 1
    """torch intra-op threads in each job."""
    poll_interval_s: float = 0.5
    """Seconds between looks at job states and run directories."""
    timeout_min: float = 120.0
    """Wall-clock limit of one job."""
    warm_start: bool = True
    """local: each job is a fork of one parent that has imported torch, diffusers and the job
    modules already (milliseconds to start instead of ~5 s). false: a fresh interpreter per job
    (submitit's LocalExecutor), for platforms where forking after those imports is unsafe."""

    def __post_init__(self) -> None:
        for name in ("max_parallel_jobs", "threads_per_job"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.poll_interval_s <= 0 or self.timeout_min <= 0:
            raise ConfigError("poll_interval_s", "poll_interval_s and timeout_min must be > 0")


@dataclass(kw_only=True, slots=True)
class SweepConfig:
    name: str
    """Sweep name: the folder `<out>/<name>/`."""
    base: RunConfig
    """Run config shared by all runs."""
    grid: list[dict[str, list]]
    """Overrides expanded as a cartesian product (a list of mappings: the union of products)."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Resources per kind of job when the executor is slurm (ignored otherwise)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Where the runs' curves go besides metrics.jsonl and TensorBoard. Not part of a run's config:
    turning it on for an existing sweep is a relaunch away, and changes no result."""


# ----------------------------------------------------------------------------- generic loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"must be {_type_name(tp)}; got {value!r}")
        return value
    if origin in (tuple, list):
        (elem, *rest) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {type(value).__name__} {value!r}")
        items = [_convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value)] if elem is not Any else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        return value
    if origin in (typing.Union, types.UnionType):
        section = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if section and isinstance(value, dict):  # an optional section, given: its own errors name its keys
            return _convert(section[0], value, key)
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, f"must be {' or '.join(_type_name(a) for a in typing.get_args(tp))}; got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(key, f"must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, validating keys, types and values."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}", f"unknown key; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}.{name}" if prefix else name)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]}" if prefix else missing[0], "required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # raised by __post_init__ with the bare field name
        raise ConfigError(f"{prefix}.{e.key}" if prefix else e.key, e.message) from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON text (one type per table column, and
    two lists compare equal exactly when their texts do)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for dotted = "a.b", creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for i, p in enumerate(parents):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(".".join(parents[: i + 1]), "is not a mapping; cannot set a key inside it")
        node = nxt
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so 3, 0.5, true, [1,2] have their types)."""
    if "=" not in text or text.startswith("="):
        raise ConfigError("--set", f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# ----------------------------------------------------------------------------- sweeps


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
        tracking_cfg = _convert(TrackingConfig, tracking, "tracking")  # checks it is a mapping
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


# ----------------------------------------------------------------------------- run folders


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
        return str(raw.get("name") or sweep.name), _convert(TrackingConfig, raw.get("tracking") or {}, "tracking")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.key}", e.message) from None
