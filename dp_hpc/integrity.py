"""A run folder checked against what scratch purges and deletions do to it, and repaired: the pool
behind its markers (dp_hpc.pool_check), the checkpoints a resume would load
(dp_hpc.train.checkpoint), state.json against the disk (dp_hpc.coordinate.consistency).

    problems = check_run(run, deep=True)      # [] when nothing is wrong
    outcomes = repair_run(run, problems)      # checkpoints and pool first, then state.json

`deep=False` is the cheap part (stats and small JSON files, no decoding, no torch): the launcher
runs it before resuming a run. `deep=True` (python -m dp_hpc.verify) also decodes every marked
chunk and loads the checkpoints a resume would start from.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dp_hpc.config import load_run_config
from dp_hpc.coordinate.generators import generator_dir_for
from dp_hpc.coordinate.consistency import read_state, state_from_disk, state_problems
from dp_hpc.coordinate.plan import passed_rounds
from dp_hpc.coordinate.state import RunState, save_state
from dp_hpc.io import temps_under
from dp_hpc.layout import BRANCHES, TRAIN_STATE_FILE, GeneratorDir, RunDir
from dp_hpc.pool import Pool
from dp_hpc.pool_check import GENERATED, check_pool, repair_pool
from dp_hpc.train.checkpoint import checkpoint_damage, read_train_state, unmark_checkpoint, unreadable_train_states

REWRITE_STATE = "rewrite it from the disk (pool, checkpoints, eval.json)"


@dataclass
class Problem:
    """One thing wrong in a run folder: `fix` says what `repair` does about it (None: nothing can)."""

    run: RunDir
    part: str  # pool | checkpoint | state | temp
    path: Path  # the damaged file or folder
    what: str
    fix: str | None
    repair: Callable[[], None] | None = field(default=None, repr=False, compare=False)


def check_run(run: RunDir, deep: bool, temps: bool = False) -> list[Problem]:
    """Everything wrong in one run folder (a branch-out is one too), checkpoints first; with `temps`
    (dp_hpc.verify; not the launcher, which needs none of them gone), the temporary files of writes
    killed before their rename."""
    return [*_checkpoint_problems(run, deep), *_pool_problems(run, deep), *_state_problems(run),
            *(_temp_problems(run) if temps else [])]


def repair_run(run: RunDir, problems: list[Problem]) -> list[tuple[Problem, str]]:
    """Repair checkpoints and pool, then check state.json again (a checkpoint fallback can leave
    it behind the disk) and rewrite it if needed. (problem, outcome) for each."""
    out = [(p, _apply(p)) for p in problems if p.part != "state"]
    return out + [(p, _apply(p)) for p in _state_problems(run)]


def _apply(p: Problem) -> str:
    if p.repair is None:
        return "not repaired"
    try:
        p.repair()
    except Exception as e:  # one repair failing must not stop the others; said in the table
        return f"repair failed: {type(e).__name__}: {e}"
    return "repaired"


def to_regenerate(run: RunDir) -> dict[int, list[int]]:
    """Passed rounds' chunks without a marker (what the next launch regenerates), by round."""
    st, _ = read_state(run)
    if st is None or run.is_branch:
        return {}
    pool = Pool(run.path)
    return {r: sorted(c) for r in passed_rounds(st) if pool.has_round(r) and (c := pool.unmarked_chunks(r))}


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_problems(run: RunDir, deep: bool) -> list[Problem]:
    """Unreadable train_state.json files (cheap); deep: the newest complete checkpoints that do not
    load, down to the first that does (what a resume falls back to)."""
    unreadable = unreadable_train_states(run.path)
    out = [Problem(run, "checkpoint", p, why, "remove it: resumption passes over this folder",
                   functools.partial(unmark_checkpoint, p)) for p, why in unreadable]
    if not deep:
        return out
    bad, damaged, fallback = {p for p, _ in unreadable}, [], None
    for _, p in reversed(run.checkpoint_folders()):
        ts = None if p in bad else read_train_state(p)
        if ts is None:
            continue
        why = checkpoint_damage(p, ts)
        if why is None:
            fallback = ts.step
            break
        damaged.append((p, why))
    to = "training restarts from scratch" if fallback is None else f"a resume falls back to step {fallback}"
    return out + [Problem(run, "checkpoint", p, why, f"un-mark it (remove {TRAIN_STATE_FILE}): {to}",
                          functools.partial(unmark_checkpoint, p)) for p, why in damaged]


# ----------------------------------------------------------------------------- pool


def _pool_problems(run: RunDir, deep: bool) -> list[Problem]:
    """Damaged files behind chunk markers, and guiding classifiers that regenerating needs but
    that are gone."""
    if run.is_branch or not run.markers.is_dir():
        return []  # a branch-out reads its parent's pool
    damage = check_pool(run, deep, judged=_judged(run))
    out = [Problem(run, "pool", d.path, d.describe(), d.fix, functools.partial(repair_pool, run, [d]) if d.repairable
                   else None) for d in damage]
    st, _ = read_state(run)
    if st is None:
        return out
    pool = Pool(run.path)
    regenerate = {d.round for d in damage if d.array in GENERATED}
    regenerate |= {r for r in range(len(st.rounds)) if pool.has_round(r) and r not in regenerate
                   and _safe_unmarked(pool, r)}
    for r in sorted(regenerate):
        step = st.rounds[r].classifier_step if r < len(st.rounds) else None
        why = None if step is None else _classifier_problem(run.checkpoint(step), deep)
        if why is not None:
            out.append(Problem(run, "pool", run.checkpoint(step), f"round {r} has chunks to generate with the "
                               f"classifier of step {step}, but {why}", None))
    return out


def _judged(run: RunDir) -> bool:
    """Whether the run's generator has a label-fidelity judge, i.e. its shard tasks wrote oracle_label
    (dp_hpc.generate.shard.load_oracle)."""
    gen = GeneratorDir(generator_dir_for(run.path.parent, load_run_config(run.path)))
    return gen.oracle.exists()


def _safe_unmarked(pool: Pool, r: int) -> bool:
    try:
        return bool(pool.unmarked_chunks(r))
    except Exception:  # unreadable metadata: reported by check_pool
        return False


def _classifier_problem(folder: Path, deep: bool) -> str | None:
    try:
        ts = read_train_state(folder)
    except ValueError:
        return f"its {TRAIN_STATE_FILE} is unreadable"
    if ts is None:
        return "that checkpoint is gone or incomplete"
    return checkpoint_damage(folder, ts) if deep else None


# ----------------------------------------------------------------------------- temporary files

STALE_TEMP_S = 300.0
"""A temporary file untouched this long is no write in flight (a write keeps its file's mtime fresh
until the rename: seconds, a large checkpoint's included): `--repair` removes only those. verify
--repair holds the sweep's and every run's lock, but a generation task left running on SLURM by a
cancelled coordinator holds none."""


def _temp_problems(run: RunDir, now: float | None = None) -> list[Problem]:
    """The temporary files (ours, zarr's, submitit's: dp_hpc.io.TEMP_GLOBS) that a job or
    coordinator killed between writing one and renaming it left in the run folder. Harmless, but no
    one else removes them: the next job owning their folder does (chunk files, checkpoints,
    eval.json, ...), unless none comes (a finished run)."""
    now = time.time() if now is None else now
    out = []
    for tmp in temps_under(run.path, skip=frozenset({BRANCHES})):  # a branch-out is a run of its own
        try:
            age = now - tmp.stat().st_mtime
        except FileNotFoundError:  # renamed or removed meanwhile: a write in flight after all
            continue
        if age >= STALE_TEMP_S:
            out.append(Problem(run, "temp", tmp, "temporary file of a write killed before its rename",
                               "remove it", functools.partial(tmp.unlink, missing_ok=True)))
        else:
            out.append(Problem(run, "temp", tmp, f"temporary file written {age:.0f} s ago: maybe a write "
                               f"in flight", f"none now: check again after {STALE_TEMP_S:.0f} s"))
    return out


# ----------------------------------------------------------------------------- state.json


def _state_problems(run: RunDir) -> list[Problem]:
    st, why = read_state(run)
    if why is None:
        if st is None or unreadable_train_states(run.path):
            return []  # not started; or the checkpoints first (their repair comes before this check)
        issues = state_problems(run, st)
        why = "; ".join(issues) if issues else None
    if why is None:
        return []
    return [Problem(run, "state", run.state, why, REWRITE_STATE, functools.partial(rewrite_state, run))]


def rewrite_state(run: RunDir) -> RunState:
    """Replace state.json by `state_from_disk` (the old job history kept if it parses)."""
    old, _ = read_state(run)
    st = state_from_disk(run, load_run_config(run.path), old)
    save_state(run.path, st)
    return st
