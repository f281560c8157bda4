"""Run directories: atomic writes, manifests with checksums, checkpoints, resume.

A run directory (one seed) holds::

    config.json      the TrainConfig (a rerun with another config is refused)
    manifest.json    config hash, versions, git commit, seed, sha256 of every file below
    metrics.parquet  one row per PPO update
    checkpoints/params_UUUUUU.npz   network parameters after UUUUUU updates (float32)
    progress.json    heartbeat for the watchdog (not checksummed)
    state/latest.npz the complete training state of the last checkpoint, for resume
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devrl.config import ConfigError, TrainConfig, config_from_dict

# Files of a run directory that change after training or only serve resume: not checksummed.
RUN_SCRATCH = ("state/", "progress.json", "train.log", "behaviour/")
PACKAGES = ("devrl", "jax", "jaxlib", "flax", "optax", "craftax", "numpy", "pandas")


# ---------------------------------------------------------------- atomic files and checksums
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(staging: Path, out: Path) -> Path:
    """Move the finished folder `staging` to `out`, replacing any old `out` by renames only.

    The old folder is renamed aside before the new one moves in, so `out` is always either the
    complete old or the complete new folder (a crash in between leaves the old one at .OUT.old).
    """
    staging, out = Path(staging), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return out


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit() -> str:
    """The commit of the source tree this package runs from, with '+dirty' for local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_manifest(directory: Path, extra: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict:
    """Checksum every file under `directory` (except manifest.json and `exclude` prefixes)."""
    directory = Path(directory)
    files = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if (path.is_file() and rel != "manifest.json" and not path.name.startswith(".")
                and not rel.startswith(exclude)):
            files[rel] = sha256_file(path)
    manifest = {**extra, "versions": package_versions(), "git_commit": git_commit(),
                "written": now(), "files": files}
    atomic_write_json(directory / "manifest.json", manifest)
    return manifest


def verify_manifest(directory: Path) -> list[str]:
    """Problems found when recomputing the checksums of `directory`'s manifest (empty = all good)."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.exists():
        return [f"{path}: no manifest.json"]
    manifest = json.loads(path.read_text())
    problems = []
    for rel, expected in manifest.get("files", {}).items():
        target = directory / rel
        if not target.exists():
            problems.append(f"{target}: missing")
        elif sha256_file(target) != expected:
            problems.append(f"{target}: checksum differs from manifest")
    return problems


# ---------------------------------------------------------------- run directory
def checkpoint_schedule(config: TrainConfig) -> list[int]:
    """Updates after which parameters are saved: 0, log-spaced from 1, every k, and the last."""
    last = config.num_updates
    marks = {0, last}
    if config.log_checkpoints:
        marks.update(round(u) for u in np.geomspace(1, last, config.log_checkpoints))
    marks.update(range(config.checkpoint_every_updates, last + 1,
                       config.checkpoint_every_updates))
    return sorted(m for m in marks if 0 <= m <= last)


def ensure_writable(directory: Path) -> None:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test."):
            pass
    except OSError as error:
        raise ConfigError(f"out={str(directory)!r} is not allowed: the output directory must be "
                          f"writable ({error.strerror})") from None


def prepare_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """Create `run_dir` for `config`, or check that an existing one was made with the same config."""
    run_dir = Path(run_dir)
    stored_path = run_dir / "config.json"
    if stored_path.exists():
        stored = config_from_dict(json.loads(stored_path.read_text()))
        if stored != config:
            diffs = [f"{k}={v!r} (stored) vs {getattr(config, k)!r} (given)"
                     for k, v in stored.to_dict().items() if getattr(config, k) != v]
            raise ConfigError(
                f"cannot resume {str(run_dir)!r} with a different config: {'; '.join(diffs)}. "
                "Allowed: the stored values, or a new output directory.")
        return
    ensure_writable(run_dir)
    atomic_write_json(stored_path, config.to_dict())


def params_to_flat(params: Any, dtype=None) -> dict[str, np.ndarray]:
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(params, sep="/")
    return {k: np.asarray(v if dtype is None else np.asarray(v).astype(dtype))
            for k, v in flat.items()}


def flat_to_params(flat: dict[str, np.ndarray]) -> Any:
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()}, sep="/")


def load_params(path: Path) -> Any:
    with np.load(path) as data:
        return flat_to_params({k: data[k] for k in data.files})


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(Path(run_dir, "checkpoints").glob("params_*.npz")):
        found.append((int(path.stem.split("_")[1]), path))
    return found


def save_runner(path: Path, runner: Any) -> None:
    import jax

    leaves = jax.tree.leaves(jax.device_get(runner))
    atomic_write_npz(path, {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})


def load_runner(path: Path, template: Any) -> Any:
    import jax

    leaves, treedef = jax.tree.flatten(template)
    with np.load(path) as data:
        stored = [data[f"leaf_{i:05d}"] for i in range(len(data.files))]
    if len(stored) != len(leaves) or any(
            a.shape != b.shape or a.dtype != b.dtype for a, b in zip(stored, leaves)):
        raise ConfigError(f"{path}: saved training state does not match this config; "
                          "resume needs the config it was made with")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in stored])


# ---------------------------------------------------------------- training driver
ProgressFn = Callable[[dict[str, Any]], None]


def train(config: TrainConfig, run_dir: Path, progress: ProgressFn | None = None,
          stop_after_updates: int | None = None) -> Path:
    """Train (or resume) one seed in `run_dir`. `stop_after_updates` ends early (for tests)."""
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    with exclusive_lock(run_dir):
        return _train_locked(config, run_dir, progress, stop_after_updates)


@contextlib.contextmanager
def exclusive_lock(run_dir: Path):
    """Hold an exclusive lock on `run_dir` so two processes never train into it at once."""
    with open(Path(run_dir) / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"out={str(run_dir)!r} is not allowed: another process is "
                              "training into it (wait for it, or stop it first)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_locked(config: TrainConfig, run_dir: Path, progress: ProgressFn | None,
                  stop_after_updates: int | None) -> Path:
    import jax
    import jax.numpy as jnp

    from devrl.ppo import make_train

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
    if done == 0:
        atomic_write_npz(run_dir / "checkpoints" / "params_000000.npz",
                         params_to_flat(runner.train_state.params))
    extra = {"config": config.to_dict(), "config_hash": config.config_hash(),
             "seed": config.seed, "schedule": schedule, "compile_seconds": compile_seconds,
             # Results are bitwise reproducible for equal code, config and XLA thread settings.
             "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_count": os.cpu_count()}

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
        metrics = chunk if metrics is None else pd.concat([metrics, chunk], ignore_index=True)
        done = target
        atomic_write_npz(run_dir / "checkpoints" / f"params_{done:06d}.npz",
                         params_to_flat(runner.train_state.params))
        atomic_write_parquet(run_dir / "metrics.parquet", metrics)
        save_runner(state_path, runner)
        last = chunk.iloc[-1]
        info = {"update": done, "num_updates": config.num_updates,
                "env_steps": done * config.steps_per_update, "sps": float(last["sps"]),
                "return": float(last["episode_return"]),
                "plants_placed": float(last["plants_placed"]),
                "place_attempts": float(last["place_attempts"]),
                "place_plant_success": float(last["achievement_place_plant"])}
        heartbeat(run_dir, status="training", config=config, **info)
        write_manifest(run_dir, {**extra, "complete": done == config.num_updates,
                                 "updates_done": done}, exclude=RUN_SCRATCH)
        if progress:
            progress(info)
    if done == config.num_updates:
        heartbeat(run_dir, status="complete", update=done, config=config)
    return run_dir


def heartbeat(run_dir: Path, status: str, config: TrainConfig, **info: Any) -> None:
    atomic_write_json(Path(run_dir) / "progress.json",
                      {"status": status, "time": time.time(), "pid": os.getpid(),
                       "num_updates": config.num_updates, **info})


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / "progress.json").read_text())
    except (OSError, ValueError):
        return None
