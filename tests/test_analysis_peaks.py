"""Peaks of mean curves, and where they are, to the resolution of the checkpoints."""

import pandas as pd
import pytest

from devrl.datasets import mean_curve_peaks, resolved


def test_resolved_rounds_to_the_coarser_gap_around_the_point():
    grid = [100_000, 114_688, 147_456, 180_224, 1_572_864, 1_589_248, 1_835_008]
    assert resolved(147_456, grid) == 150_000  # gaps of 32,768: to 10,000
    assert resolved(1_589_248, grid) == 1_600_000  # gaps 16,384 and 245,760: to 100,000
    assert resolved(100_000, grid) == 100_000


def test_the_mean_curve_peak_is_not_the_mean_of_the_seeds_peaks():
    """Two seeds peaking at different checkpoints: the mean curve peaks where they overlap most,
    not at the average of their peak positions, and the seeds' own peaks come as a range."""
    steps = [10, 20, 30, 40, 50]
    a = [0, 4, 1, 0, 0]
    b = [0, 0, 1, 4, 0]
    frame = pd.DataFrame({"seed": [0] * 5 + [1] * 5, "env_steps": steps * 2, "m": a + b})
    row = mean_curve_peaks(frame, ["m"]).iloc[0]
    assert row["peak"] == pytest.approx(2.0) and row["env_steps_at_peak"] in (20, 40)
    assert (row["seed_env_steps_at_peak_min"], row["seed_env_steps_at_peak_max"]) == (20, 40)
    assert row["final"] == 0
    frame.loc[frame["seed"] == 1, "m"] = a  # both seeds alike: the mean peak is theirs
    row = mean_curve_peaks(frame, ["m"]).iloc[0]
    assert (row["peak"], row["env_steps_at_peak"]) == (4.0, 20)
