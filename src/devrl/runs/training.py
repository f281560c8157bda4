"""Train one seed into its run directory: chunks of jitted PPO updates between checkpoints,
each checkpoint written with its manifest, resume from the last saved state, divergence caught.

The run directory's format (files, manifests, checksums, locks) is `devrl.runs.rundir`'s.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import (
    ConfigError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    npz_bytes,
    parquet_bytes,
)
from devrl.core.config import TrainConfig
from devrl.core.ppo import make_train
from devrl.runs.rundir import (
    RUN_SCRATCH,
    held_lock,
    mark_pending,
    params_to_flat,
    prepare_run_dir,
    write_manifest,
)


class DivergedError(ConfigError):
    """Training produced a non-finite loss or parameters. A ConfigError: resuming from the last
    finite checkpoint would diverge again, so a sweep does not retry it."""


# The per-update losses whose non-finite value marks a diverged run.
LOSS_COLUMNS = ("actor_loss", "value_loss", "entropy", "approx_kl")


def divergence(chunk: pd.DataFrame, params: Any) -> str | None:
    """None while every loss of `chunk` (one row per update, column `update`) and every
    parameter is finite; else "diverged at update N: what" for the first offending update
    (parameters are checked at the chunk's end, so there N is its last update)."""
    present = [c for c in LOSS_COLUMNS if c in chunk.columns]
    values = chunk[present].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(rows):
        row = chunk.iloc[rows[0]]
        which = [c for c in present if not np.isfinite(row[c])]
        return (f"diverged at update {int(row['update'])}: non-finite "
                f"{', '.join(which)} ({', '.join(f'{c}={row[c]}' for c in which)})")
    bad = [".".join(map(str, path)) for path, leaf in
           jax.tree_util.tree_flatten_with_path(params)[0]
           if not np.isfinite(np.asarray(leaf)).all()]
    if bad:
        return (f"diverged at update {int(chunk['update'].iloc[-1])}: non-finite parameters "
                f"in {len(bad)} arrays (first {bad[0]})")
    return None


# ---------------------------------------------------------------- checkpoints and saved state
def checkpoint_schedule(config: TrainConfig) -> list[int]:
    """Updates after which parameters are saved: 0, log-spaced from 1, every k, and the last."""
    last = config.num_updates
    marks = {0, last}
    if config.log_checkpoints:
        marks.update(round(u) for u in np.geomspace(1, last, config.log_checkpoints))
    marks.update(range(config.checkpoint_every_updates, last + 1,
                       config.checkpoint_every_updates))
    return sorted(m for m in marks if 0 <= m <= last)


def tree_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The leaves of `tree` keyed by their path (`.train_state.params['params']['actor_0']...`)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def save_runner(path: Path, runner: Any) -> None:
    atomic_write_npz(path, tree_arrays(runner))


def load_runner(path: Path, template: Any) -> Any:
    """The state saved at `path`, put into `template`'s tree by path, never by leaf position:
    two leaves of equal shape (the actor's and the critic's hidden layers) cannot swap."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    try:
        with np.load(path) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        # a damaged file stays damaged: a ConfigError is permanent, so no retry repeats it
        raise ConfigError(f"{path}: the saved training state is unreadable ({type(error).__name__}"
                          f": {error}); delete it to restart this run from update 0, or restore "
                          "it from a copy") from None
    wanted = {jax.tree_util.keystr(p): leaf for p, leaf in flat}
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    mismatched = [k for k in wanted if k in stored and (
        stored[k].shape != wanted[k].shape or stored[k].dtype != wanted[k].dtype)]
    if missing or extra or mismatched:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("not saved", missing), ("not in this state",
                                               extra), ("other shape or dtype", mismatched))
                           if keys)
        raise ConfigError(f"{path}: saved training state does not match this config and code "
                          f"({detail}); resume needs the config and code it was made with")
    return jax.tree_util.tree_unflatten(
        treedef, [jax.numpy.asarray(stored[jax.tree_util.keystr(p)]) for p, _ in flat])


# ---------------------------------------------------------------- training driver
ProgressFn = Callable[[dict[str, Any]], None]


def lock_wait() -> float:
    """Seconds a trainer waits for a run directory held by another process (DEVRL_LOCK_WAIT)."""
    text = os.environ.get("DEVRL_LOCK_WAIT", "30")
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ConfigError(f"DEVRL_LOCK_WAIT={text!r} is not allowed: must be a number of "
                          "seconds") from None


def train(config: TrainConfig, run_dir: Path, progress: ProgressFn | None = None,
          stop_after_updates: int | None = None) -> Path:
    """Train (or resume) one seed in `run_dir`. `stop_after_updates` ends early (for tests)."""
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    with exclusive_lock(run_dir, wait=lock_wait()):
        return _train_locked(config, run_dir, progress, stop_after_updates)


def exclusive_lock(run_dir: Path, wait: float = 30.0):
    """Hold the lock of `run_dir` so two processes never train into it at once."""
    return held_lock(Path(run_dir) / ".lock", wait, lambda holder: (
        f"out={str(run_dir)!r} is not allowed: another live process is training into it "
        f"({holder}); wait for it, or stop it first"))


def _train_locked(config: TrainConfig, run_dir: Path, progress: ProgressFn | None,
                  stop_after_updates: int | None) -> Path:
    schedule = checkpoint_schedule(config)
    max_chunk = max(b - a for a, b in itertools.pairwise(schedule))
    heartbeat(run_dir, status="compiling", update=None, config=config)

    trainer = make_train(config, max_chunk)
    state_path = run_dir / "state" / "latest.npz"
    t0 = time.perf_counter()
    runner = trainer.init(jax.random.PRNGKey(config.seed))
    if state_path.exists():
        runner = load_runner(state_path, runner)
    compiled = trainer.run_updates.lower(runner, jnp.int32(1)).compile()
    compile_seconds = time.perf_counter() - t0
    done = int(runner.update)
    metrics = pd.read_parquet(run_dir / "metrics.parquet") if done else None
    if metrics is not None:
        metrics = metrics[metrics["update"] <= done]
    extra = {"config": config.to_dict(), "config_hash": config.config_hash(),
             "seed": config.seed, "schedule": schedule, "compile_seconds": compile_seconds,
             # Results are bitwise reproducible for equal code, config and XLA threads (the
             # CPUs the trainer may run on: XLA sizes its thread pool by them).
             "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_count": os.cpu_count(),
             "threads": len(os.sched_getaffinity(0)), "backend": jax.default_backend()}

    def manifest(updates: int) -> None:
        write_manifest(run_dir, {**extra, "complete": updates == config.num_updates,
                                 "updates_done": updates}, exclude=RUN_SCRATCH)

    if done == 0:
        atomic_write_npz(run_dir / "checkpoints" / "params_000000.npz",
                         params_to_flat(runner.train_state.params))
        manifest(0)

    for target in schedule:
        if target <= done:
            continue
        if stop_after_updates is not None and target > stop_after_updates:
            break
        start = time.perf_counter()
        runner, buffer = compiled(runner, jnp.int32(target - done))
        buffer = jax.device_get(buffer)  # blocks until the chunk is finished
        seconds = time.perf_counter() - start
        n = target - done
        chunk = pd.DataFrame({k: np.asarray(v[:n]) for k, v in buffer.items()})
        chunk.insert(0, "update", np.arange(done + 1, target + 1))
        chunk.insert(1, "env_steps", chunk["update"] * config.steps_per_update)
        chunk["sps"] = n * config.steps_per_update / seconds
        diverged = divergence(chunk, runner.train_state.params)
        if diverged:  # keep the last finite checkpoint and state, and mark the run
            extra["diverged"] = {"message": diverged, "last_finite_update": done}
            manifest(done)
            heartbeat(run_dir, status="diverged", update=done, config=config)
            raise DivergedError(f"out={str(run_dir)!r}: {diverged}; the run keeps its last "
                                f"finite checkpoint (update {done}): lower lr or check the "
                                "config")
        metrics = chunk if metrics is None else pd.concat([metrics, chunk], ignore_index=True)
        done = target
        files = {f"checkpoints/params_{done:06d}.npz":
                 npz_bytes(params_to_flat(runner.train_state.params)),
                 "metrics.parquet": parquet_bytes(metrics)}
        mark_pending(run_dir, files)
        for rel, data in files.items():
            atomic_write_bytes(run_dir / rel, data)
        save_runner(state_path, runner)
        last = chunk.iloc[-1]
        info = {"update": done, "num_updates": config.num_updates,
                "env_steps": done * config.steps_per_update, "sps": float(last["sps"]),
                "return": float(last["episode_return"]),
                **{key: float(last[column]) for key, column in PROGRESS_EXTRAS.items()
                   if column in last.index}}
        heartbeat(run_dir, status="training", config=config, **info)
        manifest(done)
        if progress:
            progress(info)
    if done == config.num_updates:
        # A kill after the last state was saved but before its manifest: the loop above had
        # nothing left to do, so the final manifest is written here.
        stored = json.loads((run_dir / "manifest.json").read_text())
        if not stored.get("complete") or stored.get("pending"):
            manifest(done)
        heartbeat(run_dir, status="complete", update=done, config=config)
    return run_dir


# Craftax fields the progress heartbeat also reports (absent for the cue-memory task).
PROGRESS_EXTRAS = {"plants_placed": "plants_placed", "place_attempts": "place_attempts",
                   "place_plant_success": "achievement_place_plant"}


def heartbeat(run_dir: Path, status: str, config: TrainConfig, **info: Any) -> None:
    atomic_write_json(Path(run_dir) / "progress.json",
                      {"status": status, "time": time.time(), "pid": os.getpid(),
                       "num_updates": config.num_updates, **info})
