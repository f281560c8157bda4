"""A memory task whose answer is known: a cue seen once decides which action pays, DELAY steps later.

Each episode lasts DELAY + 1 steps. At t = 0 the observation shows the cue, one of two one-hot
vectors; from t = 1 to DELAY - 1 the cue bits are zero; at t = DELAY a "go" bit is set and the
episode's only reward comes: 1 if the action equals the cue, else 0. Actions before t = DELAY do
nothing. Every observation also carries NOISE_DIMS channels of fresh standard normal noise, so a
memory keeps the cue only if it learns to ignore them (an untrained GRU's trace of the cue is
partly overwritten: the probes' untrained control is not trivially perfect).

So an agent that remembers the cue for DELAY steps earns 1 per episode, and any agent without
memory earns 0.5 at best in expectation (at t = DELAY its observation is the same for both cues).
Its memory horizon at the decision step is exactly DELAY steps: resetting the hidden state fewer
than DELAY steps back erases the cue, resetting it DELAY or more steps back does not. The cue is
information absent from the current observation after t = 0 and present earlier, so it is the
known answer for the hidden-state probes as well.

`CueMemoryVecEnv` has the vectorised interface PPO trains on (see
`devrl.core.envs.PoolResetVecEnv`); it is selected with `env_name = "Cue-Memory-v0"` and trains
through the same code as Craftax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

DELAY = 8
NOISE_DIMS = 4
OBS_SIZE = 3 + NOISE_DIMS  # cue left, cue right, go, noise
NUM_ACTIONS = 2
EPISODE_FIELDS = ("episode_return", "episode_length", "correct")


@struct.dataclass
class CueState:
    cue: jax.Array  # int32 [n]: the action that pays this episode
    t: jax.Array  # int32 [n]: step within the episode, 0 .. DELAY


def observe(key: jax.Array, cue: jax.Array, t: jax.Array, delay: int = DELAY) -> jax.Array:
    shown = (t == 0)[:, None] & (jnp.arange(2)[None, :] == cue[:, None])
    go = (t == delay)[:, None]
    noise = jax.random.normal(key, (cue.shape[0], NOISE_DIMS), jnp.float32)
    return jnp.concatenate([shown.astype(jnp.float32), go.astype(jnp.float32), noise], axis=-1)


class CueMemoryVecEnv:
    """`num_envs` cue-memory episodes with automatic resets (a finished episode's next
    observation is the first of a new episode with a fresh cue)."""

    episode_fields = EPISODE_FIELDS
    num_actions = NUM_ACTIONS
    default_params = None

    def __init__(self, num_envs: int, delay: int = DELAY):
        self.num_envs = num_envs
        self.delay = delay

    def observation_size(self) -> int:
        return OBS_SIZE

    def reset(self, key: jax.Array, params=None) -> tuple[jax.Array, CueState]:
        k_cue, k_noise = jax.random.split(key)
        cue = jax.random.randint(k_cue, (self.num_envs,), 0, 2, jnp.int32)
        t = jnp.zeros((self.num_envs,), jnp.int32)
        return observe(k_noise, cue, t, self.delay), CueState(cue, t)

    def step(self, key: jax.Array, state: CueState, action: jax.Array, params=None):
        done = state.t == self.delay
        reward = (done & (action == state.cue)).astype(jnp.float32)
        k_cue, k_noise = jax.random.split(key)
        fresh = jax.random.randint(k_cue, (self.num_envs,), 0, 2, jnp.int32)
        cue = jnp.where(done, fresh, state.cue)
        t = jnp.where(done, 0, state.t + 1).astype(jnp.int32)
        length = jnp.full((self.num_envs,), self.delay + 1, jnp.float32)
        info = {"episode": jnp.stack([reward, length, reward], axis=-1),
                "cue": state.cue, "t": state.t}
        return observe(k_noise, cue, t, self.delay), CueState(cue, t), reward, done, info

    def episode_vectors(self, info: dict) -> jax.Array:
        return info["episode"]

    def running_episode_vectors(self, state: CueState) -> jax.Array:
        zero = jnp.zeros((self.num_envs,), jnp.float32)
        return jnp.stack([zero, state.t.astype(jnp.float32), zero], axis=-1)

    def state_metrics(self, state: CueState) -> dict[str, jax.Array]:
        return {}
