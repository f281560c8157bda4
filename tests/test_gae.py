"""GAE against a plain-numpy reference."""

import jax.numpy as jnp
import numpy as np

from devrl.core.ppo import compute_gae


def numpy_gae(rewards, values, dones, last_value, gamma, lam):
    steps = len(rewards)
    advantages = np.zeros_like(rewards)
    gae = np.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        gae = delta + gamma * lam * not_done * gae
        advantages[t] = gae
    return advantages, advantages + values


def test_gae_matches_numpy_reference_on_random_data():
    rng = np.random.default_rng(0)
    steps, envs = 37, 11
    rewards = rng.normal(size=(steps, envs)).astype(np.float32)
    values = rng.normal(size=(steps, envs)).astype(np.float32)
    dones = (rng.random((steps, envs)) < 0.15).astype(np.float32)
    last_value = rng.normal(size=envs).astype(np.float32)
    for gamma, lam in [(0.99, 0.8), (0.9, 1.0), (1.0, 0.0)]:
        expected_adv, expected_targets = numpy_gae(rewards, values, dones, last_value, gamma, lam)
        adv, targets = compute_gae(jnp.asarray(rewards), jnp.asarray(values),
                                   jnp.asarray(dones.astype(bool)), jnp.asarray(last_value),
                                   gamma, lam)
        np.testing.assert_allclose(np.asarray(adv), expected_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(targets), expected_targets, rtol=1e-5, atol=1e-5)


def test_gae_done_cuts_bootstrap():
    """A done at the last step ignores the bootstrap value entirely."""
    adv, _ = compute_gae(jnp.array([[1.0]]), jnp.array([[0.5]]), jnp.array([[True]]),
                         jnp.array([100.0]), 0.99, 0.8)
    assert float(adv[0, 0]) == 0.5
