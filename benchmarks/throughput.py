"""Throughput at the cpu-scale config: environment alone vs full PPO training, and the overhead
of behaviour recording and checkpointing. Run on an otherwise idle machine:

    python benchmarks/throughput.py [--repeats 5] [--updates 2] [--json out.json]

Every time is taken with the computation finished (block_until_ready / device_get), after a
warm-up call that compiles. Medians of `--repeats` runs; ratios come from this one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from devrl.core.base import atomic_write_npz
from devrl.core.config import make_config
from devrl.core.envs import BehaviourWrapper, EpisodeStats, PoolResetVecEnv
from devrl.core.ppo import make_train
from devrl.runs.rundir import params_to_flat
from devrl.runs.training import checkpoint_schedule, save_runner


class UncountedWrapper(BehaviourWrapper):
    """The same environment without behaviour counting (for measuring its overhead)."""

    def step(self, key, state, action, params):
        obs, after, reward, done, _ = self.env.step_env(key, state.env_state, action, params)
        info = {"stats": EpisodeStats.zeros(), "achievements": after.achievements.astype(
            jnp.int32), "context": jnp.zeros((), jnp.int32)}
        return obs, state.replace(env_state=after), reward.astype(jnp.float32), done, info


def median_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def env_only_sps(config, wrapper, repeats: int, auto_reset: bool = False) -> float:
    """Random actions for one rollout (num_steps x num_envs) per timing; 4 steps with craftax's
    auto-reset, which is too slow for more (a world generated per env per step)."""
    n, steps = config.num_envs, (4 if auto_reset else config.num_steps)
    if auto_reset:  # craftax's own auto-reset: a new world generated for every env every step
        from craftax.craftax_classic.envs.craftax_symbolic_env import CraftaxClassicSymbolicEnv

        base = CraftaxClassicSymbolicEnv()
        params = base.default_params
        _, state = jax.jit(jax.vmap(base.reset, in_axes=(0, None)))(
            jax.random.split(jax.random.PRNGKey(0), n), params)

        def env_step(key, s, a):
            return jax.vmap(base.step, in_axes=(0, 0, 0, None))(
                jax.random.split(key, n), s, a, params)[1]
    else:
        vec = PoolResetVecEnv(wrapper, n, config.reset_pool_size)
        params = vec.default_params
        _, state = jax.jit(vec.reset)(jax.random.PRNGKey(0), params)

        def env_step(key, s, a):
            return vec.step(key, s, a, params)[1]

    @jax.jit
    def rollout(state, key):
        def body(s, k):
            k_action, k_env = jax.random.split(k)
            action = jax.random.randint(k_action, (n,), 0, 17)
            return env_step(k_env, s, action), None

        return jax.lax.scan(body, state, jax.random.split(key, steps))[0]

    holder = {"state": state, "i": 0}

    def run():
        holder["i"] += 1
        holder["state"] = rollout(holder["state"], jax.random.PRNGKey(holder["i"]))
        jax.block_until_ready(holder["state"])

    return n * steps / median_time(run, repeats)


def train_sps(config, wrapper, repeats: int, updates: int) -> float:
    env = PoolResetVecEnv(wrapper, config.num_envs, config.reset_pool_size)
    trainer = make_train(config, max_chunk=updates, env=env)
    runner = trainer.init(jax.random.PRNGKey(0))
    compiled = trainer.run_updates.lower(runner, jnp.int32(updates)).compile()
    holder = {"runner": runner}

    def run():
        holder["runner"], metrics = compiled(holder["runner"], jnp.int32(updates))
        jax.device_get(metrics)

    return updates * config.steps_per_update / median_time(run, repeats), holder["runner"]


def checkpoint_seconds(runner, repeats: int) -> float:
    """Saving one checkpoint: parameters, full resume state (metrics and manifest are small)."""
    with tempfile.TemporaryDirectory() as tmp:
        def save():
            atomic_write_npz(Path(tmp) / "params.npz", params_to_flat(runner.train_state.params))
            save_runner(Path(tmp) / "state.npz", runner)

        return median_time(save, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=2, help="PPO updates per timing")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    config = make_config("cpu")
    counted, uncounted = BehaviourWrapper(), UncountedWrapper()
    results = {
        "env_sps_auto_reset": env_only_sps(config, counted, args.repeats, auto_reset=True),
        "env_sps_pool_uncounted": env_only_sps(config, uncounted, args.repeats),
        "env_sps_pool_counted": env_only_sps(config, counted, args.repeats),
    }
    results["train_sps_uncounted"], _ = train_sps(config, uncounted, args.repeats, args.updates)
    results["train_sps_counted"], runner = train_sps(config, counted, args.repeats, args.updates)
    save = checkpoint_seconds(runner, args.repeats)
    schedule = checkpoint_schedule(config)
    train_seconds = config.num_updates * config.steps_per_update / results["train_sps_counted"]
    results.update({
        "checkpoint_seconds": save,
        "checkpoints_per_run": len(schedule),
        "checkpoint_overhead": save * len(schedule) / train_seconds,
        "recording_overhead": results["train_sps_uncounted"] / results["train_sps_counted"] - 1,
        "pool_vs_auto_reset": results["env_sps_pool_counted"] / results["env_sps_auto_reset"],
        "env_vs_train": results["env_sps_pool_counted"] / results["train_sps_counted"],
        "repeats": args.repeats, "updates_per_timing": args.updates,
        "config": {k: getattr(config, k) for k in ("num_envs", "width", "depth", "num_steps",
                                                   "update_epochs", "num_minibatches",
                                                   "reset_ratio")},
    })
    width = max(map(len, results))
    for key, value in results.items():
        text = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
