"""Where training changes the network: reverting layers, and how localised each update is.

* **Layer reversion** (`actor_layers`, `revert`, `layer_subsets`): the actor's parameters at a
  checkpoint with a subset of its layers put back to their values at an earlier checkpoint (the
  method of Zhang, Bengio & Singer 2022, "Are all layers created equal?", applied to RL); which
  layers carry a behaviour is read off how far the reverted policy's behaviour moves.
* **Update localisation** (`update_stats`): between two checkpoints, per weight matrix, the
  fraction of parameters whose change exceeds a tolerance (relative to the matrix's RMS weight at
  the earlier checkpoint), the effective rank of the change, and both for a null update of the
  same Frobenius norm spread evenly (i.i.d. Gaussian). The effective rank is exp of the entropy of
  the normalised singular values (Roy & Vetterli 2007): r for a change of r equal directions.

The exported checkpoints of `data/craftax-<scale>` are float16, whose spacing is about 1e-3 of a
weight's size: changes below that read as 0, so tolerances below `FLOAT16_FLOOR` measure the
rounding, not training (`update_stats` reports each tolerance against it).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from craftax.craftax_classic.constants import Achievement

from devrl.core.base import ConfigError
from devrl.core.envs import ACHIEVEMENT_NAMES, BehaviourWrapper, PoolResetVecEnv
from devrl.core.networks import with_zeros_for_missing
from devrl.core.ppo import make_network
from devrl.measures.policy_llc import actor_params

FLOAT16_FLOOR = 2.0 ** -10  # relative spacing of float16 numbers (10 mantissa bits)
TOLERANCES = (1e-3, 1e-2, 1e-1)  # changes counted, relative to the matrix's RMS weight
# The seed of `update_stats`' null update. It is the specialisation null's seed
# (devrl.studies.localisation.NULL_SEED): in the one module both used to live in, that later
# constant rebound the name, so every data set so far was made with it.
NULL_SEED = 7_001


def actor_layers(params: Any) -> list[str]:
    """The actor's layers in order of depth: actor_0, actor_1, ..., actor_out."""
    names = [n for n in params["params"] if n.startswith("actor_")]
    hidden = sorted((n for n in names if n != "actor_out"), key=lambda n: int(n.split("_")[1]))
    return hidden + (["actor_out"] if "actor_out" in names else [])


def layer_subsets(layers: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of `layers`, from the empty one to all of them (by size, then order)."""
    return [subset for size in range(len(layers) + 1)
            for subset in itertools.combinations(layers, size)]


def revert(params: Any, reference: Any, layers: Sequence[str]) -> Any:
    """`params` with each layer in `layers` replaced by `reference`'s (the same arrays, not
    copies); every other layer is `params`' own."""
    unknown = [name for name in layers if name not in params["params"]
               or name not in reference["params"]]
    if unknown:
        raise ConfigError(f"layers={list(layers)!r} is not allowed: {unknown} are not layers of "
                          f"both checkpoints (allowed: {', '.join(actor_layers(params))})")
    return {"params": {name: (reference["params"][name] if name in layers else leaf)
                       for name, leaf in params["params"].items()}}


def effective_rank(matrix: np.ndarray) -> float:
    """exp(entropy of the singular values normalised to sum 1); 0 for a zero matrix."""
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def update_stats(before: Any, after: Any, tolerances: Sequence[float] = TOLERANCES,
                 layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per layer kernel and tolerance: `changed` (fraction of entries with |Δ| > tol · RMS of the
    layer's weights before), `null_changed` (the same for an i.i.d. Gaussian update of the same
    Frobenius norm), `effective_rank` and `null_effective_rank` of the update, the update's
    relative norm |Δ|/|W|, and `below_float16` (the tolerance is under the float16 spacing)."""
    layers = actor_layers(before) if layers is None else list(layers)
    rng = np.random.default_rng(NULL_SEED)
    rows = []
    for name in layers:
        w0 = np.asarray(before["params"][name]["kernel"], np.float64)
        w1 = np.asarray(after["params"][name]["kernel"], np.float64)
        delta = w1 - w0
        rms = float(np.sqrt(np.mean(w0 ** 2)))
        norm = float(np.linalg.norm(delta))
        null = rng.standard_normal(delta.shape)
        null *= norm / max(np.linalg.norm(null), 1e-300)
        rank, null_rank = effective_rank(delta), effective_rank(null)
        for tol in tolerances:
            threshold = tol * rms
            rows.append({"layer": name, "tolerance": tol, "parameters": delta.size,
                         "changed": float((np.abs(delta) > threshold).mean()),
                         "null_changed": float((np.abs(null) > threshold).mean()),
                         "effective_rank": rank, "null_effective_rank": null_rank,
                         "max_rank": min(delta.shape),
                         "relative_norm": norm / max(float(np.linalg.norm(w0)), 1e-300),
                         "below_float16": tol < FLOAT16_FLOOR})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ credit by reward source
def returns_by_source(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted reward-to-go per source, [T, B, S] from rewards [T, B, S] and dones [T, B]
    (done at t: the episode ended with step t's reward). Returns are cut at the end of the
    rollout (no bootstrap), so they sum over sources to the return of the summed reward."""
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running * (1.0 - np.asarray(dones[t], float))[:, None]
        out[t] = running
    return out


def split_policy_gradient(log_prob_fn, params: Any, returns: np.ndarray) -> list[Any]:
    """Per source s, the REINFORCE gradient E[∇ log π(a_t | s_t) G_t^(s)] (a pytree like
    `params`). `log_prob_fn(params)` gives the log-probabilities [T, B] of the actions taken;
    `returns` [T, B, S]. The gradient is linear in the returns, so the parts sum to the gradient
    of the summed return; a source whose returns are all zero gets an exact zero part (not
    computed)."""
    returns = np.asarray(returns, np.float32)
    live = [s for s in range(returns.shape[-1]) if np.any(returns[..., s] != 0)]
    zero = jax.tree.map(lambda leaf: np.zeros(np.shape(leaf), np.float32), params)
    if not live:  # no source paid anything: every part is exactly zero
        return [zero for _ in range(returns.shape[-1])]

    def part(weights):
        return jax.grad(lambda p: jnp.mean(log_prob_fn(p) * weights))(params)

    stacked = jax.lax.map(part, jnp.moveaxis(jnp.asarray(returns[..., live]), -1, 0))
    parts = {s: jax.tree.map(lambda leaf, i=i: np.asarray(leaf[i]), stacked)
             for i, s in enumerate(live)}
    return [parts.get(s, zero) for s in range(returns.shape[-1])]


def unit_profiles(grads: Sequence[Any], layer: str) -> np.ndarray:
    """[S, units]: for each source's gradient, the share of its squared norm on each hidden unit
    of `layer` (the unit's incoming weights and bias). Rows of zeros for a zero gradient."""
    rows = []
    for grad in grads:
        kernel = np.asarray(grad["params"][layer]["kernel"], np.float64)
        bias = np.asarray(grad["params"][layer]["bias"], np.float64)
        energy = (kernel ** 2).sum(0) + bias ** 2
        total = energy.sum()
        rows.append(energy / total if total > 0 else energy)
    return np.array(rows)


def specialisation_index(profiles: np.ndarray, weights: np.ndarray | None = None) -> float:
    """1 − the mean Bhattacharyya overlap sum_u sqrt(p_s(u) p_s'(u)) over pairs of sources with
    a non-zero profile (weighted by the product of their `weights`, e.g. gradient norms): 0 when
    every source's update loads the same units alike, 1 when they load disjoint units."""
    live = [i for i, row in enumerate(profiles) if row.sum() > 0]
    if len(live) < 2:
        return float("nan")
    weights = np.ones(len(profiles)) if weights is None else np.asarray(weights, float)
    num = den = 0.0
    for a, b in itertools.combinations(live, 2):
        w = weights[a] * weights[b]
        num += w * np.sqrt(profiles[a] * profiles[b]).sum()
        den += w
    return float(1 - num / den)


def alignment(grads: Sequence[Any], layer: str) -> np.ndarray:
    """[S, S]: cosine similarity between the sources' gradients of `layer`'s kernel (NaN where a
    gradient is zero)."""
    flat = np.array([np.asarray(g["params"][layer]["kernel"], np.float64).ravel() for g in grads])
    norms = np.linalg.norm(flat, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (flat @ flat.T) / np.outer(norms, norms)


def source_names() -> tuple[str, ...]:
    """The reward sources of a Craftax step: each achievement's unlock, then `other` (health
    changes, and what a reward structure pays beyond the first unlock, e.g. every_plant's
    repeats)."""
    return tuple(ACHIEVEMENT_NAMES) + ("other",)


def make_source_rollout(config, envs: int, steps: int):
    """jit(params, key) -> dict of a feedforward policy's on-policy rollout from fresh worlds:
    `obs` [T, B, D], `actions` [T, B], `dones` [T, B], `sources` [T, B, S] (the step's reward
    split by `source_names()`; it sums to the reward exactly)."""
    if config.memory:
        raise ConfigError(f"memory={config.memory} is not allowed here: the credit split reads "
                          "a feedforward policy (memory 0)")
    env = PoolResetVecEnv(BehaviourWrapper(config.env_name, config.reward), envs, envs)
    spec = env.env.spec
    network = make_network(config, env.num_actions)
    pay = jnp.ones(len(Achievement)).at[Achievement.PLACE_PLANT.value].set(spec.plant_first)

    @jax.jit
    def run(params, key):
        k_reset, k_loop = jax.random.split(key)
        obs, state = env.reset(k_reset, env.default_params)
        before = state.env_states.env_state.achievements.astype(jnp.float32)
        params = with_zeros_for_missing(network, params, jnp.zeros((envs, 0)), obs[None],
                                        jnp.ones((1, envs), bool))  # actor-only checkpoints

        def step(carry, k):
            obs, state, before = carry
            k_act, k_env = jax.random.split(k)
            _, logits, _ = network.apply(params, jnp.zeros((envs, 0)), obs[None],
                                         jnp.ones((1, envs), bool))
            action = jax.random.categorical(k_act, logits[0])
            next_obs, state, reward, done, info = env.step(k_env, state, action,
                                                           env.default_params)
            after = info["achievements"].astype(jnp.float32)
            unlocked = jnp.clip(after - before, 0, 1) * pay
            other = reward - unlocked.sum(-1)
            sources = jnp.concatenate([unlocked, other[:, None]], axis=-1)
            fresh = state.env_states.env_state.achievements.astype(jnp.float32)
            before = jnp.where(done[:, None], fresh, after)
            return (next_obs, state, before), (obs, action, done, sources, reward)

        _, out = jax.lax.scan(step, (obs, state, before), jax.random.split(k_loop, steps))
        return dict(zip(("obs", "actions", "dones", "sources", "rewards"), out))

    return run, network


def credit_split(config, params: Any, envs: int, steps: int, key) -> tuple[list[Any], dict]:
    """The REINFORCE update of `params` (a full checkpoint, or an exported actor-only one) on
    one rollout (`make_source_rollout`), split by reward
    source: per source, the gradient of E[log π(a_t | s_t) G_t^(s)] over the actor's parameters
    (Monte-Carlo returns with the run's discount, cut at the rollout's end). Returns the parts
    (in `source_names()` order) and the rollout."""
    run, network = make_source_rollout(config, envs, steps)
    rollout = jax.device_get(run(params, key))
    returns = returns_by_source(rollout["sources"], rollout["dones"], config.gamma)
    obs = jnp.asarray(rollout["obs"])
    actions = jnp.asarray(rollout["actions"])
    hidden, first = jnp.zeros((obs.shape[1], 0)), jnp.ones(obs.shape[:2], bool)

    def log_prob(actor):
        full = with_zeros_for_missing(network, actor, hidden, obs, first)
        _, logits, _ = network.apply(full, hidden, obs, first)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], -1)[..., 0]

    return split_policy_gradient(log_prob, actor_params(params), returns), rollout


def credit_table(parts: Sequence[Any], names: Sequence[str] = ()) -> pd.DataFrame:
    """Per actor layer and reward source: the source's share of the summed squared gradient norm
    of the layer (`norm_share`), the concentration of its update on units (the inverse
    participation ratio of its unit profile, times the number of units: 1 = spread evenly, the
    number of units = on one unit), and per layer the specialisation index of the sources with a
    non-zero update, weighted by their gradient norms."""
    names = list(names) or list(source_names())
    rows = []
    for layer in actor_layers(parts[0]):
        if layer == "actor_out":
            continue  # its units are the actions: no hidden units to profile
        norms = np.array([float(np.sum(np.asarray(p["params"][layer]["kernel"], np.float64) ** 2)
                                + np.sum(np.asarray(p["params"][layer]["bias"],
                                                    np.float64) ** 2)) for p in parts])
        profiles = unit_profiles(parts, layer)
        index = specialisation_index(profiles, np.sqrt(norms))
        units = profiles.shape[1]
        for name, norm, profile in zip(names, norms, profiles):
            rows.append({"layer": layer, "source": name,
                         "norm_share": norm / norms.sum() if norms.sum() > 0 else 0.0,
                         "concentration": float(units * (profile ** 2).sum())
                         if profile.sum() > 0 else np.nan,
                         "specialisation": index})
    return pd.DataFrame(rows)
