"""Live training curves for dashboards: every metrics line the training job writes to
metrics.jsonl is also written as TensorBoard scalars to `<run>/tensorboard/` (rank 0 only).

    tensorboard --logdir runs/digits        # every run of the sweep, one curve each

Scalars: val/acc, val/loss, train/loss, lr, best_val_acc, pool/size, pool/round, and
pool/added (the number of samples that joined at that evaluation: the data-addition markers).
A resumed job purges the events after its checkpoint's step (TensorBoard's `purge_step`), as
metrics.jsonl drops its lines, so a resumed curve has no doubled tail. Tracking is a
by-product: any failure to write it logs one warning and turns it off; it never fails the job.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dp_hpc.layout import RunDir

log = logging.getLogger(__name__)

SCALARS = {"acc": "val/acc", "loss": "val/loss", "train_loss": "train/loss", "lr": "lr",
           "best_val_acc": "best_val_acc", "pool_size": "pool/size", "round": "pool/round"}


class Tracker:
    """TensorBoard writer of one training job. `start_step`: the step it resumes from."""

    def __init__(self, run_dir: Path, start_step: int, previous_pool: int | None = None, enabled: bool = True):
        self._writer = None
        self._last_pool = previous_pool  # the pool the checkpoint it resumes from trained on
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard), purge_step=start_step + 1,
                                         flush_secs=30)
        except Exception as e:  # noqa: BLE001 (never fail a job for its dashboard)
            log.warning("TensorBoard tracking off: %s: %s", type(e).__name__, e)

    def log(self, record: dict) -> None:
        """One metrics.jsonl line (split val, at an evaluation) as scalars at its step."""
        if self._writer is None:
            return
        try:
            step = int(record["step"])
            for key, tag in SCALARS.items():
                if record.get(key) is not None:
                    self._writer.add_scalar(tag, float(record[key]), step)
            pool = record.get("pool_size")
            if pool is not None:
                if self._last_pool is not None and pool != self._last_pool:
                    self._writer.add_scalar("pool/added", float(pool - self._last_pool), step)
                self._last_pool = int(pool)
        except Exception as e:  # noqa: BLE001
            log.warning("TensorBoard tracking off: %s: %s", type(e).__name__, e)
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as e:  # noqa: BLE001
                log.warning("TensorBoard writer did not close cleanly: %s", e)
            self._writer = None
