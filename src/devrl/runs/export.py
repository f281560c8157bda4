"""Export run directories into a compact, provenanced `data/` folder for the book.

`data/<name>/` receives: `metrics.parquet`, `episodes.parquet` and `probe_policy.parquet` (all
seeds, with a `seed` column, floats as float32), `probes/seed_N.npz` (the probe sets),
`checkpoints/seed_N/params_UUUUUU.npz` (actor parameters of a few checkpoints as float16, for the
later chapters), and `manifest.json` (each source run's config, config hash, versions, git commit
and completeness; row counts; sha256 of every file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from devrl.core.base import ConfigError, atomic_write_npz, atomic_write_parquet, replace_dir
from devrl.runs.rundir import (
    check_evaluated,
    check_verified,
    list_checkpoints,
    load_config,
    load_params,
    params_to_flat,
    run_dirs_under,
    write_manifest,
)


def pick_checkpoints(updates: list[int], count: int) -> list[int]:
    """`count` checkpoints spread log-evenly over training, always the first and the last."""
    if count >= len(updates):
        return list(updates)
    positive = np.array([u for u in updates if u > 0])
    targets = np.geomspace(positive[0], positive[-1], max(count - 1, 1))
    picked = {updates[0], updates[-1]}
    for target in targets:
        picked.add(int(positive[np.argmin(np.abs(np.log(positive) - np.log(target)))]))
    return sorted(picked)


def _float32(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: "float32" for c in frame.columns if frame[c].dtype == "float64"})


def export_runs(sources: list[Path], out: Path, checkpoints: int = 8) -> Path:
    """Write the compact export of every seed under `sources` into `out` (replaced atomically)."""
    run_dirs = [run_dir for source in sources for run_dir in run_dirs_under(source)]  # verified
    seeds = [load_config(run_dir).seed for run_dir in run_dirs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"run={[str(r) for r in run_dirs]} is not allowed: each seed may "
                          f"appear once (seeds {seeds})")
    out = Path(out)
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    metrics, episodes, policies, runs = [], [], [], []
    for run_dir in run_dirs:
        config = load_config(run_dir)
        manifest = check_verified(run_dir, "run")
        check_evaluated(run_dir)
        behaviour = run_dir / "behaviour"
        frame = pd.read_parquet(run_dir / "metrics.parquet")
        frame.insert(0, "seed", config.seed)
        metrics.append(_float32(frame))
        episodes.append(_float32(pd.read_parquet(behaviour / "episodes.parquet")))
        policies.append(_float32(pd.read_parquet(behaviour / "probe_policy.parquet")))
        shutil.copy2(behaviour / "probe.npz", _mkdir(staging / "probes") / f"seed_{config.seed}.npz")
        available = list_checkpoints(run_dir)
        paths = dict(available)
        kept = pick_checkpoints([u for u, _ in available], checkpoints)
        for update in kept:
            params = load_params(paths[update])
            actor = {"params": {k: v for k, v in params["params"].items()
                                if k.startswith(("actor", "memory"))}}
            atomic_write_npz(staging / "checkpoints" / f"seed_{config.seed}" /
                             f"params_{update:06d}.npz", params_to_flat(actor, np.float16))
        runs.append({"seed": config.seed, "config": config.to_dict(),
                     "config_hash": config.config_hash(), "complete": manifest["complete"],
                     "updates_done": manifest["updates_done"],
                     "env_steps_done": manifest["updates_done"] * config.steps_per_update,
                     "git_commit": manifest["git_commit"], "versions": manifest["versions"],
                     "xla_flags": manifest.get("xla_flags", ""),
                     "exported_checkpoints": kept})
    tables = {"metrics": pd.concat(metrics, ignore_index=True),
              "episodes": pd.concat(episodes, ignore_index=True),
              "probe_policy": pd.concat(policies, ignore_index=True)}
    for name, table in tables.items():
        atomic_write_parquet(staging / f"{name}.parquet", table)
    write_manifest(staging, {
        "what": "cpu-scale PPO runs on Craftax-Classic: per-update metrics, per-checkpoint "
                "behaviour (episodes, probe-set policy), probe sets, actor checkpoints (float16)",
        "made_by": f"devrl export --checkpoints {checkpoints}",
        "runs": runs, "rows": {name: len(table) for name, table in tables.items()}})
    return replace_dir(staging, out)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
