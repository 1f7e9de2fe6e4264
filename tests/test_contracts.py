"""The records that cross process boundaries (dp_hpc.contracts): their JSON is the files' format
as it always was, a file missing a field is refused by name, and older records still load."""

from __future__ import annotations

import json

import pytest

from dp_hpc.contracts import PendingSubmission, TrainState
from dp_hpc.train.checkpoint import latest_checkpoint, unreadable_train_states

# a train_state.json as the training loop has written it since its first version (keys in file order)
FILE = ('{"round": 1, "pool_rounds": [0, 1], "pool_size": 192, "step": 340, "best_val_acc": 0.91, '
        '"best_step": 330, "patience_counter": 1, "patience_limit": 2, "stop_reason": "plateau", '
        '"last_val_acc": 0.9, "lr": 0.001, "world_size": 2, "time": "2026-12-01T10:00:00Z"}')


def test_train_state_reads_and_writes_the_files_format():
    ts = TrainState.from_json(json.loads(FILE))
    assert (ts.step, ts.pool_rounds, ts.plateaued, ts.finished) == (340, (0, 1), True, False)
    assert json.dumps(ts.to_json()) == FILE
    assert TrainState.from_json({**json.loads(FILE), "added_later": 1}) == ts  # a newer writer's field
    with pytest.raises(ValueError, match="train_state: missing patience_limit, world_size"):
        TrainState.from_json({k: v for k, v in json.loads(FILE).items() if k not in ("patience_limit", "world_size")})
    with pytest.raises(ValueError, match="stop_reason must be one of"):
        TrainState.from_json({**json.loads(FILE), "stop_reason": "bored"})


def test_a_train_state_json_missing_a_field_is_reported_not_resumed_from(tmp_path):
    for step, text in ((10, FILE.replace('"step": 340', '"step": 10')), (20, '{"step": 20}')):
        folder = tmp_path / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "train_state.json").write_text(text)
    [(folder, why)] = unreadable_train_states(tmp_path)
    assert folder.name == "step_00000020" and "missing round, pool_rounds" in why
    with pytest.raises(ValueError, match="missing round"):
        latest_checkpoint(tmp_path)


def test_pending_submission_round_trips_and_older_intents_name_their_executor():
    old = {"name": "run-train-0123abcd", "kind": "train", "round": 0, "submitted": 5.0,
           "details": [{"plateau_exit": True}]}  # written before intents named their executor
    p = PendingSubmission.from_json(old)
    assert p.executor == "slurm" and p.details == ({"plateau_exit": True},)
    assert p.to_json() == {**old, "executor": "slurm"}
    assert PendingSubmission.from_json({**old, "name": "run-train"}).executor == "local"
    assert PendingSubmission.from_json({**old, "executor": "debug"}).executor == "debug"
    with pytest.raises(ValueError, match="pending submission: missing kind"):
        PendingSubmission.from_json({k: v for k, v in old.items() if k != "kind"})
