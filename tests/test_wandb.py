"""Weights & Biases tracking (dp_hpc.train.wandb_run) with the real wandb, offline only: nothing
here reaches the network. Runs live in a real sweep folder written by the launcher's own
`prepare_dirs`, with pools of real digits (test_train's helpers)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dp_hpc import metrics
from dp_hpc.config import load_sweep
from dp_hpc.launch import prepare_dirs
from dp_hpc.train.evaluate import evaluate_final
from dp_hpc.train.loop import train_until_stop
from test_train import BASE_TRAIN, REPO, add_round

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch) -> Path:
    """wandb's own folders in the test's tmp (WANDB_DIR must stay empty: runs go to their run
    folder), offline whatever the config says, no error reports."""
    home = tmp_path / "wandb_home"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        (home / var).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / var))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home


def sweep_run(tmp_path: Path, tracking: str) -> Path:
    """A one-run sweep folder (`<out>/wb/seed0/`) as the launcher writes it, with one pool round."""
    sweep_file = tmp_path / "wb.yaml"
    sweep_file.write_text(f"name: wb\nbase: {{train: {json.dumps(BASE_TRAIN)}}}\ngrid: {{seed: [0]}}\n{tracking}\n")
    sweep, runs = load_sweep(sweep_file)
    prepare_dirs(sweep, runs, tmp_path / "out" / "wb")
    run = tmp_path / "out" / "wb" / "seed0"
    add_round(run, 0, 256)
    return run


def wandb_records(path: Path) -> list:
    """The records of an offline run's `run-<id>.wandb` file: a 7-byte header (":W&B", magic,
    version), then LevelDB-log records (crc 4 B, length 2 B, type 1 B, payload) in 32 KiB blocks,
    each payload (or FIRST..LAST pieces of one) a wandb protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    out, pos, piece = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        piece += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(piece)
            out.append(rec)
            piece = b""
    return out


def wandb_core_children() -> list[str]:
    ps = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if "wandb-core" in line]


def test_every_job_of_a_run_logs_to_one_offline_wandb_run_in_the_run_folder(tmp_path, wandb_env):
    """A job preempted at step 25, the job that resumes it to the budget, and the final evaluation:
    three offline folders under <run>/wandb/, one run id, the curves of metrics.jsonl."""
    run = sweep_run(tmp_path, "tracking: {wandb: {project: p}}")
    assert train_until_stop(run, plateau_exit=False, max_steps=25).stop_reason == "preempted"
    assert not wandb_core_children(), "wandb-core outlived the job"
    run_id = (run / "wandb" / "run_id").read_text().strip()
    assert train_until_stop(run, plateau_exit=False).stop_reason == "budget"
    test = evaluate_final(run)
    assert (run / "wandb" / "run_id").read_text().strip() == run_id
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert [f.name.rsplit("-", 1)[1] for f in folders] == [run_id] * 3
    records = [r for f in folders for r in wandb_records(f / f"run-{run_id}.wandb")]
    heads = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert [(h.run_id, h.project, h.run_group, h.display_name, h.job_type) for h in heads] == \
        [(run_id, "p", "wb", "seed0", t) for t in ("train", "train", "eval")]
    config = {i.key: json.loads(i.value_json) for i in heads[0].config.update}
    assert config["train"]["total_steps"] == 200 and config["seed"] == 0, "the run's resolved config"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.update({(r.history.step.num, i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in r.history.item})
    val = metrics.read_metrics(run, "val")
    assert [s for s, k in sorted(history) if k == "val/acc"] == [m["step"] for m in val] == list(range(10, 201, 10))
    assert all(history[m["step"], "val/acc"] == pytest.approx(m["acc"]) for m in val)
    assert {"val/loss", "train/loss", "lr", "pool/size", "pool/round", "best_val_acc"} <= {k for _, k in history}
    assert history[200, "test/acc"] == pytest.approx(test["acc"])
    assert not wandb_core_children(), "wandb-core outlived the job"
    assert not [p for p in (wandb_env / "WANDB_DIR").rglob("*")], "wandb wrote outside the run folder"


def _wandb_dir_is_a_file(run: Path, monkeypatch) -> None:
    (run / "wandb").write_text("not a folder")  # nowhere to keep the run id or the offline run


def _wandb_not_installed(run: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError


def _sweep_yaml_edited_badly(run: Path, monkeypatch) -> None:
    path = run.parent / "sweep.yaml"
    sweep = yaml.safe_load(path.read_text())
    sweep["tracking"]["wandb"]["mode"] = "onlin"
    path.write_text(yaml.safe_dump(sweep))


@pytest.mark.parametrize("breakage", [_wandb_dir_is_a_file, _wandb_not_installed, _sweep_yaml_edited_badly])
def test_a_broken_wandb_never_fails_training(tmp_path, monkeypatch, caplog, breakage):
    run = sweep_run(tmp_path, "tracking: {wandb: {project: p}}")
    breakage(run, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="dp_hpc.train.tracking"):
        ts = train_until_stop(run, plateau_exit=False, max_steps=20)
    assert (ts.step, ts.stop_reason) == (20, "preempted")
    assert [m["step"] for m in metrics.read_metrics(run, "val")] == [10, 20]
    assert any(p.name.startswith("events.") for p in (run / "tensorboard").iterdir()), "TensorBoard unaffected"
    warnings = [r.getMessage() for r in caplog.records if "Weights & Biases tracking off" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert not list(run.glob("wandb/offline-run-*"))
    assert not wandb_core_children()


def test_without_a_tracking_section_a_training_job_never_imports_wandb(tmp_path):
    run = sweep_run(tmp_path, "")
    code = ("import sys; from dp_hpc.train.loop import train_until_stop; "
            "train_until_stop(sys.argv[1], plateau_exit=False, max_steps=10); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))")
    r = subprocess.run([sys.executable, "-c", code, str(run)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert not (run / "wandb").exists()
