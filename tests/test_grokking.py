"""Grokking modular addition: the task, the schedule's switch, the windowed correlation on
constructed curves, learning on a tiny config, and determinism per seed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from devrl.core.base import ConfigError
from devrl.studies import grokking as gk


def test_the_task_is_modular_addition_split_by_the_seed():
    config = gk.make_grok_config("smoke")
    data = gk.dataset(config)
    x = np.concatenate([data["train_x"], data["val_x"]])
    y = np.concatenate([data["train_y"], data["val_y"]])
    assert len(x) == config.p ** 2 and len({tuple(r) for r in x}) == config.p ** 2
    assert (y == (x[:, 0] + x[:, 1]) % config.p).all()
    assert len(data["train_y"]) == round(config.train_fraction * config.p ** 2)
    other = gk.dataset(gk.make_grok_config("smoke", seed=1))
    assert not np.array_equal(other["train_x"], data["train_x"])


@pytest.mark.parametrize("schedule", list(gk.SCHEDULES))
def test_the_learning_rate_switches_at_the_stated_step(schedule):
    config = gk.make_grok_config("smoke", schedule=schedule, switch_step=40)
    rate = gk.learning_rate(config)
    assert float(rate(0)) == pytest.approx(config.lr)
    assert float(rate(39)) == pytest.approx(config.lr)
    assert float(rate(40)) == pytest.approx(config.lr * gk.SCHEDULES[schedule])
    assert float(rate(config.steps)) == pytest.approx(config.lr * gk.SCHEDULES[schedule])
    assert {39, 40, 41} <= set(gk.checkpoint_steps(config))


def test_windowed_correlation_on_constructed_curves():
    t = np.linspace(0, 1, 30)
    together = gk.windowed_correlation(t ** 2, 0.5 * t ** 2 + 0.1, 5)
    assert np.isnan(together[:2]).all() and np.isnan(together[-2:]).all()
    assert np.allclose(together[2:-2], 1.0)
    apart = gk.windowed_correlation(t, 1 - t, 5)
    assert np.allclose(apart[2:-2], -1.0)
    flat = gk.windowed_correlation(np.ones(30), t, 5)  # memorised: training accuracy stays at 1
    assert np.isnan(flat).all()
    memorise_then_together = np.where(t < 0.5, 1.0, t), t  # flat first half, then together
    corr = gk.windowed_correlation(*memorise_then_together, 5)
    assert np.isnan(corr[5:10]).all() and np.allclose(corr[20:-2], 1.0)
    with pytest.raises(ConfigError, match="window=2"):
        gk.windowed_correlation(t, t, 2)


def test_summary_reads_the_generalisation_step_and_correlations():
    steps = np.arange(0, 200, 10)
    metrics = pd.DataFrame({"schedule": "x10", "seed": 0, "step": steps,
                            "train_acc": np.where(steps < 100, 1.0, steps / 250),
                            "val_acc": steps / 250})
    llc = pd.DataFrame({"schedule": "x10", "seed": 0, "step": [0, 190], "llc": [5.0, 2.0]})
    row = gk.summary_table(metrics, llc, switch_step=100, window=5).iloc[0]
    assert math.isnan(row["val_generalised_step"])  # 0.95 is never reached
    assert row["train_fitted_step"] == 0 and row["final_llc"] == 2.0
    assert math.isnan(row["corr_before"]) and row["corr_after"] == pytest.approx(1.0)


def test_the_switch_response_sees_a_fall_and_a_collapse_and_prediction_2_reads_it():
    steps = np.arange(0, 2000, 25)
    val = np.clip((steps - 1000) / 500, 0, 1)

    def run(schedule, seed, train):
        return pd.DataFrame({"schedule": schedule, "seed": seed, "step": steps,
                             "train_acc": train, "val_acc": val})

    stays = np.ones(len(steps))  # generalises without unlearning
    falls = np.where((steps > 1000) & (steps <= 1100), 0.05, 1.0)  # falls, then recovers
    collapses = np.where(steps > 1000, 0.01, 1.0)  # falls and never recovers
    shallow = np.where((steps > 1000) & (steps <= 1100), 0.95, 1.0)  # a fall of 0.05 only
    late = np.where(steps > 1600, 0.05, 1.0)  # falls after the 500 steps it is looked for
    metrics = pd.concat([run("x10", 0, stays), run("x50", 0, falls), run("x50", 1, collapses),
                         run("x10", 1, shallow), run("x10", 2, late)])
    response = gk.switch_response(metrics, 1000).set_index(["schedule", "seed"])
    assert response.loc[("x50", 0), "fell"] and response.loc[("x50", 1), "fell"]
    assert not response.loc[[("x10", 0), ("x10", 1), ("x10", 2)], "fell"].any()
    assert response.loc[("x50", 0), "train_low_after"] == 0.05
    assert response.loc[("x50", 1), "final_train_acc"] == 0.01
    assert response.loc[("x50", 0), "final_train_acc"] == 1.0
    assert response.loc[("x10", 0), "train_at_switch"] == 1.0

    # prediction 2 asks every x10 and x50 run to fall (and the correlation to rise)
    llc = pd.DataFrame(columns=["schedule", "seed", "step", "llc"])
    empty = pd.DataFrame(columns=["schedule", "seed", "component", "step"])
    base = run("base", 0, 1 - 0.02 * val)  # varies against validation: a defined correlation
    all_fall = pd.concat([base, run("x10", 0, falls), run("x50", 0, falls)])
    assert gk.verdicts(all_fall, llc, empty, 1000)["p2"] == "held"
    one_stays = pd.concat([base, run("x10", 0, stays), run("x50", 0, falls)])
    assert gk.verdicts(one_stays, llc, empty, 1000)["p2"] == "did not hold"


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="schedule='x3' is not allowed: must be one of base"):
        gk.make_grok_config("smoke", schedule="x3")
    with pytest.raises(ConfigError, match="scale='big'"):
        gk.make_grok_config("big")
    with pytest.raises(ConfigError, match="switch_step=9999"):
        gk.make_grok_config("smoke", switch_step=9999)
    with pytest.raises(ConfigError, match="momentum= is not allowed"):
        gk.make_grok_config("smoke", momentum=0.9)


def test_training_is_deterministic_per_seed():
    config = gk.make_grok_config("smoke", steps=60, switch_step=30, log_every=20, checkpoints=4)
    a, ka = gk.train(config)
    b, kb = gk.train(config)
    pd.testing.assert_frame_equal(a, b)
    assert all(np.array_equal(ka[s]["w1"], kb[s]["w1"]) for s in ka)
    c, _ = gk.train(gk.make_grok_config("smoke", steps=60, switch_step=30, log_every=20,
                                        checkpoints=4, seed=1))
    assert not a.equals(c)


def test_the_tiny_config_groks():
    """At the smoke scale the base schedule fits its training set first and generalises later:
    training accuracy reaches 95% well before validation accuracy does, and validation accuracy
    ends above 90% (chance: 1/p)."""
    metrics, kept = gk.train(gk.make_grok_config("smoke"))
    fitted = gk.first_step_reaching(metrics, "train_acc", 0.95)
    generalised = gk.first_step_reaching(metrics, "val_acc", 0.9)
    assert fitted < generalised / 2
    assert metrics["val_acc"].iloc[-1] > 0.9 and metrics["train_acc"].iloc[-1] == 1.0
    assert metrics["val_acc"].iloc[0] < 0.2
    assert sorted(kept) == gk.checkpoint_steps(gk.make_grok_config("smoke"))
