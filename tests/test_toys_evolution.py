"""The replicator-mutator model's analytic limits and the shape of its jumps."""

import numpy as np
import pytest

from devrl.core.base import ConfigError
from devrl.toys import evolution as ev


def random_landscape(seed, behaviours=12, sources=3, discovery=None):
    rng = np.random.default_rng(seed)
    payoff = rng.uniform(0, 1, (behaviours, sources)) * (rng.uniform(size=(behaviours, sources))
                                                         < 0.6)
    found = np.zeros(sources) if discovery is None else np.asarray(discovery, float)
    return ev.Landscape(payoff, rng.uniform(0.2, 2.0, sources), found)


@pytest.mark.parametrize("seed", range(5))
def test_without_mutation_or_discoveries_diversity_only_falls(seed):
    d1 = ev.diversity(ev.simulate(random_landscape(seed), beta=0.3, mu=0.0, steps=200))
    assert d1[0] == pytest.approx(12)
    assert np.all(np.diff(d1) <= 1e-9)
    assert d1[-1] < d1[0] - 1  # and it does fall


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mu, sigma", [(0.0, 0.0), (0.01, 0.0), (0.0, 2.0), (0.01, 2.0)])
def test_a_single_reward_source_gives_no_jump(seed, mu, sigma):
    land = random_landscape(seed, sources=1, discovery=[50])
    d1 = ev.diversity(ev.simulate(land, beta=0.3, mu=mu, sigma=sigma, steps=200))
    assert np.allclose(d1[:50], 12)  # nothing selects before the source is found
    assert np.all(np.diff(d1) <= 1e-9)
    assert ev.jump_summary(d1, 50)["jump"] == 0.0


def test_a_second_source_makes_diversity_jump_then_decay():
    land = ev.two_source_landscape(new_reward=1.0)
    d1 = ev.diversity(ev.simulate(land, beta=0.1, mu=0.002, steps=600))
    out = ev.jump_summary(d1, 100)
    assert out["jump"] > 1.0 and out["rise_time"] > 0
    assert np.isfinite(out["half_life"]) and out["final"] < out["peak"] - 1
    # An unrewarded second source (the no_plant reward) gives no jump, with or without a burst.
    for sigma in (0.0, 2.0):
        none = ev.two_source_landscape(new_reward=0.0)
        d1 = ev.diversity(ev.simulate(none, beta=0.1, mu=0.002, sigma=sigma, steps=300))
        assert ev.jump_summary(d1, 100)["jump"] == 0.0


def test_a_larger_reward_rises_and_decays_faster():
    rows = ev.jump_sweep(new_rewards=(1.0, 4.0), betas=(0.1,), mus=(0.002,), sigmas=(0.0,))
    small, large = rows.iloc[0], rows.iloc[1]
    assert large["rise_time"] < small["rise_time"]
    assert large["half_life"] < small["half_life"]
    assert large["final"] < small["final"]


def test_the_burst_moves_mass_onto_the_new_source_at_once():
    land = ev.two_source_landscape(new_reward=1.0, discovery=10)
    plain = ev.simulate(land, beta=0.1, mu=0.002, sigma=0.0, steps=12)
    burst = ev.simulate(land, beta=0.1, mu=0.002, sigma=2.0, steps=12)
    variants = slice(9, None)  # others (8), the old favourite, then the variants
    assert np.allclose(plain[:10], burst[:10])
    moved = 1 - np.exp(-2.0)
    assert burst[10, variants].sum() == pytest.approx(
        (1 - moved) * plain[10, variants].sum() + moved, rel=0.05)


def test_bad_rates_are_clear_errors():
    land = ev.two_source_landscape()
    with pytest.raises(ConfigError, match="beta=-1"):
        ev.simulate(land, beta=-1, mu=0.0)
    with pytest.raises(ConfigError, match="mu=nan"):
        ev.simulate(land, beta=0.1, mu=float("nan"))


def synthetic_curves(beta=0.08, mu=0.003, sigma=1.5, spread=0.3):
    updates = np.unique(np.round(np.geomspace(1, 300, 30)).astype(int))
    curves = {}
    for name, plant in (("default", 1.0), ("plant_x4", 4.0)):
        base = ev.Curve(updates, np.zeros(len(updates)), np.array([1.0, 1.0, plant]),
                        np.array([0.0, 40.0, 90.0]))
        d1 = 2.0 + 0.5 * ev.model_curve(base, beta, mu, sigma, spread)[updates]
        curves[name] = ev.Curve(updates, d1, base.rewards, base.discoveries)
    return curves


def test_the_fit_recovers_the_parameters_of_model_made_curves():
    curves = synthetic_curves()
    params, table = ev.fit_curves(curves, with_burst=True)
    assert params["r_squared"] > 0.999
    assert params["beta"] == pytest.approx(0.08, rel=0.1)
    assert params["spread"] == pytest.approx(0.3, rel=0.15)
    assert set(table["curve"]) == {"default", "plant_x4"}
    without, _ = ev.fit_curves(curves, with_burst=False)
    assert without["sigma"] == 0.0 and without["rmse"] > params["rmse"]
