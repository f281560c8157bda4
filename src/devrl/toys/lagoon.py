"""A racing loop with a lagoon: can a steering habit trap an agent, and does it stay trapped?

The track is a ring of `track` cells; crossing from the last cell to cell 0 completes a lap and
pays 1. At cell `entrance` the agent can steer left into a lagoon, a small ring of `lagoon`
cells; in the lagoon, steering left keeps circling, going straight leaves it (back onto the track
after the entrance). Anywhere else on the track the channel is narrow and steering does nothing:
both actions advance. In the "power-ups" variant each completed circle of the lagoon pays `power_up`
(less per step than racing, so circling is never the best policy). Episodes last `horizon` steps.

The policy is a reflex agent: π(left | s) = σ(√ρ · β + √(1−ρ) · w_s), a steering bias β shared by
every cell plus one weight per cell (ρ = `sharing`). Each run starts with every logit at its own
initial steering bias, drawn at random across runs, so some runs start out circling. Three learners, all on the same episodes:

* **REINFORCE** (Monte Carlo, no baseline): the update is Σ_t G_t ∇log π(a_t | s_t) with G_t the
  reward to go. An episode without reward changes nothing: a trapped agent with no power-ups
  is frozen.
* **REINFORCE with a baseline**: G_t − V(s_t), with V learned from Monte-Carlo returns. An
  episode without reward now lowers what the agent did, as far as V expected more.
* **Actor-critic (TD)**: the advantage is the TD error r_t + γV(s_{t+1}) − V(s_t) and V is learned
  by TD(0), bootstrapping: values (and with them the policy) change at every step, reward or not.

The question (from the source discussion on feedback loops): when a steering habit makes reward
events stop, do the parameters stop moving (and the agent stay trapped), and does that depend on
bootstrapping? Measured over many vmapped runs: the fraction trapped, how long, and how far the
parameters move while trapped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from devrl.core.base import ConfigError

LEARNERS = ("reinforce", "reinforce_baseline", "actor_critic")
STRAIGHT, LEFT = 0, 1


@dataclass(frozen=True)
class Lagoon:
    track: int = 6
    lagoon: int = 3
    entrance: int = 2
    power_up: float = 0.0  # paid per completed circle of the lagoon
    horizon: int = 48
    gamma: float = 0.97

    def validate(self) -> Lagoon:
        if self.track < 3 or self.lagoon < 2 or not 0 <= self.entrance < self.track - 1:
            raise ConfigError(f"track={self.track}, lagoon={self.lagoon}, entrance="
                              f"{self.entrance} is not allowed: need track >= 3, lagoon >= 2 and "
                              "0 <= entrance < track - 1")
        if not 0 <= self.power_up * self.track < self.lagoon:
            raise ConfigError(f"power_up={self.power_up!r} is not allowed: must be >= 0 and pay "
                              "less per step than racing (power_up < lagoon / track)")
        if self.horizon < 1 or not 0 < self.gamma <= 1:
            raise ConfigError(f"horizon={self.horizon}, gamma={self.gamma} is not allowed: need "
                              "horizon >= 1 and 0 < gamma <= 1")
        return self

    @property
    def num_states(self) -> int:
        return self.track + self.lagoon  # track cells, then lagoon cells

    def in_lagoon(self, state: jax.Array) -> jax.Array:
        return state >= self.track


def step(env: Lagoon, state: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(next state, reward) of one move; states 0..track−1 are track cells, then lagoon cells."""
    on_track = state < env.track
    # On the track: the agent advances (a lap when wrapping), except that left at the entrance
    # enters the lagoon.
    ahead = (state + 1) % env.track
    track_next = jnp.where((action == LEFT) & (state == env.entrance), env.track, ahead)
    lap = on_track & (state == env.track - 1)
    # In the lagoon: left circles (a completed circle pays the power-up); straight leaves it.
    position = state - env.track
    circle = (position + 1) % env.lagoon
    lagoon_next = jnp.where(action == LEFT, env.track + circle, env.entrance + 1)
    done_circle = ~on_track & (action == LEFT) & (circle == 0)
    nxt = jnp.where(on_track, track_next, lagoon_next)
    reward = jnp.where(lap, 1.0, 0.0) + jnp.where(done_circle, env.power_up, 0.0)
    return nxt, reward


def left_probability(theta: dict[str, jax.Array], sharing: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(jnp.sqrt(sharing) * theta["bias"] + jnp.sqrt(1 - sharing) * theta["w"])


def rollout(env: Lagoon, theta, sharing, key, episodes: int):
    """`episodes` episodes from the start cell: states, actions, rewards [E, T] and last states."""
    p_left = left_probability(theta, sharing)

    def one(k):
        def move(state, k_step):
            action = jax.random.bernoulli(k_step, p_left[state]).astype(jnp.int32)
            nxt, reward = step(env, state, action)
            return nxt, (state, action, reward, nxt)

        _, out = jax.lax.scan(move, jnp.int32(0), jax.random.split(k, env.horizon))
        return out

    return jax.vmap(one)(jax.random.split(key, episodes))


def _learner_update(env: Lagoon, learner: str, theta, values, sharing, lr, lr_value, batch):
    """The actor update (a pytree like theta) and the new values, from one batch of episodes."""
    states, actions, rewards, nexts = batch  # [E, T]
    p_left = left_probability(theta, sharing)
    discounts = env.gamma ** jnp.arange(env.horizon)

    def to_go(r):  # G_t = Σ_{k≥t} γ^{k−t} r_k
        return jnp.flip(jnp.cumsum(jnp.flip(r * discounts))) / discounts

    returns = jax.vmap(to_go)(rewards)
    flat = states.reshape(-1)
    visits = jnp.zeros(env.num_states).at[flat].add(1.0)

    def value_step(error):  # move each visited state's value by lr_value × its mean error
        total = jnp.zeros(env.num_states).at[flat].add(error.reshape(-1))
        return values + lr_value * total / jnp.maximum(visits, 1.0)

    if learner == "reinforce":
        advantage = returns
        values_new = values
    elif learner == "reinforce_baseline":
        advantage = returns - values[states]
        values_new = value_step(advantage)
    else:  # actor_critic: TD(0); the time limit is not a terminal state, so every step
        target = rewards + env.gamma * values[nexts]  # bootstraps from the state it reached
        advantage = target - values[states]
        values_new = value_step(advantage)
    # ∂ log π(a | s) / ∂ℓ_s = a − π(left | s), accumulated per state and averaged over the
    # batch's steps (the gradient of the mean per-step objective).
    score = (actions - p_left[states]) * advantage
    per_state = jnp.zeros(env.num_states).at[flat].add(score.reshape(-1)) / flat.shape[0]
    update = {"bias": jnp.sqrt(sharing) * per_state.sum(), "w": jnp.sqrt(1 - sharing) * per_state}
    theta_new = jax.tree_util.tree_map(lambda t, u: t + lr * u, theta, update)
    return theta_new, values_new


@functools.partial(jax.jit, static_argnames=("env", "learner", "updates", "episodes"))
def _run(env, learner, updates, episodes, sharing, lr, lr_value, perturb_at, perturb, key):
    theta = {"bias": jnp.float32(0.0), "w": jnp.zeros(env.num_states)}
    values = jnp.zeros(env.num_states)

    def update(carry, inputs):
        theta, values = carry
        k, index = inputs
        # The steering habit: at update perturb_at the shared bias jumps by perturb.
        theta = {**theta, "bias": theta["bias"] + jnp.where(index == perturb_at, perturb, 0.0)}
        batch = rollout(env, theta, sharing, k, episodes)
        new_theta, values = _learner_update(env, learner, theta, values, sharing, lr, lr_value,
                                            batch)
        states, _, rewards, _ = batch
        moved = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(
            jax.tree_util.tree_leaves(new_theta), jax.tree_util.tree_leaves(theta), strict=True)))
        record = {"lagoon_share": jnp.mean(states >= env.track),
                  "laps": jnp.mean(jnp.sum(rewards >= 1.0, axis=1)),
                  "return": jnp.mean(jnp.sum(rewards, axis=1)), "moved": moved,
                  "bias": new_theta["bias"]}
        return (new_theta, values), record

    _, records = jax.lax.scan(update, (theta, values),
                              (jax.random.split(key, updates), jnp.arange(updates)))
    return records


def runs(env: Lagoon, learner: str, updates: int, episodes: int, keys: jax.Array,
         perturb_at: int, perturb: float, sharing: float = 0.5, learning_rate: float = 2.0,
         value_learning_rate: float = 0.5) -> dict[str, np.ndarray]:
    """Independent runs (vmapped over `keys`): all logits start at 0; after `perturb_at` updates
    the shared steering bias jumps by `perturb`. Per run and update: the share of steps in the
    lagoon, laps and return per episode, the size of the parameter update, the steering bias."""
    env.validate()
    if learner not in LEARNERS:
        raise ConfigError(f"learner={learner!r} is not allowed: must be one of "
                          f"{', '.join(LEARNERS)}")
    if not 0 <= sharing <= 1:
        raise ConfigError(f"sharing={sharing!r} is not allowed: must be in [0, 1]")
    if updates < 1 or episodes < 1:
        raise ConfigError(f"updates={updates}, episodes={episodes} is not allowed: both >= 1")
    if not 0 <= perturb_at < updates:
        raise ConfigError(f"perturb_at={perturb_at!r} is not allowed: must be in [0, {updates})")
    out = jax.vmap(lambda k: _run(env, learner, updates, episodes, jnp.float32(sharing),
                                  jnp.float32(learning_rate), jnp.float32(value_learning_rate),
                                  jnp.int32(perturb_at), jnp.float32(perturb), k))(keys)
    return {name: np.asarray(value) for name, value in out.items()}


def trapped_summary(records: dict[str, np.ndarray], perturb_at: int, threshold: float = 0.5
                    ) -> dict[str, float]:
    """Trapped = more than `threshold` of the update's steps spent in the lagoon.

    From the perturbation on: the fraction of runs trapped right after it and at the end, the
    mean number of updates a run spends trapped, and the mean parameter step while trapped and
    while not.
    """
    trapped = records["lagoon_share"][:, perturb_at:] > threshold
    moved = records["moved"][:, perturb_at:]
    return {"trapped_start": float(trapped[:, 0].mean()), "trapped_end": float(trapped[:, -1].mean()),
            "updates_trapped": float(trapped.sum(axis=1).mean()),
            "step_trapped": float(moved[trapped].mean()) if trapped.any() else float("nan"),
            "step_free": float(moved[~trapped].mean()) if (~trapped).any() else float("nan")}
