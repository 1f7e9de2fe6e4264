"""The coordinator's next step as a pure function of state and observations."""

import dataclasses

from dp_hpc.contracts import JobDetail
from dp_hpc.coordinate import plan as P
from dp_hpc.coordinate.config import MethodConfig, PoolConfig
from dp_hpc.coordinate.state import JobRecord
from records_helpers import train_state

POOL = PoolConfig(chunk_size=10, shard_size=20)


def test_round_sizes_and_kinds():
    dp = MethodConfig(name="dp", budget=100, initial=40, per_round=25)
    assert dp.round_sizes() == [40, 25, 25, 10]
    assert [dp.round_kind(r) for r in range(3)] == ["plain", "guided", "guided"]
    prune = MethodConfig(name="prune", budget=100, initial=40, per_round=25, prune_factor=4)
    assert prune.generated(1, 25) == 100 and prune.generated(0, 40) == 40
    assert MethodConfig(name="static", budget=100, initial=40).round_sizes() == [100]


def test_generate_phase_creates_then_submits_missing_shards_then_completes():
    m = MethodConfig(name="dp", budget=100, initial=50, per_round=25)
    st = P.initial_state(m)
    assert isinstance(P.plan(st, P.Observation(), m, POOL), P.CreateRound)
    a = P.plan(st, P.Observation(round_created=True, done_chunks=frozenset({0, 1, 3})), m, POOL)
    assert a == P.SubmitShards(0, ((2, 4), (4, 5)))  # shard (0,2) is done; chunk 3 done but 2 not
    st.jobs.add(JobRecord(job_id="1", kind="generate", round=0, submitted=0, detail=JobDetail(start=2, stop=4)))
    a = P.plan(st, P.Observation(round_created=True, done_chunks=frozenset({0, 1, 3})), m, POOL)
    assert a == P.SubmitShards(0, ((4, 5),))  # only what no running task covers
    st.jobs.add(JobRecord(job_id="2", kind="generate", round=0, submitted=0, detail=JobDetail(start=4, stop=5)))
    assert isinstance(P.plan(st, P.Observation(round_created=True, done_chunks=frozenset({0, 1, 3})), m, POOL), P.Wait)
    a = P.plan(st, P.Observation(round_created=True, done_chunks=frozenset(range(5))), m, POOL)
    assert a == P.CompleteRound(0, None)
    assert P.plan(st, P.Observation(round_created=True, round_complete=True), m, POOL) == P.GoTo("train")


def test_train_phase_plateau_asks_for_a_round_until_the_budget_is_spent():
    m = MethodConfig(name="prune", budget=100, initial=50, per_round=30, prune_factor=3)
    st = P.initial_state(m)
    st.phase = "train"
    assert P.plan(st, P.Observation(), m, POOL) == P.SubmitTrain(plateau_exit=True)
    ck = train_state(300, "plateau", (0,))
    a = P.plan(st, P.Observation(checkpoint=ck), m, POOL)
    assert isinstance(a, P.StartRound) and a.record.index == 1 and a.record.kept == 30
    assert a.record.generated == 90 and a.record.kind == "prune" and a.record.classifier_step == 300
    st.rounds.append(a.record)
    st.round = 1
    # a stale checkpoint (trained on round 0 only) does not count for round 1
    assert P.plan(st, P.Observation(checkpoint=ck), m, POOL) == P.SubmitTrain(plateau_exit=True)
    st.rounds.append(P.next_round(st, m, 400))
    st.round = 2
    assert st.pool_size() == 100
    ck = train_state(500, "plateau", (0, 1, 2))
    assert isinstance(P.plan(st, P.Observation(checkpoint=ck), m, POOL), P.StopAddingData)
    st.adding_data = False
    assert P.plan(st, P.Observation(checkpoint=ck), m, POOL) == P.SubmitTrain(plateau_exit=False)
    assert P.plan(st, P.Observation(checkpoint=dataclasses.replace(ck, stop_reason="budget")), m, POOL) == P.GoTo("eval")


def test_static_never_adds_data_and_eval_finishes():
    m = MethodConfig(name="static", budget=100)
    st = P.initial_state(m)
    assert not st.adding_data and st.rounds[0].kept == 100
    st.phase = "train"
    assert P.plan(st, P.Observation(), m, POOL) == P.SubmitTrain(plateau_exit=False)
    st.phase = "eval"
    assert P.plan(st, P.Observation(), m, POOL) == P.SubmitEval()
    st.jobs.add(JobRecord(job_id="9", kind="eval", round=0, submitted=0))
    assert isinstance(P.plan(st, P.Observation(eval_done=True), m, POOL), P.Wait)  # its process still runs
    st.jobs.end(st.jobs[-1], "succeeded")
    assert P.plan(st, P.Observation(eval_done=True), m, POOL) == P.GoTo("done")


def test_branch_out_comes_before_the_next_round_and_only_once():
    m = MethodConfig(name="dp", budget=100, initial=50, per_round=25, branch_at=(0, 1))
    st = P.initial_state(m)
    st.phase = "train"
    ck = train_state(300, "plateau", (0,))
    assert P.plan(st, P.Observation(checkpoint=ck), m, POOL) == P.Branch(0, 300)
    a = P.plan(st, P.Observation(checkpoint=ck, branches=frozenset({0})), m, POOL)
    assert isinstance(a, P.StartRound) and a.record.index == 1
    st.rounds.append(a.record)
    st.round = 1
    st.rounds.append(P.next_round(st, m, 400))
    st.round = 2  # the budget is spent after round 2: a branch there would be the run itself
    ck = train_state(500, "plateau", (0, 1, 2))
    assert isinstance(P.plan(st, P.Observation(checkpoint=ck, branches=frozenset({0})), m, POOL), P.StopAddingData)


def test_static_runs_cannot_branch():
    import pytest

    from dp_hpc.errors import ConfigError

    with pytest.raises(ConfigError, match="branch_at"):
        MethodConfig(name="static", branch_at=(0,))


def test_no_phase_change_while_a_job_of_the_run_still_runs():
    m = MethodConfig(name="static", budget=100)
    st = P.initial_state(m)
    st.phase = "train"
    st.jobs.add(JobRecord(job_id="7", kind="train", round=0, submitted=0))
    budget = train_state(240, "budget", (0,))
    assert isinstance(P.plan(st, P.Observation(checkpoint=budget), m, POOL), P.Wait)  # saved, not exited
    st.jobs.end(st.jobs[-1], "succeeded")
    assert P.plan(st, P.Observation(checkpoint=budget), m, POOL) == P.GoTo("eval")


def test_a_previous_rounds_shard_still_exiting_does_not_hold_back_the_new_round():
    m = MethodConfig(name="dp", budget=100, initial=50, per_round=50)
    st = P.initial_state(m)
    st.rounds.append(P.next_round(st, m, 10))
    st.round = 1
    st.jobs.add(JobRecord(job_id="1", kind="generate", round=0, submitted=0, detail=JobDetail(start=0, stop=2)))
    assert P.plan(st, P.Observation(round_created=True), m, POOL) == P.SubmitShards(1, ((0, 2), (2, 4), (4, 5)))
