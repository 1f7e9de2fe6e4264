"""The real coordinator and SlurmRunner against a simulated SLURM cluster (bench/slurm_sim.py, the
small end of bench/coordinator_scale.py): seeded preemptions, node failures, lost tasks and failing
sacct calls lose nothing and submit nothing twice, and what a poll costs on the command line and
in state.json does not grow with the number of tasks in flight. Simulated time: no clock."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from coordinator_scale import simulate  # noqa: E402
from slurm_sim import Faults  # noqa: E402

from dp_hpc.contracts import JobDetail
from dp_hpc.coordinate.state import (JobRecord, JobTable, RunState, compact_jobs, full_state_json,  # noqa: E402
                                     load_state, parse_ranges, ranges_text, save_state)


def test_the_in1k_plan_under_seeded_faults_loses_nothing_and_submits_nothing_twice(tmp_path):
    faults = Faults(preempt=0.05, node_fail_requeue=0.03, lost=0.01, sacct_fail=0.1, sacct_lag=1)
    row = simulate(60, tmp_path, seed=3, faults=faults, restart_every=5)
    assert row["error"] is None and row["finished"] and row["phases"] == {"done": 7}, row
    assert row["requeued"] > 0 and row["lost"] > 0, row  # the faults did happen
    assert row["missing_chunks"] == 0 and row["submitted_twice"] == 0 and row["duplicate_completions"] == 0, row


@pytest.mark.parametrize("tasks", [50, 400])
def test_sacct_command_line_and_state_writes_stay_bounded_as_tasks_grow(tmp_path, tasks):
    row = simulate(tasks, tmp_path, seed=1, max_polls=4)
    assert row["error"] is None and row["first_round_tasks"] >= tasks
    # arrays by id: 7 runs' arrays (max_array_size 1000), a few characters each, whatever the task count
    assert row["sacct_max_ids"] <= 14 and row["sacct_max_arg"] < 300, row
    assert row["state_max_bytes"] < 12_000, row  # one entry per array, not per task


def test_ranges_round_trip_and_compact_jobs_group_array_tasks():
    assert ranges_text([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8" and parse_ranges("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    jobs = [JobRecord(job_id=f"12_{i}", kind="generate", round=1, submitted=2.0, executor="slurm") for i in range(4)]
    jobs[1].status = "succeeded"
    singles, arrays = compact_jobs(jobs + [JobRecord(job_id="13", kind="train", round=1, submitted=3.0)])
    assert [j["job_id"] for j in singles] == ["13"]
    assert arrays == [{"array": "12", "kind": "generate", "round": 1, "submitted": 2.0, "executor": "slurm",
                       "tasks": "0,2-3"}]


def test_an_old_state_json_with_every_job_inline_loads_and_moves_ended_jobs_out(tmp_path):
    old = RunState(jobs=JobTable(JobRecord(job_id=f"7_{i}", kind="generate", round=0, submitted=1.0, executor="slurm",
                                           detail=JobDetail(start=i, stop=i + 1), status="succeeded" if i < 2 else "running")
                                 for i in range(4)))
    from dp_hpc.io import atomic_write_json

    atomic_write_json(tmp_path / "state.json", old.to_json())  # the format before job_arrays
    st = load_state(tmp_path)
    assert [(j.job_id, j.status, j.detail.start) for j in st.jobs] == [
        ("7_0", "succeeded", 0), ("7_1", "succeeded", 1), ("7_2", "running", 2), ("7_3", "running", 3)]
    save_state(tmp_path, st)
    again = load_state(tmp_path)
    assert sorted((j.job_id, j.status, j.detail.start) for j in again.jobs) == sorted(
        (j.job_id, j.status, j.detail.start) for j in st.jobs)
    assert (tmp_path / "jobs.jsonl").read_text().count("\n") == 2


def _array_state(n: int = 4) -> RunState:
    st = RunState(jobs=JobTable(JobRecord(job_id=f"7_{i}", kind="generate", round=0, submitted=1.0, executor="slurm",
                                          detail=JobDetail(start=i, stop=i + 1)) for i in range(n)))
    st.jobs.add(JobRecord(job_id="8", kind="train", round=0, submitted=2.0, executor="slurm"))
    return st


def test_full_state_json_gives_every_job_as_state_json_used_to(tmp_path):
    st = _array_state()
    save_state(tmp_path, st)
    st.jobs.end(st.jobs[0], "succeeded")
    st.jobs.end(st.jobs[4], "failed", "boom")
    save_state(tmp_path, st)
    full = full_state_json(tmp_path)
    assert "job_arrays" not in full and full["phase"] == "generate"
    assert full["jobs"] == st.to_json()["jobs"]  # the ended ones from jobs.jsonl, the running ones from the ranges
    assert [j["job_id"] for j in json.loads((tmp_path / "state.json").read_text())["jobs"]] == []
    assert full_state_json(tmp_path / "nothing") is None


def test_a_torn_last_line_of_jobs_jsonl_is_skipped_and_the_next_append_is_whole(tmp_path):
    st = _array_state()
    save_state(tmp_path, st)
    st.jobs.end(st.jobs[0], "succeeded")
    save_state(tmp_path, st)
    st.jobs.end(st.jobs[1], "lost")
    with open(tmp_path / "jobs.jsonl", "a") as f:  # a crash while appending 7_1's end: state.json still says running
        f.write(json.dumps(dataclasses.asdict(st.jobs[1]))[:40])
    again = load_state(tmp_path)
    assert [(j.job_id, j.status) for j in again.jobs[:2]] == [("7_0", "succeeded"), ("7_1", "running")]
    again.jobs.end(again.jobs[1], "lost")  # the coordinator asks about it again
    save_state(tmp_path, again)
    assert [(j.job_id, j.status) for j in load_state(tmp_path).jobs[:2]] == [("7_0", "succeeded"), ("7_1", "lost")]
    assert len((tmp_path / "jobs.jsonl").read_text().splitlines()) == 3  # the torn line stays a line of its own


def test_a_verify_repair_does_not_append_ended_jobs_again(tmp_path):
    from dp_hpc.coordinate.consistency import state_from_disk
    from dp_hpc.layout import RunDir

    st = _array_state()
    st.jobs.end(st.jobs[0], "succeeded")
    save_state(tmp_path, st)
    old = load_state(tmp_path)
    from dp_hpc.config import RunConfig

    new = state_from_disk(RunDir(tmp_path), RunConfig(), old)
    save_state(tmp_path, new)
    lines = (tmp_path / "jobs.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["job_id"] for x in lines) == ["7_0", "7_1", "7_2", "7_3", "8"]  # 7_0 once, the rest lost
    assert {j.status for j in load_state(tmp_path).jobs} == {"succeeded", "lost"}


def test_a_round_bigger_than_one_polls_submissions_goes_out_over_several_polls_and_completes(tmp_path):
    """slurm.max_submitted_per_poll bounds a poll's submissions (submitit pickles each task: a 100k-task
    round in one poll held the coordinator ~26 s); the rest go out at the next polls, and every
    chunk is still generated once."""
    faults = Faults(preempt=0.02, node_fail_requeue=0.01, lost=0.005, sacct_fail=0.05, sacct_lag=1)
    row = simulate(300, tmp_path, seed=5, faults=faults, per_poll=40)
    assert row["error"] is None and row["finished"] and row["phases"] == {"done": 7}, row
    assert 0 < row["most_submitted_in_a_poll"] <= 40, row
    assert row["missing_chunks"] == 0 and row["submitted_twice"] == 0 and row["duplicate_completions"] == 0, row


def test_the_job_index_saves_what_a_walk_of_every_record_would(tmp_path):
    """JobTable.add / end keep the running jobs and the next save's work up to date job by job,
    also in a table that load_state rebuilt from the files (a requeued coordinator). Whatever the
    mix, each save writes what compact_jobs gives for the whole list, and jobs.jsonl gets every
    ended job once."""
    import random

    rng = random.Random(0)
    st, submitted, ended = RunState(), 0.0, set()
    for step in range(60):
        move = rng.random()
        running = st.running_jobs()
        if move < 0.4 or not running:  # a new array of a few tasks, now and then a single job
            submitted += 1
            array = str(100 + step)
            for t in range(rng.randint(1, 6)):
                st.jobs.add(JobRecord(job_id=f"{array}_{t}", kind="generate", round=0, submitted=submitted,
                                     executor="slurm", detail=JobDetail(start=t, stop=t + 1)))
            if rng.random() < 0.3:
                st.jobs.add(JobRecord(job_id=array, kind="train", round=0, submitted=submitted, executor="slurm"))
        elif move < 0.8:
            j = rng.choice(running)
            st.jobs.end(j, rng.choice(["succeeded", "lost", "failed"]), None, f"/logs/{j.job_id}")
        elif move < 0.9:  # without a log path, as dp_hpc.cancel may
            st.jobs.end(rng.choice(running), "lost", "stopped")
        else:  # the state saved and read back, as a requeued coordinator does
            save_state(tmp_path, st)
            st = load_state(tmp_path)
        assert st.running_jobs() == [j for j in st.jobs if j.status == "running"]
        assert st.running_jobs("train") == [j for j in st.jobs if j.status == "running" and j.kind == "train"]
        assert set(st.running_shards(0)) == {(j.detail.start, j.detail.stop) for j in st.jobs
                                             if j.status == "running" and j.kind == "generate"}
        if rng.random() < 0.5:
            save_state(tmp_path, st)
            saved = json.loads((tmp_path / "state.json").read_text())
            singles, arrays = compact_jobs(st.jobs)
            assert (saved["jobs"], saved["job_arrays"]) == (singles, arrays)
            lines = [json.loads(x) for x in (tmp_path / "jobs.jsonl").read_text().splitlines()]
            assert sorted(x["job_id"] for x in lines) == sorted(j.job_id for j in st.jobs if j.status != "running")
            ended = {j.job_id for j in st.jobs if j.status != "running"}
    assert len(ended) > 20 and st.running_jobs()  # the mix did end many jobs and left some running
    save_state(tmp_path, st)
    again = load_state(tmp_path)  # the running ones rebuilt from state.json's ranges and jobs/<array>.json
    assert sorted((j.job_id, j.status, j.log_path, j.detail.start) for j in again.jobs) == sorted(
        (j.job_id, j.status, j.log_path, j.detail.start) for j in st.jobs)
