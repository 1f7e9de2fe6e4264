"""<sweep>/manifest.json (dp_hpc.manifest): what each launch ran, appended, never failing a launch;
and the host and GPU of each job attempt in compute.jsonl."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys

import pytest

from dp_hpc import manifest, metrics
from dp_hpc.io import read_jsonl
from e2e_helpers import ROOT


def test_an_entry_names_the_command_the_code_the_packages_and_the_host():
    e = manifest.collect(["python", "-m", "dp_hpc.launch", "--sweep", "x.yaml"])
    assert e["argv"] == ["python", "-m", "dp_hpc.launch", "--sweep", "x.yaml"] and e["cwd"] == os.getcwd()
    assert e["python"] == platform.python_version() and e["host"] == socket.gethostname()
    assert set(e["packages"]) == {"torch", "torchvision", "diffusers", "submitit", "zarr", "numpy"}
    assert e["packages"]["torch"] == importlib.metadata.version("torch")
    import torch

    assert e["torch_cuda"] == torch.version.cuda
    assert e["gpu_count"] == len(e["gpus"]) and all(isinstance(g, str) for g in e["gpus"])
    if shutil.which("nvidia-smi") is None:
        assert e["gpus"] == []
    assert e["time"].endswith("+00:00")
    assert manifest.collect()["argv"] == sys.argv


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_the_commit_and_dirty_flag_are_the_checkouts():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the tests do not run from a git checkout")
    e = manifest.collect()
    assert e["code_path"] == str(ROOT / "dp_hpc")
    assert e["git_commit"] == head.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert e["git_dirty"] is bool(dirty.strip())


def test_a_folder_outside_any_checkout_has_no_commit(tmp_path):
    pkg = tmp_path / "dp_hpc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    assert manifest.git_state(pkg) == (None, None)
    if shutil.which("git"):  # a checkout around the folder that does not track it (a wheel in .venv)
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        assert manifest.git_state(pkg) == (None, None)


def test_launches_are_appended_and_a_bad_manifest_fails_nothing(tmp_path, caplog):
    first = manifest.record_launch(tmp_path, ["a"])
    second = manifest.record_launch(tmp_path, ["b"])
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["argv"] for e in data["launches"]] == [["a"], ["b"]] and data["launches"] == [first, second]
    (tmp_path / "manifest.json").write_text("{not json")
    assert manifest.record_launch(tmp_path, ["c"]) is None  # a warning, not an exception
    assert "could not record this launch" in caplog.text
    assert (tmp_path / "manifest.json").read_text() == "{not json", "an unreadable manifest is not overwritten"
    assert manifest.record_launch(tmp_path / "no" / "such" / "dir" / "\0", ["d"]) is None


def test_a_job_attempt_records_its_host_and_the_gpu_it_used(tmp_path):
    import torch

    metrics.append_compute(tmp_path, {"kind": "eval", "round": 0, "compute_s": 0.5})
    (line,) = read_jsonl(tmp_path / "compute.jsonl")
    assert line["host"] == socket.gethostname() and line["kind"] == "eval"
    # only a GPU the process has used: CUDA is never initialised for the record
    assert line["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_initialized() else None)
