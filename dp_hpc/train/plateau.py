"""Plateau detection with incremental patience (paper, Algorithm 1 and Sec. 4). Pure functions
over plain data; the training loop keeps a `Plateau` and stores its fields in train_state.json.

    every tau steps:  acc > best + min_delta  ->  best = acc, counter = 0
                      otherwise               ->  counter += 1   (not during warm-up)
    exit for new data when counter >= limit, only after the warm-up and before the cool-down
    new pool round r  ->  best = None, counter = 0, limit = patience.limit(r)

Why the best is reset when data arrives: a plateau is a statement about the *current* pool (has
training on it stopped improving?). Comparing the new round against the best of the old one made
every evaluation of a post-addition dip count as "no improvement", so the next round was requested
from inside the dip, steered by a classifier below its own best (the digits runs before this rule).
With the reset, the first evaluation on the grown pool is the round's reference, and a recovery
from a dip counts as improvement. Why not during warm-up: the learning rate is still ramping, so
"no improvement" there says nothing about the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from dp_hpc.contracts import TrainState
from dp_hpc.train.config import PatienceConfig


@dataclass(frozen=True, slots=True)
class Plateau:
    best_val_acc: float | None
    """Best real-validation accuracy so far (None before the first evaluation)."""
    best_step: int | None
    counter: int
    """Evaluations since the last improvement (the paper's T)."""
    limit: int
    """Current patience T_max."""


def start(patience: PatienceConfig, round_index: int) -> Plateau:
    return Plateau(best_val_acc=None, best_step=None, counter=0, limit=patience.limit(round_index))


def observe(p: Plateau, acc: float, step: int, min_delta: float, warmup_end: int = 0) -> Plateau:
    """One evaluation after `step` updates. The first evaluation of a round always counts as an
    improvement; evaluations during the warm-up (step <= warmup_end) can raise the best but never
    count towards patience."""
    if p.best_val_acc is None or acc > p.best_val_acc + min_delta:
        return dataclasses.replace(p, best_val_acc=acc, best_step=step, counter=0)
    if step <= warmup_end:
        return p
    return dataclasses.replace(p, counter=p.counter + 1)


def new_round(p: Plateau, round_index: int, patience: PatienceConfig) -> Plateau:
    """New data arrived: the round starts afresh (best and counter reset), with grown patience."""
    return Plateau(best_val_acc=None, best_step=None, counter=0, limit=patience.limit(round_index))


def should_exit(p: Plateau, step: int, decay_start: int, warmup_end: int = 0) -> bool:
    """Ask for new data? Only after the warm-up (step > warmup_end) and before the cool-down starts
    (no data is added there)."""
    return warmup_end < step < decay_start and p.counter >= p.limit


StartAction = Literal["scratch", "return", "continue", "new_rounds"]


def start_action(train_state: TrainState | None, complete_rounds: list[int], plateau_exit: bool) -> StartAction:
    """What a (re)started training job does, given the latest checkpoint's train_state.

    - no checkpoint -> "scratch";
    - stop_reason "budget" -> "return" (the run is finished; idempotent);
    - rounds the checkpoint has not seen -> "new_rounds" (reset patience, continue);
    - stop_reason "plateau", no new rounds, plateau_exit -> "return" (idempotent rerun);
    - otherwise (preempted, crashed, or plateau without plateau_exit) -> "continue".
    """
    if train_state is None:
        return "scratch"
    if train_state.finished:
        return "return"
    seen = list(train_state.pool_rounds)
    missing = sorted(set(seen) - set(complete_rounds))
    if missing:
        raise RuntimeError(f"the checkpoint at step {train_state.step} trained on pool rounds {missing}, "
                           f"which are no longer complete in the pool (complete: {complete_rounds})")
    if set(complete_rounds) - set(seen):
        return "new_rounds"
    if train_state.plateaued and plateau_exit:
        return "return"
    return "continue"
