"""Fixtures shared by the test modules."""

from __future__ import annotations

import contextlib

import pytest
import torch

from dp_hpc.data.config import DataConfig
from dp_hpc.data.digits import NUM_CLASSES, load_digit_splits


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pytest_report_header(config):
    from test_chaos import SEED_ENV, chaos_seeds

    return f"chaos seeds: {', '.join(map(str, chaos_seeds()))} (replay one: {SEED_ENV}=<seed> uv run pytest tests/test_chaos.py)"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The CI machine has 2 shared cores: under load from job subprocesses one intra-op thread is
    several times faster than two (OpenMP threads wait for each other)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def splits():
    return load_digit_splits(DataConfig())


@pytest.fixture(scope="session")
def smoke_generator_dir(tmp_path_factory, splits):
    """The smoke generator, trained once per session (test_generator.py and test_sampler.py)."""
    from dp_hpc.generate.config import GeneratorConfig
    from dp_hpc.generate.unet import train_generator

    out = tmp_path_factory.getbasetemp() / "smoke_generator"
    train_generator(GeneratorConfig.smoke(), splits.gen_train.images, splits.gen_train.labels, out,
                    NUM_CLASSES, eval_splits=splits)
    return out


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke sweep run once per session with the local executor: (sweep dir, completed process).
    Its pools and weights are the uninterrupted references of the end-to-end and SLURM tests."""
    from e2e_helpers import SMOKE, run_launch

    out = tmp_path_factory.mktemp("smoke_out")
    r = run_launch(SMOKE, out)
    assert r.returncode == 0, f"launch failed\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-5000:]}"
    return out / "smoke", r
