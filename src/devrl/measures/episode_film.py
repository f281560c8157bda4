"""One episode of a checkpoint, recorded step by step and drawn with Craftax's own renderer.

`record_episode` plays one episode (a fixed world and fixed sampling keys, so every checkpoint
meets the same world) and returns every state the policy acted in with a table of what it did:
the action, the plant context it was in, whether a sapling was planted, the reward. `key_frames`
picks the steps a film strip shows (the first PLACE_PLANT attempts, else evenly spaced steps),
`annotated_frames` draws the states with the step and the action under each, and `animation`
writes them as an animated WebP.
"""

from __future__ import annotations

import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.core.config import TrainConfig
from devrl.core.envs import ACTION_NAMES, CONTEXTS, PLACE_PLANT, BehaviourWrapper
from devrl.core.networks import initial_hidden, with_zeros_for_missing
from devrl.core.ppo import make_network

FILM_SEED = 52_361  # the world and the sampling keys of every recorded episode


def record_episode(config: TrainConfig, params: Any, max_steps: int, seed: int = FILM_SEED
                   ) -> tuple[Any, pd.DataFrame]:
    """Play one episode of the policy `params` (an actor-only checkpoint is completed with a zero
    critic) for at most `max_steps` steps. Returns the env states it acted in (batched over
    time, one per row of the table) and the table: `t`, `action`, `context`, `planted`,
    `reward`, `done` (the episode ended on this step)."""
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
        raise ConfigError(f"max_steps={max_steps!r} is not allowed: must be a positive integer")
    env = BehaviourWrapper(config.env_name, config.reward)
    env_params = env.default_params
    network = make_network(config, env.num_actions)
    key = jax.random.PRNGKey(seed)
    obs, state = env.reset(jax.random.fold_in(key, 0), env_params)
    hidden = initial_hidden(1, config.memory)
    full = with_zeros_for_missing(network, params, hidden, obs[None, None],
                                  jnp.ones((1, 1), bool))

    @jax.jit
    def play(full, obs, state, hidden):
        def step(carry, t):
            obs, state, hidden, first = carry
            k_act, k_env = jax.random.split(jax.random.fold_in(key, t + 1))
            hidden, logits, _ = network.apply(full, hidden, obs[None, None], first[None, None])
            action = jax.random.categorical(k_act, logits[0, 0])
            next_obs, next_state, reward, done, info = env.step(k_env, state, action, env_params)
            planted = (next_state.stats.plants_placed > state.stats.plants_placed)
            return ((next_obs, next_state, hidden, jnp.zeros((), bool)),
                    (state.env_state, action, info["context"], planted, reward, done))

        _, out = jax.lax.scan(step, (obs, state, hidden, jnp.ones((), bool)),
                              jnp.arange(max_steps))
        return out

    states, actions, contexts, planted, rewards, done = jax.device_get(
        play(full, obs, state, hidden))
    done = np.asarray(done, bool)
    length = int(np.argmax(done)) + 1 if done.any() else max_steps
    table = pd.DataFrame({
        "t": np.arange(length), "action": np.asarray(ACTION_NAMES)[actions[:length]],
        "context": np.asarray(CONTEXTS)[contexts[:length]], "planted": planted[:length],
        "reward": rewards[:length].astype(np.float64), "done": done[:length]})
    return jax.tree.map(lambda leaf: leaf[:length], states), table


def key_frames(table: pd.DataFrame, count: int) -> list[int]:
    """The `count` steps a film strip shows: the first PLACE_PLANT attempts, topped up with
    evenly spaced steps of the episode when there are fewer (sorted, distinct)."""
    if count < 1:
        raise ConfigError(f"count={count!r} is not allowed: must be a positive integer")
    attempts = table.loc[table["action"] == ACTION_NAMES[PLACE_PLANT], "t"].tolist()[:count]
    chosen = set(int(t) for t in attempts)
    spaced = np.linspace(0, len(table) - 1, num=min(count, len(table))).round().astype(int)
    for t in spaced:
        if len(chosen) >= min(count, len(table)):
            break
        chosen.add(int(t))
    return sorted(chosen)


def caption(row: pd.Series) -> str:
    """What the film writes under a frame: the step, the action and, for PLACE_PLANT, whether a
    sapling was planted."""
    text = f"t = {int(row['t'])}: {row['action']}"
    if row["action"] == ACTION_NAMES[PLACE_PLANT]:
        text += " (planted)" if row["planted"] else " (nothing)"
    return text


def frames(states: Any, steps: list[int], block_pixel_size: int = 16) -> np.ndarray:
    """The states of `steps` drawn by Craftax's renderer (uint8 RGB [len(steps), H, W, 3])."""
    from devrl.measures.designed_states import pixel_renderer

    render = jax.jit(jax.vmap(pixel_renderer(block_pixel_size)))
    picked = jax.tree.map(lambda leaf: leaf[np.asarray(steps, int)], states)
    return np.asarray(jnp.clip(render(picked), 0, 255)).astype(np.uint8)


def annotated_frames(states: Any, table: pd.DataFrame, steps: list[int] | None = None,
                     block_pixel_size: int = 16) -> list[np.ndarray]:
    """The states of `steps` (default: all) drawn by Craftax's renderer, each with the step
    and its action (`caption`, on two lines) in a band underneath (uint8 RGB)."""
    from PIL import Image, ImageDraw, ImageFont

    steps = list(range(len(table))) if steps is None else steps
    font = ImageFont.load_default(size=max(10, block_pixel_size * 3 // 4))
    line = max(12, block_pixel_size)
    out = []
    for image, t in zip(frames(states, steps, block_pixel_size), steps):
        canvas = Image.new("RGB", (image.shape[1], image.shape[0] + 2 * line + 2), "white")
        canvas.paste(Image.fromarray(image), (0, 0))
        head, _, rest = caption(table.iloc[t]).partition(": ")
        draw = ImageDraw.Draw(canvas)
        draw.text((3, image.shape[0] + 1), head, fill="black", font=font)
        draw.text((3, image.shape[0] + 1 + line), rest, fill="black", font=font)
        out.append(np.asarray(canvas))
    return out


def animation(frames: list[np.ndarray], milliseconds: int = 120, quality: int = 60) -> bytes:
    """`frames` as an animated WebP that loops (lossy at `quality`)."""
    from PIL import Image

    if not frames:
        raise ConfigError("frames=[] is not allowed: an animation needs at least one frame")
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="WEBP", save_all=True, append_images=images[1:],
                   duration=milliseconds, loop=0, quality=quality, method=4)
    return buffer.getvalue()
