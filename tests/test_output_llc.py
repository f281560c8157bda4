"""The output layer's learning coefficient: H against autodiff, its exact null directions, the
features against the network, the estimator against the closed form, and the verdicts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from devrl.core.config import make_config
from devrl.core.envs import ACTION_NAMES
from devrl.core.ppo import make_network
from devrl.measures import output_llc as o
from devrl.measures.llc import estimate_llc


def constructed(n: int = 200, width: int = 6, actions: int = 5, scale: float = 1.0, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """tanh features with a bias column, and output weights giving interior probabilities."""
    rng = np.random.default_rng(seed)
    features = np.concatenate([np.tanh(rng.standard_normal((n, width))), np.ones((n, 1))], 1)
    return features, scale * rng.standard_normal((width + 1, actions))


def test_hessian_is_the_second_derivative_of_the_output_loss():
    features, weights = constructed()
    probs = o.softmax64(features @ weights)
    with jax.enable_x64():
        batch = {"features": jnp.asarray(features, jnp.float64),
                 "target": jnp.asarray(probs, jnp.float64)}
        auto = jax.hessian(o.output_loss)(jnp.asarray(weights, jnp.float64), batch)
    d = weights.size
    np.testing.assert_allclose(o.hessian(features, probs), np.asarray(auto).reshape(d, d),
                               atol=1e-12)


def test_hessian_is_flat_along_the_softmax_shift_and_the_features_null_space():
    features, weights = constructed(width=6, actions=5)
    # a seventh feature copying the first: one more null direction per action
    features = np.concatenate([features[:, :1], features], axis=1)
    weights = np.concatenate([np.zeros((1, 5)), weights], axis=0)
    h = o.hessian(features, o.softmax64(features @ weights))
    u = np.random.default_rng(1).standard_normal(features.shape[1])
    shift = np.outer(u, np.ones(5)).reshape(-1)  # every logit of a state moves together
    assert np.abs(h @ shift).max() < 1e-12
    copy = np.zeros(features.shape[1])
    copy[0], copy[1] = 1.0, -1.0  # f̃·copy = 0 at every state
    along = np.outer(copy, np.random.default_rng(2).standard_normal(5)).reshape(-1)
    assert np.abs(h @ along).max() < 1e-12
    eigenvalues = np.linalg.eigvalsh(h)
    # 7 independent features (6 + bias) times A − 1 = 4 identifiable logit directions
    assert o.numerical_rank(eigenvalues, 1e-10) == 7 * 4
    assert o.exact_rank(features, o.softmax64(features @ weights)) == 7 * 4
    with pytest.raises(o.ConfigError, match="^probs with zeros"):
        o.exact_rank(features, np.eye(features.shape[0], 5))


def test_features_reproduce_the_networks_logits_and_its_output_layer_loss():
    from devrl.measures.policy_llc import loss_for

    config = make_config("smoke")
    network = make_network(config, len(ACTION_NAMES))
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((16, 1, 1345)).astype(np.float32)
    first = np.ones((16, 1), bool)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 0)), jnp.asarray(obs[:1, :1]),
                          jnp.asarray(first[:1, :1]))
    actor = {"params": {k: v for k, v in params["params"].items() if k.startswith("actor")}}
    # output weights of a trained size, so that the probabilities are far from uniform
    actor["params"]["actor_out"] = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
        actor["params"]["actor_out"])
    features, weights = o.output_features(config, actor, {"obs": obs, "first": first})
    assert features.shape == (16, config.width + 1) and np.all(features[:, -1] == 1)
    probs = o.softmax64(features @ weights)
    # moving the output layer in the network moves the loss exactly as output_loss says
    delta = 0.3 * rng.standard_normal(weights.shape)
    moved = jax.tree_util.tree_map(lambda x: x, actor)
    moved["params"]["actor_out"] = {
        "kernel": jnp.asarray(weights[:-1] + delta[:-1], jnp.float32),
        "bias": jnp.asarray(weights[-1] + delta[-1], jnp.float32)}
    batch = {"obs": jnp.asarray(obs), "first": jnp.asarray(first),
             "target": jnp.asarray(probs, jnp.float32)}
    network_loss = float(loss_for(config)(moved, batch))
    layer_loss = float(o.output_loss(jnp.asarray(weights + delta, jnp.float32),
                                     {"features": jnp.asarray(features, jnp.float32),
                                      "target": jnp.asarray(probs, jnp.float32)}))
    assert network_loss == pytest.approx(layer_loss, rel=1e-5)
    broken = jax.tree_util.tree_map(lambda x: x, actor)
    broken["params"]["actor_out"] = dict(actor["params"]["actor_out"])
    with pytest.raises(RuntimeError, match="do not reproduce the logits"):
        # features from one network, checked against the logits of another: a wrong layer
        original = o.OUTPUT_LAYER
        try:
            o.OUTPUT_LAYER = "actor_1"
            o.output_features(config, actor, {"obs": obs, "first": first})
        finally:
            o.OUTPUT_LAYER = original


def test_quadratic_check_is_one_when_the_posterior_is_tight_and_departs_when_loose():
    features, weights = constructed(n=300, width=5, actions=4, scale=2.0)
    probs = o.softmax64(features @ weights)
    h = o.hessian(features, probs)
    tight = o.quadratic_check(features, weights, h, 1e5, 1e4, key=0)
    assert tight["ratio"] == pytest.approx(1.0, abs=0.01)
    # the draws have the posterior's size: E‖Δ‖² = Σ 1/(nβh + γ)
    expected = o.posterior_distance(np.linalg.eigvalsh(h), 1e5, 1e4)
    assert tight["rms_distance"] == pytest.approx(expected, rel=0.1)
    loose = o.quadratic_check(features, weights, h, 1.0, 0.01, key=0)
    assert abs(loose["ratio"] - 1) > 2 * o.QUADRATIC_TOLERANCE
    assert loose["rms_distance"] > 10 * tight["rms_distance"]


@pytest.mark.parametrize("factor", [1.0, 16.0])
def test_the_estimator_matches_the_closed_form_on_the_output_layer(factor):
    """The sampler with the chain rule of `chain_for`, on a constructed output layer: λ̂ within
    the validation tolerance of ½ Σ nβh/(nβh + γ), for two chain keys."""
    features, weights = constructed(n=400, width=8, actions=5, scale=1.5)
    probs = o.softmax64(features @ weights)
    eigenvalues = np.linalg.eigvalsh(o.hessian(features, probs))
    n = features.shape[0]
    nbeta, gamma = factor * n / np.log(n), 100.0
    chain = o.chain_for(eigenvalues, nbeta, gamma)
    data = {"features": jnp.asarray(features, jnp.float32),
            "target": jnp.asarray(probs, jnp.float32)}
    truth = o.expected_llc(eigenvalues, nbeta, gamma)
    for key in (0, 1):
        result = estimate_llc(o.output_loss, jnp.asarray(weights, jnp.float32), data,
                              jax.random.PRNGKey(key), nbeta=nbeta, localization=gamma,
                              num_chains=4, batch_size=n, draw_loss="full", **chain)
        assert abs(result.mean - truth) / truth < o.VALIDATION_TOLERANCE, (key, result.mean,
                                                                          truth)
    # far from rank(H)/2 at this resolution: the estimate counts resolved directions only
    assert truth < 0.9 * o.numerical_rank(eigenvalues, 1e-10) / 2


def test_chain_rule_scales_with_the_stiffest_direction():
    chain = o.chain_for(np.array([0.0, 1.0, 4.0]), nbeta=100.0, localization=10.0)
    assert chain["step_size"] == pytest.approx(o.STEP_FRACTION / 410.0)
    assert chain["num_burnin"] == int(np.ceil(o.RELAX_TIMES / (chain["step_size"] * 10.0)))
    assert chain["num_steps"] == 2 * chain["num_burnin"]


def test_verdicts_follow_their_tolerances():
    rows = pd.DataFrame({"seed": [0, 0, 1], "update": [1, 2, 1],
                         "relative_error": [0.02, -0.05, 0.08]})
    verdict = o.validation_verdict(rows)
    assert verdict["holds"] and verdict["checkpoints"] == 3 and verdict["word"] == "agrees with"
    rows.loc[2, "relative_error"] = -0.12
    verdict = o.validation_verdict(rows)
    assert not verdict["holds"] and verdict["word"] == "does not agree with"
    assert verdict["worst"] == pytest.approx(0.12)
    facts = pd.DataFrame({"quadratic_ratio": [1.02, 1.09]})
    assert o.quadratic_verdict(facts)["holds"]
    facts.loc[1, "quadratic_ratio"] = 1.15
    assert not o.quadratic_verdict(facts)["holds"]


def test_resolution_words_follow_the_fraction():
    assert o.resolution_words(0.02) == "most directions are not resolved at γ/nβ"
    assert o.resolution_words(0.6).startswith("most directions are resolved")
    assert o.resolution_words(0.95).startswith("nearly every")


def test_rule_statuses_follow_the_verdicts_of_a_test():
    from devrl.measures.output_llc import rule_statuses

    assert rule_statuses({"holds": True}, {"holds": False}) == {
        "validation": "established at this scale", "quadratic": "contradicted"}
