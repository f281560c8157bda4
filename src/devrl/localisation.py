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

import numpy as np
import pandas as pd

from devrl.config import ConfigError

FLOAT16_FLOOR = 2.0 ** -10  # relative spacing of float16 numbers (10 mantissa bits)
TOLERANCES = (1e-3, 1e-2, 1e-1)  # changes counted, relative to the matrix's RMS weight
NULL_SEED = 11


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
    import jax
    import jax.numpy as jnp

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
    from devrl.envs import ACHIEVEMENT_NAMES

    return tuple(ACHIEVEMENT_NAMES) + ("other",)


def make_source_rollout(config, envs: int, steps: int):
    """jit(params, key) -> dict of a feedforward policy's on-policy rollout from fresh worlds:
    `obs` [T, B, D], `actions` [T, B], `dones` [T, B], `sources` [T, B, S] (the step's reward
    split by `source_names()`; it sums to the reward exactly)."""
    import jax
    import jax.numpy as jnp
    from craftax.craftax_classic.constants import Achievement

    from devrl.envs import BehaviourWrapper, PoolResetVecEnv
    from devrl.networks import with_zeros_for_missing
    from devrl.ppo import make_network

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
    import jax
    import jax.numpy as jnp

    from devrl.networks import with_zeros_for_missing
    from devrl.policy_llc import actor_params

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


# ------------------------------------------------------------------ the study on the Craftax runs
# The committed data set data/craftax-<scale> holds each seed's actor at EXPORT_CHECKPOINTS
# log-spaced updates (float16): the study reads those, and says so; denser checkpoints would
# need the runs retrained with the same code.
REFERENCES = ("init", "before", "peak")
REVERSION_SEED = 20_241  # the same worlds and sampling keys for every reverted network
CREDIT_SEED = 5_003
LOCALISATION_SETTINGS: dict[str, dict[str, int]] = {
    "smoke": {"episodes": 2, "max_steps": 50, "credit_envs": 8, "credit_steps": 32},
    "cpu": {"episodes": 32, "max_steps": 3000, "credit_envs": 64, "credit_steps": 256},
    "paper": {"episodes": 64, "max_steps": 10000, "credit_envs": 256, "credit_steps": 256},
}


def reference_updates(episodes: pd.DataFrame, updates: Sequence[int]) -> dict[str, int]:
    """The earlier checkpoints a seed's layers are reverted to, chosen among its exported
    `updates` from its evaluation `episodes` (one seed): `init` (update 0); `peak`, the exported
    checkpoint with the highest PLACE_PLANT share of actions (the plant overshoot's peak, as far
    as the exported checkpoints resolve it); `before`, the last exported checkpoint before the
    peak whose share is above the untrained one's by less than half of the peak's excess.
    A reference that does not exist (no rise above update 0; nothing between) is left out."""
    from devrl.analysis import with_rates

    share = (with_rates(episodes).groupby("update")["place_attempt_share"].mean()
             .reindex(sorted(updates)))
    if share.isna().any():
        missing = [int(u) for u in share[share.isna()].index]
        raise ConfigError(f"updates={missing} are not allowed: no evaluation episodes there")
    out = {"init": int(share.index[0])}
    peak = int(share.idxmax())
    if peak == out["init"]:
        return out
    half = share.iloc[0] + 0.5 * (share[peak] - share.iloc[0])
    before = [int(u) for u in share.index if out["init"] < u < peak and share[u] < half]
    if before:
        out["before"] = before[-1]
    out["peak"] = peak
    return out


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset) if subset else "none"


def kl_rows(target: np.ndarray, probs: np.ndarray, contexts: np.ndarray) -> list[dict[str, Any]]:
    """Per plant context: mean KL(target || probs) over its states, and P(PLACE_PLANT) of both."""
    from devrl.envs import CONTEXTS, PLACE_PLANT

    p = np.clip(np.asarray(target, np.float64), 1e-12, 1.0)
    q = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    rows = []
    for c, name in enumerate(CONTEXTS):
        mask = contexts == c
        if mask.any():
            rows.append({"context": name, "states": int(mask.sum()), "kl": float(kl[mask].mean()),
                         "p_place_plant": float(q[mask, PLACE_PLANT].mean()),
                         "p_place_plant_target": float(p[mask, PLACE_PLANT].mean())})
    return rows


def reversion_tables(config, checkpoints: dict[int, Any], references: dict[str, int],
                     probe: dict[str, np.ndarray], episodes: int, max_steps: int,
                     episode_targets: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each reference (name -> update), each later checkpoint (target) and every subset of
    the actor's layers: the target with those layers reverted to the reference. Probe table:
    per plant context, KL(target || reverted) and P(PLACE_PLANT). Episode table (targets in
    `episode_targets` only): means over fixed-seed episodes of return, plants placed, place
    attempts, their share of actions and achievements unlocked; the same worlds for every
    network (common random numbers)."""
    import jax

    from devrl.behaviour import make_episode_runner, make_probe_policy
    from devrl.envs import ACTION_NAMES, EPISODE_FIELDS
    from devrl.networks import initial_hidden, with_zeros_for_missing
    from devrl.ppo import make_network

    network = make_network(config, len(ACTION_NAMES))
    obs = np.asarray(probe["obs"], np.float32)[:, None]  # windows of 1: feedforward
    first = np.ones(obs.shape[:2], bool)
    hidden = initial_hidden(obs.shape[0], 0)

    def full(params):
        return with_zeros_for_missing(network, params, hidden, np.swapaxes(obs, 0, 1),
                                      np.swapaxes(first, 0, 1))

    policy = make_probe_policy(config)
    runner = make_episode_runner(config, episodes, max_steps)
    key = jax.random.PRNGKey(REVERSION_SEED)
    fields = list(EPISODE_FIELDS)
    achievements = [i for i, f in enumerate(fields) if f.startswith("achievement_")]
    probe_rows, episode_rows = [], []
    for reference, ref_update in references.items():
        ref = checkpoints[ref_update]
        for target in sorted(u for u in checkpoints if u > ref_update):
            params = checkpoints[target]
            target_probs = np.asarray(policy(full(params), obs, first))
            for subset in layer_subsets(actor_layers(params)):
                reverted = full(revert(params, ref, subset))
                probs = np.asarray(policy(reverted, obs, first))
                keys = {"reference": reference, "reference_update": ref_update,
                        "target": target, "subset": subset_name(subset),
                        "layers_reverted": len(subset)}
                probe_rows += [{**keys, **row} for row in kl_rows(target_probs, probs,
                                                                  probe["context"])]
                if target in episode_targets:
                    record, _ = jax.device_get(runner(reverted, key))
                    length = np.clip(record[:, fields.index("episode_length")], 1, None)
                    attempts = record[:, fields.index("place_attempts")]
                    episode_rows.append({
                        **keys, "episodes": len(record),
                        "episode_return": float(record[:, fields.index("episode_return")].mean()),
                        "plants_placed": float(record[:, fields.index("plants_placed")].mean()),
                        "place_attempts": float(attempts.mean()),
                        "place_attempt_share": float((attempts / length).mean()),
                        "achievements": float(record[:, achievements].sum(1).mean()),
                        "episode_length": float(length.mean())})
    return pd.DataFrame(probe_rows), pd.DataFrame(episode_rows)


def localisation_table(checkpoints: dict[int, Any]) -> pd.DataFrame:
    """`update_stats` between consecutive checkpoints (`kind` consecutive) and from the first
    checkpoint to each later one (`kind` from_init), with the updates in between."""
    updates = sorted(checkpoints)
    frames = []
    for kind, pairs in (("consecutive", list(zip(updates[:-1], updates[1:]))),
                        ("from_init", [(updates[0], u) for u in updates[1:]])):
        for a, b in pairs:
            frames.append(update_stats(checkpoints[a], checkpoints[b]).assign(
                kind=kind, update_from=a, update_to=b, updates_between=b - a))
    return pd.concat(frames, ignore_index=True)


def credit_tables(config, checkpoints: dict[int, Any], envs: int, steps: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """At each checkpoint: `credit_table` of the REINFORCE update split by reward source, with
    each source's reward events in the rollout (`events`, `reward`), and the cosine alignment of
    every pair of sources with a non-zero update, per hidden layer."""
    import jax

    names = list(source_names())
    tables, aligned = [], []
    for update in sorted(checkpoints):
        key = jax.random.fold_in(jax.random.PRNGKey(CREDIT_SEED), update)
        parts, rollout = credit_split(config, checkpoints[update], envs, steps, key)
        sources = np.asarray(rollout["sources"])
        table = credit_table(parts, names).assign(update=update)
        table["events"] = table["source"].map(dict(zip(names, (sources != 0).sum((0, 1)))))
        table["reward"] = table["source"].map(dict(zip(names, sources.sum((0, 1)))))
        tables.append(table)
        live = [i for i in range(len(names)) if np.any(sources[..., i] != 0)]
        for layer in actor_layers(parts[0]):
            if layer == "actor_out":
                continue
            cosine = alignment([parts[i] for i in live], layer)
            for a, b in itertools.combinations(range(len(live)), 2):
                aligned.append({"update": update, "layer": layer, "source_a": names[live[a]],
                                "source_b": names[live[b]], "cosine": float(cosine[a, b])})
    return (pd.concat(tables, ignore_index=True),
            pd.DataFrame(aligned, columns=["update", "layer", "source_a", "source_b", "cosine"]))


def study_tables(scale: str, control, progress=print
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Reversion, update localisation and credit by reward source on the exported actor
    checkpoints of the Craftax data set `control` (analysis.CraftaxData), per seed."""
    from devrl.config import config_from_dict
    from devrl.diversity import common_probe, control_checkpoints
    from devrl.runs import sha256_file

    if scale not in LOCALISATION_SETTINGS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of "
                          f"{', '.join(LOCALISATION_SETTINGS)}")
    settings = LOCALISATION_SETTINGS[scale]
    config = config_from_dict(control.manifest["runs"][0]["config"])
    probe = common_probe(control.path)
    out: dict[str, list[pd.DataFrame]] = {n: [] for n in (
        "references", "reversion_probe", "reversion_episodes", "updates", "credit",
        "credit_alignment")}
    for seed, loaders in control_checkpoints(control).items():
        checkpoints = {u: load() for u, load in loaders}
        refs = reference_updates(control.episodes[control.episodes["seed"] == seed],
                                 list(checkpoints))
        out["references"].append(pd.DataFrame({"seed": seed, "reference": list(refs),
                                               "update": list(refs.values())}))
        peak = refs.get("peak", max(checkpoints))
        progress(f"localisation: seed {seed}, references {refs}")
        probe_rows, episode_rows = reversion_tables(
            config, checkpoints, refs, probe, settings["episodes"], settings["max_steps"],
            [u for u in checkpoints if u >= peak])
        out["reversion_probe"].append(probe_rows.assign(seed=seed))
        out["reversion_episodes"].append(episode_rows.assign(seed=seed))
        out["updates"].append(localisation_table(checkpoints).assign(seed=seed))
        progress(f"localisation: seed {seed}, credit by reward source")
        credit, aligned = credit_tables(config, checkpoints, settings["credit_envs"],
                                        settings["credit_steps"])
        out["credit"].append(credit.assign(seed=seed))
        out["credit_alignment"].append(aligned.assign(seed=seed))
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in out.items()}
    return tables, {
        "what": "where training changes the actor (devrl.localisation): layer reversion to "
                "earlier checkpoints, update localisation between checkpoints, and the "
                "REINFORCE update split by reward source, on the exported checkpoints",
        "made_by": f"devrl figure layer-reversion -p scale {scale} -p recompute True",
        "settings": {**settings, "tolerances": list(TOLERANCES),
                     "float16_floor": FLOAT16_FLOOR, "reversion_seed": REVERSION_SEED,
                     "credit_seed": CREDIT_SEED},
        "control": {"data_set": control.path.name,
                    "manifest_sha256": sha256_file(control.path / "manifest.json")},
        "runs": [r for r in control.manifest["runs"] if r["seed"] in control.seeds]}


# ------------------------------------------------------------------ summaries for the chapters
EPISODE_MEASURES = ("place_attempt_share", "plants_placed", "place_attempts", "episode_return",
                    "achievements")
CHANGED_TOLERANCE = 1e-2  # the tolerance the chapter's headline numbers use (all are in the data)


def reversion_moves(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per seed, reference, target and layer subset: each episode measure of the reverted
    network minus the same of the intact target (subset none), in columns `d_<measure>`."""
    keys = ["seed", "reference", "target"]
    intact = episodes[episodes["subset"] == "none"].set_index(keys)[list(EPISODE_MEASURES)]
    out = episodes.join(intact, on=keys, rsuffix="_intact")
    for m in EPISODE_MEASURES:
        out[f"d_{m}"] = out[m] - out[f"{m}_intact"]
    return out.drop(columns=[f"{m}_intact" for m in EPISODE_MEASURES])


def move_summary(episodes: pd.DataFrame, measure: str = "place_attempt_share") -> pd.DataFrame:
    """Per reference, target and subset: mean and sd over seeds of the change of `measure` and
    of its size, the seeds averaged, the reference's update in each (`reference_updates`), and
    `rank` (1 = the subset that moves it most at that reference and target, among the subsets of
    the same number of layers)."""
    moves = reversion_moves(episodes)
    moves["size"] = moves[f"d_{measure}"].abs()
    keys = ["reference", "target", "subset", "layers_reverted"]  # a reference's update may
    out = moves.groupby(keys).agg(change=(f"d_{measure}", "mean"),  # differ between seeds
                                  change_sd=(f"d_{measure}", "std"), size=("size", "mean"),
                                  seeds=("seed", "nunique"),
                                  reference_updates=("reference_update", _updates)).reset_index()
    out["rank"] = out.groupby(["reference", "target", "layers_reverted"])["size"].rank(
        ascending=False, method="min")
    return out


def probe_summary(probe: pd.DataFrame) -> pd.DataFrame:
    """Per reference, target, subset and context: mean over seeds of KL(target || reverted) and
    of the change of P(PLACE_PLANT)."""
    frame = probe.assign(d_p_place_plant=probe["p_place_plant"] - probe["p_place_plant_target"])
    keys = ["reference", "target", "subset", "layers_reverted", "context"]
    return frame.groupby(keys).agg(kl=("kl", "mean"), kl_sd=("kl", "std"),
                                   d_p_place_plant=("d_p_place_plant", "mean"),
                                   seeds=("seed", "nunique"),
                                   reference_updates=("reference_update", _updates)).reset_index()


def _updates(values: pd.Series) -> str:
    """The distinct updates of a reference over seeds, e.g. "1" or "1/3"."""
    return "/".join(str(int(u)) for u in sorted(set(values)))


def changed_summary(updates: pd.DataFrame, kind: str = "consecutive") -> pd.DataFrame:
    """Per checkpoint pair, layer and tolerance: means over seeds of the fraction changed, its
    null, and the effective rank of the update relative to its null's."""
    frame = updates[updates["kind"] == kind].assign(
        rank_ratio=lambda f: f["effective_rank"] / f["null_effective_rank"])
    keys = ["update_from", "update_to", "layer", "tolerance", "below_float16"]
    return frame.groupby(keys).agg(
        changed=("changed", "mean"), changed_sd=("changed", "std"),
        null_changed=("null_changed", "mean"), effective_rank=("effective_rank", "mean"),
        null_effective_rank=("null_effective_rank", "mean"), rank_ratio=("rank_ratio", "mean"),
        relative_norm=("relative_norm", "mean"), seeds=("seed", "nunique")).reset_index()


def credit_summary(credit: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and hidden layer: mean and sd over seeds of the specialisation index, the
    share of the update's squared norm from `other` (health and repeats) and from achievements,
    and how many sources paid anything in the rollout."""
    frame = credit.assign(is_other=credit["source"] == "other")
    per_run = frame.groupby(["seed", "update", "layer"]).apply(
        lambda g: pd.Series({
            "specialisation": g["specialisation"].iloc[0],
            "other_share": g.loc[g["is_other"], "norm_share"].sum(),
            "achievement_share": g.loc[~g["is_other"], "norm_share"].sum(),
            "sources_paid": int((g["events"] > 0).sum())}), include_groups=False).reset_index()
    return per_run.groupby(["update", "layer"]).agg(
        specialisation=("specialisation", "mean"), specialisation_sd=("specialisation", "std"),
        other_share=("other_share", "mean"), achievement_share=("achievement_share", "mean"),
        sources_paid=("sources_paid", "mean"), seeds=("seed", "nunique")).reset_index()


SPECIALISATION_THRESHOLD = 0.2  # prediction 3's bound on the hidden layers' index


def verdicts(data) -> dict[str, str]:
    """The predictions of book/where-behaviour-lives.md, each judged by a fixed rule on the data
    (analysis.LocalisationData): "held", "did not hold" or "untested"."""
    def word(ok) -> str:
        return "untested" if ok is None else ("held" if ok else "did not hold")

    out = {}
    moves = move_summary(data.reversion_episodes) if len(data.reversion_episodes) else None
    refs = data.references.groupby("reference")["update"].agg(lambda u: u.mode().iloc[0])
    single = moves[moves["layers_reverted"] == 1] if moves is not None else None
    if single is not None and "peak" in refs and len(single):
        def most(target, reference):
            rows = single[(single["target"] == target) & (single["reference"] == reference)]
            return rows.loc[rows["size"].idxmax(), "subset"] if len(rows) else None

        peak, last = int(refs["peak"]), int(single["target"].max())
        at_peak = [most(peak, r) for r in ("init", "before") if r in refs]
        at_end = [most(last, r) for r in refs.index if r != "peak" or last > peak]
        hidden = "+".join(h for h in sorted(set(single["subset"]) - {"actor_out"}))
        below = []
        for (reference, target), rows in moves.groupby(["reference", "target"]):
            sizes = rows.set_index("subset")["size"]
            if hidden in sizes and "actor_out" in sizes:
                below.append(sizes[hidden] < sizes["actor_out"])
        # 1. the output layer alone moves the share most at the peak (references init and
        # before), the first hidden layer at the end (every reference), and reverting every
        # hidden layer moves it less than reverting the output layer alone (every pair).
        out["p1"] = word(bool(all(m == "actor_out" for m in at_peak)
                              and all(m == "actor_0" for m in at_end) and below and all(below)))
        out["p1-peak"] = ", ".join(str(m) for m in at_peak)
        out["p1-end"] = ", ".join(str(m) for m in at_end)
    else:
        out["p1"] = word(None)
    # 2. at the 1e-2 tolerance, every layer of every consecutive pair has > 90% of its weights
    # changed and within 0.1 of the null's fraction; the rank ratio (update / null) of the output
    # layer below 0.5 and of every hidden layer above 0.8 (means over pairs); and the mean rank
    # ratio over layers lower at the last pair than at the first.
    changed = changed_summary(data.updates)
    at = changed[np.isclose(changed["tolerance"], CHANGED_TOLERANCE)]
    if len(at):
        dense = bool((at["changed"] > 0.9).all()
                     and ((at["changed"] - at["null_changed"]).abs() < 0.1).all())
        ratio = at.groupby("layer")["rank_ratio"].mean()
        shape = bool(ratio.get("actor_out", np.nan) < 0.5
                     and (ratio.drop("actor_out", errors="ignore") > 0.8).all())
        course = at.groupby("update_to")["rank_ratio"].mean().sort_index()
        falls = bool(len(course) > 1 and course.iloc[-1] < course.iloc[0])
        out["p2"] = word(dense and shape and falls)
        out["p2-dense"], out["p2-shape"], out["p2-falls"] = (word(dense), word(shape),
                                                             word(falls))
    else:
        out["p2"] = word(None)
    # 3. the hidden layers' specialisation index below 0.2 at every checkpoint (mean over
    # seeds); `other` carries most of the squared norm at the first checkpoint, achievements at
    # the last (means over hidden layers).
    credit = credit_summary(data.credit) if len(data.credit) else None
    if credit is not None and len(credit):
        low = bool((credit["specialisation"].dropna() < SPECIALISATION_THRESHOLD).all())
        first, last = credit["update"].min(), credit["update"].max()
        early = credit[credit["update"] == first]["other_share"].mean() > 0.5
        late = credit[credit["update"] == last]["achievement_share"].mean() > 0.5
        out["p3"] = word(bool(low and early and late))
        out["p3-low"], out["p3-early"], out["p3-late"] = word(low), word(early), word(late)
    else:
        out["p3"] = word(None)
    return out


# ------------------------------------------------------------------ a null for the index
# The specialisation index of gradients that share nothing but their event counts and norms:
# each source's update on a layer is the sum of its k reward events' contributions, each
# loading every unit with an independent random weight (the unit's energy a χ² with k degrees
# of freedom; equal gains across units). Written on 2026-12-06, after the credit data had been
# seen, so the comparison against it is exploratory.
NULL_DRAWS = 200
NULL_SEED = 7_001
NULL_QUANTILE = 0.95


def specialisation_null(events: Sequence[int], norm_shares: Sequence[float], units: int,
                        draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> np.ndarray:
    """`draws` specialisation indices of random per-source unit profiles (see above), weighted
    like `credit_table`'s by the square root of each source's gradient norm share."""
    if units < 1 or draws < 1:
        raise ConfigError(f"units={units!r}, draws={draws!r} is not allowed: both must be >= 1")
    rng = np.random.default_rng(seed)
    counts = np.asarray(events, int)
    weights = np.sqrt(np.asarray(norm_shares, float))
    out = np.empty(draws)
    for i in range(draws):
        profiles = np.zeros((len(counts), units))
        for s, k in enumerate(counts):
            if k > 0 and weights[s] > 0:
                energy = rng.chisquare(k, units)
                profiles[s] = energy / energy.sum()
        out[i] = specialisation_index(profiles, weights)
    return out


def specialisation_against_null(credit: pd.DataFrame, units: int) -> pd.DataFrame:
    """Per (seed, checkpoint, hidden layer) of the credit table: the observed index, the null's
    mean and NULL_QUANTILE quantile for the same event counts and norm shares, and `above`:
    whether the observed index exceeds that quantile (the sources specialise beyond chance)."""
    rows = []
    for (seed, update, layer), group in credit.groupby(["seed", "update", "layer"]):
        null = specialisation_null(group["events"].to_numpy(), group["norm_share"].to_numpy(),
                                   units, seed=NULL_SEED + int(seed))
        observed = float(group["specialisation"].iloc[0])
        finite = null[np.isfinite(null)]
        quantile = float(np.quantile(finite, NULL_QUANTILE)) if len(finite) else float("nan")
        rows.append({"seed": seed, "update": update, "layer": layer, "observed": observed,
                     "null_mean": float(finite.mean()) if len(finite) else float("nan"),
                     "null_quantile": quantile,
                     "above": bool(np.isfinite(observed) and observed > quantile)})
    return pd.DataFrame(rows)


def null_verdict(against: pd.DataFrame) -> dict[str, Any]:
    """The credit prediction's "achievement sources load the same units", judged against the
    null: held where no (seed, checkpoint, layer) index exceeds the null's quantile."""
    judged = against.dropna(subset=["observed", "null_quantile"])
    above = int(judged["above"].sum())
    first = judged[judged["update"] == judged["update"].min()]
    vacuous = bool(judged["null_quantile"].max() < SPECIALISATION_THRESHOLD)
    return {"word": "held" if above == 0 else "did not hold", "above": above,
            "threshold_word": "could therefore not have failed" if vacuous else
                              "could have failed",
            "threshold": SPECIALISATION_THRESHOLD,
            "cases": len(judged),
            "null_quantile_min": float(judged["null_quantile"].min()),
            "null_quantile_max": float(judged["null_quantile"].max()),
            "observed_min": float(judged["observed"].min()),
            "observed_max": float(judged["observed"].max()),
            # the first checkpoint (the untrained network) against the same null: how far the
            # null is from what no learning produces
            "first_ratio_min": float(first["observed"].div(first["null_quantile"]).min()),
            "first_ratio_max": float(first["observed"].div(first["null_quantile"]).max())}
