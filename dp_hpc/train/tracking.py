"""Live training curves for dashboards: every metrics line a job writes to metrics.jsonl is also
written as scalars to TensorBoard, `<run>/tensorboard/` (train.tensorboard), and to the run's
Weights & Biases run when the sweep's `tracking.wandb` asks for one (dp_hpc.train.wandb_run).
Rank 0 only.

    tensorboard --logdir runs/digits        # every run of the sweep, one curve each

Scalars: val/acc, val/loss, train/loss, lr, best_val_acc, pool/size, pool/round, and
pool/added (the number of samples that joined at that evaluation: the data-addition markers);
the final evaluation's test/acc and test/loss. A resumed job purges the TensorBoard events after
its checkpoint's step (TensorBoard's `purge_step`), as metrics.jsonl drops its lines, so a
resumed curve has no doubled tail. Tracking is a by-product: a dashboard that fails to open or
to write logs one warning and is turned off; it never fails the job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dp_hpc.config import RunConfig
from dp_hpc.layout import RunDir
from dp_hpc.train.wandb_run import WandbRun, open_wandb

log = logging.getLogger(__name__)

SCALARS = {"val": {"acc": "val/acc", "loss": "val/loss", "train_loss": "train/loss", "lr": "lr",
                   "best_val_acc": "best_val_acc", "pool_size": "pool/size", "round": "pool/round"},
           "test": {"acc": "test/acc", "loss": "test/loss"}}


class _TensorBoard:
    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        folder = RunDir(run_dir).tensorboard
        _wait_past_newest_event_file(folder)
        self._writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1, flush_secs=30)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)

    def close(self, failed: bool = False) -> None:
        self._writer.close()


def _wait_past_newest_event_file(folder: Path, most_s: float = 2.0) -> None:
    """TensorBoard reads a folder's event files in name order, and names them
    `events.out.tfevents.<second>.<host>.<pid>.<n>`: two files opened in the same second sort by pid
    and a per-process counter as text (".10" before ".9"), so a resumed job's purge could be read
    before the events it purges. A job that opens its file in a later second than the newest one
    keeps name order = creation order; it waits (< 1 s) only when it starts within a second of
    the last writer, as in-process resumes in tests do. `most_s`: a cap, against other nodes' clocks."""
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if p.name.split(".")[3].isdigit()]
    if seconds:
        time.sleep(min(most_s, max(0.0, max(seconds) + 1.01 - time.time())))


class Tracker:
    """The dashboards of one job, as a context manager (closed on exit; wandb marks the run failed
    if the job raised). `start_step`: the step it resumes from. `enabled`: false on ranks > 0."""

    def __init__(self, run_dir: Path, cfg: RunConfig, start_step: int, previous_pool: int | None = None,
                 enabled: bool = True, job_type: str = "train"):
        self._sinks: dict[str, _TensorBoard | WandbRun] = {}
        self._last_pool = previous_pool  # the pool the checkpoint it resumes from trained on
        if not enabled:
            return
        if cfg.train.tensorboard:
            self._open("TensorBoard", lambda: _TensorBoard(run_dir, start_step))
        self._open("Weights & Biases", lambda: open_wandb(run_dir, cfg, job_type))

    def _open(self, name: str, make) -> None:
        try:
            sink = make()
        except Exception as e:  # noqa: BLE001 (never fail a job for its dashboard)
            log.warning("%s tracking off: %s: %s", name, type(e).__name__, e)
            return
        if sink is not None:
            self._sinks[name] = sink

    def _scalars(self, record: dict) -> tuple[int, dict[str, float]]:
        step, split, scalars = int(record["step"]), record.get("split", "val"), {}
        for key, tag in SCALARS[split].items():
            if record.get(key) is not None:
                scalars[tag] = float(record[key])
        pool = record.get("pool_size")
        if pool is not None and split == "val":
            if self._last_pool is not None and pool != self._last_pool:
                scalars["pool/added"] = float(pool - self._last_pool)
            self._last_pool = int(pool)
        return step, scalars

    def log(self, record: dict) -> None:
        """One metrics.jsonl line (split val at an evaluation, or the final test) as scalars at its step."""
        if not self._sinks:
            return
        try:
            step, scalars = self._scalars(record)
        except Exception as e:  # noqa: BLE001
            log.warning("tracking off: %s: %s", type(e).__name__, e)
            self.close()
            return
        for name, sink in list(self._sinks.items()):
            try:
                sink.log(scalars, step)
            except Exception as e:  # noqa: BLE001
                log.warning("%s tracking off: %s: %s", name, type(e).__name__, e)
                self._close(name)

    def _close(self, name: str, failed: bool = False) -> None:
        try:
            self._sinks.pop(name).close(failed)
        except Exception as e:  # noqa: BLE001
            log.warning("%s did not close cleanly: %s: %s", name, type(e).__name__, e)

    def close(self, failed: bool = False) -> None:
        for name in list(self._sinks):
            self._close(name, failed)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
