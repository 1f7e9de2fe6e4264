"""Classifier checkpoints: one folder per step, `train_state.json` written last as the marker.

    <run>/checkpoints/step_00001200/
        state.pt           torch.save dict: model, ema, optimizer (AdamW moments + count),
                           step (= the LR schedule's position: the schedule is pure), rng
                           (torch's CPU state; training draws nothing from it: batches come
                           from a generator seeded by (run seed, step), so the step is the
                           data position), train-loss accumulator since the last evaluation,
                           train_state (a copy)                    (written first, atomically)
        classifier.pt      plateau checkpoints only: the EMA classifier's weights alone, what
                           generation tasks load for guidance (a fraction of state.pt)
        train_state.json   dp_hpc.contracts.TrainState: round, pool_rounds, pool_size, step,
                           best_val_acc, best_step, patience_counter, patience_limit,
                           stop_reason, last_val_acc, lr, world_size, time
                           (written last, atomically: the folder is complete iff it exists)

Readers (the coordinator, generation tasks loading the classifier for entropy guidance) only
ever look at complete folders. Only rank 0 writes (`CheckpointWriter`: in the training thread, or
with train.async_checkpoint in one background thread from a copy in CPU memory). Retention keeps
the newest `checkpoint_keep` folders plus every folder whose stop_reason is "plateau" (the
classifiers that guided a round, and the branch-out points).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from dp_hpc.contracts import TrainState
from dp_hpc.io import atomic_write_bytes, atomic_write_json, read_json, remove_stale_temps
from dp_hpc.layout import CHECKPOINT_DIR, CHECKPOINT_STATE, CLASSIFIER_FILE, TRAIN_STATE_FILE, RunDir  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # torch is imported where it is used, so the coordinator and `status` can
    import torch  # find checkpoints without paying seconds for `import torch`
    from torch import nn

log = logging.getLogger(__name__)

STATE_FILE = CHECKPOINT_STATE


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return RunDir(run_dir).checkpoint(step)


def _folders(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All step folders, complete or not, oldest first."""
    return RunDir(run_dir).checkpoint_folders()


def read_train_state(folder: str | os.PathLike) -> TrainState | None:
    """A checkpoint folder's train_state.json, None while it is incomplete (no such file). A file
    that does not parse or lacks a field: ValueError."""
    d = read_json(Path(folder) / TRAIN_STATE_FILE)
    return None if d is None else TrainState.from_json(d)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[Path, TrainState]]:
    """(folder, train_state) of every complete checkpoint, oldest first."""
    out = []
    for _, p in _folders(run_dir):
        ts = read_train_state(p)
        if ts is not None:
            out.append((p, ts))
    return out


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, TrainState] | None:
    """The newest complete checkpoint folder and its train_state, or None."""
    for _, p in reversed(_folders(run_dir)):
        ts = read_train_state(p)
        if ts is not None:
            return p, ts
    return None


def latest_train_state(run_dir: Path) -> TrainState | None:
    """train_state of the newest complete checkpoint (None before the first)."""
    latest = latest_checkpoint(run_dir)
    return None if latest is None else latest[1]


def save_checkpoint(run_dir: str | os.PathLike, state: dict, train_state: TrainState) -> Path:
    """Write one checkpoint folder (rank 0 only). state.pt first, train_state.json last: a save that
    fails (a full disk: `DiskFull` naming the file) leaves the folder incomplete, never marked."""
    import torch

    folder = checkpoint_dir(run_dir, train_state.step)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAIN_STATE_FILE).unlink(missing_ok=True)  # overwriting: incomplete until the end
    # a job killed mid-write of this step's files left their temporary files (a state.pt's size,
    # 1.4 GB for ViT-B), and the rerun that completes the folder would keep them (tests/test_chaos.py,
    # seed 3); this job is the run's one writer (train.lock), and no write of its own is in flight here
    remove_stale_temps(folder, "*")
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(folder / STATE_FILE, buf.getvalue())
    if train_state.plateaued:  # a classifier that guidance will load, many times
        buf = io.BytesIO()
        torch.save(state["ema"], buf)
        atomic_write_bytes(folder / CLASSIFIER_FILE, buf.getvalue())
    atomic_write_json(folder / TRAIN_STATE_FILE, train_state.to_json())
    return folder


def snapshot(state):
    """A copy of `state` (dicts, lists, tensors, plain values) that training cannot change: every
    tensor copied to CPU memory (from a GPU: a device-to-host copy that the caller waits for).
    state_dict()'s `_metadata` (module versions) is kept, so torch.save writes the same file."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        out = type(state)((k, snapshot(v)) for k, v in state.items())
        if hasattr(state, "_metadata"):
            out._metadata = copy.deepcopy(state._metadata)
        return out
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return copy.deepcopy(state)


class CheckpointWriter:
    """Rank 0's saves: `save_checkpoint`, then `prune_checkpoints`. With `background`, a save that
    may (`wait=False`) returns after a `snapshot` of the state and writes it in one worker thread:
    at most one write in flight (each save first waits for the previous one), and a write's error
    is raised in the training thread at the next save or at the end of the `with` block, never lost.
    Leaving the block waits for the pending write."""

    def __init__(self, run_dir: str | os.PathLike, keep: int, background: bool = False):
        self.run_dir, self.keep, self.background = Path(run_dir), keep, background
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-write") if background else None
        self._pending: Future | None = None

    def save(self, state: dict, train_state: TrainState, *, wait: bool = True) -> None:
        self.wait()
        if self._thread is None or wait:
            self._write(state, train_state)
        else:  # the copy is taken here, before the next optimizer step changes the tensors
            self._pending = self._thread.submit(self._write, snapshot(state), train_state)  # frozen

    def _write(self, state: dict, train_state: TrainState) -> None:
        save_checkpoint(self.run_dir, state, train_state)
        prune_checkpoints(self.run_dir, self.keep)

    def wait(self) -> None:
        """Return when no write is in flight; raise the error of the pending one (once)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc is None:
                self.wait()
            else:  # the block's own error goes on; the write's, if any, is logged beside it
                try:
                    self.wait()
                except Exception as e:
                    log.error("the background checkpoint write failed too: %s", _first_line(e))
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)


def load_state(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    import torch

    return torch.load(Path(folder) / STATE_FILE, map_location=map_location, weights_only=True)


def unreadable_train_states(run_dir: str | os.PathLike) -> list[tuple[Path, str]]:
    """(folder, why) of every step folder whose train_state.json exists but does not parse (a
    truncated file) or lacks a field: `latest_checkpoint` and the retention would stop with an
    error at it. Cheap."""
    out = []
    for _, p in _folders(run_dir):
        try:
            read_train_state(p)
        except (ValueError, OSError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            out.append((p, f"{TRAIN_STATE_FILE} unreadable ({_first_line(e)})"))
    return out


def checkpoint_damage(folder: str | os.PathLike, train_state: TrainState) -> str | None:
    """Why a complete checkpoint cannot be resumed from, or None: state.pt loads and holds the
    step of its train_state.json, and a plateau checkpoint's classifier.pt (what guidance loads;
    without it guidance loads state.pt) loads. Costs a full torch.load of both."""
    import torch

    folder = Path(folder)
    try:
        step = load_state(folder).get("step")
    except Exception as e:  # a truncated or missing file: torch's or the OS's error
        return f"{STATE_FILE} does not load ({_first_line(e)})"
    if step != train_state.step:
        return f"{STATE_FILE} holds step {step}, {TRAIN_STATE_FILE} step {train_state.step}"
    if (folder / CLASSIFIER_FILE).exists():
        try:
            torch.load(folder / CLASSIFIER_FILE, map_location="cpu", weights_only=True)
        except Exception as e:
            return f"{CLASSIFIER_FILE} does not load ({_first_line(e)})"
    return None


def unmark_checkpoint(folder: str | os.PathLike) -> None:
    """Make a checkpoint incomplete (remove its train_state.json): resumption passes over it to the
    next older one, and the next save's retention deletes it."""
    (Path(folder) / TRAIN_STATE_FILE).unlink(missing_ok=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:120] if text else ''}"


def retained(checkpoints: list[tuple[Path, TrainState]], keep: int) -> set[Path]:
    """Folders to keep: the newest `keep` complete ones and every plateau one. Pure."""
    keep_set = {p for p, _ in checkpoints[-keep:]} if keep > 0 else set()
    keep_set |= {p for p, ts in checkpoints if ts.plateaued}
    return keep_set


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete complete checkpoints that are not retained, and incomplete folders (leftovers of a
    crash during a save; only the single writer calls this, after its own save completed)."""
    complete = complete_checkpoints(run_dir)
    keep_set = retained(complete, keep)
    removed = []
    for _, p in _folders(run_dir):
        if p not in keep_set:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.debug("removed checkpoints %s", [p.name for p in removed])
    return removed


def load_classifier(checkpoint_dir: str | os.PathLike, run_cfg, device: str | torch.device = "cpu") -> nn.Module:
    """The EMA classifier of a checkpoint, in eval mode (what entropy guidance uses).
    Takes float images in [0, 1], (B, C, H, W) at the pool's stored resolution."""
    from dp_hpc.train.model import classifier_for

    folder = Path(checkpoint_dir)
    if not (folder / TRAIN_STATE_FILE).exists():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {TRAIN_STATE_FILE})")
    model = classifier_for(run_cfg)
    if (folder / CLASSIFIER_FILE).exists():  # plateau checkpoints: the EMA weights alone
        import torch

        model.load_state_dict(torch.load(folder / CLASSIFIER_FILE, map_location="cpu", weights_only=True))
    else:
        model.load_state_dict(load_state(folder)["ema"])
    return model.to(device).eval().requires_grad_(False)  # guidance needs d/dx only
