"""Branch-outs (paper, Sec. 4): a copy of a run that stops adding data at a plateau and trains
to the end of the budget, giving the accuracy of a smaller data budget without a separate run.

    <run>/branches/round_001/       a run folder of its own (the launcher drives it like a run)
        config.yaml                 the parent's config, named <run>-branch1, without branch_at
        branch.json                 parent, round, checkpoint step, samples generated and kept
        state.json                  phase train, adding no data
        checkpoints/step_.../       a copy of the parent's plateau checkpoint
        pool.zarr -> ../../pool.zarr   the parent's pool, shared read-only
        pool_markers/round_00k/COMPLETE  for k <= round only: later rounds stay invisible
        metrics.jsonl               the parent's val lines up to the branch point, then its own

Created in a temporary folder and renamed into place, so a crash never leaves half a branch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from dp_hpc.config import RunConfig, dump_run_config
from dp_hpc.coordinate.state import RunState, save_state
from dp_hpc.io import atomic_write_json, atomic_write_text, read_jsonl
from dp_hpc.layout import POOL_DIR, RunDir


def branch_dir(run_dir: Path, round_index: int) -> Path:
    return RunDir(run_dir).branch(round_index).path


def existing_branches(run_dir: Path) -> dict[int, Path]:
    return {r: b.path for r, b in RunDir(run_dir).existing_branches().items()}


def branch_config(cfg: RunConfig, round_index: int) -> RunConfig:
    method = dataclasses.replace(cfg.method, branch_at=())
    return dataclasses.replace(cfg, name=f"{cfg.name}-branch{round_index}", method=method)


def create_branch(run_dir: Path, cfg: RunConfig, st: RunState, round_index: int, checkpoint_step: int) -> Path:
    """Make the branch folder for `round_index` from the parent's plateau checkpoint. Idempotent."""
    final = branch_dir(run_dir, round_index)
    if final.exists():
        return final
    tmp = final.with_name(f"_tmp_{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parent, new = RunDir(run_dir), RunDir(tmp)
    atomic_write_text(new.config, dump_run_config(branch_config(cfg, round_index)))
    rounds = [r for r in st.rounds if r.index <= round_index]
    atomic_write_json(new.branch_file, {
        "parent": cfg.name, "round": round_index, "checkpoint_step": checkpoint_step,
        "generated": sum(r.generated for r in rounds), "kept": sum(r.kept for r in rounds)})
    os.symlink(Path("..") / ".." / POOL_DIR, new.pool)  # relative: the sweep folder can move
    for r in rounds:
        marker = new.complete_marker(r.index)
        marker.parent.mkdir(parents=True)
        marker.touch()
    shutil.copytree(parent.checkpoint(checkpoint_step), new.checkpoint(checkpoint_step))
    # The parent's evaluations up to the branch point are the branch's history too.
    lines = [m for m in read_jsonl(parent.metrics)
             if m.get("split") == "val" and m["step"] <= checkpoint_step]
    atomic_write_text(new.metrics, "".join(json.dumps(m, sort_keys=True) + "\n" for m in lines))
    save_state(tmp, RunState(phase="train", round=round_index, adding_data=False,
                             rounds=[dataclasses.replace(r) for r in rounds]))
    os.replace(tmp, final)
    return final

