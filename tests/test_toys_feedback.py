"""The feedback-loop toys: transition rules on scripted trajectories, the credit-assignment
mechanism (no reward, no update without a learned value), determinism, and the data tables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from devrl.core.base import ConfigError
from devrl.toys import fork, lagoon


def _walk(env, start, actions, step_fn):
    state, rewards, states = jnp.int32(start), [], []
    for action in actions:
        state, reward = step_fn(env, state, jnp.int32(action))
        states.append(int(state))
        rewards.append(float(reward))
    return states, rewards


def test_lagoon_transitions_on_scripted_trajectories():
    env = lagoon.Lagoon(track=6, lagoon=3, entrance=2, power_up=0.2)
    L, S = lagoon.LEFT, lagoon.STRAIGHT
    # Racing: six moves from cell 0 complete one lap (paid on leaving the last cell); steering
    # off the entrance changes nothing.
    states, rewards = _walk(env, 0, [S, L, S, S, S, S], lagoon.step)
    assert states == [1, 2, 3, 4, 5, 0] and rewards == [0, 0, 0, 0, 0, 1.0]
    # Left at the entrance enters the lagoon; three lefts circle it once (the power-up), then
    # straight leaves it to the cell after the entrance.
    states, rewards = _walk(env, 2, [L, L, L, L, S], lagoon.step)
    assert states == [6, 7, 8, 6, 3] and rewards == pytest.approx([0, 0, 0, 0.2, 0])


def test_fork_transitions_on_scripted_trajectories():
    world = fork.ForkWorld(fork_at=2, branch=3, right_reward=0.5, unlucky=1.0)
    F, B, R = fork.FORWARD, fork.BACK, fork.RIGHT

    def walk(actions, unlucky=True):
        cell, flag, out = jnp.int32(0), jnp.bool_(unlucky), []
        for action in actions:
            cell, reward, done, flag = fork.step(world, cell, jnp.int32(action), flag)
            out.append((int(cell), float(reward), bool(done)))
        return out, bool(flag)

    # Left (forward at the fork) meets the one-off penalty at the first left cell.
    path, flag = walk([F, F, F, F, F])
    assert [c for c, _, _ in path] == [1, 2, 3, 4, 5] and path[2][1] == -1.0
    assert path[-1] == (5, 1.0, True) and flag is False
    # Without the penalty pending, the same path pays only the goal.
    path, _ = walk([F, F, F, F, F], unlucky=False)
    assert [r for _, r, _ in path] == [0, 0, 0, 0, 1.0]
    # Right at the fork; back from a branch's first cell returns to the fork; back at 0 stays.
    path, flag = walk([B, F, F, R, B, R, F, F])
    assert [c for c, _, _ in path] == [0, 1, 2, 6, 2, 6, 7, 8]
    assert path[-1] == (8, 0.5, True) and flag is True  # the right branch has no penalty


def test_without_reward_only_a_learned_value_moves_the_policy():
    """An update from episodes with no reward: exactly zero for Monte-Carlo REINFORCE; not zero
    for a baseline or a TD critic whose values are not zero (learned while racing)."""
    env = lagoon.Lagoon()
    theta = {"bias": jnp.float32(0.3), "w": jnp.full(env.num_states, 2.0)}
    key = jax.random.PRNGKey(0)
    states, actions, rewards, nexts = lagoon.rollout(env, theta, 0.5, key, 4)
    batch = (states, actions, jnp.zeros_like(rewards), nexts)  # a trap: no reward at all
    learned = jnp.linspace(0.5, 1.0, env.num_states)
    for learner, values, moves in [("reinforce", jnp.zeros(env.num_states), False),
                                   ("reinforce_baseline", learned, True),
                                   ("actor_critic", learned, True)]:
        new, _ = lagoon._learner_update(env, learner, theta, values, 0.5, 1.0, 0.5, batch)
        step = float(jnp.abs(new["w"] - theta["w"]).sum() + jnp.abs(new["bias"] - theta["bias"]))
        assert (step > 0) == moves, learner


def test_runs_are_deterministic_and_validated():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    a = lagoon.runs(lagoon.Lagoon(), "actor_critic", 12, 2, keys, 6, 8.0)
    b = lagoon.runs(lagoon.Lagoon(), "actor_critic", 12, 2, keys, 6, 8.0)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert a["lagoon_share"][:, :6].max() < a["lagoon_share"][:, 6:].min()  # the jump traps
    f1 = fork.q_learning_runs(fork.ForkWorld(), 20, 0.1, 0.5, keys)
    f2 = fork.q_learning_runs(fork.ForkWorld(), 20, 0.1, 0.5, keys)
    np.testing.assert_array_equal(f1["branch"], f2["branch"])
    with pytest.raises(ConfigError, match="learner='sarsa' is not allowed"):
        lagoon.runs(lagoon.Lagoon(), "sarsa", 10, 2, keys, 5, 8.0)
    with pytest.raises(ConfigError, match="power_up=1.0 is not allowed"):
        lagoon.Lagoon(power_up=1.0).validate()
    with pytest.raises(ConfigError, match="epsilon=1.5 is not allowed"):
        fork.q_learning_runs(fork.ForkWorld(), 5, 1.5, 0.5, keys)


def test_avoidance_counts_episodes_until_the_fork_prefers_left_again():
    runs = {"unlucky_done": np.array([[0, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool),
            "prefers_left": np.array([[1, 0, 0, 1, 1], [0, 0, 0, 0, 0]], bool)}
    out = fork.avoidance(runs)
    assert out["unlucky_at"].tolist() == [1, 0] and out["happened"].tolist() == [True, False]
    assert out["avoided_for"].tolist() == [2, 5] and out["recovered"].tolist() == [True, False]


def test_a_big_penalty_with_little_exploration_keeps_runs_off_the_better_branch():
    keys = jax.random.split(jax.random.PRNGKey(5), 64)
    control = fork.avoidance(fork.q_learning_runs(fork.ForkWorld(unlucky=0.0), 150, 0.05, 0.5,
                                                  keys))
    unlucky = fork.avoidance(fork.q_learning_runs(fork.ForkWorld(unlucky=2.0), 150, 0.05, 0.5,
                                                  keys))
    assert unlucky["recovered"].mean() < control["recovered"].mean() - 0.2
