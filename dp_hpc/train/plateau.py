"""Plateau detection with incremental patience (paper, Algorithm 1 and Sec. 4). Pure functions
over plain data; the training loop keeps a `Plateau` and stores its fields in train_state.json.

    every tau steps:  acc > best + min_delta  ->  best = acc, counter = 0
                      otherwise               ->  counter += 1
    exit for new data when counter >= limit, but only before the cool-down starts
    new pool round r  ->  counter = 0, limit = patience.limit(r)   (best is kept)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

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


def observe(p: Plateau, acc: float, step: int, min_delta: float) -> Plateau:
    """One evaluation. The first evaluation always counts as an improvement."""
    if p.best_val_acc is None or acc > p.best_val_acc + min_delta:
        return dataclasses.replace(p, best_val_acc=acc, best_step=step, counter=0)
    return dataclasses.replace(p, counter=p.counter + 1)


def new_round(p: Plateau, round_index: int, patience: PatienceConfig) -> Plateau:
    """New data arrived: reset the counter, grow the patience; the best accuracy is kept."""
    return dataclasses.replace(p, counter=0, limit=patience.limit(round_index))


def should_exit(p: Plateau, step: int, decay_start: int) -> bool:
    """Ask for new data? Never at or after the start of the cool-down (no data is added there)."""
    return step < decay_start and p.counter >= p.limit


StartAction = Literal["scratch", "return", "continue", "new_rounds"]


def start_action(train_state: dict | None, complete_rounds: list[int], plateau_exit: bool) -> StartAction:
    """What a (re)started training job does, given the latest checkpoint's train_state.

    - no checkpoint -> "scratch";
    - stop_reason "budget" -> "return" (the run is finished; idempotent);
    - rounds the checkpoint has not seen -> "new_rounds" (reset patience, continue);
    - stop_reason "plateau", no new rounds, plateau_exit -> "return" (idempotent rerun);
    - otherwise (preempted, crashed, or plateau without plateau_exit) -> "continue".
    """
    if train_state is None:
        return "scratch"
    if train_state["stop_reason"] == "budget":
        return "return"
    seen = list(train_state["pool_rounds"])
    missing = sorted(set(seen) - set(complete_rounds))
    if missing:
        raise RuntimeError(f"the checkpoint at step {train_state['step']} trained on pool rounds {missing}, "
                           f"which are no longer complete in the pool (complete: {complete_rounds})")
    if set(complete_rounds) - set(seen):
        return "new_rounds"
    if train_state["stop_reason"] == "plateau" and plateau_exit:
        return "return"
    return "continue"
