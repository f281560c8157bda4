"""The plant-overshoot toy: closed-form return, exact dynamics against sampled REINFORCE, and the
analytic special cases (no sharing: no spreading; the optimum)."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from devrl.core.base import ConfigError
from devrl.toys.plant import (
    PlantTask,
    expected_return,
    expected_trajectory,
    initial_params,
    objective,
    reinforce_gradient,
    sample_episodes,
    sampled_trajectories,
)

TASK = PlantTask(context_probs=(0.2, 0.3, 0.5), horizon=6, other_reward=0.02)


def test_closed_form_return_equals_enumeration_over_all_episodes():
    """Sum over every context and action sequence of a short episode, by brute force."""
    task = PlantTask(context_probs=(0.3, 0.7), horizon=3, other_reward=0.1, place_reward=2.0)
    q = np.array([0.4, 0.25])
    total = 0.0
    for contexts in itertools.product(range(2), repeat=task.horizon):
        for actions in itertools.product(range(2), repeat=task.horizon):
            prob = np.prod([task.context_probs[c] * (q[c] if a else 1 - q[c])
                            for c, a in zip(contexts, actions, strict=True)])
            placed = any(a and c == 0 for c, a in zip(contexts, actions, strict=True))
            reward = task.place_reward * placed + task.other_reward * actions.count(0)
            total += prob * reward
    assert float(expected_return(task, np.asarray(q, np.float32))) == pytest.approx(total, rel=1e-5)


def test_simulated_returns_average_to_the_closed_form():
    q = np.array([0.5, 0.2, 0.1], np.float32)
    _, actions, returns = sample_episodes(TASK, q, jax.random.PRNGKey(0), 50_000)
    mean, se = float(returns.mean()), float(returns.std() / np.sqrt(len(returns)))
    assert abs(mean - float(expected_return(TASK, q))) < 4 * se
    assert actions.shape == (50_000, TASK.horizon)


@pytest.mark.parametrize("sharing", [0.0, 0.6, 1.0])
def test_reinforce_gradient_is_unbiased(sharing):
    params = initial_params(TASK, sharing, -0.5)
    exact = jax.grad(objective(TASK, sharing))(params)
    keys = jax.random.split(jax.random.PRNGKey(1), 40)
    draws = jax.jit(jax.vmap(lambda k: reinforce_gradient(TASK, sharing, params, k, 4000)))(keys)
    for name in ("shared", "own"):
        values = np.asarray(draws[name])
        se = values.std(axis=0) / np.sqrt(len(values))
        assert np.all(np.abs(values.mean(axis=0) - np.asarray(exact[name])) <= 4 * se + 1e-7)


def test_mean_of_sampled_runs_follows_the_exact_dynamics():
    """At a small learning rate, the mean over runs of REINFORCE stays within Monte-Carlo error
    of gradient ascent on J (the noise averages out to second order in the step)."""
    steps, lr = 60, 0.5
    exact = expected_trajectory(TASK, 0.7, lr, steps, init_logit=-1.0)
    runs = sampled_trajectories(TASK, 0.7, lr, steps, jax.random.split(jax.random.PRNGKey(0), 48),
                                64, init_logit=-1.0)
    again = sampled_trajectories(TASK, 0.7, lr, steps, jax.random.split(jax.random.PRNGKey(0), 48),
                                 64, init_logit=-1.0)
    np.testing.assert_array_equal(runs, again)  # deterministic for fixed keys
    mean, se = runs.mean(axis=0), runs.std(axis=0) / np.sqrt(len(runs))
    assert np.all(np.abs(mean - exact) <= 4 * se + 2e-3)
    assert np.abs(exact[-1] - exact[0]).max() > 0.05  # the propensities did move


def test_no_sharing_no_spreading_and_sharing_spreads():
    task = PlantTask()
    tabular = expected_trajectory(task, 0.0, 0.5, 3000, record_every=10)
    assert np.all(np.diff(tabular[:, 1:], axis=0) <= 1e-7)  # non-valid contexts only fall
    shared = expected_trajectory(task, 0.9, 0.5, 3000, record_every=10)
    invalid = shared[:, 2]
    peak = invalid.argmax()
    assert invalid[peak] > 2 * invalid[0] and invalid[-1] < 0.7 * invalid[peak]


def test_dynamics_approach_the_optimum():
    task = PlantTask()
    q = expected_trajectory(task, 0.0, 1.0, 40_000, record_every=40_000)[-1]
    assert q[0] == pytest.approx(task.optimal_valid_propensity(), abs=0.01)
    assert np.all(q[1:] < 0.01)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="sharing=1.5 is not allowed"):
        expected_trajectory(TASK, 1.5, 0.1, 10)
    with pytest.raises(ConfigError, match="context_probs=.* is not allowed"):
        PlantTask(context_probs=(0.5, 0.6)).validate()
    with pytest.raises(ConfigError, match="horizon=0 is not allowed"):
        PlantTask(horizon=0).validate()


def test_overshoot_summary_on_a_known_curve():
    from devrl.toys.plant import overshoot_summary

    probs = (0.5, 0.5)
    invalid = np.array([0.1, 0.3, 0.5, 0.4, 0.3, 0.25, 0.2])
    q = np.stack([np.linspace(0.1, 0.8, len(invalid)), invalid], axis=1)
    summary = overshoot_summary(q, probs, record_every=10)
    assert summary["peak"] == 0.5 and summary["peak_update"] == 20
    assert summary["rise"] == pytest.approx(0.4)
    assert summary["half_time"] == 30  # 0.25 <= 0.5 / 2 three records after the peak
    monotone = np.stack([np.linspace(0.1, 0.8, 5), np.linspace(0.3, 0.1, 5)], axis=1)
    assert np.isnan(overshoot_summary(monotone, probs)["half_time"])  # no overshoot


def test_fit_recovers_the_parameters_of_a_curve_the_toy_made():
    from devrl.toys.plant import fit_share, model_share

    steps = np.geomspace(2e4, 8e6, 40)
    truth = {"sharing": 0.8, "other_reward": 0.004, "valid_prob": 0.1, "steps_per_update": 2000.0}
    share = model_share(**truth, horizon=150, init_logit=-2.77, env_steps=steps)
    fit = fit_share(steps, share, 150, -2.77)
    assert fit.r_squared > 0.99 and fit.rmse < 2e-3
    assert fit.sharing == pytest.approx(truth["sharing"], abs=0.1)
    assert fit.steps_per_update == pytest.approx(truth["steps_per_update"], rel=0.3)
    no_sharing = fit_share(steps, share, 150, -2.77, sharing=0.0)
    assert no_sharing.sharing == 0.0 and no_sharing.rmse > fit.rmse


def test_loglog_slope_recovers_a_power_law():
    from devrl.core.base import ConfigError
    from devrl.toys.plant import loglog_slope

    x = np.array([0.01, 0.03, 0.1, 0.3, 1.0])
    assert loglog_slope(x, 3 * x ** -1.5) == pytest.approx(-1.5)
    assert loglog_slope(np.append(x, -1.0), np.append(2 * x, 5.0)) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="two or more positive"):
        loglog_slope([1.0], [2.0])


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
def test_every_scale_sweeps_enough_learning_rates_for_the_slope(scale):
    """The notebook fits the log-log slope of the updates to the peak against the learning rate
    at every scale (smoke included), and reads the headline learning rate's row."""
    from devrl.toys.plant import HEADLINE, TOY_SETTINGS

    rates = TOY_SETTINGS[scale]["learning_rates"]
    assert len(set(rates)) >= 2 and HEADLINE["learning_rate"] in rates
    assert HEADLINE["sharing"] in TOY_SETTINGS[scale]["sharings"]
    assert HEADLINE["task"].other_reward in TOY_SETTINGS[scale]["other_rewards"]
