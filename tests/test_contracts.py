"""The records that cross process boundaries (dp_hpc.contracts): their JSON is the files' format
as it always was, a file missing a field is refused by name, and older records still load."""

from __future__ import annotations

import json

import pytest

from dp_hpc.contracts import JobDetail, JobUsage, PendingSubmission, TrainState
from dp_hpc.coordinate.state import JobRecord
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
    assert p.executor == "slurm" and p.details == (JobDetail(plateau_exit=True),)
    assert p.to_json() == {**old, "executor": "slurm"}
    assert PendingSubmission.from_json({**old, "name": "run-train"}).executor == "local"
    assert PendingSubmission.from_json({**old, "executor": "debug"}).executor == "debug"
    with pytest.raises(ValueError, match="pending submission: missing kind"):
        PendingSubmission.from_json({k: v for k, v in old.items() if k != "kind"})


def test_job_details_read_and_write_the_formats_each_kind_of_job_has_always_had():
    for kind, text in (("generate", '{"start": 8, "stop": 12}'), ("train", '{"plateau_exit": false}'), ("eval", "{}"),
                       ("generate", '{"start": 0, "stop": 4, "elapsed_s": 1800, "gpus": 1}')):
        d = JobDetail.from_json(json.loads(text))
        assert json.dumps(d.to_json()) == text, kind
    d = JobDetail.from_json({"start": 8, "stop": 12})
    assert (d.shard, d.usage, d.plateau_exit) == ((8, 12), None, None)
    assert JobDetail(plateau_exit=True).shard is None and JobDetail(start=3).shard is None
    ended = d.with_usage(JobUsage(elapsed_s=60, gpus=2))
    assert ended.usage == JobUsage(60, 2) and ended.shard == (8, 12) and d.usage is None  # frozen: d unchanged
    assert JobDetail.from_json(None) == JobDetail.from_json({}) == JobDetail()
    assert JobDetail.from_json({"start": 1, "stop": 2, "added_later": 1}) == JobDetail(start=1, stop=2)
    with pytest.raises(ValueError, match="job detail: expected a JSON object"):
        JobDetail.from_json([1, 2])


def test_a_job_record_round_trips_through_its_json_line_and_its_end_records_the_usage():
    from dp_hpc.coordinate.state import JobTable

    line = ('{"job_id": "12_3", "kind": "generate", "round": 1, "submitted": 5.0, "status": "running", '
            '"detail": {"start": 4, "stop": 6}, "error": null, "log_path": null, "executor": "slurm"}')
    job = JobRecord.from_json(json.loads(line))
    assert job.detail == JobDetail(start=4, stop=6) and json.dumps(job.to_json()) == line
    table = JobTable([job])
    table.end(job, "succeeded", usage=JobUsage(elapsed_s=30, gpus=1))
    assert job.to_json()["detail"] == {"start": 4, "stop": 6, "elapsed_s": 30, "gpus": 1}
    assert JobRecord.from_json({**json.loads(line), "detail": None}).detail == JobDetail()  # hand-made states
    with pytest.raises(TypeError):
        JobRecord.from_json({"job_id": "1", "kind": "eval"})  # no whole record: read_ended skips such a line
