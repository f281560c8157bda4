"""Craftax-Classic with behaviour recording and pooled optimistic resets (gymnax-style interface).

Two wrappers, one concern each:

* `BehaviourWrapper` (one environment, no auto-reset) counts what the agent did in the current
  episode: return, length, plants placed, place-plant attempts, saplings collected, plants eaten
  and how often each action was chosen. The counts of a finished episode are in `info` on the step
  whose `done` is true.
* The reward can be changed (`TrainConfig.reward`, `REWARD_SPECS`): what the plant pays is
  rescaled or repeated, on top of the game's own reward; `default_return` always counts the
  game's own reward, so returns compare across reward structures.
* `PoolResetVecEnv` (a batch of environments) replaces finished episodes with fresh worlds drawn
  from a pool. The pool is generated only when it runs out, so world generation (about 1 ms a
  world on a CPU) costs about one world per finished episode instead of one per env per step. A
  pool of at least `num_envs` worlds never hands the same world to two episodes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from craftax.craftax_classic.constants import DIRECTIONS, Achievement, Action, BlockType
from craftax.craftax_classic.envs.craftax_symbolic_env import (
    CraftaxClassicSymbolicEnvNoAutoReset,
)
from flax import struct

from devrl.core.base import ConfigError
from devrl.core.config import CRAFTAX_ENV, REWARDS

NUM_ACTIONS = len(Action)
ACTION_NAMES = tuple(a.name.lower() for a in Action)
ACHIEVEMENT_NAMES = tuple(a.name.lower() for a in Achievement)
PLACE_PLANT = Action.PLACE_PLANT.value
DO = Action.DO.value
CONTEXTS = ("sapling_facing_grass", "sapling_elsewhere", "no_sapling")
# How the book names each plant context (the one mapping of the labels).
CONTEXT_LABELS = {"sapling_facing_grass": "sapling, facing grass",
                  "sapling_elsewhere": "sapling, elsewhere", "no_sapling": "no sapling"}
assert tuple(CONTEXT_LABELS) == CONTEXTS


EPISODE_FIELDS = (
    ("episode_return", "default_return", "episode_length", "plants_placed", "place_attempts",
     "saplings_collected", "plants_eaten")
    + tuple(f"achievement_{a}" for a in ACHIEVEMENT_NAMES)
    + tuple(f"action_{a}" for a in ACTION_NAMES)
)


@struct.dataclass
class RewardSpec:
    """How a reward structure pays for plants, relative to the game's own reward (which pays 1 for
    each achievement the first time it is unlocked in an episode, plus 0.1 per health point
    gained or lost)."""

    plant_first: float = 1.0  # paid when PLACE_PLANT is first unlocked in the episode
    plant_repeat: float = 0.0  # paid for every later successful placement in the episode


REWARD_SPECS = {
    "default": RewardSpec(),
    "no_plant": RewardSpec(plant_first=0.0),  # the achievement is still recorded
    "every_plant": RewardSpec(plant_repeat=1.0),  # every successful plant pays like the first
    "plant_x4": RewardSpec(plant_first=4.0),  # the first plant is worth four achievements
}
assert tuple(REWARD_SPECS) == REWARDS


def reward_spec(reward: str) -> RewardSpec:
    if reward not in REWARD_SPECS:
        raise ConfigError(f"reward={reward!r} is not allowed: must be one of "
                          f"{', '.join(REWARD_SPECS)}")
    return REWARD_SPECS[reward]


def shaped_reward(spec: RewardSpec, game_reward: jax.Array, placed: jax.Array,
                  had_plant_achievement: jax.Array) -> jax.Array:
    """The reward of `spec` on a step whose game reward is `game_reward`, where `placed` says a
    sapling was planted and `had_plant_achievement` that PLACE_PLANT was unlocked before it."""
    first = placed & ~had_plant_achievement
    repeat = placed & had_plant_achievement
    return (game_reward.astype(jnp.float32)
            + (spec.plant_first - 1.0) * first.astype(jnp.float32)
            + spec.plant_repeat * repeat.astype(jnp.float32))


def make_env(env_name: str) -> CraftaxClassicSymbolicEnvNoAutoReset:
    if env_name != CRAFTAX_ENV:
        raise ConfigError(f"env_name={env_name!r} is not allowed here: behaviour in Craftax "
                          f"needs {CRAFTAX_ENV}")
    return CraftaxClassicSymbolicEnvNoAutoReset()


def episode_vector(info: dict) -> jax.Array:
    """The finished-episode fields of one env's step info as a float32 vector (EPISODE_FIELDS)."""
    s = info["stats"]
    head = jnp.stack([s.episode_return, s.default_return, s.length, s.plants_placed,
                      s.place_attempts, s.saplings_collected, s.plants_eaten]).astype(jnp.float32)
    return jnp.concatenate([head, info["achievements"].astype(jnp.float32),
                            s.action_counts.astype(jnp.float32)])


@struct.dataclass
class EpisodeStats:
    """Running counts of the current episode (explicit dtypes: no Python scalars in state)."""

    episode_return: jax.Array  # float32: under the run's reward structure
    default_return: jax.Array  # float32: under the game's own reward
    length: jax.Array  # int32
    plants_placed: jax.Array  # int32: successful PLACE_PLANT (a sapling became a plant)
    place_attempts: jax.Array  # int32: PLACE_PLANT chosen, successful or not
    saplings_collected: jax.Array  # int32
    plants_eaten: jax.Array  # int32: ripe plants eaten
    action_counts: jax.Array  # int32[NUM_ACTIONS]

    @classmethod
    def zeros(cls) -> EpisodeStats:
        i = jnp.zeros((), jnp.int32)
        f = jnp.zeros((), jnp.float32)
        return cls(f, f, i, i, i, i, i,
                   jnp.zeros((NUM_ACTIONS,), jnp.int32))


@struct.dataclass
class BehaviourState:
    env_state: Any
    stats: EpisodeStats


def facing_block(env_state: Any) -> jax.Array:
    """Block type the player faces (OUT_OF_BOUNDS when the facing cell is off the map)."""
    pos = env_state.player_position + DIRECTIONS[env_state.player_direction]
    size = jnp.array(env_state.map.shape)
    inside = jnp.all((pos >= 0) & (pos < size))
    block = env_state.map[jnp.clip(pos[0], 0, size[0] - 1), jnp.clip(pos[1], 0, size[1] - 1)]
    return jnp.where(inside, block, BlockType.OUT_OF_BOUNDS.value)


def plant_context(env_state: Any) -> jax.Array:
    """0: sapling in inventory and facing grass; 1: sapling, not facing grass; 2: no sapling."""
    has_sapling = env_state.inventory.sapling > 0
    facing_grass = facing_block(env_state) == BlockType.GRASS.value
    return jnp.where(has_sapling, jnp.where(facing_grass, 0, 1), 2).astype(jnp.int32)


def _explicit(leaf: Any) -> jax.Array:
    """Python scalars in the world state (e.g. the initial direction) as typed arrays: a Python
    scalar in a jit argument makes every call retrace."""
    if isinstance(leaf, bool):
        return jnp.asarray(leaf, jnp.bool_)
    if isinstance(leaf, int):
        return jnp.asarray(leaf, jnp.int32)
    if isinstance(leaf, float):
        return jnp.asarray(leaf, jnp.float32)
    return leaf


class BehaviourWrapper:
    """One Craftax-Classic environment (no auto-reset) that counts plant-related behaviour and
    pays the reward structure `reward` (REWARD_SPECS)."""

    def __init__(self, env_name: str = CRAFTAX_ENV, reward: str = "default"):
        self.env = make_env(env_name)
        self.reward = reward
        self.spec = reward_spec(reward)
        self.default_params = self.env.default_params
        self.num_actions = self.env.num_actions

    def observation_size(self) -> int:
        return int(self.env.observation_space(self.default_params).shape[0])

    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, BehaviourState]:
        obs, env_state = self.env.reset_env(key, params)
        return obs, BehaviourState(jax.tree.map(_explicit, env_state), EpisodeStats.zeros())

    def step(self, key: jax.Array, state: BehaviourState, action: jax.Array, params: Any):
        before = state.env_state
        obs, after, game_reward, done, _ = self.env.step_env(key, before, action, params)
        awake = jnp.logical_not(before.is_sleeping)
        saplings_before = before.inventory.sapling
        saplings_after = after.inventory.sapling
        placed = saplings_after < saplings_before  # only planting consumes a sapling
        reward = shaped_reward(self.spec, game_reward, placed,
                               before.achievements[Achievement.PLACE_PLANT.value])
        ate = (awake & (action == DO)
               & (facing_block(before) == BlockType.RIPE_PLANT.value))
        old = state.stats
        stats = EpisodeStats(
            episode_return=old.episode_return + reward,
            default_return=old.default_return + game_reward.astype(jnp.float32),
            length=old.length + 1,
            plants_placed=old.plants_placed + placed.astype(jnp.int32),
            place_attempts=old.place_attempts + (action == PLACE_PLANT).astype(jnp.int32),
            saplings_collected=old.saplings_collected
            + (saplings_after > saplings_before).astype(jnp.int32),
            plants_eaten=old.plants_eaten + ate.astype(jnp.int32),
            action_counts=old.action_counts.at[action].add(1),
        )
        info = {"stats": stats, "achievements": after.achievements.astype(jnp.int32),
                "context": plant_context(before)}
        return obs, BehaviourState(after, stats), reward, done, info


@struct.dataclass
class PoolState:
    env_states: Any  # batched BehaviourState, leading axis num_envs
    pool_obs: jax.Array  # [pool_size, obs]
    pool_states: Any  # batched fresh BehaviourState, leading axis pool_size
    pool_next: jax.Array  # int32: index of the next unused fresh world
    worlds_generated: jax.Array  # int32: fresh worlds generated so far (excluding the first batch)
    worlds_reused: jax.Array  # int32: episodes that got an already used world (pool too small)


class PoolResetVecEnv:
    """A batch of `num_envs` environments with optimistic resets from a pool of fresh worlds.

    The interface PPO trains on (shared with `devrl.core.memory_task.CueMemoryVecEnv`): `reset`,
    `step`, `num_actions`, `default_params`, `observation_size()`, `episode_fields`,
    `episode_vectors(info)` ([num_envs, fields]), `running_episode_vectors(state)` and
    `state_metrics(state)`."""

    episode_fields = EPISODE_FIELDS

    def __init__(self, env: BehaviourWrapper, num_envs: int, pool_size: int):
        if not 1 <= pool_size:
            raise ConfigError(f"pool_size={pool_size} is not allowed: must be >= 1")
        self.env = env
        self.num_envs = num_envs
        self.pool_size = pool_size
        self.default_params = env.default_params
        self.num_actions = env.num_actions

    def observation_size(self) -> int:
        return self.env.observation_size()

    def episode_vectors(self, info: dict) -> jax.Array:
        return jax.vmap(episode_vector)(info)

    def running_episode_vectors(self, state: PoolState) -> jax.Array:
        """The fields of each env's current (unfinished) episode so far."""
        envs = state.env_states
        return jax.vmap(episode_vector)({"stats": envs.stats,
                                         "achievements": envs.env_state.achievements})

    def state_metrics(self, state: PoolState) -> dict[str, jax.Array]:
        return {"worlds_generated": state.worlds_generated.astype(jnp.float32),
                "worlds_reused": state.worlds_reused.astype(jnp.float32)}

    def _fresh(self, key: jax.Array, n: int, params: Any):
        return jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(key, n), params)

    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, PoolState]:
        k_envs, k_pool = jax.random.split(key)
        obs, states = self._fresh(k_envs, self.num_envs, params)
        pool_obs, pool_states = self._fresh(k_pool, self.pool_size, params)
        zero = jnp.zeros((), jnp.int32)
        return obs, PoolState(states, pool_obs, pool_states, zero, zero, zero)

    def step(self, key: jax.Array, state: PoolState, action: jax.Array, params: Any):
        k_step, k_pool = jax.random.split(key)
        keys = jax.random.split(k_step, self.num_envs)
        obs, env_states, reward, done, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None))(keys, state.env_states, action, params)

        num_done = done.sum(dtype=jnp.int32)
        refill = state.pool_next + num_done > self.pool_size

        def regenerate(_):
            return self._fresh(k_pool, self.pool_size, params)

        pool_obs, pool_states = jax.lax.cond(
            refill, regenerate, lambda _: (state.pool_obs, state.pool_states), None)
        start = jnp.where(refill, 0, state.pool_next)
        rank = jnp.cumsum(done.astype(jnp.int32)) - 1  # k-th finished env takes world start + k
        index = (start + rank) % self.pool_size

        def take(fresh, current):
            picked = fresh[index]
            mask = done.reshape(done.shape + (1,) * (current.ndim - 1))
            return jnp.where(mask, picked, current)

        obs = take(pool_obs, obs)
        env_states = jax.tree.map(take, pool_states, env_states)
        new_state = PoolState(
            env_states=env_states,
            pool_obs=pool_obs,
            pool_states=pool_states,
            pool_next=(start + num_done).astype(jnp.int32),
            worlds_generated=state.worlds_generated
            + jnp.where(refill, self.pool_size, 0).astype(jnp.int32),
            worlds_reused=state.worlds_reused
            + jnp.maximum(num_done - self.pool_size, 0).astype(jnp.int32),
        )
        return obs, new_state, reward, done, info
