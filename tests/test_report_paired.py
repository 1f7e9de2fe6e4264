"""The report's paired comparisons on small sweeps written by hand, with per-image results whose
differences are known: paired.csv and report.md say what the images say; a sweep without per-image
results (runs evaluated before test_predictions.npz) still reports, without the paired section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.paired import holm
from analysis.report import write_report
from dp_hpc.predictions import write_test_predictions
from report_helpers import ACC, make_grid_sweep

N_TEST = 500


def add_predictions(sweep, shift: dict | None = None):
    """Each run right on its first acc * N_TEST test images (so a better run is right wherever a worse
    one is: McNemar sees only one-sided discordant images); `shift` moves a run's block of right
    images by some images (discordant both ways)."""
    for (method, budget), accs in ACC.items():
        for seed, acc in enumerate(accs):
            run = f"{method}-budget{budget}-seed{seed}"
            k, s = round(acc * N_TEST), (shift or {}).get(run, 0)
            correct = np.zeros(N_TEST, bool)
            correct[s : s + k] = True
            write_test_predictions(sweep / run / "test_predictions.npz", np.where(correct, 3, 4), np.full(N_TEST, 3))


def test_paired_comparisons_from_per_image_results(tmp_path):
    grid = make_grid_sweep(tmp_path)
    add_predictions(grid, shift={"dp-budget10000-seed1": 40})
    md = write_report(grid, tmp_path / "rep").read_text()
    paired = pd.read_csv(tmp_path / "rep" / "paired.csv")
    assert list(zip(paired["first"], paired["second"], paired["budget"])) == [("dp", "static", b) for b in (100, 1000, 10000)]
    row = paired.set_index("budget").loc[100]
    # dp - static at 100: (0.75 - 0.60 + 0.77 - 0.62) / 2, both seeds won, McNemar one-sided in both
    assert row["diff"] == pytest.approx(0.15) and (row["wins"], row["ties"], row["losses"]) == (2, 0, 0)
    assert (row["seeds"], row["mcnemar_first"], row["mcnemar_second"]) == (2, 2, 0)
    # two seeds: the interval is t with 1 degree of freedom wide (12.7 / 1.96 times the normal one)
    assert row["diff_lo"] < row["diff"] < row["diff_hi"] and row["scale"] > 12.7 / 1.96 * 0.5
    # at 10,000: seed 0 +0.08, seed 1 +0.10 but shifted by 40 images: discordant both ways (40 vs 90)
    row = paired.set_index("budget").loc[10000]
    assert row["diff"] == pytest.approx(0.09) and row["mcnemar_first"] == 2
    assert paired["p_holm"].tolist() == pytest.approx(holm(paired["p"].tolist()))
    assert "## Paired comparisons: same seeds, same test images" in md
    assert "| dp − static | 100 | 2 | +15.00 [" in md
    assert "- dp − static at budget 100: +15.00 points" in md and "at 5% after Holm" in md
    assert (tmp_path / "rep" / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](paired.png)" in md
    # samples-to-target's intervals come from the same joint draws
    assert "resampling the seeds and the test images jointly" in md


def test_an_older_sweep_without_per_image_results_still_reports(tmp_path):
    grid = make_grid_sweep(tmp_path)
    md = write_report(grid, tmp_path / "rep").read_text()
    assert "No pair of arms has per-image test results" in md
    assert "resampling every cell's seeds" in md
    assert not (tmp_path / "rep" / "paired.png").exists() and "paired.png" not in md
    assert (tmp_path / "rep" / "paired.csv").read_text().strip() == ""  # no rows
