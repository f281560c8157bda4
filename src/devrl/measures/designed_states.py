"""Designed stimulus states: Craftax worlds edited so that one plant context is isolated.

A probe set drawn from rollouts (`devrl.measures.behaviour`) mixes the plant contexts with
everything else the agent sees. Here the context is set by hand: a fresh world from the game's own
generator (`WORLDS` of them, fixed keys), with no creature anywhere, in which only two things are
changed: whether the player holds a sapling, and the block it faces. Every other observation
(the surroundings, the intrinsics, the light) is the world's own, so the policy's P(PLACE_PLANT)
in two designed states of one world differs only by the context.

`DESIGNED_STATES` lists the five states: a sapling in hand facing grass (where planting works),
facing stone, water or a plant already placed (where it fails), and facing grass without a sapling.
`render` draws a state with Craftax's own pixel renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from craftax.craftax_classic.constants import DIRECTIONS, BlockType

from devrl.core.base import ConfigError
from devrl.core.config import CRAFTAX_ENV
from devrl.core.envs import ACTION_NAMES, PLACE_PLANT, make_env

DESIGNED_SEED = 40_961  # the worlds' keys: jax.random.fold_in(PRNGKey(DESIGNED_SEED), world)
WORLDS = 32


@dataclass(frozen=True)
class Designed:
    name: str
    label: str  # for a reader
    facing: int  # BlockType value of the cell the player faces
    saplings: int  # saplings in the inventory
    works: bool  # whether PLACE_PLANT would plant here


DESIGNED_STATES = (
    Designed("sapling_grass", "sapling, facing grass", BlockType.GRASS.value, 1, True),
    Designed("sapling_stone", "sapling, facing stone", BlockType.STONE.value, 1, False),
    Designed("sapling_water", "sapling, facing water", BlockType.WATER.value, 1, False),
    Designed("sapling_plant", "sapling, facing a plant", BlockType.PLANT.value, 1, False),
    Designed("no_sapling_grass", "no sapling, facing grass", BlockType.GRASS.value, 0, False),
)
NAMES = tuple(d.name for d in DESIGNED_STATES)
LABELS = {d.name: d.label for d in DESIGNED_STATES}


def base_worlds(count: int = WORLDS, env_name: str = CRAFTAX_ENV) -> Any:
    """`count` fresh worlds of the game's generator (batched EnvState), the same on every call."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"count={count!r} is not allowed: must be a positive integer")
    env = make_env(env_name)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(DESIGNED_SEED), i))(
        jnp.arange(count))
    _, states = jax.vmap(env.reset_env, in_axes=(0, None))(keys, env.default_params)
    return states


def facing_cell(state: Any) -> jax.Array:
    """The map cell the player faces (one unbatched state)."""
    return state.player_position + DIRECTIONS[state.player_direction]


def design(state: Any, designed: Designed) -> Any:
    """One unbatched world `state` turned into `designed`: no creature, the faced cell set to
    `designed.facing`, `designed.saplings` saplings in the inventory; nothing else changed."""
    cell = facing_cell(state)
    no_mobs = {kind: getattr(state, kind).replace(mask=jnp.zeros_like(getattr(state, kind).mask))
               for kind in ("zombies", "cows", "skeletons", "arrows")}
    return state.replace(
        map=state.map.at[cell[0], cell[1]].set(designed.facing),
        mob_map=jnp.zeros_like(state.mob_map),
        inventory=state.inventory.replace(sapling=jnp.asarray(designed.saplings, jnp.int32)),
        **no_mobs)


def designed_batch(worlds: Any) -> tuple[Any, pd.DataFrame]:
    """Every designed state in every world of `worlds` (batched, `base_worlds`): the states
    (batched, designed state major) and a frame naming each (`state`, `world`)."""
    count = int(worlds.map.shape[0])
    states = [jax.vmap(lambda s, d=d: design(s, d))(worlds) for d in DESIGNED_STATES]
    batch = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *states)
    index = pd.DataFrame({"state": np.repeat(NAMES, count),
                          "world": np.tile(np.arange(count), len(NAMES))})
    return batch, index


def observations(states: Any, env_name: str = CRAFTAX_ENV) -> np.ndarray:
    """The symbolic observations the policy sees in `states` (batched) [N, D]."""
    env = make_env(env_name)
    return np.asarray(jax.vmap(env.get_obs)(states), np.float32)


def policy_table(probs: np.ndarray, index: pd.DataFrame) -> pd.DataFrame:
    """Per designed state and world (`index`): P(PLACE_PLANT), the most likely action and its
    probability, from the action probabilities `probs` [N, A] in the order of `index`."""
    if probs.shape != (len(index), len(ACTION_NAMES)):
        raise ValueError(f"probs has shape {probs.shape}, expected {(len(index), len(ACTION_NAMES))}")
    out = index.copy()
    out["p_place_plant"] = probs[:, PLACE_PLANT].astype(np.float64)
    out["top_action"] = np.asarray(ACTION_NAMES)[probs.argmax(-1)]
    out["p_top"] = probs.max(-1).astype(np.float64)
    return out


def pixel_renderer(block_pixel_size: int):
    """Craftax's pixel renderer for one state, made without the messages Craftax prints while it
    loads its textures (they would land in the book's pages). Allowed sizes: those Craftax ships
    textures for (7, 16, 64)."""
    import contextlib
    import io

    from craftax.craftax_classic.renderer import make_craftax_pixel_renderer

    if block_pixel_size not in (7, 16, 64):
        raise ConfigError(f"block_pixel_size={block_pixel_size!r} is not allowed: must be one of "
                          "7, 16, 64 (the sizes Craftax ships textures for)")
    with contextlib.redirect_stdout(io.StringIO()):
        return make_craftax_pixel_renderer(block_pixel_size)


def render(state: Any, block_pixel_size: int = 16) -> np.ndarray:
    """One unbatched state as Craftax draws it for a person (uint8 RGB, the 9 × 7 view and the
    inventory below it; `pixel_renderer` checks the size)."""
    pixels = jax.jit(pixel_renderer(block_pixel_size))(state)
    return np.asarray(jnp.clip(pixels, 0, 255)).astype(np.uint8)
