"""Layer reversion and update localisation on constructed parameters."""

import jax
import numpy as np
import pytest
from scipy import stats

from devrl import localisation as loc
from devrl.config import ConfigError, make_config
from devrl.ppo import make_network


def two_checkpoints():
    config = make_config("smoke", width=16, depth=3)
    network = make_network(config, 17)
    init = lambda seed: jax.tree.map(np.asarray, network.init(  # noqa: E731
        jax.random.PRNGKey(seed), np.zeros((1, 0)), np.zeros((1, 1, 5)), np.ones((1, 1), bool)))
    return init(0), init(1)


def test_reverting_no_layer_changes_nothing_and_all_layers_give_the_reference():
    later, earlier = two_checkpoints()
    layers = loc.actor_layers(later)
    assert layers == ["actor_0", "actor_1", "actor_2", "actor_out"]
    subsets = loc.layer_subsets(layers)
    assert len(subsets) == 16 and subsets[0] == () and subsets[-1] == tuple(layers)
    same = loc.revert(later, earlier, ())
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(later)):
        np.testing.assert_array_equal(a, b)
    full = loc.revert(later, earlier, layers)
    for name in layers:
        for key in ("kernel", "bias"):
            np.testing.assert_array_equal(full["params"][name][key], earlier["params"][name][key])
    # The critic is never reverted.
    np.testing.assert_array_equal(full["params"]["critic_0"]["kernel"],
                                  later["params"]["critic_0"]["kernel"])
    with pytest.raises(ConfigError, match="actor_9"):
        loc.revert(later, earlier, ["actor_9"])


def test_update_stats_of_constructed_updates():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 30))
    before = {"params": {"actor_0": {"kernel": w}}}
    # A sparse update: 30 of 1200 entries move by 1 (RMS weight ~1).
    sparse = w.copy()
    picked = rng.choice(w.size, 30, replace=False)
    sparse.flat[picked] += 1.0
    out = loc.update_stats(before, {"params": {"actor_0": {"kernel": sparse}}},
                           tolerances=(0.1,), layers=["actor_0"]).iloc[0]
    assert out["changed"] == pytest.approx(30 / 1200)
    # The null of the same norm is dense: most of its entries are small, but it spreads.
    sigma = np.sqrt(30 / 1200)
    expected = 2 * stats.norm.sf(0.1 * np.sqrt(np.mean(w ** 2)) / sigma)
    assert out["null_changed"] == pytest.approx(expected, abs=0.03)
    # A rank-2 update of two equal directions has effective rank 2; the dense null has more.
    u, _ = np.linalg.qr(rng.standard_normal((40, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 2)))
    low = w + 0.1 * u @ v.T
    out = loc.update_stats(before, {"params": {"actor_0": {"kernel": low}}},
                           tolerances=(1e-4,), layers=["actor_0"]).iloc[0]
    assert out["effective_rank"] == pytest.approx(2.0, rel=1e-6)
    assert out["null_effective_rank"] > 20
    assert out["below_float16"]
    assert loc.effective_rank(np.zeros((3, 3))) == 0.0
