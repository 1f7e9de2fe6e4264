"""Every key a sweep file can set, with its type, default and help text, read from the config
dataclasses themselves (the attribute docstrings under each field), so the list cannot drift
from the code: `python -m dp_hpc.launch --list-keys`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any, Iterator

from dp_hpc.config.loader import to_dict, type_name
from dp_hpc.config.schema import RunConfig, SweepConfig


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, as in `base:`, `--set` and `grid` (run keys) or the sweep's own sections
    type: str
    default: Any
    help: str


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right under each field."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe(cls: type, defaults: Any = None, prefix: str = "") -> Iterator[KeyDoc]:
    """One KeyDoc per leaf field of dataclass `cls` (nested dataclasses are walked into); default
    values are read from `defaults` (an instance) where given: a nested section may have its own
    (the coordinator job's SLURM resources are not a training job's)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if defaults is not None and hasattr(defaults, f.name):
            value = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = _REQUIRED
        section = _section(tp)
        if section is not None:  # walked into; an optional section (default null) lists its class's defaults
            yield from describe(section, None if value is _REQUIRED else value, f"{prefix}{f.name}.")
            continue
        yield KeyDoc(prefix + f.name, type_name(tp), value if value is _REQUIRED else to_dict(value),
                     docs.get(f.name, ""))


_REQUIRED = "(required)"


def _section(tp: Any) -> type | None:
    """The dataclass of a nested section, optional (`X | None`) or not; None for a leaf."""
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


def sweep_keys() -> list[KeyDoc]:
    """Run keys (what `base:`, `--set` and `grid` take) and the sweep file's own keys."""
    run = [k for k in describe(RunConfig) if k.key != "name"]  # the run name comes from the grid
    own = [k for k in describe(SweepConfig) if not k.key.startswith("base")]
    return run + own


def format_keys(keys: list[KeyDoc], width: int = 100) -> str:
    lines = []
    section = None
    for k in keys:
        top = k.key.split(".")[0]
        if top != section:
            section = top
            lines.append(f"\n[{top}]")
        default = "" if k.default is _REQUIRED else f" = {k.default!r}"
        lines.append(f"{k.key}: {k.type}{default}")
        if k.help:
            lines += textwrap.wrap(k.help, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines).lstrip("\n") + "\n"
