"""The coordinator's next step: a pure function of the run state and what is on disk.

    generate(r) -> train -> (plateau: generate(r+1) | no data left: train to the end) -> eval -> done

Every step is idempotent, so a coordinator that dies anywhere and restarts plans the same step
again from the same disk state. No I/O here: `Observation` is gathered by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from dp_hpc.contracts import TrainState
from dp_hpc.coordinate.config import MethodConfig, PoolConfig
from dp_hpc.coordinate.state import RoundRecord, RunState
from dp_hpc.pool import shard_tuple


@dataclass(frozen=True)
class Observation:
    round_created: bool = False  # the arrays of state.round exist
    round_complete: bool = False  # its COMPLETE marker exists
    done_chunks: frozenset[int] = frozenset()  # chunks of state.round with a marker
    checkpoint: TrainState | None = None  # train_state.json of the newest complete checkpoint
    eval_done: bool = False
    branches: frozenset[int] = frozenset()  # rounds a branch-out already exists for


# -- actions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateRound:
    record: RoundRecord


@dataclass(frozen=True)
class SubmitShards:
    round_index: int
    shards: tuple[tuple[int, int], ...]  # chunk ranges [start, stop), one array task each


@dataclass(frozen=True)
class CompleteRound:
    round_index: int
    keep: int | None  # prune: keep this many highest-entropy samples
    per_class: bool = True  # prune: within each class


@dataclass(frozen=True)
class StartRound:
    record: RoundRecord  # plateau reached: the next round to generate


@dataclass(frozen=True)
class Branch:
    round_index: int  # the branch trains on rounds 0..round_index only
    checkpoint_step: int  # the plateau checkpoint it continues from


@dataclass(frozen=True)
class StopAddingData:
    reason: str


@dataclass(frozen=True)
class SubmitTrain:
    plateau_exit: bool


@dataclass(frozen=True)
class SubmitEval:
    pass


@dataclass(frozen=True)
class GoTo:
    phase: str


@dataclass(frozen=True)
class Wait:
    reason: str


Action = (CreateRound | SubmitShards | CompleteRound | StartRound | Branch | StopAddingData | SubmitTrain | SubmitEval
          | GoTo | Wait)


def initial_state(method: MethodConfig) -> RunState:
    kept = method.round_sizes()[0]
    st = RunState(phase="generate", round=0, adding_data=method.name != "static" and method.budget > kept)
    st.rounds.append(RoundRecord(index=0, kind="plain", kept=kept, generated=kept))
    return st


def next_round(st: RunState, method: MethodConfig, classifier_step: int) -> RoundRecord | None:
    """The round a plateau asks for, or None when the data budget is spent."""
    left = method.budget - st.pool_size()
    if method.name == "static" or left <= 0:
        return None
    r = st.round + 1
    kept = min(method.per_round, left)
    return RoundRecord(index=r, kind=method.round_kind(r), kept=kept,
                       generated=method.generated(r, kept), classifier_step=classifier_step)


def plan(st: RunState, obs: Observation, method: MethodConfig, pool: PoolConfig) -> Action:
    if st.phase in ("done", "failed"):
        return Wait(st.phase)
    if st.phase == "generate":
        return _plan_generate(st, obs, method, pool)
    if st.phase == "train":
        return _plan_train(st, obs, method)
    if st.phase == "eval":
        if st.running_jobs():  # even if eval.json is there: done means no job in flight
            return Wait("evaluating")
        if obs.eval_done:
            return GoTo("done")
        return SubmitEval()
    raise ValueError(f"unknown phase {st.phase!r}")


def passed_rounds(st: RunState) -> list[int]:
    """Rounds the run has finished generating: every one before the current round, and the current
    one once the run (or the phase a failed run retries) is past generating it."""
    phase = (st.failed_phase or "generate") if st.phase == "failed" else st.phase
    return list(range(st.round + (phase != "generate")))


def plan_mend(st: RunState, gaps: dict[int, frozenset[int]], method: MethodConfig, pool: PoolConfig) -> Action | None:
    """Passed rounds (`passed_rounds`) whose markers are gone -- `dp_hpc.verify --repair` unmarks
    a chunk whose files were purged -- come first: `gaps` maps each to its chunks without a marker
    (empty: only its COMPLETE marker is gone). Their chunks are generated again (fixed seeds and
    labels: the same bytes), then the round is completed again; None when nothing is to mend.
    Nothing else of the run (training, its branch-outs) advances meanwhile."""
    waiting = []
    for r, missing in sorted(gaps.items()):
        rec = st.rounds[r]
        if not missing:
            return CompleteRound(r, rec.kept if rec.kind == "prune" else None, method.prune_per_class)
        shards = shard_tuple(rec.generated, pool.chunk_size, pool.shard_size)
        running = st.running_shards(r)
        todo = tuple((s.start, s.stop) for s in shards if (s.start, s.stop) not in running
                     and any(c in missing for c in range(s.start, s.stop)))
        if todo:
            return SubmitShards(r, todo)
        waiting.append(r)
    return Wait(f"regenerating purged chunks of round(s) {waiting}") if waiting else None


def _plan_generate(st: RunState, obs: Observation, method: MethodConfig, pool: PoolConfig) -> Action:
    rec = st.rounds[st.round]
    if not obs.round_created:
        return CreateRound(rec)
    if obs.round_complete:
        return GoTo("train")
    # this runs at every poll, for up to 100k shards a round: set operations in C where they can be
    shards = shard_tuple(rec.generated, pool.chunk_size, pool.shard_size)
    n_chunks = shards[-1].stop if shards else 0
    per = shards[0].stop - shards[0].start if shards else 1  # shard k: chunks [k*per, min((k+1)*per, n_chunks))
    missing = set(range(n_chunks)).difference(obs.done_chunks)
    if not missing:
        return CompleteRound(st.round, rec.kept if rec.kind == "prune" else None, method.prune_per_class)
    starts = sorted(missing if per == 1 else {c - c % per for c in missing})
    running = st.running_shards(st.round)
    todo = tuple(s for s in ((a, min(a + per, n_chunks)) for a in starts) if s not in running)
    if not todo:
        return Wait(f"generating round {st.round}")
    return SubmitShards(st.round, todo)


def _plan_train(st: RunState, obs: Observation, method: MethodConfig) -> Action:
    ck = obs.checkpoint
    if ck is not None and ck.finished:
        if st.running_jobs("train"):  # it saved its last checkpoint but has not exited yet
            return Wait("training job exiting")
        return GoTo("eval")
    trained_all_rounds = ck is not None and ck.pool_rounds == tuple(range(st.round + 1))
    if st.adding_data and trained_all_rounds and ck.plateaued:
        rec = next_round(st, method, classifier_step=ck.step)
        if rec is None:  # a branch here would be the run itself: it adds no more data either
            return StopAddingData("data budget spent")
        if st.round in method.branch_at and st.round not in obs.branches:
            return Branch(st.round, ck.step)
        return StartRound(rec)
    if st.running_jobs("train"):
        return Wait("training")
    return SubmitTrain(plateau_exit=st.adding_data)
