"""A fork in the road: one unlucky trip, and how long a model-free TD agent avoids the better path.

The world is a corridor from the start to a fork, then two branches of equal length. The left
branch ends in a reward of 1, the right in a reward of `right_reward` < 1: left is better. On the
agent's first trip down the left branch (in each run, once) it meets a penalty of −`unlucky` at
the first left cell: bad luck, never repeated. States are cells; at every cell the agent can step
forward (away from the start) or back; at the fork "forward" is split into left and right.
Episodes end at either goal or after `max_steps`.

The agent is tabular Q-learning with ε-greedy exploration. After the unlucky trip the negative
value is backed up to the fork, so the greedy choice there is right; a left turn taken by
exploration is followed by turning back, because "back" has the higher value one cell into the
left branch. The question (from the source discussion on feedback loops): how often, and for how
long, does the agent keep avoiding the better branch, as a function of ε and of the size of the
unlucky penalty?

Cells: 0 … fork_at (the corridor, fork at `fork_at`), then left cells fork_at+1 … fork_at+L and
right cells fork_at+L+1 … fork_at+2L. Actions: 0 = forward / left at the fork, 1 = back,
2 = right at the fork (elsewhere: same as forward).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from devrl.core.base import ConfigError

FORWARD, BACK, RIGHT = 0, 1, 2


@dataclass(frozen=True)
class ForkWorld:
    fork_at: int = 2  # corridor cells before the fork (the fork is cell fork_at)
    branch: int = 3  # cells per branch, the goal being the last
    right_reward: float = 0.5
    unlucky: float = 1.0  # the one-off penalty on the first trip left
    max_steps: int = 30
    gamma: float = 0.9

    def validate(self) -> ForkWorld:
        if self.fork_at < 0 or self.branch < 2 or self.max_steps < 1:
            raise ConfigError(f"fork_at={self.fork_at}, branch={self.branch}, max_steps="
                              f"{self.max_steps} is not allowed: need fork_at >= 0, branch >= 2, "
                              "max_steps >= 1")
        if not 0 <= self.right_reward < 1:
            raise ConfigError(f"right_reward={self.right_reward!r} is not allowed: must be in "
                              "[0, 1) (left, worth 1, is the better branch)")
        if self.unlucky < 0:
            raise ConfigError(f"unlucky={self.unlucky!r} is not allowed: must be >= 0")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma={self.gamma!r} is not allowed: must be in (0, 1]")
        return self

    @property
    def num_cells(self) -> int:
        return self.fork_at + 1 + 2 * self.branch

    @property
    def left_entry(self) -> int:
        return self.fork_at + 1

    @property
    def right_entry(self) -> int:
        return self.fork_at + 1 + self.branch

    @property
    def left_goal(self) -> int:
        return self.fork_at + self.branch

    @property
    def right_goal(self) -> int:
        return self.fork_at + 2 * self.branch


def step(world: ForkWorld, cell: jax.Array, action: jax.Array, unlucky_left: jax.Array
         ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(next cell, reward, episode over, unlucky penalty still to come) for one move."""
    fork, left, right = world.fork_at, world.left_entry, world.right_entry
    in_left = (cell >= left) & (cell < right)
    forward = jnp.where(cell < fork, cell + 1,
                        jnp.where(cell == fork, jnp.where(action == RIGHT, right, left),
                                  jnp.minimum(cell + 1, jnp.where(in_left, world.left_goal,
                                                                  world.right_goal))))
    back = jnp.where(cell == left, fork, jnp.where(cell == right, fork,
                                                   jnp.maximum(cell - 1, 0)))
    nxt = jnp.where(action == BACK, back, forward)
    hit = unlucky_left & (nxt == left)
    reward = (jnp.where(nxt == world.left_goal, 1.0, 0.0)
              + jnp.where(nxt == world.right_goal, world.right_reward, 0.0)
              - jnp.where(hit, world.unlucky, 0.0))
    done = (nxt == world.left_goal) | (nxt == world.right_goal)
    return nxt, reward, done, unlucky_left & ~hit


@functools.partial(jax.jit, static_argnames=("world", "episodes"))
def _run_q_learning(world: ForkWorld, episodes: int, epsilon, learning_rate, key):
    """One run: Q-table [cells, 3]; per episode: branch taken (0 none, 1 left, 2 right), return,
    whether the greedy action at the fork is left, and whether the unlucky trip has happened."""
    q0 = jnp.zeros((world.num_cells, 3))

    def episode(carry, k):
        q, unlucky_left = carry

        def move(state, k_step):
            cell, done, unlucky_left, q, total, branch, t = state
            k_explore, k_action = jax.random.split(k_step)
            greedy = _greedy(q[cell], k_action)
            random_action = jax.random.randint(k_action, (), 0, 3)
            action = jnp.where(jax.random.uniform(k_explore) < epsilon, random_action, greedy)
            nxt, reward, ends, still = step(world, cell, action, unlucky_left)
            target = reward + jnp.where(ends, 0.0, world.gamma * jnp.max(q[nxt]))
            q_new = q.at[cell, action].add(learning_rate * (target - q[cell, action]))
            active = ~done
            branch = jnp.where(active & (branch == 0) & (nxt == world.left_entry), 1,
                               jnp.where(active & (branch == 0) & (nxt == world.right_entry), 2,
                                         branch))
            return (jnp.where(active, nxt, cell), done | ends,
                    jnp.where(active, still, unlucky_left), jnp.where(active, q_new, q),
                    total + jnp.where(active, reward, 0.0), branch, t + 1), None

        state = (jnp.int32(0), jnp.bool_(False), unlucky_left, q, jnp.float32(0.0),
                 jnp.int32(0), jnp.int32(0))
        (_, _, unlucky_left, q, total, branch, _), _ = jax.lax.scan(
            move, state, jax.random.split(k, world.max_steps))
        fork_q = q[world.fork_at]
        prefers_left = fork_q[FORWARD] > fork_q[RIGHT]
        return (q, unlucky_left), (branch, total, prefers_left, ~unlucky_left)

    _, out = jax.lax.scan(episode, (q0, jnp.bool_(True)), jax.random.split(key, episodes))
    return out


def _greedy(values: jax.Array, key: jax.Array) -> jax.Array:
    """Argmax with ties broken at random (all-zero initial Q-values are all ties)."""
    best = values == jnp.max(values)
    return jax.random.choice(key, values.shape[0], p=best / best.sum())


def q_learning_runs(world: ForkWorld, episodes: int, epsilon: float, learning_rate: float,
                    keys: jax.Array) -> dict[str, np.ndarray]:
    """Independent runs (one per key, vmapped): per run and episode, the branch taken, the
    return, whether the greedy fork choice is left, and whether the unlucky trip has happened."""
    world.validate()
    if not 0 <= epsilon <= 1:
        raise ConfigError(f"epsilon={epsilon!r} is not allowed: must be in [0, 1]")
    if not 0 < learning_rate <= 1:
        raise ConfigError(f"learning_rate={learning_rate!r} is not allowed: must be in (0, 1]")
    if episodes < 1:
        raise ConfigError(f"episodes={episodes!r} is not allowed: must be >= 1")
    branch, total, prefers_left, unlucky_done = jax.vmap(
        lambda k: _run_q_learning(world, episodes, jnp.float32(epsilon),
                                  jnp.float32(learning_rate), k))(keys)
    return {"branch": np.asarray(branch), "return": np.asarray(total),
            "prefers_left": np.asarray(prefers_left), "unlucky_done": np.asarray(unlucky_done)}


def avoidance(runs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per run: the episode of the unlucky trip, and how many episodes after it the greedy fork
    choice stays off the left branch (censored at the end: `recovered` false)."""
    unlucky_at = np.argmax(runs["unlucky_done"], axis=1)
    happened = runs["unlucky_done"].any(axis=1)
    durations, recovered = [], []
    for run, start in enumerate(unlucky_at):
        after = runs["prefers_left"][run, start:]
        back = np.flatnonzero(after)
        recovered.append(bool(happened[run] and len(back)))
        durations.append(int(back[0]) if len(back) else len(after))
    return {"unlucky_at": unlucky_at, "happened": happened,
            "avoided_for": np.array(durations), "recovered": np.array(recovered)}
