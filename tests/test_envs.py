"""Behaviour counting on scripted states, and the pooled optimistic resets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from craftax.craftax_classic.constants import Achievement, Action, BlockType

from devrl.core.envs import BehaviourWrapper, PoolResetVecEnv, plant_context

RIGHT, LEFT = 2, 1  # player_direction values: facing (0, +1) and (0, -1)


@pytest.fixture(scope="module")
def wrapper():
    return BehaviourWrapper()


@pytest.fixture(scope="module")
def step(wrapper):
    return jax.jit(wrapper.step)


def scripted_state(wrapper, direction, block, saplings):
    """A fresh world with the player facing `block` and holding `saplings` saplings."""
    _, state = wrapper.reset(jax.random.PRNGKey(3), wrapper.default_params)
    env = state.env_state
    pos = env.player_position
    offset = jnp.array([0, 1]) if direction == RIGHT else jnp.array([0, -1])
    target = pos + offset
    env = env.replace(
        map=env.map.at[target[0], target[1]].set(block),
        player_direction=jnp.asarray(direction, dtype=env.player_direction.dtype),
        inventory=env.inventory.replace(
            sapling=jnp.asarray(saplings, dtype=env.inventory.sapling.dtype)))
    return state.replace(env_state=env), target


def do(step, wrapper, state, action, seed=0):
    return step(jax.random.PRNGKey(seed), state, jnp.int32(action), wrapper.default_params)


def test_place_plant_counts_success_and_failures(wrapper, step):
    place = Action.PLACE_PLANT.value
    # 1. sapling in hand, facing grass: the sapling becomes a plant.
    state, target = scripted_state(wrapper, RIGHT, BlockType.GRASS.value, 1)
    assert int(plant_context(state.env_state)) == 0
    _, state, _, _, _ = do(step, wrapper, state, place)
    assert int(state.env_state.map[target[0], target[1]]) == BlockType.PLANT.value
    assert int(state.env_state.inventory.sapling) == 0
    assert (int(state.stats.plants_placed), int(state.stats.place_attempts)) == (1, 1)
    # 2. no sapling left, facing fresh grass: an attempt, not a plant.
    env = state.env_state
    left = env.player_position + jnp.array([0, -1])
    state = state.replace(env_state=env.replace(
        map=env.map.at[left[0], left[1]].set(BlockType.GRASS.value),
        player_direction=jnp.asarray(LEFT, dtype=env.player_direction.dtype)))
    assert int(plant_context(state.env_state)) == 2
    _, state, _, _, _ = do(step, wrapper, state, place, seed=1)
    assert int(state.env_state.map[left[0], left[1]]) == BlockType.GRASS.value
    assert (int(state.stats.plants_placed), int(state.stats.place_attempts)) == (1, 2)
    assert int(state.stats.action_counts[place]) == 2


def test_place_plant_facing_stone_fails(wrapper, step):
    state, target = scripted_state(wrapper, RIGHT, BlockType.STONE.value, 1)
    assert int(plant_context(state.env_state)) == 1
    _, state, _, _, _ = do(step, wrapper, state, Action.PLACE_PLANT.value)
    assert int(state.env_state.map[target[0], target[1]]) == BlockType.STONE.value
    assert int(state.env_state.inventory.sapling) == 1
    assert (int(state.stats.plants_placed), int(state.stats.place_attempts)) == (0, 1)


def test_eating_a_ripe_plant_is_counted(wrapper, step):
    state, _ = scripted_state(wrapper, RIGHT, BlockType.RIPE_PLANT.value, 0)
    _, state, _, _, _ = do(step, wrapper, state, Action.DO.value)
    assert int(state.stats.plants_eaten) == 1
    _, state, _, _, _ = do(step, wrapper, state, Action.DO.value, seed=2)  # now unripe
    assert int(state.stats.plants_eaten) == 1


def test_stats_dtypes_are_explicit(wrapper):
    _, state = wrapper.reset(jax.random.PRNGKey(0), wrapper.default_params)
    for leaf in jax.tree.leaves(state.stats):
        assert isinstance(leaf, jax.Array) and leaf.dtype in (jnp.int32, jnp.float32)


def _finish(states, which, params):
    """Make the envs in `which` end their episode on the next step (time limit)."""
    env = states.env_states.env_state
    timestep = env.timestep.at[jnp.asarray(which)].set(params.max_timesteps - 1)
    return states.replace(env_states=states.env_states.replace(
        env_state=env.replace(timestep=timestep)))


@pytest.mark.parametrize("num_done,pool_size", [(2, 4), (1, 4), (4, 2)])
def test_pool_resets_replace_only_finished_envs(num_done, pool_size):
    vec = PoolResetVecEnv(BehaviourWrapper(), num_envs=4, pool_size=pool_size)
    params = vec.default_params
    _, state = jax.jit(vec.reset)(jax.random.PRNGKey(0), params)
    which = [1, 3] if num_done == 2 else ([2] if num_done == 1 else [0, 1, 2, 3])
    state = _finish(state, which, params)
    pool_before = state.pool_states.env_state.map
    obs, new, _, done, info = jax.jit(vec.step)(
        jax.random.PRNGKey(1), state, jnp.zeros(4, jnp.int32), params)
    assert sorted(np.flatnonzero(np.asarray(done)).tolist()) == which
    maps = np.asarray(new.env_states.env_state.map)
    timesteps = np.asarray(new.env_states.env_state.timestep)
    lengths = np.asarray(new.env_states.stats.length)
    pool_maps = np.asarray(new.pool_states.env_state.map)
    for k, env_index in enumerate(which):
        # k-th finished env takes the k-th unused fresh world (mod pool size): reset state.
        np.testing.assert_array_equal(maps[env_index], pool_maps[k % pool_size])
        assert timesteps[env_index] == 0 and lengths[env_index] == 0
        assert int(info["stats"].length[env_index]) == 1  # the finished episode's own count
    for env_index in set(range(4)) - set(which):
        assert timesteps[env_index] == 1 and lengths[env_index] == 1
    used = [pool_maps[k % pool_size].tobytes() for k in range(len(which))]
    reused = max(len(which) - pool_size, 0)
    assert len(set(used)) == len(which) - reused  # distinct worlds unless the pool is too small
    assert int(new.worlds_reused) == reused
    refilled = len(which) > pool_size
    assert int(new.worlds_generated) == (pool_size if refilled else 0)
    assert np.array_equal(np.asarray(pool_before), pool_maps) != refilled
    np.testing.assert_array_equal(np.asarray(obs[which[0]]),
                                  np.asarray(new.pool_obs[0]))


# Extra reward each step pays over the game's own, per variant, on the scripted sequence of
# test_reward_variants_on_a_scripted_sequence: first plant, a second plant, a failed attempt,
# and a step that is not about plants.
VARIANT_EXTRA = {
    "default": (0.0, 0.0, 0.0, 0.0),
    "no_plant": (-1.0, 0.0, 0.0, 0.0),
    "every_plant": (0.0, 1.0, 0.0, 0.0),
    "plant_x4": (3.0, 0.0, 0.0, 0.0),
}


def plant_sequence(variant: str):
    """(reward, game reward) of each step of the scripted sequence under `variant`, and the
    final state. The game's own dynamics and keys are the same for every variant."""
    wrapper = BehaviourWrapper(reward=variant)
    step = jax.jit(wrapper.step)
    place = Action.PLACE_PLANT.value
    state, _ = scripted_state(wrapper, RIGHT, BlockType.GRASS.value, 2)
    out = []

    def act(state, action, seed):
        game_before = state.stats.default_return
        _, state, reward, _, _ = do(step, wrapper, state, action, seed=seed)
        out.append((float(reward), float(state.stats.default_return - game_before)))
        return state

    state = act(state, place, 0)  # 1. the first plant of the episode
    env = state.env_state
    left = env.player_position + jnp.array([0, -1])
    state = state.replace(env_state=env.replace(  # face fresh grass, one sapling left
        map=env.map.at[left[0], left[1]].set(BlockType.GRASS.value),
        player_direction=jnp.asarray(LEFT, dtype=env.player_direction.dtype)))
    state = act(state, place, 1)  # 2. a second plant
    state = act(state, place, 2)  # 3. no sapling left: an attempt that plants nothing
    state = act(state, Action.NOOP.value, 3)  # 4. nothing to do with plants
    return out, state


@pytest.mark.parametrize("variant", list(VARIANT_EXTRA))
def test_reward_variants_on_a_scripted_sequence(variant):
    default, _ = plant_sequence("default")
    steps, state = plant_sequence(variant)
    assert int(state.stats.plants_placed) == 2 and int(state.stats.place_attempts) == 3
    # The achievement is recorded under every variant, including the one that does not pay it.
    assert bool(state.env_state.achievements[Achievement.PLACE_PLANT.value])
    game = [g for _, g in steps]
    assert game == [g for _, g in default]  # same world, same game reward
    assert game[0] >= 1.0  # the first plant unlocks PLACE_PLANT in the game's own reward
    extra = [r - g for r, g in steps]
    np.testing.assert_allclose(extra, VARIANT_EXTRA[variant], atol=1e-6)
    np.testing.assert_allclose(float(state.stats.episode_return), sum(r for r, _ in steps),
                               rtol=1e-6)
    np.testing.assert_allclose(float(state.stats.default_return), sum(game), rtol=1e-6)


def test_unknown_reward_is_a_clear_error():
    from devrl.core.base import ConfigError
    from devrl.core.config import make_config

    with pytest.raises(ConfigError, match="reward='plant_x5'.*default, no_plant, every_plant"):
        BehaviourWrapper(reward="plant_x5")
    with pytest.raises(ConfigError, match="reward='plant_x5'.*default, no_plant, every_plant"):
        make_config("cpu", reward="plant_x5")
    with pytest.raises(ConfigError, match="reward='no_plant'.*Cue-Memory-v0"):
        make_config("smoke", env_name="Cue-Memory-v0", reward="no_plant")


def test_reward_field_keeps_the_hash_of_runs_made_before_it():
    from devrl.core.config import make_config

    # The committed data/craftax-cpu runs (seed 0) were hashed before `reward` existed.
    assert make_config("cpu").config_hash() == "394ede7e0aa4344c"
    assert make_config("cpu", reward="no_plant").config_hash() != "394ede7e0aa4344c"
