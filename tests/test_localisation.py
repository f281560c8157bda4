"""Layer reversion and update localisation on constructed parameters."""

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from devrl.core.base import ConfigError
from devrl.core.config import make_config
from devrl.core.ppo import make_network
from devrl.measures import localisation as loc


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


def test_returns_by_source_sum_to_the_return_and_stop_at_episode_ends():
    rng = np.random.default_rng(1)
    rewards = rng.standard_normal((6, 3, 4))
    dones = np.zeros((6, 3), bool)
    dones[2, 0] = True
    out = loc.returns_by_source(rewards, dones, gamma=0.9)
    total = loc.returns_by_source(rewards.sum(-1, keepdims=True), dones, gamma=0.9)[..., 0]
    np.testing.assert_allclose(out.sum(-1), total)
    # Env 0's episode ended at t = 2: its return at t = 2 is that step's reward alone.
    np.testing.assert_allclose(out[2, 0], rewards[2, 0])
    np.testing.assert_allclose(out[5], rewards[5])


def test_the_per_source_parts_sum_to_the_full_policy_gradient():
    import jax.numpy as jnp

    later, _ = two_checkpoints()
    network = make_network(make_config("smoke", width=16, depth=3), 17)
    rng = np.random.default_rng(2)
    obs = jnp.asarray(rng.standard_normal((5, 4, 5)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, 17, (5, 4)))
    returns = rng.standard_normal((5, 4, 3))

    def log_prob(p):
        _, logits, _ = network.apply(p, jnp.zeros((4, 0)), obs, jnp.zeros((5, 4), bool))
        return jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], -1)[..., 0]

    parts = loc.split_policy_gradient(log_prob, later, returns)
    full = jax.grad(lambda p: jnp.mean(log_prob(p) * jnp.asarray(returns.sum(-1))))(later)
    summed = jax.tree.map(lambda *leaves: sum(leaves), *parts)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_specialisation_index_of_constructed_updates():
    def grad(units):
        kernel = np.zeros((3, 6))
        kernel[:, units] = 1.0
        return {"params": {"actor_0": {"kernel": kernel, "bias": np.zeros(6)}}}

    disjoint = [grad([0, 1]), grad([2, 3]), grad([4, 5])]
    shared = [grad([0, 1, 2, 3, 4, 5])] * 3
    assert loc.specialisation_index(loc.unit_profiles(disjoint, "actor_0")) == pytest.approx(1.0)
    assert loc.specialisation_index(loc.unit_profiles(shared, "actor_0")) == pytest.approx(0.0)
    half = [grad([0, 1, 2]), grad([1, 2, 3])]  # overlap on 2 of 3 units each
    assert loc.specialisation_index(loc.unit_profiles(half, "actor_0")) == pytest.approx(1 / 3)
    cos = loc.alignment(disjoint + shared[:1], "actor_0")
    assert cos[0, 1] == pytest.approx(0.0) and cos[0, 3] == pytest.approx(np.sqrt(1 / 3))


def test_craftax_rewards_split_by_source_sum_to_the_reward():
    import jax.numpy as jnp

    config = make_config("smoke", reward="plant_x4")
    run, network = loc.make_source_rollout(config, envs=8, steps=64)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((8, 0)),
                          jnp.zeros((1, 8, 1345)), jnp.ones((1, 8), bool))
    out = jax.device_get(run(params, jax.random.PRNGKey(1)))
    names = loc.source_names()
    assert out["sources"].shape == (64, 8, len(names)) and names[-1] == "other"
    np.testing.assert_allclose(out["sources"].sum(-1), out["rewards"], atol=1e-5)
    unlocks = out["sources"][..., :-1]
    assert unlocks.sum() > 0  # a random policy unlocks something in 512 steps
    # Each achievement pays at most once per episode (PLACE_PLANT 4 under plant_x4).
    assert set(np.unique(unlocks)) <= {0.0, 1.0, 4.0}
    for e in range(8):
        episode = np.cumsum(np.concatenate([[0], out["dones"][:-1, e]]))
        for k in np.unique(episode):
            assert ((unlocks[episode == k, e] > 0).sum(0) <= 1).all()


def test_credit_split_on_a_craftax_rollout():
    import jax.numpy as jnp

    config = make_config("smoke")
    network = make_network(config, 17)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((8, 0)), jnp.zeros((1, 8, 1345)),
                          jnp.ones((1, 8), bool))
    parts, rollout = loc.credit_split(config, params, envs=8, steps=64, key=jax.random.PRNGKey(1))
    assert len(parts) == len(loc.source_names())
    # An exported checkpoint holds the actor only: the same split, the critic being unused.
    from devrl.measures.policy_llc import actor_params

    alone, _ = loc.credit_split(config, actor_params(params), envs=8, steps=64,
                                key=jax.random.PRNGKey(1))
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(parts)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert set(parts[0]["params"]) == {"actor_0", "actor_1", "actor_out"}
    table = loc.credit_table(parts)
    live = table[table["norm_share"] > 0]
    assert not live.empty and (live["concentration"] >= 1 - 1e-9).all()
    for _, layer in table.groupby("layer"):
        assert layer["norm_share"].sum() == pytest.approx(1.0)
        assert 0 <= layer["specialisation"].iloc[0] <= 1
    # Sources that paid nothing in the rollout get no update.
    paid = rollout["sources"].reshape(-1, len(parts)).any(0)
    for name, did in zip(loc.source_names(), paid):
        share = table.loc[table["source"] == name, "norm_share"]
        assert (share > 0).all() == bool(did)


# ------------------------------------------------------------------ the index against chance
def _credit_rows(profiles: np.ndarray, events: list[int], shares: list[float]) -> pd.DataFrame:
    from devrl.measures.localisation import specialisation_index

    index = specialisation_index(profiles, np.sqrt(shares))
    return pd.DataFrame({"seed": 0, "update": 0, "layer": "actor_0",
                         "source": [f"s{i}" for i in range(len(events))], "events": events,
                         "norm_share": shares, "specialisation": index})


def test_random_gradients_sit_inside_the_null_and_disjoint_ones_above_it():
    from devrl.studies.localisation import null_verdict, specialisation_against_null

    events, shares, units = [40, 8, 3, 0], [0.5, 0.3, 0.2, 0.0], 64
    rng = np.random.default_rng(11)
    inside = []
    for _ in range(40):  # gradients that share nothing but their counts: the null's own model
        profiles = np.zeros((4, units))
        for s, k in enumerate(events):
            if k:
                energy = rng.chisquare(k, units)
                profiles[s] = energy / energy.sum()
        row = specialisation_against_null(_credit_rows(profiles, events, shares), units)
        inside.append(not row["above"].iloc[0])
    assert np.mean(inside) >= 0.85  # about the quantile's 95%
    disjoint = np.zeros((4, units))
    for s in range(3):
        disjoint[s, s * 20:(s + 1) * 20] = 1 / 20
    against = specialisation_against_null(_credit_rows(disjoint, events, shares), units)
    assert against["above"].all() and against["observed"].iloc[0] > 0.9
    verdict = null_verdict(against)
    assert verdict["word"] == "did not hold" and verdict["above"] == 1
    assert verdict["threshold_word"] == "could therefore not have failed"
