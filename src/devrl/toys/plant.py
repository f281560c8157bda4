"""A toy model of the plant overshoot: a reward paid once per episode, and a policy that shares.

The task. An episode has T steps. At each step a context c ∈ {0, …, K−1} is drawn independently
with probability p_c; context 0 is the one where placing works (in Craftax: a sapling in the
inventory and grass ahead). The agent either *places* or does *other*. Placing pays R the first
time it succeeds in an episode (in context 0) and nothing after that; every step spent on other
pays r_o (the opportunity cost of placing: what the agent could have earned instead). The agent
does not observe whether it has already placed, as a Craftax policy without memory does not.

The policy. π(place | c) = σ(ℓ_c) with logits ℓ_c = √ρ · a + √(1−ρ) · b_c: a shared weight a
seen by every context and one own weight b_c per context. A gradient step on the logit of one
context moves every other logit by the fraction ρ of that step (the "sharing", the mechanism by
which what is learned in one context generalises to the others): ρ = 0 is a tabular policy,
ρ = 1 one logit for all contexts.

Expected return (closed form, since contexts are i.i.d. and the policy stationary): with
q_c = π(place | c) and s = p_0 q_0 the chance of a successful place at a step,

    J = R · (1 − (1 − s)^T) + r_o · T · Σ_c p_c (1 − q_c).

Exact expected policy-gradient dynamics are gradient ascent on J (the expected REINFORCE update
is ∇J); `expected_trajectory` integrates them with no sampling noise, and
`sampled_trajectories` runs REINFORCE on simulated episodes for comparison. In logits the flow is

    dℓ_c/dt = α [ρ Σ_c' g_c' + (1 − ρ) g_c],   g_c = ∂J/∂ℓ_c = q_c (1 − q_c) ∂J/∂q_c,

with ∂J/∂q_0 = T p_0 [R (1 − s)^(T−1) − r_o] and ∂J/∂q_c = −T p_c r_o for c ≠ 0. Early on the
valid context's gradient dominates and, through ρ, raises placing everywhere; once placing in
context 0 is frequent enough that a success is nearly certain, (1 − s)^(T−1) falls below r_o / R,
and only the opportunity cost remains: it pulls every non-valid context down, slowly, since it is
proportional to r_o and to q_c (1 − q_c). The optimum places in context 0 only, with
q_0* = (1 − (r_o/R)^(1/(T−1))) / p_0 if that is below 1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from devrl.config import ConfigError


@dataclass(frozen=True)
class PlantTask:
    """The episodic task; context 0 is where placing works."""

    context_probs: tuple[float, ...] = (0.1, 0.2, 0.7)
    horizon: int = 100  # T
    other_reward: float = 0.002  # r_o, per step of other
    place_reward: float = 1.0  # R, for the first successful place of an episode

    def validate(self) -> PlantTask:
        p = np.asarray(self.context_probs, float)
        if p.ndim != 1 or len(p) < 2 or (p <= 0).any() or not math.isclose(p.sum(), 1.0,
                                                                              rel_tol=1e-6):
            raise ConfigError(f"context_probs={self.context_probs!r} is not allowed: need at least "
                              "two positive probabilities summing to 1")
        if self.horizon < 1:
            raise ConfigError(f"horizon={self.horizon!r} is not allowed: must be >= 1")
        if not (self.other_reward >= 0 and self.place_reward > 0):
            raise ConfigError(f"other_reward={self.other_reward!r}, place_reward="
                              f"{self.place_reward!r} is not allowed: need other_reward >= 0 and "
                              "place_reward > 0")
        return self

    @property
    def num_contexts(self) -> int:
        return len(self.context_probs)

    def optimal_valid_propensity(self) -> float:
        """q_0* maximising J with q_c = 0 elsewhere (clipped to 1)."""
        ratio = self.other_reward / self.place_reward
        if ratio <= 0:
            return 1.0
        if ratio >= 1 or self.horizon == 1:
            return 0.0 if ratio >= 1 else 1.0
        return float(min(1.0, (1 - ratio ** (1 / (self.horizon - 1))) / self.context_probs[0]))


def check_sharing(sharing: float) -> float:
    if not (isinstance(sharing, (int, float)) and 0.0 <= sharing <= 1.0):
        raise ConfigError(f"sharing={sharing!r} is not allowed: must be in [0, 1]")
    return float(sharing)


def initial_params(task: PlantTask, sharing: float, logit: float) -> dict[str, jax.Array]:
    """Weights that give every context the same initial logit `logit`."""
    check_sharing(sharing)
    return {"shared": jnp.asarray(math.sqrt(sharing) * logit, jnp.float32),
            "own": jnp.full((task.num_contexts,), math.sqrt(1 - sharing) * logit, jnp.float32)}


def logits(params: dict[str, jax.Array], sharing: float) -> jax.Array:
    return jnp.sqrt(sharing) * params["shared"] + jnp.sqrt(1 - sharing) * params["own"]


def expected_return(task: PlantTask, propensity: jax.Array) -> jax.Array:
    """J for place propensities q_c (closed form; see the module docstring)."""
    p = jnp.asarray(task.context_probs, jnp.float32)
    success = p[0] * propensity[0]
    place = task.place_reward * (1 - (1 - success) ** task.horizon)
    other = task.other_reward * task.horizon * jnp.sum(p * (1 - propensity))
    return place + other


def objective(task: PlantTask, sharing: float):
    def value(params):
        return expected_return(task, jax.nn.sigmoid(logits(params, sharing)))
    return value


def expected_trajectory(task: PlantTask, sharing: float, learning_rate: float, steps: int,
                        init_logit: float = -2.8, record_every: int = 1) -> np.ndarray:
    """Place propensities q_c [steps // record_every + 1, K] under exact gradient ascent on J."""
    task.validate()
    start = initial_params(task, check_sharing(sharing), init_logit)
    q = _expected_run(task, steps, jnp.float32(sharing), jnp.float32(learning_rate), start)
    return _with_start(start, sharing, q)[::record_every]


@functools.partial(jax.jit, static_argnames=("task", "steps"))
def _expected_run(task, steps, sharing, learning_rate, start):
    grad = jax.grad(objective(task, sharing))

    def step(params, _):
        params = jax.tree_util.tree_map(lambda w, d: w + learning_rate * d, params, grad(params))
        return params, jax.nn.sigmoid(logits(params, sharing))

    return jax.lax.scan(step, start, None, length=steps)[1]


def _with_start(start, sharing, q) -> np.ndarray:
    first = np.asarray(jax.nn.sigmoid(logits(start, sharing)))
    q = np.asarray(q)
    return np.concatenate([np.broadcast_to(first, q.shape[:-2] + (1, first.shape[-1])), q],
                          axis=-2)


def sample_episodes(task: PlantTask, propensity: jax.Array, key: jax.Array, episodes: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Simulated episodes: contexts [E, T], actions (1 = place) [E, T], returns [E]."""
    k_context, k_action = jax.random.split(key)
    p = jnp.asarray(task.context_probs, jnp.float32)
    contexts = jax.random.choice(k_context, task.num_contexts, (episodes, task.horizon), p=p)
    actions = jax.random.bernoulli(k_action, propensity[contexts]).astype(jnp.int32)
    success = (actions == 1) & (contexts == 0)
    placed = jnp.any(success, axis=1)
    returns = (task.place_reward * placed
               + task.other_reward * jnp.sum(actions == 0, axis=1))
    return contexts, actions, returns


def reinforce_gradient(task: PlantTask, sharing: float, params: dict[str, jax.Array],
                       key: jax.Array, episodes: int) -> dict[str, jax.Array]:
    """REINFORCE estimate of ∇J from `episodes` episodes, with a leave-one-out mean baseline
    (unbiased: each episode's baseline does not depend on its own actions)."""
    propensity = jax.nn.sigmoid(logits(params, sharing))
    contexts, actions, returns = sample_episodes(task, propensity, key, episodes)
    baseline = (jnp.sum(returns) - returns) / max(episodes - 1, 1)
    # ∂ log π(a | c) / ∂ℓ_c = a − q_c, summed over the episode's steps per context.
    score = jax.vmap(lambda c, a: jnp.zeros(task.num_contexts).at[c].add(a - propensity[c]))(
        contexts, actions)  # [E, K]
    weighted = jnp.mean(score * (returns - baseline)[:, None], axis=0)  # ∂J/∂ℓ estimate [K]
    return {"shared": jnp.sqrt(sharing) * jnp.sum(weighted),
            "own": jnp.sqrt(1 - sharing) * weighted}


def sampled_trajectories(task: PlantTask, sharing: float, learning_rate: float, steps: int,
                         keys: jax.Array, episodes: int, init_logit: float = -2.8,
                         record_every: int = 1) -> np.ndarray:
    """Place propensities [runs, steps // record_every + 1, K] under REINFORCE with `episodes`
    episodes per update, one independent run per key of `keys` (vmapped: one compiled call)."""
    task.validate()
    if episodes < 2:
        raise ConfigError(f"episodes={episodes!r} is not allowed: must be >= 2 (the baseline "
                          "leaves one episode out)")
    start = initial_params(task, check_sharing(sharing), init_logit)
    q = _sampled_runs(task, steps, episodes, jnp.float32(sharing), jnp.float32(learning_rate),
                      start, keys)
    return _with_start(start, sharing, q)[:, ::record_every]


@functools.partial(jax.jit, static_argnames=("task", "steps", "episodes"))
def _sampled_runs(task, steps, episodes, sharing, learning_rate, start, keys):
    def run(key):
        def step(params, k):
            g = reinforce_gradient(task, sharing, params, k, episodes)
            params = jax.tree_util.tree_map(lambda w, d: w + learning_rate * d, params, g)
            return params, jax.nn.sigmoid(logits(params, sharing))

        return jax.lax.scan(step, start, jax.random.split(key, steps))[1]

    return jax.vmap(run)(keys)
