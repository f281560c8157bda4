"""Environmental memory: what a recurrent policy's hidden state holds, and when it develops.

Every measure runs on whole on-policy episodes of the checkpoint being measured, from the episode's
first step with a zero hidden state, so a recurrent policy is measured with the hidden state it
actually acts with (`trajectories`). Four measures, each per checkpoint:

* **return** of those episodes (and of the training episodes, in the run's metrics);
* **memory horizon** (`horizon_curve`): at sampled steps t, the hidden state is zeroed k steps
  back (the policy then sees only o_{t-k} .. o_t) and the KL divergence from the intact policy
  is averaged over the sampled steps. k = 0 is the fully reset policy (hidden zeroed just before
  t); a window reaching the episode start is the intact policy (KL exactly 0). The horizon is the
  smallest k of the grid whose KL is at most `HORIZON_FRACTION` of the fully reset KL (0 when the
  fully reset KL is below `KL_FLOOR`: the policy does not use its memory);
* **memory ablation** (`trajectories(..., ablate=True)`): whole episodes with the hidden state
  zeroed at every step, against intact episodes from the same worlds and keys;
* **probes** (`probe_scores`): ridge regressions, cross-validated by episode, from the hidden
  state to variables absent from the current observation but seen earlier in the episode (for
  Craftax: the offset to the water, tree and crafting table last seen and now out of view, the
  steps since they were seen, and since the agent last drank and ate; for the cue task: the cue).
  Two controls: the same probe on the hidden state of the run's untrained network (its update-0
  checkpoint) fed the same observations, and on the current observation alone. Selectivity is the
  probe's R² minus the best control's.

The known-answer task `devrl.core.memory_task` (env_name "Cue-Memory-v0") has a horizon of exactly
its delay and a decodable cue for a policy that solved it; the tests check every measure on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError, atomic_write_json, atomic_write_parquet
from devrl.core.config import CUE_ENV, SCALES, TrainConfig
from devrl.core.envs import BehaviourWrapper, PoolResetVecEnv
from devrl.core.memory_task import CueMemoryVecEnv
from devrl.core.networks import initial_hidden
from devrl.core.ppo import make_network
from devrl.datasets import bin_updates, check_seeds, plural, runs_root, seeded_table_set
from devrl.measures.verdicts import HELD, NOT_HELD, PARTLY, UNTESTED, word
from devrl.runs.rundir import (
    check_verified,
    list_checkpoints,
    load_config,
    load_params,
    read_manifest,
    write_manifest,
)
from devrl.runs.sweep import SWEEPS, SweepSpec, load_spec, run_dir_for, run_sweep

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.datasets import over_seeds, with_rates  # noqa: F401
from devrl.measures.verdicts import status  # noqa: F401

HORIZON_FRACTION = 0.1  # the horizon: KL(k) falls to this fraction of the fully reset KL
KL_FLOOR = 1e-3  # nats: a fully reset KL below this, the policy does not use its memory
RIDGE_ALPHAS = (1e-1, 1e1, 1e3, 1e5)  # penalties tried (standardised features), best one kept
PROBE_FOLDS = 4  # cross-validation folds, split by episode
PROBE_MAX_SAMPLES = 6000  # (step, episode) samples per variable, drawn at random beyond this
MEASURE_SEED = 31_337  # the same worlds and action keys at every checkpoint of every run
BLOCKS = (("water", 3), ("tree", 5), ("table", 11))  # Craftax BlockType values of the landmarks
CUE_VARIABLES = ("cue",)
CRAFTAX_VARIABLES = tuple(f"{name}_{part}" for name, _ in BLOCKS
                          for part in ("dx", "dy", "steps")) + ("steps_since_drink",
                                                                "steps_since_food")

# Settings of the measures per scale: episodes per checkpoint, their step cap, checkpoints
# measured per run (log-spaced, always the first and the last), steps sampled per episode for the
# horizon.
MEASURE_SETTINGS: dict[str, dict[str, int]] = {
    "smoke": {"episodes": 4, "max_steps": 32, "checkpoints": 3, "horizon_samples": 8},
    "cpu": {"episodes": 32, "max_steps": 512, "checkpoints": 10, "horizon_samples": 24},
    "paper": {"episodes": 64, "max_steps": 2048, "checkpoints": 16, "horizon_samples": 32},
}


def variable_names(config: TrainConfig) -> tuple[str, ...]:
    return CUE_VARIABLES if config.env_name == CUE_ENV else CRAFTAX_VARIABLES


# ------------------------------------------------------------------ what the probes decode
class Tracker(NamedTuple):
    """Per env: what was seen earlier in the episode (Craftax landmarks, drinking, eating)."""

    t: jax.Array  # int32 [n]: step within the episode
    seen: jax.Array  # bool [n, blocks]
    seen_at: jax.Array  # int32 [n, blocks]: step it was last in view
    seen_pos: jax.Array  # int32 [n, blocks, 2]: world position of the nearest one then
    drank_at: jax.Array  # int32 [n]: -1 before the first drink
    ate_at: jax.Array  # int32 [n]
    drink: jax.Array  # int32 [n]: drink level at the previous step
    food: jax.Array  # int32 [n]


def craftax_view(env_state: Any) -> tuple[jax.Array, jax.Array]:
    """The block types of one env's 7x9 view and each cell's offset from the player [7, 9, 2]."""
    from craftax.craftax_classic.constants import MAX_OBS_DIM, OBS_DIM, BlockType

    pad = MAX_OBS_DIM + 2
    grid = jnp.pad(env_state.map, pad, constant_values=BlockType.OUT_OF_BOUNDS.value)
    corner = env_state.player_position - jnp.array(OBS_DIM) // 2 + pad
    view = jax.lax.dynamic_slice(grid, corner, OBS_DIM)
    rows, cols = jnp.meshgrid(jnp.arange(OBS_DIM[0]) - OBS_DIM[0] // 2,
                              jnp.arange(OBS_DIM[1]) - OBS_DIM[1] // 2, indexing="ij")
    return view, jnp.stack([rows, cols], -1)


def craftax_variables(env_states: Any, first: jax.Array, track: Tracker | None):
    """(values [n, V], valid [n, V], tracker) of CRAFTAX_VARIABLES at the current step."""
    n = first.shape[0]
    nb = len(BLOCKS)
    if track is None:
        track = Tracker(jnp.zeros((n,), jnp.int32), jnp.zeros((n, nb), bool),
                        jnp.zeros((n, nb), jnp.int32), jnp.zeros((n, nb, 2), jnp.int32),
                        -jnp.ones((n,), jnp.int32), -jnp.ones((n,), jnp.int32),
                        jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32))
    fresh = first[:, None]
    t = jnp.where(first, 0, track.t + 1)
    seen = jnp.where(fresh, False, track.seen)
    seen_at = jnp.where(fresh, 0, track.seen_at)
    seen_pos = jnp.where(fresh[..., None], 0, track.seen_pos)
    drink = env_states.player_drink.astype(jnp.int32)
    food = env_states.player_food.astype(jnp.int32)
    drank_at = jnp.where(first, -1, jnp.where(drink > track.drink, t, track.drank_at))
    ate_at = jnp.where(first, -1, jnp.where(food > track.food, t, track.ate_at))

    def nearest(env_state):
        view, offset = craftax_view(env_state)
        distance = jnp.abs(offset).sum(-1)
        out_in, out_pos = [], []
        for _, block in BLOCKS:
            here = view == block
            d = jnp.where(here, distance, 10_000).reshape(-1)
            i = jnp.argmin(d)
            out_in.append(here.any())
            out_pos.append(env_state.player_position + offset.reshape(-1, 2)[i])
        return jnp.stack(out_in), jnp.stack(out_pos)

    in_view, pos_now = jax.vmap(nearest)(env_states)
    player = env_states.player_position[:, None, :]
    # Values describe what is remembered now: the last sighting before this step.
    offset = (seen_pos - player).astype(jnp.float32)
    steps = (t[:, None] - seen_at).astype(jnp.float32)
    remembered = seen & ~in_view
    values = jnp.concatenate([
        jnp.stack([offset[..., 0], offset[..., 1], steps], -1).reshape(n, -1),
        (t - drank_at)[:, None].astype(jnp.float32), (t - ate_at)[:, None].astype(jnp.float32)],
        axis=-1)
    valid = jnp.concatenate([jnp.repeat(remembered, 3, axis=1), (drank_at >= 0)[:, None],
                             (ate_at >= 0)[:, None]], axis=-1)
    track = Tracker(t, seen | in_view, jnp.where(in_view, t[:, None], seen_at),
                    jnp.where(in_view[..., None], pos_now, seen_pos), drank_at, ate_at, drink,
                    food)
    return values, valid, track


def cue_variables(state: Any, first: jax.Array, track: None):
    """The cue (as -1/+1), valid from the step after it was shown."""
    return ((2 * state.cue - 1).astype(jnp.float32)[:, None], (state.t >= 1)[:, None], None)


def env_for(config: TrainConfig, episodes: int):
    """A vectorised env of `episodes` envs, and the function giving its probe variables."""
    if config.env_name == CUE_ENV:
        return CueMemoryVecEnv(episodes), cue_variables

    env = PoolResetVecEnv(BehaviourWrapper(config.env_name, config.reward), episodes, episodes)
    return env, lambda state, first, track: craftax_variables(
        state.env_states.env_state, first, track)


# ------------------------------------------------------------------ whole on-policy episodes
class Trajectories(NamedTuple):
    """Whole episodes from their first step (time-major [T, E]); steps after an episode ended are
    not `alive` and mean nothing."""

    obs: np.ndarray  # [T, E, D]
    first: np.ndarray  # [T, E]
    alive: np.ndarray  # [T, E]
    logits: np.ndarray  # [T, E, A]: the policy that acted
    hidden: np.ndarray  # [T, E, M]: the hidden state the policy acted with at t (after o_t)
    values: np.ndarray  # [T, E, V]: probe variables
    valid: np.ndarray  # [T, E, V]: the variable is defined and absent from o_t
    record: np.ndarray  # [E, F]: each episode's fields (env.episode_fields)
    finished: np.ndarray  # [E]: the episode ended within max_steps


def make_trajectory_runner(config: TrainConfig, episodes: int, max_steps: int,
                           ablate: bool = False):
    """jit(params, key) -> Trajectories. With `ablate`, the hidden state is zeroed at every step
    (the policy acts from the current observation alone)."""
    env, variables = env_for(config, episodes)
    network = make_network(config, env.num_actions)
    params_env = env.default_params

    @jax.jit
    def run(params, key):
        k_reset, k_loop = jax.random.split(key)
        obs, state = env.reset(k_reset, params_env)
        first = jnp.ones((episodes,), bool)
        _, _, track = variables(state, first, None)

        def step(carry, k):
            obs, state, hidden, first, alive, track, record = carry
            values, valid, track = variables(state, first, track)
            reset = jnp.ones_like(first) if ablate else first
            hidden, logits, _ = network.apply(params, hidden, obs[None], reset[None])
            k_act, k_env = jax.random.split(k)
            action = jax.random.categorical(k_act, logits[0])
            next_obs, next_state, _, done, info = env.step(k_env, state, action, params_env)
            ended = done & alive
            record = jnp.where(ended[:, None], env.episode_vectors(info), record)
            out = (obs, first, alive, logits[0], hidden, values, valid & alive[:, None], ended)
            return (next_obs, next_state, hidden, done, alive & ~done, track, record), out

        record = jnp.zeros((episodes, len(env.episode_fields)), jnp.float32)
        carry = (obs, state, initial_hidden(episodes, config.memory), first,
                 jnp.ones((episodes,), bool), track, record)
        carry, out = jax.lax.scan(step, carry, jax.random.split(k_loop, max_steps))
        _, state, _, _, alive, _, record = carry
        record = jnp.where(alive[:, None], env.running_episode_vectors(state), record)
        return out, record, ~alive

    def call(params, key) -> Trajectories:
        out, record, finished = jax.device_get(run(params, key))
        obs, first, alive, logits, hidden, values, valid, _ = out
        return Trajectories(obs, first, alive, logits, hidden, values, valid, record, finished)

    call.episode_fields = env.episode_fields
    return call


def hidden_states(config: TrainConfig, params: Any, traj: Trajectories) -> np.ndarray:
    """The hidden states [T, E, M] that `params` reaches on `traj`'s observations."""
    network = _network(config, traj)

    @jax.jit
    def run(params, obs, first):
        def step(hidden, x):
            o, f = x
            hidden, _, _ = network.apply(params, hidden, o[None], f[None])
            return hidden, hidden

        hidden0 = jnp.zeros((obs.shape[1], config.memory), jnp.float32)
        return jax.lax.scan(step, hidden0, (obs, first))[1]

    return np.asarray(run(params, traj.obs, traj.first))


def _network(config: TrainConfig, traj: Trajectories):
    return make_network(config, traj.logits.shape[-1])


# ------------------------------------------------------------------ memory horizon
def horizon_grid(max_steps: int) -> list[int]:
    """k = 0, 1, 2, 4, ... below `max_steps`."""
    grid = [0]
    k = 1
    while k < max_steps:
        grid.append(k)
        k *= 2
    return grid


def sample_steps(traj: Trajectories, per_episode: int, seed: int = MEASURE_SEED) -> np.ndarray:
    """(t, e) pairs of up to `per_episode` alive steps t >= 1 of each episode, drawn at random."""
    rng = np.random.default_rng(seed)
    picks = []
    for e in range(traj.alive.shape[1]):
        steps = np.flatnonzero(traj.alive[1:, e]) + 1
        if len(steps):
            chosen = rng.choice(steps, min(per_episode, len(steps)), replace=False)
            picks.extend((int(t), e) for t in np.sort(chosen))
    return np.array(picks, np.int64).reshape(-1, 2)


def horizon_curve(config: TrainConfig, params: Any, traj: Trajectories, points: np.ndarray,
                  ks: list[int], batch: int = 64) -> pd.DataFrame:
    """Mean KL(intact || hidden zeroed k steps back) over `points` (t, e), for each k in `ks`.

    A point with t <= k keeps its whole history (the window reaches the episode start) and
    counts with KL 0. With memory 0 every KL is 0."""
    if len(points) == 0:
        raise ConfigError("points=[] is not allowed: the horizon needs at least one sampled step")
    intact = jax.nn.log_softmax(traj.logits[points[:, 0], points[:, 1]])
    rows = []
    network = _network(config, traj)

    @jax.jit
    def truncated(params, obs, first):  # obs [k+1, B, D]: the window ending at t
        hidden = jnp.zeros((obs.shape[1], config.memory), jnp.float32)
        _, logits, _ = network.apply(params, hidden, obs, first)
        return jax.nn.log_softmax(logits[-1])

    for k in ks:
        kl = np.zeros(len(points))
        if config.memory:
            todo = np.flatnonzero(points[:, 0] > k)
            for start in range(0, len(todo), batch):
                idx = todo[start:start + batch]
                t, e = points[idx, 0], points[idx, 1]
                window = t[None, :] + np.arange(-k, 1)[:, None]  # [k+1, B]
                obs = traj.obs[window, e[None, :]]
                first = traj.first[window, e[None, :]].copy()
                first[0] = True  # the hidden state is zeroed before o_{t-k}
                log_q = np.asarray(truncated(params, obs, first))
                log_p = np.asarray(intact[idx])
                kl[idx] = (np.exp(log_p) * (log_p - log_q)).sum(-1)
        rows.append({"k": k, "kl": float(np.maximum(kl, 0.0).mean()), "points": len(points)})
    return pd.DataFrame(rows)


def horizon_of(curve: pd.DataFrame, fraction: float = HORIZON_FRACTION) -> int:
    """The smallest k whose KL is at most `fraction` of the fully reset KL (k = 0); 0 if the
    fully reset KL is below KL_FLOOR; the largest k + 1 if no k of the grid gets there."""
    curve = curve.sort_values("k")
    full = float(curve.loc[curve["k"] == 0, "kl"].iloc[0])
    if full < KL_FLOOR:
        return 0
    below = curve[(curve["k"] > 0) & (curve["kl"] <= fraction * full)]
    return int(below["k"].iloc[0]) if len(below) else int(curve["k"].max()) + 1


# ------------------------------------------------------------------ probes
def ridge_cv_r2(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = PROBE_FOLDS,
                alphas: tuple[float, ...] = RIDGE_ALPHAS) -> float:
    """Cross-validated R² of a ridge regression of y on x, folds split by `groups` (episodes),
    features standardised on the training folds; the best of `alphas` (the same choice is
    offered to the probe and to its controls). R² = 1 - SSE / SST pooled over held-out folds,
    SST around the training mean, so a useless probe scores <= 0."""
    unique = np.unique(groups)
    if len(unique) < 2:
        return float("nan")
    fold_of = {g: i % folds for i, g in enumerate(np.random.default_rng(0).permutation(unique))}
    fold = np.array([fold_of[g] for g in groups])
    sse = np.zeros(len(alphas))
    sst = 0.0
    for f in range(min(folds, len(unique))):
        train, test = fold != f, fold == f
        if not test.any() or not train.any():
            continue
        mu, sd = x[train].mean(0), x[train].std(0)
        varies = sd > 1e-8  # constant columns carry nothing once centred: dropped (exactly)
        mu, sd = mu[varies], sd[varies]
        xt, xs = (x[train][:, varies] - mu) / sd, (x[test][:, varies] - mu) / sd
        ym = y[train].mean()
        gram = xt.T @ xt
        rhs = xt.T @ (y[train] - ym)
        evals, evecs = np.linalg.eigh(gram)
        proj = evecs.T @ rhs
        for i, alpha in enumerate(alphas):
            w = evecs @ (proj / (evals + alpha))
            sse[i] += float(((xs @ w + ym - y[test]) ** 2).sum())
        sst += float(((y[test] - ym) ** 2).sum())
    if sst <= 0:
        return float("nan")
    return float(1.0 - sse.min() / sst)


def probe_scores(traj: Trajectories, names: tuple[str, ...], untrained_hidden: np.ndarray | None,
                 seed: int = MEASURE_SEED) -> pd.DataFrame:
    """Per variable: cross-validated R² from the hidden state, from the untrained network's
    hidden state, and from the current observation (rows: variable, features, r2, samples)."""
    rng = np.random.default_rng(seed)
    rows = []
    for v, name in enumerate(names):
        t, e = np.nonzero(traj.valid[:, :, v])
        if len(t) > PROBE_MAX_SAMPLES:
            keep = np.sort(rng.choice(len(t), PROBE_MAX_SAMPLES, replace=False))
            t, e = t[keep], e[keep]
        y = traj.values[t, e, v].astype(np.float64)
        features = {"observation": traj.obs[t, e]}
        if traj.hidden.shape[-1]:
            features["hidden"] = traj.hidden[t, e]
            if untrained_hidden is not None:
                features["untrained"] = untrained_hidden[t, e]
        for kind, x in features.items():
            r2 = ridge_cv_r2(x.astype(np.float64), y, e) if len(t) >= 20 else float("nan")
            rows.append({"variable": name, "features": kind, "r2": r2, "samples": len(t),
                         "episodes": len(np.unique(e))})
    return pd.DataFrame(rows)


def selectivity(probes: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per variable (and `by`): the R² of each feature set (NaN where a set was not probed, e.g.
    no hidden state at memory 0), and the hidden-state probe's R² minus the best control's."""
    wide = (probes.set_index([*by, "variable", "features"])["r2"].unstack("features")
            .reset_index())
    wide.columns.name = None
    for kind in ("hidden", "untrained", "observation"):
        if kind not in wide:
            wide[kind] = np.nan
    wide["best_control"] = wide[["untrained", "observation"]].max(axis=1)
    wide["selectivity"] = wide["hidden"] - wide["best_control"]
    return wide


# ------------------------------------------------------------------ one run, every measure
def measured_checkpoints(checkpoints: list[tuple[int, Path]], count: int) -> list[tuple[int, Path]]:
    """Up to `count` checkpoints, log-spaced in the update, always the first and the last."""
    if len(checkpoints) <= count:
        return checkpoints
    updates = np.array([u for u, _ in checkpoints])
    last = updates[-1]
    wanted = np.unique(np.round(np.geomspace(1, last, count - 1)).astype(int))
    picks = {0, int(last)} | {int(updates[np.argmin(np.abs(updates - w))]) for w in wanted}
    return [c for c in checkpoints if c[0] in picks]


def measure_run(run_dir: Path, settings: dict[str, int], show_progress: bool = False
                ) -> dict[str, pd.DataFrame]:
    """Every memory measure at the measured checkpoints of one run, cached per checkpoint under
    RUN/memory/ (a rerun with the same settings reuses finished checkpoints)."""
    run_dir = Path(run_dir)
    check_verified(run_dir, "run")
    config = load_config(run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints or checkpoints[0][0] != 0:
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: it has no update-0 checkpoint "
                          "(the untrained control)")
    out = run_dir / "memory"
    stored = out / "settings.json"
    if stored.exists() and json.loads(stored.read_text()) != settings:
        raise ConfigError(f"{out} was measured with other settings ({stored.read_text()}); "
                          "allowed: the same settings, or delete the folder to start over")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "manifest.json").exists():
        # A folder with a manifest of its own, so the run's manifest never counts its files.
        write_manifest(out, {"complete": False}, exclude=("",))
    atomic_write_json(stored, settings)
    episodes, max_steps = settings["episodes"], settings["max_steps"]
    intact_runner = make_trajectory_runner(config, episodes, max_steps)
    ablated_runner = make_trajectory_runner(config, episodes, max_steps, ablate=True)
    fields = list(intact_runner.episode_fields)
    key = jax.random.PRNGKey(MEASURE_SEED)
    untrained = load_params(checkpoints[0][1])
    names = variable_names(config)
    ks = horizon_grid(max_steps)
    chosen = measured_checkpoints(checkpoints, settings["checkpoints"])
    if show_progress:
        from tqdm import tqdm

        chosen = tqdm(chosen, desc=f"memory {run_dir.parent.name}/{run_dir.name}", unit="ckpt")
    for update, path in chosen:
        done_mark = out / f"probes_{update:06d}.parquet"
        if done_mark.exists():
            continue
        params = load_params(path)
        traj = intact_runner(params, key)
        ablated = ablated_runner(params, key)
        tables = {}
        episodes_table = []
        for condition, run in (("intact", traj), ("ablated", ablated)):
            frame = pd.DataFrame(run.record, columns=fields)
            frame.insert(0, "episode", np.arange(episodes))
            frame.insert(1, "condition", condition)
            frame.insert(2, "truncated", ~run.finished)
            episodes_table.append(frame)
        tables["episodes"] = pd.concat(episodes_table, ignore_index=True)
        points = sample_steps(traj, settings["horizon_samples"])
        curve = horizon_curve(config, params, traj, points, ks)
        curve["horizon"] = horizon_of(curve)
        tables["horizon"] = curve
        untrained_hidden = hidden_states(config, untrained, traj) if config.memory else None
        tables["probes"] = probe_scores(traj, names, untrained_hidden)
        for name, frame in tables.items():
            frame.insert(0, "update", update)
            frame.insert(1, "env_steps", update * config.steps_per_update)
            atomic_write_parquet(out / f"{name}_{update:06d}.parquet", frame)
    result = {}
    for name in ("episodes", "horizon", "probes"):  # probes last: its file marks a checkpoint done
        frames = [pd.read_parquet(out / f"{name}_{u:06d}.parquet")
                  for u, _ in measured_checkpoints(checkpoints, settings["checkpoints"])]
        table = pd.concat(frames, ignore_index=True)
        table.insert(0, "memory", config.memory)
        table.insert(1, "seed", config.seed)
        result[name] = table
    write_manifest(out, {"complete": True, "run_config_hash": config.config_hash(),
                         "settings": settings})
    return result


# ------------------------------------------------------------------ the study's data set
def study_spec(scale: str):
    """The memory study's sweep at `scale`: `src/devrl/sweeps/memory-<scale>.yaml`."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    return load_spec(SWEEPS / f"memory-{scale}.yaml")


TRAINING_COLUMNS = ("episode_return", "episode_length", "replay_log_ratio_max")
UPDATES_PER_BIN = {"smoke": 1, "cpu": 4, "paper": 32}


def training_table(run_dir: Path, scale: str) -> pd.DataFrame:
    """The run's training episodes, binned over PPO updates (devrl.datasets.bin_updates)."""
    config = load_config(run_dir)
    metrics = pd.read_parquet(Path(run_dir) / "metrics.parquet")
    metrics["seed"] = config.seed
    columns = list(TRAINING_COLUMNS) + [c for c in metrics.columns
                                        if c.startswith("achievement_")]
    binned = bin_updates(metrics, columns, UPDATES_PER_BIN[scale])
    binned["replay_log_ratio_max"] = (
        metrics.groupby((metrics["update"] - 1) // UPDATES_PER_BIN[scale])
        ["replay_log_ratio_max"].max().to_numpy())  # the worst update of the bin, not a mean
    binned.insert(0, "memory", config.memory)
    return binned


def run_seconds(run_dir: Path) -> float:
    """Training time of a run: its updates' env steps over the measured rate of their chunk."""
    config = load_config(run_dir)
    metrics = pd.read_parquet(Path(run_dir) / "metrics.parquet")
    return float((config.steps_per_update / metrics["sps"]).sum())


def study_tables(scale: str, runs_dir: Path, seeds: list[int] | None = None,
                 progress=print) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Train the study's sweep into `runs_dir` (finished runs are skipped, interrupted ones
    resume), measure every run (cached per checkpoint) and return the tables and the manifest's
    description."""
    spec = study_spec(scale)
    if seeds is not None:
        spec = SweepSpec(spec.scale, spec.grid, tuple(seeds))
    if run_sweep(spec, runs_dir, show_progress=False) != 0:
        raise RuntimeError(f"training did not complete; see devrl sweep status {runs_dir}")
    settings = MEASURE_SETTINGS[scale]
    tables: dict[str, list[pd.DataFrame]] = {"training": [], "episodes": [], "horizon": [],
                                             "probes": []}
    runs = []
    for _, config in spec.configs():
        run_dir = run_dir_for(runs_dir, config)
        progress(f"memory measures: {run_dir.parent.name}/{run_dir.name} "
                 f"(memory {config.memory}, seed {config.seed})")
        measured = measure_run(run_dir, settings)
        for name, frame in measured.items():
            tables[name].append(frame)
        tables["training"].append(training_table(run_dir, scale))
        manifest = read_manifest(run_dir)
        runs.append({"seed": config.seed, "memory": config.memory,
                     "config": load_config(run_dir).to_dict(),
                     "config_hash": config.config_hash(), "complete": manifest["complete"],
                     "env_steps_done": manifest["updates_done"] * config.steps_per_update,
                     "git_commit": manifest.get("git_commit"),
                     "train_seconds": round(run_seconds(run_dir), 1)})
    out = {name: pd.concat(frames, ignore_index=True) for name, frames in tables.items()}
    summary = horizon_summary(out["horizon"])
    out["horizon_summary"] = summary
    return out, {
        "what": "environmental memory: training curves, intact and memory-ablated episodes, "
                "memory horizon and hidden-state probes per memory width, seed and checkpoint "
                "(devrl.studies.memory)",
        "made_by": f"devrl figure memory-return -p scale {scale} -p recompute True",
        "sweep": spec.to_dict(), "settings": settings, "runs": runs,
        "horizon_fraction": HORIZON_FRACTION, "kl_floor": KL_FLOOR,
        "ridge_alphas": list(RIDGE_ALPHAS), "probe_folds": PROBE_FOLDS,
        "probe_max_samples": PROBE_MAX_SAMPLES,
        "variables": list(variable_names(spec.configs()[0][1]))}


def horizon_summary(horizon: pd.DataFrame) -> pd.DataFrame:
    """Per (memory, seed, checkpoint): the horizon and the fully reset KL."""
    rows = horizon.groupby(["memory", "seed", "update", "env_steps"])
    full = rows.apply(lambda g: float(g.loc[g["k"] == 0, "kl"].iloc[0]), include_groups=False)
    out = rows["horizon"].first().to_frame()
    out["full_reset_kl"] = full
    return out.reset_index()


def first_step_above(summary: pd.DataFrame, threshold: int = 1) -> pd.DataFrame:
    """Per (memory, seed): the first env step at which the horizon exceeds `threshold` steps
    (NaN if it never does)."""
    def first(group: pd.DataFrame) -> float:
        hits = group.loc[group["horizon"] > threshold, "env_steps"]
        return float(hits.min()) if len(hits) else float("nan")

    return (summary.groupby(["memory", "seed"])[["env_steps", "horizon"]].apply(first)
            .rename("first_env_steps").reset_index())


# ------------------------------------------------------------------ summaries for the figures
def final_rows(frame: pd.DataFrame, by: tuple[str, ...] = ("memory", "seed")) -> pd.DataFrame:
    """The rows of each (memory, seed)'s last env step."""
    last = frame.groupby(list(by))["env_steps"].transform("max")
    return frame[frame["env_steps"] == last].reset_index(drop=True)


def by_width(values: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per memory width: mean, sd (ddof 1) and range of `column` over seeds (one value each)."""
    return (values.groupby("memory")[column]
            .agg(mean="mean", sd="std", low="min", high="max", seeds="count").reset_index())


def return_gaps(training: pd.DataFrame, last_bins: int = 2) -> pd.DataFrame:
    """Per memory width: the final training return (mean of each seed's last `last_bins` bins)
    over seeds, and its gap to the width-0 control relative to the control's mean."""
    tail = (training.sort_values("env_steps").groupby(["memory", "seed"]).tail(last_bins)
            .groupby(["memory", "seed"])["episode_return"].mean().reset_index())
    out = by_width(tail, "episode_return")
    control = out.loc[out["memory"] == 0, "mean"]
    out["relative_gap"] = (out["mean"] / float(control.iloc[0]) - 1.0) if len(control) \
        else np.nan
    out["welch_p"] = [welch_p(tail.loc[tail["memory"] == m, "episode_return"],
                              tail.loc[tail["memory"] == 0, "episode_return"])
                      for m in out["memory"]]
    return out


def welch_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided p-value of Welch's t-test of equal means (NaN with fewer than 2 values each)."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def checkpoint_means(episodes: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per (memory, seed, checkpoint, condition): means of `columns` over the episodes."""
    return (episodes.groupby(["memory", "seed", "update", "env_steps", "condition"])[columns]
            .mean().reset_index())


def ablation_effect(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per (memory, seed, checkpoint): intact and ablated mean return and their difference."""
    means = checkpoint_means(episodes, ["episode_return"])
    wide = means.pivot_table(index=["memory", "seed", "update", "env_steps"],
                             columns="condition", values="episode_return").reset_index()
    wide["drop"] = wide["intact"] - wide["ablated"]
    return wide


def probe_selectivity(probes: pd.DataFrame) -> pd.DataFrame:
    """Per (memory, seed, checkpoint, variable): R² of each feature set and the selectivity."""
    return selectivity(probes, by=("memory", "seed", "update", "env_steps"))


def best_decoded(probes: pd.DataFrame) -> pd.DataFrame:
    """Per memory width > 0, at the last checkpoint: the variable with the highest mean
    selectivity over seeds, with its mean and sd, and the hidden state's and controls' R²."""
    final = final_rows(probe_selectivity(probes[probes["memory"] > 0]))
    means = final.groupby(["memory", "variable"]).agg(
        selectivity=("selectivity", "mean"), selectivity_sd=("selectivity", "std"),
        hidden=("hidden", "mean"), untrained=("untrained", "mean"),
        observation=("observation", "mean"), seeds=("seed", "count")).reset_index()
    means = means.dropna(subset=["selectivity"])
    return means.loc[means.groupby("memory")["selectivity"].idxmax()].reset_index(drop=True)


# ------------------------------------------------------------------ verdicts of the predictions
# Prediction 2's achievements, and the rule that judges "not larger than the spread over seeds":
# for a width and an achievement, the difference from the control is larger than the spread when
# the two sets of seeds' final success rates do not overlap (every seed above every control seed,
# or every seed below). Written on 2026-12-06, after the data had been seen: exploratory.
MEMORY_ACHIEVEMENTS = ("achievement_collect_drink", "achievement_make_wood_pickaxe")
# Prediction 5 can only be judged where something is decodable: a variable counts as decodable
# when the hidden state or a control reaches this held-out R² (the prediction's own scale).
# Written on 2026-12-06, after the data had been seen: exploratory.
DECODABLE_R2 = 0.1


def achievement_separation(final: pd.DataFrame, achievements: tuple[str, ...]) -> pd.DataFrame:
    """Per recurrent width and achievement (columns of `final`, one row per (memory, seed)):
    the means and ranges over seeds against the width-0 control, and `separated`: whether the
    two ranges do not overlap."""
    rows = []
    control = final[final["memory"] == 0]
    for memory, group in final[final["memory"] > 0].groupby("memory"):
        for name in achievements:
            low, high = group[name].min(), group[name].max()
            c_low, c_high = control[name].min(), control[name].max()
            rows.append({"memory": int(memory), "achievement": name,
                         "mean": group[name].mean(), "low": low, "high": high,
                         "control_mean": control[name].mean(), "control_low": c_low,
                         "control_high": c_high,
                         "separated": bool(low > c_high or high < c_low)})
    return pd.DataFrame(rows)


# The five predictions of book/memory.md were written before the cpu grid had trained: each is a
# test (devrl.measures.verdicts). Each verdict function returns its prose ("word") and its
# verdict in the book's vocabulary ("verdict").
PREDICTION_KIND = {"return": "test", "achievements": "test", "horizon": "test",
                   "ablation": "test", "probes": "test"}


def achievement_verdict(final: pd.DataFrame) -> dict[str, Any]:
    """Prediction 2: no recurrent width's final success rate at drinking or making a wood
    pickaxe differs from the control's by more than the spread over seeds (the rule above)."""
    table = achievement_separation(final, MEMORY_ACHIEVEMENTS)
    separated = table[table["separated"]]
    names = [f"{r.achievement.removeprefix('achievement_').replace('_', ' ')} at memory "
             f"{r.memory} ({'above' if r.mean > r.control_mean else 'below'} every control "
             "seed)" for r in separated.itertuples()]
    return {"holds": separated.empty, "table": table,
            "word": "held" if separated.empty else "did not hold",
            "verdict": word(separated.empty),
            "exceptions": "; ".join(names) if names else "none"}


def probes_verdict(probes: pd.DataFrame) -> dict[str, Any]:
    """Prediction 5 at the last checkpoint of each recurrent run (`probes`: the data set's
    probe table), on means over seeds per (width, variable): every landmark variable that is
    decodable (the hidden state or a control reaches DECODABLE_R2) has a selectivity below 0.1,
    and the steps since the last drink are read from the observation about as well (within
    0.05 of R²) as from the hidden state. A part with nothing decodable is untestable: a
    selectivity below 0.1 would then hold only because no probe finds anything."""
    recurrent = probes[probes["memory"] > 0]
    last = final_rows(probe_selectivity(recurrent))
    episodes = final_rows(recurrent)["episodes"]
    means = last.groupby(["memory", "variable"])[
        ["hidden", "untrained", "observation", "selectivity"]].mean().reset_index()
    means["best_r2"] = means[["hidden", "untrained", "observation"]].max(axis=1)
    means["decodable"] = means["best_r2"] >= DECODABLE_R2
    is_landmark = (means["variable"].str.contains("_dx|_dy|_steps")
                   & ~means["variable"].str.startswith("steps_since"))
    landmark = means[is_landmark & means["decodable"]]
    drink = means[(means["variable"] == "steps_since_drink") & means["decodable"]]
    parts = {
        "landmark": ("untestable" if landmark.empty
                     else "held" if (landmark["selectivity"] < 0.1).all() else "did not hold"),
        "drink": ("untestable" if drink.empty
                  else "held" if (drink["observation"] >= drink["hidden"] - 0.05).all()
                  else "did not hold")}
    verdict = (NOT_HELD if "did not hold" in parts.values() else
               UNTESTED if all(p == "untestable" for p in parts.values()) else
               PARTLY if "untestable" in parts.values() else HELD)
    said = {NOT_HELD: "did not hold", HELD: "held",
            UNTESTED: "cannot be judged at this sample size: nothing it speaks of is decodable",
            PARTLY: "held where it could be judged, and the rest cannot be judged at this "
                    "sample size"}[verdict]
    all_drink = means[means["variable"] == "steps_since_drink"]
    return {"word": said, "verdict": verdict, "parts": parts,
            "landmark_decodable": len(landmark),
            "landmark_total": int(is_landmark.sum()),
            "landmark_max": float(landmark["selectivity"].max()) if len(landmark) else
            float("nan"),
            "drink_best_r2": float(all_drink["best_r2"].max()),
            "drink_observation": float(all_drink["observation"].mean()),
            "drink_hidden": float(all_drink["hidden"].mean()),
            "episodes_min": int(episodes.min()), "episodes_max": int(episodes.max())}


def return_verdict(gaps: pd.DataFrame) -> dict[str, Any]:
    """Prediction 1 from `return_gaps`: every recurrent width within 10% of the control's final
    return, and the widest memory the lowest mean."""
    recurrent = gaps[gaps["memory"] > 0]
    within = bool((recurrent["relative_gap"].abs() <= 0.10).all())
    widest = int(recurrent["memory"].max())
    slowest = bool(gaps.loc[gaps["memory"] == widest, "mean"].iloc[0] == gaps["mean"].min())
    said = ("held" if within and slowest else
            "held for the gap but not for the order" if within else "did not hold")
    verdict = HELD if within and slowest else PARTLY if within else NOT_HELD
    return {"word": said, "verdict": verdict, "within": within, "slowest": slowest,
            "widest": widest}


def horizon_verdict(summary: pd.DataFrame, kl_floor: float) -> dict[str, Any]:
    """Prediction 3 from the horizon summary (per run and checkpoint): the horizon at the last
    checkpoint at most 16 steps in every recurrent run, growing with the width (mean over
    seeds), and every recurrent run using its memory (fully reset KL ≥ `kl_floor`) by 10⁵ env
    steps."""
    final = final_rows(summary)
    recurrent = final[final["memory"] > 0]
    means = by_width(recurrent, "horizon").sort_values("memory")
    kls = by_width(recurrent, "full_reset_kl").sort_values("memory")
    ordered = bool((means["mean"].diff().dropna() > 0).all())
    kl_ordered = bool((kls["mean"].diff().dropna() > 0).all())
    short = bool(recurrent["horizon"].max() <= 16)
    used = summary[(summary["memory"] > 0) & (summary["full_reset_kl"] >= kl_floor)]
    first_use = used.groupby(["memory", "seed"])["env_steps"].min()
    runs = summary[summary["memory"] > 0].groupby(["memory", "seed"]).ngroups
    early = bool(len(first_use) == runs and first_use.max() <= 1e5)
    return {"word": "held" if short and ordered and early else "did not hold in full",
            "verdict": (HELD if short and ordered and early else
                        NOT_HELD if not (short or ordered or early) else PARTLY),
            "short": short, "ordered": ordered, "kl_ordered": kl_ordered, "early": early,
            "runs": runs, "early_runs": int((first_use <= 1e5).sum()),
            "first_use_max": float(first_use.max()) if len(first_use) else float("nan")}


def ablation_verdict(final: pd.DataFrame) -> dict[str, Any]:
    """Prediction 4 from the last checkpoint's `ablation_effect` rows: wiping the memory lowers
    the return of every recurrent run."""
    recurrent = final[final["memory"] > 0]
    held = bool((recurrent["drop"] > 0).all())
    return {"word": "held" if held else "did not hold", "verdict": word(held),
            "positive": int((recurrent["drop"] > 0).sum()), "runs": len(recurrent)}


# ------------------------------------------------------------------ the data set, for the notebooks
@dataclass(frozen=True)
class MemoryData:
    """The environmental-memory study (`data/memory-<scale>/`, `devrl.studies.memory`), restricted
    to the chosen seeds."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    training: pd.DataFrame  # per (memory, seed, bin of PPO updates): training episodes
    episodes: pd.DataFrame  # per (memory, seed, checkpoint, condition, episode)
    horizon: pd.DataFrame  # per (memory, seed, checkpoint, k): KL from the intact policy
    horizon_summary: pd.DataFrame  # per (memory, seed, checkpoint): horizon, fully reset KL
    probes: pd.DataFrame  # per (memory, seed, checkpoint, variable, features): R²

    def describe(self) -> str:
        runs = [r for r in self.manifest["runs"] if r["seed"] in self.seeds]
        widths = sorted({r["memory"] for r in runs})
        steps = sorted({r["env_steps_done"] for r in runs})
        return (f"memory widths {', '.join(map(str, widths))} × {plural(len(self.seeds), 'seed')} "
                f"({', '.join(map(str, self.seeds))}) at the {self.scale} scale, "
                f"{'/'.join(f'{s:,}' for s in steps)} env steps each")


def memory_data(scale: str = "cpu", seeds: list[int] | None = None,
                recompute: bool = False) -> MemoryData:
    """The memory study's data set; with `recompute`, train its sweep
    (`src/devrl/sweeps/memory-<scale>.yaml`, `seeds` or the sweep's own) into
    `DEVRL_RUNS/memory-<scale>/` (finished runs are skipped, interrupted ones resume), measure
    every run there (cached per checkpoint) and replace the data set."""
    seeds = check_seeds(seeds)

    def build():
        return study_tables(scale, runs_root() / f"memory-{scale}", seeds,
                                   progress=lambda message: print(message, flush=True))

    picked, manifest, folder, chosen = seeded_table_set(
        "memory", scale, seeds, recompute, build)
    return MemoryData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)
