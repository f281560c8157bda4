"""Data sets: where they live, how they are opened and checked, and the table helpers every
study shares.

Data flows one way (../shared/DESIGN.md): training writes run directories, `devrl eval` and
`devrl export` turn them into `data/craftax-<scale>/`, each study (`devrl.studies.<part>`) builds
its own data set from runs or from that one, and the notebooks read the folders. With
`recompute=True` the same steps run again from scratch into the same folder. The Craftax data set
is opened here (`craftax_data`) because most studies are built on it; a data set of one study is
opened by that study's loader through `table_set`.

Locations can be moved with environment variables (the tests do, so they never touch `data/`):
`DEVRL_DATA` (default: the repository's `data/`), `DEVRL_RUNS` (run directories made by a
recompute; default `~/.cache/devrl/runs`); `DEVRL_FIGURES` (SVG/PNG exports) is
`devrl.book.plots.figures_root`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devrl.core.base import ConfigError, atomic_write_parquet, replace_dir
from devrl.core.config import SCALE_SEEDS, SCALES, make_config
from devrl.runs.export import export_runs
from devrl.runs.rundir import (
    load_params,
    package_versions,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from devrl.runs.sweep import make_spec, run_dir_for, run_sweep

# Behaviour evaluation per scale: what `devrl eval` ran for the committed data (cpu), and a tiny
# version for the smoke tests.
EVAL_SETTINGS: dict[str, dict[str, int]] = {
    "smoke": {"episodes": 4, "max_steps": 50, "probe_per_context": 8},
    "cpu": {"episodes": 64, "max_steps": 3000, "probe_per_context": 512},
    "paper": {"episodes": 64, "max_steps": 10000, "probe_per_context": 512},
}
EXPORT_CHECKPOINTS = 8  # float16 actor checkpoints kept per seed by the export


def repo_root() -> Path:
    """The repository (the folder holding `_config.yml`): from an editable install, else the cwd."""
    source = Path(__file__).resolve().parents[2]
    return source if (source / "_config.yml").exists() else Path.cwd()


def plural(count: float, noun: str) -> str:
    """"1 seed", "3 seeds": a count with its noun, for titles and glued prose."""
    count = int(count)
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def data_root() -> Path:
    return Path(os.environ.get("DEVRL_DATA") or repo_root() / "data")


def runs_root() -> Path:
    return Path(os.environ.get("DEVRL_RUNS") or Path.home() / ".cache" / "devrl" / "runs")


@dataclass(frozen=True)
class CraftaxData:
    """The tables of one exported Craftax data set, restricted to the chosen seeds."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    metrics: pd.DataFrame  # one row per (seed, PPO update)
    episodes: pd.DataFrame  # one row per (seed, checkpoint, evaluation episode)
    probe_policy: pd.DataFrame  # one row per (seed, checkpoint, plant context)

    @property
    def env_steps_per_update(self) -> int:
        return self.manifest["runs"][0]["config"]["num_envs"] * \
            self.manifest["runs"][0]["config"]["num_steps"]

    def describe(self) -> str:
        """One sentence on what was loaded, for the notebooks' prose."""
        runs = [r for r in self.manifest["runs"] if r["seed"] in self.seeds]
        steps = sorted({r["env_steps_done"] for r in runs})
        complete = all(r["complete"] for r in runs)
        return (f"{plural(len(runs), 'seed')} ({', '.join(str(s) for s in self.seeds)}) at the "
                f"{self.scale} scale, {'/'.join(f'{s:,}' for s in steps)} env steps each"
                f"{'' if complete else ' (not all runs complete)'}")


def check_seeds(seeds: Any) -> list[int] | None:
    """`seeds` as a sorted list, or None for "all" (given as None or an empty list)."""
    if seeds is None or (isinstance(seeds, (list, tuple)) and not seeds):
        return None
    if (not isinstance(seeds, (list, tuple))
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"seeds={seeds!r} is not allowed: must be a list of distinct "
                          "non-negative integers, e.g. [0, 1, 2] ([] or None: all seeds)")
    return sorted(seeds)


def craftax_data(scale: str = "cpu", seeds: list[int] | None = None,
                 recompute: bool = False) -> CraftaxData:
    """The Craftax data set of `scale` (`seeds`, or every seed it holds if `seeds` is empty).

    With `recompute`, first trains `seeds` (default: the scale's seeds) into
    `recompute_runs_dir(scale)`, evaluates every checkpoint and exports the result over
    `data/craftax-<scale>` (replaced atomically, with a new manifest). That folder is named after
    the code that trains, so an interrupted recompute resumes, but runs made by other code or
    other package versions are never reused.
    """
    check_scale_and_recompute(scale, recompute)
    seeds = check_seeds(seeds)
    folder = data_root() / f"craftax-{scale}"
    if recompute:
        recompute_craftax(scale, seeds or list(SCALE_SEEDS[scale]), folder)
    manifest = open_data_set(folder, scale)
    chosen = choose_seeds(manifest, seeds, folder)

    def load(name: str) -> pd.DataFrame:
        frame = pd.read_parquet(folder / f"{name}.parquet")
        return frame[frame["seed"].isin(chosen)].reset_index(drop=True)

    return CraftaxData(scale=scale, seeds=chosen, path=folder, manifest=manifest,
                       metrics=load("metrics"), episodes=load("episodes"),
                       probe_policy=load("probe_policy"))


def code_fingerprint() -> str:
    """Short hash of the package's source files and the versions of the packages it runs on."""
    digest = hashlib.sha256(json.dumps(package_versions(), sort_keys=True).encode())
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def recompute_runs_dir(scale: str) -> Path:
    """Where a recompute at `scale` trains: `DEVRL_RUNS/<scale>/code-<fingerprint>/`."""
    return runs_root() / scale / f"code-{code_fingerprint()}"


def recompute_craftax(scale: str, seeds: list[int], folder: Path) -> Path:
    """Train, evaluate and export `seeds` at `scale` into `folder`."""
    from devrl.measures.behaviour import evaluate_run  # JAX and Craftax: only for a recompute

    out = recompute_runs_dir(scale)
    if run_sweep(make_spec(scale, seeds=list(seeds)), out, show_progress=False) != 0:
        raise RuntimeError(f"training did not complete; see devrl sweep status {out}")
    run_dirs = [run_dir_for(out, make_config(scale, seed=seed)) for seed in seeds]
    for run_dir in run_dirs:
        evaluate_run(run_dir, **EVAL_SETTINGS[scale], show_progress=False)
    return export_runs(run_dirs, folder, checkpoints=EXPORT_CHECKPOINTS)


def bin_updates(metrics: pd.DataFrame, columns: list[str], updates_per_bin: int) -> pd.DataFrame:
    """Per seed, means of `columns` over bins of `updates_per_bin` consecutive PPO updates.

    Each update's value is a mean over the episodes that ended in it, so the bin mean weights
    updates by their `episodes` count (updates where no episode ended carry no weight).
    `env_steps` of a bin is the env steps at its last update.
    """
    if updates_per_bin < 1:
        raise ConfigError(f"updates_per_bin={updates_per_bin} is not allowed: must be >= 1")
    frame = metrics[["seed", "update", "env_steps", "episodes", *columns]].copy()
    frame["bin"] = (frame["update"] - 1) // updates_per_bin
    weight = frame["episodes"].astype("float64")
    weighted = frame[columns].astype("float64").fillna(0.0).mul(weight, axis=0)
    weighted[["seed", "bin"]] = frame[["seed", "bin"]]
    weighted["weight"] = weight
    grouped = weighted.groupby(["seed", "bin"])
    sums = grouped.sum()
    out = sums[columns].div(sums["weight"].replace(0.0, np.nan), axis=0)
    out["env_steps"] = frame.groupby(["seed", "bin"])["env_steps"].max()
    out["episodes"] = sums["weight"]
    return out.reset_index().drop(columns="bin")


def with_rates(episodes: pd.DataFrame) -> pd.DataFrame:
    """Add `place_attempt_share`: the fraction of an episode's actions that were PLACE_PLANT.

    Attempts per episode grow with episode length alone; the share does not. A policy choosing
    uniformly among all actions has a share of `uniform_action_share()` (1/17 in Craftax-Classic).
    """
    out = episodes.copy()
    out["place_attempt_share"] = out["place_attempts"] / out["episode_length"].clip(lower=1)
    return out


def uniform_action_share() -> float:
    from devrl.core.envs import ACTION_NAMES  # Craftax loads only where this is asked

    return 1 / len(ACTION_NAMES)


def per_checkpoint(episodes: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per (seed, checkpoint), the mean of `columns` over the evaluation episodes."""
    return (episodes.groupby(["seed", "update", "env_steps"])[columns].mean().reset_index())


def over_seeds(frame: pd.DataFrame, columns: list[str], x: str = "env_steps",
               by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Long table of each column's mean over seeds and its range (min, max) at every `x`.

    Columns of the result: `x`, *by, `measure`, `mean`, `low`, `high`, `seeds` (how many seeds
    have a value there). Seeds missing at an `x` are left out of that point, never filled in.
    """
    long = frame.melt(id_vars=["seed", x, *by], value_vars=columns, var_name="measure")
    long = long.dropna(subset=["value"])
    summary = (long.groupby([x, *by, "measure"])["value"]
               .agg(mean="mean", low="min", high="max", seeds="count").reset_index())
    return summary


def peak_and_final(frame: pd.DataFrame, columns: list[str], x: str = "env_steps") -> pd.DataFrame:
    """Per seed and column: the peak value and where it happened, and the last value."""
    rows = []
    for seed, group in frame.sort_values(x).groupby("seed"):
        for column in columns:
            values = group[[x, column]].dropna()
            if values.empty:
                continue
            peak = values.loc[values[column].idxmax()]
            final = values.iloc[-1]
            rows.append({"seed": seed, "measure": column, "peak": peak[column],
                         f"{x}_at_peak": int(peak[x]), "final": final[column],
                         f"final_{x}": int(final[x])})
    return pd.DataFrame(rows)


def resolved(x: float, grid: Any) -> float:
    """`x` (a point of `grid`, e.g. the checkpoint where a curve peaks) rounded to what the grid
    resolves there: to the power of ten below the larger gap to its neighbours on the grid (a
    peak between two checkpoints is placed no better than the coarser side allows)."""
    points = np.unique(np.asarray(grid, float))
    i = int(np.argmin(np.abs(points - x)))
    gaps = [abs(points[j] - points[i]) for j in (i - 1, i + 1) if 0 <= j < len(points)]
    gap = max(gaps) if gaps else abs(x)
    if gap <= 0:
        return float(x)
    step = 10.0 ** math.floor(math.log10(gap))
    return float(round(x / step) * step)


def mean_curve_peaks(frame: pd.DataFrame, columns: list[str], x: str = "env_steps"
                     ) -> pd.DataFrame:
    """Per column: the peak of the mean over seeds at each `x` (the curve a figure draws), where
    it is (rounded to what the grid of `x` resolves there, `resolved`), its final value, and the
    range over seeds of where each seed's own peak is (each rounded alike)."""
    common = frame.groupby(x)["seed"].nunique()
    shared = common[common == frame["seed"].nunique()].index
    grid = sorted(frame[x].unique())
    own = peak_and_final(frame, columns, x)
    rows = []
    for column in columns:
        mean = frame[frame[x].isin(shared)].groupby(x)[column].mean().dropna()
        if mean.empty:
            continue
        at = float(mean.idxmax())
        steps = own.loc[own["measure"] == column, f"{x}_at_peak"].map(
            lambda v: resolved(v, grid))
        rows.append({"measure": column, "peak": float(mean.max()),
                     f"{x}_at_peak": resolved(at, grid), "final": float(mean.iloc[-1]),
                     f"seed_{x}_at_peak_min": float(steps.min()),
                     f"seed_{x}_at_peak_max": float(steps.max())})
    return pd.DataFrame(rows)


def reference_updates(episodes: pd.DataFrame, updates: Sequence[int]) -> dict[str, int]:
    """The earlier checkpoints a seed's layers are reverted to, chosen among its exported
    `updates` from its evaluation `episodes` (one seed): `init` (update 0); `peak`, the exported
    checkpoint with the highest PLACE_PLANT share of actions (the plant overshoot's peak, as far
    as the exported checkpoints resolve it); `before`, the last exported checkpoint before the
    peak whose share is above the untrained one's by less than half of the peak's excess.
    A reference that does not exist (no rise above update 0; nothing between) is left out."""
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


def rank_correlation(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation of two series on their shared index (NaN pairs dropped)."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return float(both.iloc[:, 0].rank().corr(both.iloc[:, 1].rank()))


def first_reaching(frame: pd.DataFrame, column: str, threshold: float,
                   x: str = "env_steps") -> pd.Series:
    """Per seed, the first `x` where `column` is at least `threshold` (NaN if never)."""
    def first(group: pd.DataFrame) -> float:
        hits = group.loc[group[column] >= threshold, x]
        return float(hits.min()) if len(hits) else np.nan

    return frame.groupby("seed")[[x, column]].apply(first).rename(f"first_{column}_{threshold:g}")


def craftax_source(scale: str, seeds: list[int] | None = None) -> Path:
    """`data/craftax-<scale>` for a study built on it: recomputed first if absent, verified."""
    craftax = data_root() / f"craftax-{scale}"
    if not (craftax / "manifest.json").exists():
        craftax_data(scale, seeds, recompute=True)
    open_data_set(craftax, scale)
    return craftax


def open_data_set(folder: Path, scale: str) -> dict[str, Any]:
    """The manifest of the data set in `folder`, after checking every file against it."""
    if not (folder / "manifest.json").exists():
        raise ConfigError(f"scale={scale!r} with recompute=False is not allowed here: {folder} "
                          "holds no data set; pass recompute=True to make it")
    problems = verify_manifest(folder)
    if problems:
        raise RuntimeError(f"{folder} does not match its manifest: {'; '.join(problems)}")
    return read_manifest(folder)


def choose_seeds(manifest: dict[str, Any], seeds: list[int] | None, folder: Path) -> list[int]:
    """`seeds` if the data set holds them all, every seed it holds if `seeds` is None."""
    available = sorted({r["seed"] for r in manifest["runs"]})
    if seeds is not None and not set(seeds) <= set(available):
        raise ConfigError(f"seeds={seeds} is not allowed: {folder} holds seeds {available}")
    return seeds if seeds is not None else available


def check_scale_and_recompute(scale: Any, recompute: Any) -> None:
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    if not isinstance(recompute, bool):
        raise ConfigError(f"recompute={recompute!r} is not allowed: must be True or False")


def table_set(name: str, scale: str, recompute: bool,
              build: Callable[[], tuple[dict[str, pd.DataFrame], dict[str, Any]]]
              ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The tables of the data set `data/<name>-<scale>/` and its manifest.

    With `recompute`, `build()` first returns the tables and the manifest's description; they
    are written to a staging folder with a manifest (checksums, package versions) that then
    replaces the data set in renames only. The folder is verified against its manifest on load.
    """
    check_scale_and_recompute(scale, recompute)
    folder = data_root() / f"{name}-{scale}"
    if recompute:
        tables, extra = build()
        staging = folder.with_name(f".{folder.name}.staging")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        for table_name, table in tables.items():
            atomic_write_parquet(staging / f"{table_name}.parquet", table)
        write_manifest(staging, {**extra, "scale": scale, "tables": sorted(tables),
                                 "versions": package_versions()})
        replace_dir(staging, folder)
    manifest = open_data_set(folder, scale)
    return ({t: pd.read_parquet(folder / f"{t}.parquet") for t in manifest["tables"]},
            manifest)


def seeded_table_set(name: str, scale: str, seeds: list[int] | None, recompute: bool,
                     build: Callable[[], tuple[dict[str, pd.DataFrame], dict[str, Any]]]
                     ) -> tuple[dict[str, pd.DataFrame], dict[str, Any], Path, list[int]]:
    """`table_set` of a data set whose manifest lists runs by seed: its tables restricted to the
    chosen seeds (`seeds`, or every seed it holds; tables without a seed column whole), the
    manifest, the folder and the chosen seeds."""
    tables, manifest = table_set(name, scale, recompute, build)
    folder = data_root() / f"{name}-{scale}"
    chosen = choose_seeds(manifest, seeds, folder)
    picked = {t: frame[frame["seed"].isin(chosen)].reset_index(drop=True)
              if "seed" in frame.columns else frame for t, frame in tables.items()}
    return picked, manifest, folder, chosen


# ------------------------------------------------------------------ what studies read from it
def common_probe(control_path) -> dict[str, np.ndarray]:
    """The probe states of every control seed (data/craftax-<scale>/probes/seed_N.npz), pooled:
    one set of states on which every agent of a study is compared."""
    paths = sorted(Path(control_path, "probes").glob("seed_*.npz"))
    if not paths:
        raise ConfigError(f"{control_path} has no probes/seed_N.npz: not a Craftax data set")
    obs, context = [], []
    for path in paths:
        with np.load(path) as data:
            obs.append(data["obs"][:, -1])  # feedforward: the state itself
            context.append(data["context"])
    return {"obs": np.concatenate(obs).astype(np.float32),
            "context": np.concatenate(context).astype(np.int32)}


def control_checkpoints(control) -> dict[int, list[tuple[int, Any]]]:
    """Per seed of the Craftax data set `control` (CraftaxData), its exported actor checkpoints
    as (update, loader)."""
    out = {}
    for seed in control.seeds:
        paths = sorted((control.path / "checkpoints" / f"seed_{seed}").glob("params_*.npz"))
        out[seed] = [(int(p.stem.split("_")[1]), lambda p=p: load_params(p)) for p in paths]
    return out
