"""analysis.report, the command line, on small sweep folders written by hand: the files it writes and
what report.md says (analysis.render, analysis.tables)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.frames import collect, per_run, rounds_frame
from analysis.read import read_sweep
from analysis.report import main, write_report
from analysis.stats import summary
from analysis.tables import branch_text, generation_stats_text
from report_helpers import make_grid_sweep, make_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def grid(tmp_path):
    return make_grid_sweep(tmp_path)


# -- the command line -------------------------------------------------------------------------

def test_cli_writes_report_tables_and_pngs(grid, tmp_path):
    make_run(grid, "dp-budget100-seed2", "dp", 100, 2, test_acc=None, phase="failed",
             error="Traceback\nRuntimeError: boom")
    make_run(grid, "dp-budget100-seed3", "dp", 100, 3, test_acc=None, phase="train")
    out = tmp_path / "rep"
    assert main([str(grid), "--out", str(out)]) == 0
    for f in ("report.md", "runs.parquet", "runs.csv", "jobs.csv", "summary.csv", "rounds.csv",
              "acc_vs_samples.png", "acc_vs_compute.png", "dynamics.png"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "acc_vs_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_parquet(out / "runs.parquet").shape == pd.read_csv(out / "runs.csv").shape == (12 * 5 + 2 * 4, collect(grid).shape[1])
    md = (out / "report.md").read_text()
    assert "# Sweep report: grid" in md and "per phase: train 1, done 12, failed 1" in md
    assert "**failed** `dp-budget100-seed2` (in phase train): Traceback … RuntimeError: boom" in md
    assert "**in progress** `dp-budget100-seed3`: phase train" in md
    assert "| dp | 76.00 [" in md and "(n=2) | 85.00 [" in md
    assert f"dp reaches the static target with {10 ** (2 + 4 / 9):,.0f} generated samples (interpolated" in md
    assert "needs >= 4 budgets (has 3)" in md and "exact" not in md.lower()
    assert "Test images per run: 500; seeds per cell: 2." in md
    assert "No per-round generation statistics recorded" in md
    assert "no job recorded its own compute seconds" in md and not (out / "acc_vs_model_compute.png").exists()
    assert (out / "rounds.csv").stat().st_size > 0
    for png in ("acc_vs_samples.png", "acc_vs_compute.png", "dynamics.png"):
        assert f"]({png})" in md
    # report.html: the same report as one self-contained page (figures embedded, nothing linked)
    import base64
    import re

    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "<h1>Sweep report: grid</h1>" in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == md.count("![") and all(src.startswith("data:image/png;base64,") for src in srcs)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in srcs}
    assert (out / "dynamics.png").read_bytes() in embedded
    assert "boom" in page and "<script" not in page
    assert "No round pictures recorded" in md  # the hand-made runs have none; the e2e smoke test has them


def test_cli_default_out_is_inside_the_sweep(grid):
    assert main([str(grid)]) == 0
    assert (grid / "report" / "report.md").exists()


def test_not_a_sweep_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    p = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "empty")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "not a sweep folder" in p.stderr
    assert not (tmp_path / "empty" / "report").exists()
    (tmp_path / "empty" / "sweep.yaml").write_text("name: empty\n")  # launched, no run folder yet
    p = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "empty")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "has no runs yet" in p.stderr
    assert not (tmp_path / "empty" / "report").exists()


def test_branch_outs_are_extra_points_not_budget_cells(grid, tmp_path):
    parent = grid / "dp-budget1000-seed0"
    branch = make_run(parent / "branches", "round_000", "dp", 1000, 0, test_acc=0.99,
                      rounds=[{"index": 0, "kind": "plain", "kept": 500, "generated": 500, "classifier_step": None}])
    cfg = yaml.safe_load((branch / "config.yaml").read_text())
    (branch / "config.yaml").write_text(yaml.safe_dump({**cfg, "name": "dp-budget1000-seed0-branch0"}))
    (branch / "branch.json").write_text(json.dumps({"parent": "dp-budget1000-seed0", "round": 0,
                                                    "checkpoint_step": 40, "generated": 500, "kept": 500}))
    df = collect(grid)
    runs = per_run(df).set_index("run")
    b = runs.loc["dp-budget1000-seed0-branch0"]
    assert (b["branch_of"], b["branch_round"], b["generated"], b["test_acc"]) == ("dp-budget1000-seed0", 0, 500, 0.99)
    st = summary(df).set_index(["method", "budget"])
    # the branch (0.99) must not enter the dp/1000 cell: still the mean of the two seeds
    assert st.loc[("dp", 1000), "acc_mean"] == pytest.approx(0.85) and st.loc[("dp", 1000), "n_runs"] == 2
    text = branch_text(per_run(df))
    assert "| dp-budget1000-seed0 | 0 | done | 500 | 500 | 99.00 | 1,000 | 84.00 |" in text
    out = write_report(grid, tmp_path / "rep")
    assert "## Branch-outs" in out.read_text() and (tmp_path / "rep" / "acc_vs_samples.png").stat().st_size > 0


# -- generation statistics per round, model compute -------------------------------------------

def test_generation_statistics_table_and_skip(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    stats = {"entropy_mean": 0.9, "plain_entropy_mean": 0.4, "label_fidelity": 0.93, "plain_label_fidelity": 0.95}
    for seed, e in ((0, 0.9), (1, 1.1)):
        rounds = [{"index": 0, "kind": "plain", "kept": 50, "generated": 50, "classifier_step": None},
                  {"index": 1, "kind": "guided", "kept": 50, "generated": 50, "classifier_step": 40,
                   **stats, "entropy_mean": e}]
        make_run(sweep, f"dp-{seed}", "dp", 100, seed, test_acc=0.8, rounds=rounds)
    make_run(sweep, "static-0", "static", 100, 0, test_acc=0.7)  # an older run: no statistics
    raws = read_sweep(sweep)[1]
    rounds = rounds_frame(raws)
    assert len(rounds) == 5 and rounds["entropy_mean"].isna().sum() == 3
    text = generation_stats_text(rounds, per_run(collect(sweep)))
    assert "| 100 | 1 | guided | 50 | 50 | 2 | 1.000 | - | 0.400 | 93.0 | - | 95.0 |" in text  # no paired seeds in this data
    assert "| 100 | 0 | plain | 50 | 50 | 2 | - | - | - | - | - | - |" in text
    assert "**static**: no statistics recorded." in text
    assert "higher mean entropy than plain samples of the same seeds: 2 of 2; with label fidelity within 5 points of plain: 2 of 2" in text
    assert "No per-round generation statistics" in generation_stats_text(rounds.iloc[:0], pd.DataFrame())


def test_label_fidelity_exactly_5_points_under_plain_counts_as_within_5_points(tmp_path):
    """2 of 40 samples (0.95 vs 1.0) is 5 points: within; 0.9297 vs 0.9844 (5.47 points) is not."""
    sweep = tmp_path / "s"
    sweep.mkdir()
    for seed, (fid, plain) in enumerate(((0.95, 1.0), (0.9297, 0.9844))):
        rounds = [{"index": 0, "kind": "plain", "kept": 40, "generated": 40, "classifier_step": None},
                  {"index": 1, "kind": "guided", "kept": 40, "generated": 40, "classifier_step": 40,
                   "entropy_mean": 0.9, "plain_entropy_mean": 0.4, "label_fidelity": fid, "plain_label_fidelity": plain}]
        make_run(sweep, f"dp-{seed}", "dp", 80, seed, test_acc=0.8, rounds=rounds)
    rounds = rounds_frame(read_sweep(sweep)[1])
    text = generation_stats_text(rounds, per_run(collect(sweep)))
    assert "with label fidelity within 5 points of plain: 1 of 2" in text, text


# -- the package's shape ----------------------------------------------------------------------

def test_help_prints_the_usage():
    p = subprocess.run([sys.executable, "-m", "analysis.report", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: python -m analysis.report") and "--out" in p.stdout


def test_no_file_of_analysis_is_over_450_lines():
    """analysis/ is split into files that follow the data (read, frames, stats, figures, tables,
    render, report); theory.py, a self-contained model, is the exception."""
    lengths = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "analysis").glob("*.py")}
    assert not {name: n for name, n in lengths.items() if n > 450 and name != "theory.py"}, lengths
