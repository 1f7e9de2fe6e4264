"""Does a run's state.json agree with its disk? What `python -m dp_hpc.verify` checks of it, and
the state that `--repair` writes when it does not: derived from the pool, the checkpoints and
eval.json, as far as the coordinator's own steps would have brought it (it continues from there).

Derivation: the rounds are the pool's (a branch-out's: those it has a COMPLETE marker for), with
kind and size from each round's attributes and the guiding classifier's step from the plateau
checkpoint that trained on exactly the rounds before it (or the old state's record, if it parses);
the phase is done with an eval.json, else eval after a checkpoint at the end of the budget, else
train when the newest round is complete, else generate. The job history is kept from the old state
if it parses (jobs recorded as running become "lost": their outcome is unknown), else empty.
"""

from __future__ import annotations

from dp_hpc.config import RunConfig
from dp_hpc.coordinate import plan as P
from dp_hpc.coordinate.state import PHASES, RoundRecord, RunState, state_from_json
from dp_hpc.io import read_json
from dp_hpc.layout import RunDir
from dp_hpc.pool import Pool
from dp_hpc.train.checkpoint import complete_checkpoints, latest_train_state


def read_state(run: RunDir) -> tuple[RunState | None, str | None]:
    """(state, None); (None, None) without a state.json; (None, why) when it does not parse."""
    try:
        d = read_json(run.state)
        return (None if d is None else state_from_json(d, run.path)), None
    except (ValueError, TypeError, KeyError, OSError) as e:  # truncated JSON, missing or unknown fields
        return None, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"


def state_problems(run: RunDir, st: RunState) -> list[str]:
    """What in a parsed state.json contradicts the disk, in words (empty: nothing). Reads the
    checkpoints' train_state.json files: call it when they parse."""
    if st.phase not in PHASES:
        return [f"unknown phase {st.phase!r}"]
    if not st.rounds or any(r.index != i for i, r in enumerate(st.rounds)) or not 0 <= st.round < len(st.rounds):
        return [f"round {st.round} and round records {[r.index for r in st.rounds]} do not fit together"]
    out = []
    pool = Pool(run.path)
    on_disk = run.complete_rounds() if run.is_branch else run.pool_rounds()
    beyond = [r for r in on_disk if r >= len(st.rounds)]
    if beyond:
        out.append(f"the pool holds round(s) {beyond}, state.json records {len(st.rounds)}")
    for r in on_disk:
        if r < len(st.rounds):
            a, rec = pool.round_attrs(r), st.rounds[r]
            if (a["kind"], a["n"]) != (rec.kind, rec.generated):
                out.append(f"round {r}: state.json says {rec.kind} x{rec.generated}, the pool {a['kind']} x{a['n']}")
    phase = (st.failed_phase or "generate") if st.phase == "failed" else st.phase
    ck = latest_train_state(run.path)
    if phase == "eval" and (ck is None or not ck.finished):
        where = ("no complete checkpoint" if ck is None else
                 f"the newest checkpoint (step {ck.step}) stopped for {ck.stop_reason!r}")
        out.append(f"phase eval, but {where}: evaluation needs the end of training")
    if phase == "done" and not run.eval.exists():
        out.append(f"phase done without {run.eval.name}")
    if ck is not None and max(ck.pool_rounds or [0]) > st.round:
        out.append(f"the newest checkpoint (step {ck.step}) trained on rounds {list(ck.pool_rounds)}, "
                   f"state.json is at round {st.round}")
    return out


def state_from_disk(run: RunDir, cfg: RunConfig, old: RunState | None = None) -> RunState:
    """The state the disk says the run is in (module docstring), with `old`'s job table (its running
    jobs ended as lost) when given. Raises ValueError when a guided or pruned round's classifier
    step cannot be told (its plateau checkpoint is gone, and no readable old state records it)."""
    method, pool, owner = cfg.method, Pool(run.path), run.pool_owner
    indices = run.complete_rounds() if run.is_branch else run.pool_rounds()
    if not indices:
        st = P.initial_state(method)
    else:
        plateau = {ts.pool_rounds: ts.step  # pool rounds -> plateau step
                   for _, ts in complete_checkpoints(owner.path) if ts.plateaued}
        rounds = [_record(pool, owner, r, method, plateau, old) for r in indices]
        ck = latest_train_state(run.path)
        if run.eval.exists():
            phase = "done"
        elif ck is not None and ck.finished:
            phase = "eval"
        else:
            phase = "train" if pool.is_complete(indices[-1]) else "generate"
        # the coordinator stops adding data at creation (static, or round 0 holds the budget) or at
        # the first plateau after the budget is in the pool (StopAddingData): that checkpoint stays
        full, last = sum(r.kept for r in rounds) >= method.budget, indices[-1]
        stopped = full and (last == 0 or tuple(range(last + 1)) in plateau)
        st = RunState(phase=phase, round=last, rounds=rounds,
                      adding_data=not run.is_branch and method.name != "static" and not stopped)
    if old is not None:
        for j in old.jobs.running():  # its table knows which ended records jobs.jsonl holds already
            old.jobs.end(j, "lost", "forgotten by dp_hpc.verify --repair", j.log_path)
        st.jobs = old.jobs
    return st


def _record(pool: Pool, owner: RunDir, r: int, method, plateau: dict, old: RunState | None) -> RoundRecord:
    a = pool.round_attrs(r)
    kept = a["n"] // method.prune_factor if a["kind"] == "prune" else a["n"]
    step = None
    if r > 0:
        known = old.rounds[r].classifier_step if old is not None and r < len(old.rounds) else None
        step = known if known is not None else plateau.get(tuple(range(r)))
        if step is None:
            raise ValueError(f"round {r}: no plateau checkpoint trained on rounds 0..{r - 1}, so the "
                             f"classifier that guided it cannot be told")
    stats = Pool(owner.path).round_stats(r) if pool.is_complete(r) else {}
    return RoundRecord(index=r, kind=a["kind"], kept=kept, generated=a["n"], classifier_step=step, stats=stats)
