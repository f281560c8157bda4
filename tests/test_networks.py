"""The recurrent core forgets at episode boundaries; the feedforward net has no memory."""

import jax
import jax.numpy as jnp
import numpy as np

from devrl.core.networks import ActorCritic, initial_hidden


def test_recurrent_hidden_state_resets_at_episode_start():
    net = ActorCritic(action_dim=5, width=16, depth=2, memory=8)
    batch, steps, dim = 3, 6, 7
    obs = jax.random.normal(jax.random.PRNGKey(0), (steps, batch, dim))
    resets = jnp.zeros((steps, batch), bool).at[0].set(True).at[3].set(True)
    params = net.init(jax.random.PRNGKey(1), initial_hidden(batch, 8), obs, resets)
    # Start from a non-zero hidden state: the reset at t=0 must discard it too.
    stale = jax.random.normal(jax.random.PRNGKey(2), (batch, 8))
    _, logits, values = net.apply(params, stale, obs, resets)
    _, fresh_logits, fresh_values = net.apply(
        params, initial_hidden(batch, 8), obs[3:], jnp.zeros((3, batch), bool).at[0].set(True))
    np.testing.assert_allclose(logits[3:], fresh_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values[3:], fresh_values, rtol=1e-6, atol=1e-6)
    _, first_logits, _ = net.apply(params, initial_hidden(batch, 8), obs[:3], resets[:3])
    np.testing.assert_allclose(logits[:3], first_logits, rtol=1e-6, atol=1e-6)
    # Without the reset the memory carries over, so the check above is not vacuous.
    _, carried, _ = net.apply(params, stale, obs, resets.at[3].set(False))
    assert not np.allclose(carried[3:], fresh_logits, atol=1e-4)


def test_feedforward_ignores_hidden_and_resets():
    net = ActorCritic(action_dim=5, width=16, depth=3, memory=0)
    obs = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 7))
    params = net.init(jax.random.PRNGKey(1), initial_hidden(2, 0), obs, jnp.zeros((4, 2), bool))
    hidden, a, _ = net.apply(params, initial_hidden(2, 0), obs, jnp.zeros((4, 2), bool))
    _, b, _ = net.apply(params, initial_hidden(2, 0), obs, jnp.ones((4, 2), bool))
    assert hidden.shape == (2, 0)
    np.testing.assert_array_equal(a, b)
    names = set(params["params"])
    assert {"actor_0", "actor_2", "actor_out", "critic_0", "critic_2", "critic_out"} <= names
