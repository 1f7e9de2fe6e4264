"""Records for pure-logic tests, with only the fields a test is about given."""

from __future__ import annotations

from dp_hpc.contracts import TrainState


def train_state(step: int = 100, stop_reason: str | None = None, pool_rounds=(0,), **fields) -> TrainState:
    """A checkpoint's TrainState at `step` that stopped for `stop_reason`, trained on `pool_rounds`."""
    base = dict(round=max(pool_rounds, default=0), pool_rounds=tuple(pool_rounds), pool_size=0, step=step,
                best_val_acc=None, best_step=None, patience_counter=0, patience_limit=1, stop_reason=stop_reason,
                last_val_acc=None, lr=0.0, world_size=1, time="")
    return TrainState(**{**base, **fields})
