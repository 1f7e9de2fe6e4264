"""Small sweep folders written by hand for the tests of analysis/ (test_report*.py): known numbers in."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

T0 = 1_800_000_000.0  # unix time of the first submission in the fake sweeps

# (method, budget) -> test accuracy of seed 0 and seed 1
ACC = {
    ("static", 100): (0.60, 0.62), ("static", 1000): (0.70, 0.72), ("static", 10000): (0.80, 0.80),
    ("dp", 100): (0.75, 0.77), ("dp", 1000): (0.84, 0.86), ("dp", 10000): (0.88, 0.90),
}


def _stamp(seconds: float) -> str:
    """A submitit log timestamp `seconds` after 2026-01-01 00:00:00."""
    import datetime as dt

    t = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%d %H:%M:%S,") + f"{t.microsecond // 1000:03d}"


def write_job_logs(logs: Path, job_id: str, start_s: float, end_s: float) -> None:
    """submitit-like logs: the .out has the start line, the .err ends with the exit line."""
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{job_id}_0_log.out").write_text(
        f"submitit INFO ({_stamp(start_s)}) - Starting with JobEnvironment(job_id={job_id})\n")
    (logs / f"{job_id}_0_log.err").write_text(
        f"{_stamp(start_s + 1)} [rank0] dp_hpc.x INFO: working\nno timestamp on this line\n"
        f"{_stamp(end_s)} [rank0] submitit INFO: Exiting after successful completion\n")


def make_run(sweep: Path, name: str, method: str, budget: int, seed: int, *, test_acc: float | None,
             phase: str = "done", rounds: list[dict] | None = None, val: list[tuple] | None = None,
             jobs: list[dict] | None = None, error: str | None = None, complete: list[int] | None = None,
             test_round: bool = True, omega: float = 0.05, n_test: int | None = 500, prune_factor: int = 2) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "sampler": {"omega": omega, "cfg_lambda": 0.5},
           "generator": {"block_out_channels": [16, 32]},
           "train": {"total_steps": 100, "patience": {"initial": 1}},
           "method": {"name": method, "budget": budget, "initial": budget // 2, "per_round": budget // 2,
                      "prune_factor": prune_factor}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    if rounds is None:
        rounds = ([{"index": 0, "kind": "plain", "kept": budget, "generated": budget, "classifier_step": None}]
                  if method == "static" else
                  [{"index": 0, "kind": "plain", "kept": budget // 2, "generated": budget // 2, "classifier_step": None},
                   {"index": 1, "kind": "guided", "kept": budget // 2, "generated": budget // 2, "classifier_step": 40}])
    state = {"phase": phase, "round": rounds[-1]["index"] if rounds else 0, "rounds": rounds,
             "jobs": jobs or [], "error": error, "failed_phase": "train" if phase == "failed" else None}
    (run / "state.json").write_text(json.dumps(state))
    if val is None:
        last = rounds[-1]["index"] if rounds else 0
        val = [(20, 0, 0.5, 1.0), (40, 0, 0.6, 0.8), (60, last, 0.65, 0.9), (100, last, 0.7, 0.6)]
    lines = [{"split": "val", "step": s, "round": r, "pool_size": 1, "acc": a, "loss": 1.0, "train_loss": tl,
              "lr": 0.001, "time": f"2026-01-01T00:0{i}:00.000+00:00"} for i, (s, r, a, tl) in enumerate(val)]
    if test_acc is not None:
        test = {"acc": test_acc, "loss": 0.5, "step": 100, "pool_size": budget,
                "rounds": [r["index"] for r in rounds], "time": "2026-01-01T00:09:00.000+00:00"}
        if n_test is not None:
            test["n_test"] = n_test
        if test_round:
            test["round"] = rounds[-1]["index"]
        lines.append({"split": "test", **test})
        (run / "eval.json").write_text(json.dumps(test))
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"torn": ')
    if complete is not None:
        for i in complete:
            (run / "pool_markers" / f"round_{i:03d}").mkdir(parents=True)
            (run / "pool_markers" / f"round_{i:03d}" / "COMPLETE").touch()
    return run


def make_grid_sweep(tmp: Path, threads: int = 1) -> Path:
    sweep = tmp / "grid"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"name": "grid", "executor": {"threads_per_job": threads}}))
    for (method, budget), accs in ACC.items():
        for seed, acc in enumerate(accs):
            make_run(sweep, f"{method}-budget{budget}-seed{seed}", method, budget, seed, test_acc=acc)
    return sweep
