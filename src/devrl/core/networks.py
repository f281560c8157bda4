"""Actor-critic networks: separate actor and critic MLPs (the Craftax PPO baseline), with an
optional GRU memory core of width `memory` whose output is concatenated to the observation."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.initializers import constant, orthogonal

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


class ResetGRU(nn.Module):
    """A GRU over time (axis 0) whose hidden state is zeroed where `resets` is true."""

    features: int

    @functools.partial(
        nn.scan, variable_broadcast="params", in_axes=0, out_axes=0,
        split_rngs={"params": False})
    @nn.compact
    def __call__(self, hidden, inputs):
        x, resets = inputs
        hidden = jnp.where(resets[:, None], jnp.zeros_like(hidden), hidden)
        hidden, y = nn.GRUCell(features=self.features)(hidden, x)
        return hidden, y


class ActorCritic(nn.Module):
    """Maps (hidden [B, memory], obs [T, B, D], resets [T, B]) to (hidden, logits, values).

    `resets[t, b]` is true when obs[t, b] is the first observation of an episode. With memory=0
    the network is the feedforward baseline and `hidden` has width 0.
    """

    action_dim: int
    width: int = 512
    depth: int = 3
    activation: str = "tanh"
    memory: int = 0

    @nn.compact
    def __call__(self, hidden, obs, resets):
        act = ACTIVATIONS[self.activation]
        x = obs
        if self.memory:
            embedding = act(nn.Dense(self.memory, kernel_init=orthogonal(np.sqrt(2)),
                                     bias_init=constant(0.0), name="memory_in")(obs))
            hidden, memory_out = ResetGRU(self.memory, name="memory")(hidden, (embedding, resets))
            x = jnp.concatenate([obs, memory_out], axis=-1)

        def mlp(h, prefix, out_dim, out_scale):
            for i in range(self.depth):
                h = act(nn.Dense(self.width, kernel_init=orthogonal(np.sqrt(2)),
                                 bias_init=constant(0.0), name=f"{prefix}_{i}")(h))
            return nn.Dense(out_dim, kernel_init=orthogonal(out_scale),
                            bias_init=constant(0.0), name=f"{prefix}_out")(h)

        logits = mlp(x, "actor", self.action_dim, 0.01)
        values = mlp(x, "critic", 1, 1.0)[..., 0]
        return hidden, logits, values


def initial_hidden(batch: int, memory: int) -> jax.Array:
    return jnp.zeros((batch, memory), jnp.float32)


def with_zeros_for_missing(network: ActorCritic, params, hidden, obs, resets):
    """`params` completed with zeros for every layer it lacks (e.g. the critic of an exported
    actor-only checkpoint), so that `network.apply` runs; the zero layers' outputs (the values)
    are not meant to be used, and XLA drops them when nothing reads them."""
    shapes = jax.eval_shape(network.init, jax.random.PRNGKey(0), hidden, obs, resets)
    have = params["params"]
    return {"params": {name: have[name] if name in have else jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), leaf) for name, leaf in shapes["params"].items()}}
