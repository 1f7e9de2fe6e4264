"""The slurm executor's pure parts and its planning output; no cluster needed (tests/test_slurm.py
runs on one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dp_hpc.config import load_sweep
from dp_hpc.coordinate.config import SlurmJobConfig
from dp_hpc.contracts import JobUsage
from dp_hpc.coordinate.runners.slurm import expand_job_ids, gpus_in_tres, parse_sacct, parse_sacct_usage, sbatch_flags
from dp_hpc.errors import ConfigError
from e2e_helpers import ROOT, SMOKE, run_launch


def test_sacct_rows_become_job_states_including_pending_array_ranges():
    text = "12_0|COMPLETED\n12_[1-3,7%2]|PENDING\n13|CANCELLED by 0\n14|REQUEUED\n"
    assert parse_sacct(text) == {"12_0": "COMPLETED", "12_1": "PENDING", "12_2": "PENDING", "12_3": "PENDING",
                                 "12_7": "PENDING", "13": "CANCELLED", "14": "REQUEUED"}
    assert expand_job_ids("15") == ["15"] and expand_job_ids("15_4") == ["15_4"]


def test_sacct_rows_with_elapsed_and_tres_give_states_and_gpu_usage():
    text = ("12_0|COMPLETED|3600|billing=8,cpu=8,gres/gpu=2,mem=64G,node=1\n"
            "12_[1-2]|PENDING|0|\n"
            "13|CANCELLED by 0|60|cpu=4,gres/gpu:a100=4,gres/gpu=4,mem=16G\n"
            "14|COMPLETED|30|cpu=1,mem=4G,node=1\n")
    assert parse_sacct(text) == {"12_0": "COMPLETED", "12_1": "PENDING", "12_2": "PENDING", "13": "CANCELLED",
                                 "14": "COMPLETED"}
    usage = parse_sacct_usage(text)
    assert usage["12_0"] == JobUsage(elapsed_s=3600, gpus=2) and usage["13"] == JobUsage(elapsed_s=60, gpus=4)
    assert usage["14"] == JobUsage(elapsed_s=30, gpus=0) and usage["12_1"].elapsed_s == 0
    assert gpus_in_tres("cpu=8,gres/gpu:h100=3,gres/gpu:a100=1") == 4  # typed counts only: their sum


def test_sbatch_flags_carry_every_configured_resource():
    job = SlurmJobConfig(partition="gpu", account="lab", qos="high", constraint="h100", time_min=90, nodes=4,
                         gpus_per_node=8, cpus_per_task=64, mem_gb=480, array_parallelism=16,
                         additional_parameters={"exclude": "node7", "exclusive": True})
    flags = sbatch_flags(job, 120, array=100)
    for f in ("--partition=gpu", "--account=lab", "--qos=high", "--constraint=h100", "--time=90", "--nodes=4",
              "--gpus-per-node=8", "--cpus-per-task=64", "--mem=491520M", "--signal=USR2@120",
              "--array=0-99%16", "--exclude=node7", "--exclusive", "--requeue"):
        assert f in flags, (f, flags)
    assert SlurmJobConfig(gpus_per_node=8).procs == 8 and SlurmJobConfig().procs == 1


@pytest.mark.parametrize("slurm, key", [
    ({"generation": {"gpu": 1}}, "slurm.generation.gpu"),
    ({"training": {"procs_per_node": 9, "gpus_per_node": 8}}, "slurm.training.procs_per_node"),
    ({"coordinator": {"nodes": 2}}, "slurm.coordinator.nodes"),
    ({"poll_interval_s": 0}, "slurm.poll_interval_s"),
])
def test_bad_slurm_sections_name_the_key(tmp_path, slurm, key):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["slurm"] = slurm
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert key in str(e.value)


def test_dry_run_on_slurm_prints_sbatch_options_and_gpu_hours(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["slurm"] = {"generation": {"partition": "gen", "gpus_per_node": 1, "array_parallelism": 8},
                    "training": {"partition": "train", "nodes": 4, "gpus_per_node": 8},
                    "throughput": {"plain_images_per_gpu_s": 0.1, "guided_cost": 2.0, "train_images_per_gpu_s": 64}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = run_launch(path, tmp_path / "out", "--dry-run", "--executor", "slurm")
    # the plan, then the cluster's own check: this cluster has no partition "gen" (or no sbatch at all)
    assert r.returncode == 2 and "the launch would stop here" in r.stdout, r.stderr
    assert "partition" in r.stderr or "sbatch" in r.stderr, r.stderr
    out = r.stdout
    assert "--partition=gen --gpus-per-node=1" in out and "--array=0-<tasks-1>%8" in out
    assert "--partition=train --gpus-per-node=8" in out and "torchrun 4 node(s) x 8 process(es)" in out
    # dp: 128 plain (2 tasks of 64) at 0.1/s = 0.36 GPU-h; 128 guided at 2x = 0.71 GPU-h;
    # training 240 steps x 64 images at 64/s per GPU = 240 GPU-s = 0.07 GPU-h
    assert "round 0: 128 plain in 2 tasks ~0.4 GPU-h; round 1: 128 guided in 2 tasks ~0.7 GPU-h each" in out
    assert "training: 240 steps x 64 ~0.067 GPU-h" in out
    assert not (tmp_path / "out").exists()


def test_slurm_without_sbatch_is_refused_before_anything_is_written(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but no SLURM commands
    r = subprocess.run([sys.executable, "-m", "dp_hpc.launch", "--sweep", str(SMOKE), "--out", str(tmp_path),
                        "--executor", "slurm"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2 and "sbatch" in r.stderr and "--executor local" in r.stderr, r.stderr
    assert not (tmp_path / "smoke").exists()
    auto = subprocess.run([sys.executable, "-m", "dp_hpc.launch", "--sweep", str(SMOKE), "--out", str(tmp_path),
                           "--executor", "auto", "--dry-run"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert auto.returncode == 0 and "SLURM jobs" not in auto.stdout  # auto without sbatch: local


def test_the_in1k_gpu_hour_estimate_follows_from_the_sweeps_numbers(capsys):
    """--dry-run's GPU-hours for in1k, recomputed here from the YAML alone: images / (images/s per
    GPU) for each round (guided rounds cost guided_cost times more), plus steps x batch / training
    throughput, plus the evaluations (100 of the 50k val images, one of 50k test, at the default
    3,000 images/s); dp counts every planned round (16 plateaus of per_round after the initial round)."""
    from dp_hpc.dry_run import gpu_hours, print_slurm_plan

    raw = yaml.safe_load((ROOT / "sweeps" / "in1k.yaml").read_text())
    tp, train, shard = raw["slurm"]["throughput"], raw["base"]["train"], raw["base"]["pool"]["shard_size"]
    budget, initial, per_round = raw["grid"][0]["method.budget,method.initial,method.per_round"][0]
    guided_rounds = (budget - initial) // per_round
    plain_h = initial / tp["plain_images_per_gpu_s"] / 3600
    guided_h = per_round / tp["plain_images_per_gpu_s"] * tp["guided_cost"] / 3600
    train_h = train["total_steps"] * train["batch_size"] / tp["train_images_per_gpu_s"] / 3600
    eval_h = (train["total_steps"] // train["eval_every"] + 1) * 50_000 / 3000 / 3600
    expected_total = plain_h + guided_rounds * guided_h + train_h + eval_h
    assert guided_rounds == 16 and 386 < expected_total < 387  # the numbers this test was written against

    sweep, runs = load_sweep(ROOT / "sweeps" / "in1k.yaml")
    est = {g.name: g for g in gpu_hours(sweep, runs)}
    dp = est[f"dp-budget{budget}"]
    assert [r.kind for r in dp.rounds] == ["plain"] + ["guided"] * guided_rounds
    assert dp.rounds[0].gpu_h == pytest.approx(plain_h) and dp.rounds[1].gpu_h == pytest.approx(guided_h)
    assert [dp.rounds[0].tasks, dp.rounds[1].tasks] == [-(-initial // shard), -(-per_round // shard)]
    assert dp.train.train_gpu_h == pytest.approx(train_h) and dp.eval_gpu_h == pytest.approx(eval_h)
    assert dp.gpus == raw["slurm"]["training"]["nodes"] * raw["slurm"]["training"]["gpus_per_node"]
    assert dp.total == pytest.approx(expected_total)
    static_budget = raw["grid"][1]["method.budget"][1]
    static = est[f"static-budget{static_budget}"]
    assert static.total == pytest.approx(static_budget / tp["plain_images_per_gpu_s"] / 3600 + train_h + eval_h)

    print_slurm_plan(sweep, runs)
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(f"  dp-budget{budget}: up to {expected_total:,.1f} GPU-h")
    assert lines[at + 2].startswith("    training: ") and f"({train_h / dp.gpus:,.1f} h on {dp.gpus} GPUs)" in lines[at + 2]


FAKE_SQUEUE = """#!/bin/sh
# answers as the queue in $FAKE_SQUEUE_MODE: listed, forgotten (one id ended long ago), down
case "$FAKE_SQUEUE_MODE" in
  listed) echo "$4 PENDING" ;;  # squeue -h -r -j <ids> -o "%i %T"
  forgotten) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
  *) echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1 ;;
esac
"""


@pytest.mark.parametrize("mode, expected", [("listed", ("4242", "PENDING")), ("forgotten", None), ("down", "raises")])
def test_the_coordinator_job_check_reads_squeue_and_a_failed_query_is_not_an_ended_job(tmp_path, monkeypatch, mode, expected):
    """active_coordinator asks squeue (SlurmRunner.live) about the recorded coordinator job: listed
    (a requeued job is PENDING again) -> it runs; an id slurmctld has forgotten -> ended; squeue
    failing -> QueryError, never "ended" (a second coordinator would start beside a live one)."""
    from dp_hpc.config import from_dict
    from dp_hpc.coordinate.config import SlurmConfig
    from dp_hpc.coordinate.runners.base import QueryError
    from dp_hpc.coordinate.runners.slurm import SlurmRunner
    from dp_hpc.coordinate.sweep import active_coordinator
    from dp_hpc.io import atomic_write_json

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(FAKE_SQUEUE)
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SQUEUE_MODE", mode)
    sweep_dir = tmp_path / "sweep"
    atomic_write_json(sweep_dir / "coordinator.json",
                      {"job_id": "4242", "name": "s/coordinator", "submitted": 0.0, "executor": "slurm"})
    runner = SlurmRunner(from_dict(SlurmConfig, {}), sweep_name="s")
    if expected == "raises":
        with pytest.raises(QueryError, match="Unable to contact"):
            active_coordinator(runner, sweep_dir)
    else:
        assert active_coordinator(runner, sweep_dir) == expected


@pytest.mark.parametrize("queued", [True, False])
def test_a_job_never_in_accounting_and_gone_from_the_queue_ends_as_cancelled(tmp_path, monkeypatch, queued):
    """An array task cancelled while pending gets no sacct record at all (seen on the test cluster:
    tests/test_slurm_chaos.py waited for ever on it): once unknown to sacct for UNKNOWN_GRACE_S and
    not in squeue, it has ended (cancelled); still queued, it runs."""
    from dp_hpc.config import from_dict
    from dp_hpc.coordinate.config import SlurmConfig
    from dp_hpc.coordinate.runners import slurm as S

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\nexit 0\n")  # knows nothing
    (bin_dir / "squeue").write_text(f"#!/bin/sh\n{'echo 77_0' if queued else 'exit 0'}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runner = S.SlurmRunner(from_dict(SlurmConfig, {}), sweep_name="s")
    runner.poll(["77_0"])
    assert runner.status(tmp_path, "77_0").state == S.RUNNING  # just submitted, as far as anyone can tell
    runner._unknown_since["77_0"] -= S.UNKNOWN_GRACE_S
    runner.poll(["77_0"])
    st = runner.status(tmp_path, "77_0")
    if queued:
        assert st.state == S.RUNNING
    else:
        assert st.state == S.FAILED and "cancelled (scancel)" in st.error, st
