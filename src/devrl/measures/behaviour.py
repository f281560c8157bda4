"""Behaviour of checkpoints: fixed-seed episodes, and the policy on a fixed probe set of states.

For every checkpoint of a run, `evaluate_run` writes (under RUN/behaviour/):

* `episodes.parquet`: one row per (checkpoint, episode) with the fields of `EPISODE_FIELDS`
  (return, length, plants placed, place attempts, saplings, plants eaten, achievements, action
  counts). Episodes use the same worlds and the same sampling keys at every checkpoint.
* `probe_policy.parquet`: per (checkpoint, plant context) the mean action distribution on the
  probe states of that context, P(PLACE_PLANT), and the "context size" of plant placing: the
  fraction of the context's probe states where PLACE_PLANT is the most likely action.
* `probe.npz`: the probe set, collected once per run from rollouts of several checkpoints, so it
  holds states the agent actually meets early and late in training. For a recurrent policy each
  probe state carries its history from the start of its episode, and every checkpoint is
  evaluated on that history with its own memory (`collect_probe`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError, atomic_write_npz, atomic_write_parquet
from devrl.core.config import TrainConfig
from devrl.core.envs import (
    ACTION_NAMES,
    CONTEXTS,
    EPISODE_FIELDS,
    PLACE_PLANT,
    BehaviourWrapper,
    PoolResetVecEnv,
    episode_vector,
)
from devrl.core.networks import initial_hidden
from devrl.core.ppo import make_network
from devrl.runs.rundir import (
    check_verified,
    list_checkpoints,
    load_config,
    load_params,
    run_dirs_under,
    write_manifest,
)

EVAL_SEED = 20_241  # the same worlds and sampling keys for every run and checkpoint
PROBE_SEED = 7_919
PROBE_FRACTIONS = (0.02, 0.1, 0.3, 1.0)  # checkpoints (fraction of training) the probe comes from
PROBE_ENVS = 64
PROBE_STEPS = 256


def make_episode_runner(config: TrainConfig, episodes: int, max_steps: int):
    """jit(params, key) -> (episode vectors [E, F], finished [E], truncated [E])."""
    env = BehaviourWrapper(config.env_name, config.reward)
    params_env = env.default_params
    network = make_network(config, env.num_actions)

    @jax.jit
    def run(params, key):
        k_reset, k_loop = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, episodes), params_env)
        hidden = initial_hidden(episodes, config.memory)
        first = jnp.ones((episodes,), bool)
        finished = jnp.zeros((episodes,), bool)
        record = jnp.zeros((episodes, len(EPISODE_FIELDS)), jnp.float32)

        def body(carry):
            t, obs, state, hidden, first, finished, record = carry
            k_act, k_env = jax.random.split(jax.random.fold_in(k_loop, t))
            hidden, logits, _ = network.apply(params, hidden, obs[None], first[None])
            action = jax.random.categorical(k_act, logits[0])
            obs, state, _, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, episodes), state, action, params_env)
            vector = jax.vmap(episode_vector)(info)
            newly = done & ~finished
            record = jnp.where(newly[:, None], vector, record)
            return (t + 1, obs, state, hidden, jnp.zeros_like(first), finished | done, record)

        def cond(carry):
            return (carry[0] < max_steps) & ~jnp.all(carry[5])

        carry = (0, obs, state, hidden, first, finished, record)
        _, _, state, _, _, finished, record = jax.lax.while_loop(cond, body, carry)
        stats = state.stats  # running counts of episodes still going at the cap
        truncated_vector = jax.vmap(episode_vector)(
            {"stats": stats, "achievements": state.env_state.achievements})
        record = jnp.where(finished[:, None], record, truncated_vector)
        return record, finished

    return run


def collect_probe(config: TrainConfig, checkpoint_params: list[Any], per_context: int) -> dict:
    """Roll out several checkpoints, then draw up to `per_context` states per plant context.

    Each probe state comes with the observations that led to it: for a feedforward policy the
    state alone (windows of 1), for a recurrent one its whole history from the start of its
    episode in the rollout that reached it (every rollout starts at a reset), left-padded to the
    longest such history. A policy evaluated on a window therefore carries the hidden state it
    would have on that history; for the checkpoint that ran the rollout, exactly the hidden state
    it acted with (`source_probs`, its action probabilities there, lets this be checked)."""
    env = PoolResetVecEnv(BehaviourWrapper(config.env_name, config.reward), PROBE_ENVS, PROBE_ENVS)
    params_env = env.default_params
    network = make_network(config, env.num_actions)

    @jax.jit
    def rollout(params, key):
        k_reset, k_loop = jax.random.split(key)
        obs, state = env.reset(k_reset, params_env)

        def step(carry, k):
            obs, state, hidden, first = carry
            k_act, k_env = jax.random.split(k)
            hidden, logits, _ = network.apply(params, hidden, obs[None], first[None])
            action = jax.random.categorical(k_act, logits[0])
            next_obs, state, _, done, info = env.step(k_env, state, action, params_env)
            return (next_obs, state, hidden, done), (obs, first, info["context"],
                                                     jax.nn.softmax(logits[0]))

        carry = (obs, state, initial_hidden(PROBE_ENVS, config.memory),
                 jnp.ones((PROBE_ENVS,), bool))
        _, out = jax.lax.scan(step, carry, jax.random.split(k_loop, PROBE_STEPS))
        return out

    rollouts = [jax.device_get(rollout(params, jax.random.fold_in(
        jax.random.PRNGKey(PROBE_SEED), i))) for i, params in enumerate(checkpoint_params)]
    # Candidates: every (source, t, env), in that order; their contexts and episode starts.
    contexts = np.concatenate([r[2].reshape(-1) for r in rollouts])
    starts = []
    for _, first, _, _ in rollouts:
        t_index = np.arange(PROBE_STEPS)[:, None] * np.ones((1, PROBE_ENVS), np.int64)
        starts.append(np.maximum.accumulate(np.where(first, t_index, 0), axis=0).reshape(-1))
    starts = np.concatenate(starts)
    rng = np.random.default_rng(PROBE_SEED)
    chosen = []
    for c in range(len(CONTEXTS)):
        candidates = np.flatnonzero(contexts == c)
        chosen.append(np.sort(rng.choice(candidates, min(per_context, len(candidates)),
                                         replace=False)))
    chosen = np.concatenate(chosen)
    per_source = PROBE_STEPS * PROBE_ENVS
    source, rest = np.divmod(chosen, per_source)
    t, e = np.divmod(rest, PROBE_ENVS)
    lengths = t - starts[chosen] + 1 if config.memory else np.ones_like(t)
    window = int(lengths.max()) if len(chosen) else 1
    obs_size = rollouts[0][0].shape[-1]
    obs = np.zeros((len(chosen), window, obs_size), np.float32)
    first = np.zeros((len(chosen), window), bool)
    for i, (s, ti, ei, n) in enumerate(zip(source, t, e, lengths)):
        obs[i, window - n:] = rollouts[s][0][ti - n + 1:ti + 1, ei]
        first[i, window - n:] = rollouts[s][1][ti - n + 1:ti + 1, ei]
    first[:, 0] = True  # padding (if any) starts from a zero state; the episode start resets it
    return {"obs": obs, "first": first, "context": contexts[chosen].astype(np.int32),
            "source": source.astype(np.int32),
            "source_probs": np.stack([rollouts[s][3][ti, ei] for s, ti, ei in
                                      zip(source, t, e)]).astype(np.float32)}


def make_probe_policy(config: TrainConfig):
    """jit(params, obs [N, W, D], first [N, W]) -> action probabilities [N, A] at the last step."""
    network = make_network(config, len(ACTION_NAMES))

    @jax.jit
    def probs(params, obs, first):
        hidden = initial_hidden(obs.shape[0], config.memory)
        _, logits, _ = network.apply(params, hidden, jnp.swapaxes(obs, 0, 1),
                                     jnp.swapaxes(first, 0, 1))
        return jax.nn.softmax(logits[-1])

    return probs


def probe_table(probs: np.ndarray, contexts: np.ndarray) -> pd.DataFrame:
    """Per plant context: state count, P(PLACE_PLANT), context size, entropy, mean P(action)."""
    rows = []
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(-1)
    for c, name in enumerate(CONTEXTS):
        mask = contexts == c
        p = probs[mask]
        row = {"context": name, "n_states": int(mask.sum())}
        if mask.any():
            row["p_place_plant"] = float(p[:, PLACE_PLANT].mean())
            row["place_plant_is_argmax"] = float((p.argmax(-1) == PLACE_PLANT).mean())
            row["entropy"] = float(entropy[mask].mean())
            row.update({f"p_{a}": float(p[:, i].mean()) for i, a in enumerate(ACTION_NAMES)})
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate_run(run_dir: Path, episodes: int = 64, max_steps: int = 3000,
                 probe_per_context: int = 512, show_progress: bool = True) -> Path:
    """Write the behaviour tables of every checkpoint of `run_dir`; reuses finished parts."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    check_verified(run_dir, "run")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: it has no checkpoints yet")
    out = run_dir / "behaviour"
    settings = {"episodes": episodes, "max_steps": max_steps,
                "probe_per_context": probe_per_context, "eval_seed": EVAL_SEED,
                "probe_seed": PROBE_SEED, "probe_fractions": list(PROBE_FRACTIONS)}
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ConfigError(
            f"{out} was evaluated with other settings ({settings_path.read_text().strip()}); "
            "allowed: the same settings, or delete the behaviour folder to start over")
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, sort_keys=True))

    probe_path = out / "probe.npz"
    if not probe_path.exists():
        last = checkpoints[-1][0]
        picks = sorted({min(checkpoints, key=lambda c: abs(c[0] - f * last))[0]
                        for f in PROBE_FRACTIONS})
        paths = dict(checkpoints)
        probe = collect_probe(config, [load_params(paths[u]) for u in picks], probe_per_context)
        probe["source_updates"] = np.array(picks, np.int32)[probe.pop("source")]
        atomic_write_npz(probe_path, probe, compress=True)
    with np.load(probe_path) as data:
        probe = {k: data[k] for k in data.files}

    run_episodes = make_episode_runner(config, episodes, max_steps)
    probe_policy = make_probe_policy(config)
    parts = out / "parts"
    iterator = checkpoints
    if show_progress:
        from tqdm import tqdm

        iterator = tqdm(checkpoints, desc=f"eval {run_dir.name}", unit="ckpt")
    for update, path in iterator:
        part = parts / f"episodes_{update:06d}.parquet"
        if part.exists():
            continue
        params = load_params(path)
        record, finished = jax.device_get(run_episodes(params, jax.random.PRNGKey(EVAL_SEED)))
        table = pd.DataFrame(record, columns=list(EPISODE_FIELDS))
        table.insert(0, "episode", np.arange(episodes))
        table.insert(1, "truncated", ~finished)
        probs = np.asarray(probe_policy(params, probe["obs"], probe["first"]))
        policy = probe_table(probs, probe["context"])
        for frame in (table, policy):
            frame.insert(0, "update", update)
            frame.insert(1, "env_steps", update * config.steps_per_update)
            frame.insert(0, "seed", config.seed)
        atomic_write_parquet(parts / f"probe_{update:06d}.parquet", policy)
        atomic_write_parquet(part, table)  # written last: its presence marks the part complete

    done = [u for u, _ in checkpoints]
    episodes_table = pd.concat([pd.read_parquet(parts / f"episodes_{u:06d}.parquet")
                                for u in done], ignore_index=True)
    policy_table = pd.concat([pd.read_parquet(parts / f"probe_{u:06d}.parquet") for u in done],
                             ignore_index=True)
    atomic_write_parquet(out / "episodes.parquet", episodes_table)
    atomic_write_parquet(out / "probe_policy.parquet", policy_table)
    write_manifest(out, {"run_config_hash": config.config_hash(), "settings": settings,
                         "checkpoints": done}, exclude=("parts/",))
    return out


def evaluate_runs(path: Path, **kwargs: Any) -> list[Path]:
    return [evaluate_run(run_dir, **kwargs) for run_dir in run_dirs_under(path)]
