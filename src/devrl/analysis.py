"""What the figure notebooks call: load (or recompute) a data set, and summarise it over seeds.

Data flows one way (../shared/DESIGN.md): training writes run directories, `devrl eval` and
`devrl export` turn them into `data/craftax-<scale>/`, and the notebooks read that folder. With
`recompute=True` the same three steps run again from scratch into the same folder.

Locations can be moved with environment variables (the tests do, so they never touch `data/`):
`DEVRL_DATA` (default: the repository's `data/`), `DEVRL_RUNS` (run directories made by a
recompute; default `~/.cache/devrl/runs`), `DEVRL_FIGURES` (SVG/PNG exports; default
`_build/figures/` in the repository).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devrl.config import SCALE_SEEDS, SCALES, ConfigError, make_config

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


def figures_root() -> Path:
    return Path(os.environ.get("DEVRL_FIGURES") or repo_root() / "_build" / "figures")


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
    import hashlib

    from devrl.runs import package_versions

    digest = hashlib.sha256(json.dumps(package_versions(), sort_keys=True).encode())
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def recompute_runs_dir(scale: str) -> Path:
    """Where a recompute at `scale` trains: `DEVRL_RUNS/<scale>/code-<fingerprint>/`."""
    return runs_root() / scale / f"code-{code_fingerprint()}"


def recompute_craftax(scale: str, seeds: list[int], folder: Path) -> Path:
    """Train, evaluate and export `seeds` at `scale` into `folder`."""
    from devrl.behaviour import evaluate_run
    from devrl.export import export_runs
    from devrl.sweep import make_spec, run_dir_for, run_sweep

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
    from devrl.envs import ACTION_NAMES

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


def first_reaching(frame: pd.DataFrame, column: str, threshold: float,
                   x: str = "env_steps") -> pd.Series:
    """Per seed, the first `x` where `column` is at least `threshold` (NaN if never)."""
    def first(group: pd.DataFrame) -> float:
        hits = group.loc[group[column] >= threshold, x]
        return float(hits.min()) if len(hits) else np.nan

    return frame.groupby("seed")[[x, column]].apply(first).rename(f"first_{column}_{threshold:g}")


def context_selectivity(probe_policy: pd.DataFrame, measure: str = "p_place_plant",
                        where_it_works: str = "sapling_facing_grass",
                        where_it_fails: str = "no_sapling") -> pd.DataFrame:
    """Per seed and checkpoint, `measure` where PLACE_PLANT works over where it cannot.

    1 means the policy does not condition plant placing on the context; the ratio grows as
    placing narrows to the context where it works.
    """
    wide = probe_policy.pivot_table(index=["seed", "update", "env_steps"], columns="context",
                                    values=measure).reset_index()
    wide["selectivity"] = wide[where_it_works] / wide[where_it_fails]
    return wide[["seed", "update", "env_steps", "selectivity"]]


@dataclass(frozen=True)
class LLCData:
    """The policy-LLC data set of one scale (`data/llc-<scale>/`), restricted to the chosen seeds."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    calibration: pd.DataFrame  # one row per (calibration checkpoint, nβ factor, step size)
    check: pd.DataFrame  # convergence check: one row per calibration checkpoint
    llc: pd.DataFrame  # one row per (seed, checkpoint, variant kind, target)
    logprobs: dict[int, dict[str, np.ndarray]]  # per seed: updates, env_steps, logprobs, context

    def describe(self) -> str:
        m = self.manifest
        s = m["settings"]
        caveat = "" if m["calibration_passed"] else \
            " (no step size met the calibration rule: the smallest was used)"
        return (f"{plural(len(self.seeds), 'seed')} ({', '.join(map(str, self.seeds))}), "
                f"{s['num_chains']} chains of {s['num_steps']} SGLD steps "
                f"({s['num_burnin']} burn-in), ε = {m['step_size']:g}{caveat}, "
                f"γ = {s['localization']:g}, nβ = {s['nbeta_factor']:g}·n/log n")


def llc_data(scale: str = "cpu", seeds: list[int] | None = None,
             recompute: bool = False) -> LLCData:
    """The policy-LLC data set of `scale`; with `recompute`, regenerate it (and the runs) first.

    A recompute first runs `craftax_data(scale, seeds, recompute=True)` (training, evaluation and
    export, reusing finished runs of the same code), then `devrl llc` on those runs.
    """
    check_scale_and_recompute(scale, recompute)
    seeds = check_seeds(seeds)
    folder = data_root() / f"llc-{scale}"
    if recompute:
        from devrl.policy_llc import export_llc
        from devrl.sweep import run_dir_for

        chosen = seeds or list(SCALE_SEEDS[scale])
        craftax_data(scale, chosen, recompute=True)
        out = recompute_runs_dir(scale)
        export_llc([run_dir_for(out, make_config(scale, seed=seed)) for seed in chosen], folder,
                   scale,
                   progress=lambda message: None)
    manifest = open_data_set(folder, scale)
    chosen = choose_seeds(manifest, seeds, folder)
    table = pd.read_parquet(folder / "llc.parquet")
    logprobs = {}
    for seed in chosen:
        with np.load(folder / "logprobs" / f"seed_{seed}.npz") as data:
            logprobs[seed] = {k: data[k] for k in data.files}
    return LLCData(scale=scale, seeds=chosen, path=folder, manifest=manifest,
                   calibration=pd.read_parquet(folder / "calibration.parquet"),
                   check=pd.read_parquet(folder / "check.parquet"),
                   llc=table[table["seed"].isin(chosen)].reset_index(drop=True),
                   logprobs=logprobs)


def craftax_source(scale: str, seeds: list[int] | None = None) -> Path:
    """`data/craftax-<scale>` for a study built on it: recomputed first if absent, verified."""
    craftax = data_root() / f"craftax-{scale}"
    if not (craftax / "manifest.json").exists():
        craftax_data(scale, seeds, recompute=True)
    open_data_set(craftax, scale)
    return craftax


def open_data_set(folder: Path, scale: str) -> dict[str, Any]:
    """The manifest of the data set in `folder`, after checking every file against it."""
    from devrl.runs import verify_manifest

    if not (folder / "manifest.json").exists():
        raise ConfigError(f"scale={scale!r} with recompute=False is not allowed here: {folder} "
                          "holds no data set; pass recompute=True to make it")
    problems = verify_manifest(folder)
    if problems:
        raise RuntimeError(f"{folder} does not match its manifest: {'; '.join(problems)}")
    from devrl.runs import read_manifest

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
    from devrl.runs import atomic_write_parquet, package_versions, replace_dir, write_manifest

    check_scale_and_recompute(scale, recompute)
    folder = data_root() / f"{name}-{scale}"
    if recompute:
        import shutil

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


def validation_data(scale: str = "cpu", recompute: bool = False) -> tuple[pd.DataFrame, dict]:
    """The known-answer suite of the LLC estimator (`data/llc-validation-<scale>/`) and manifest.

    With `recompute`, runs `devrl.known.validation_suite(scale)` and replaces the folder.
    """
    def build():
        from devrl import known

        return ({"validation": pd.DataFrame(known.validation_suite(scale))}, {
            "what": "LLC estimates of deep linear networks against their closed-form learning "
                    "coefficients (devrl.known.validation_suite)",
            "made_by": f"devrl figure llc-validation -p scale {scale} -p recompute True",
            "settings": known.VALIDATION_SETTINGS[scale]})

    tables, manifest = table_set("llc-validation", scale, recompute, build)
    return tables["validation"], manifest


@dataclass(frozen=True)
class ToyPlantData:
    """The plant-overshoot toy's tables (`data/toy-plant-<scale>/`)."""

    scale: str
    path: Path
    manifest: dict[str, Any]
    trajectories: pd.DataFrame  # exact and sampled propensities of the headline task per update
    sweep: pd.DataFrame  # overshoot summaries over sharing × opportunity cost × learning rate
    fits: pd.DataFrame  # fits to the Craftax place share, per seed and for the mean
    fit_curves: pd.DataFrame  # observed and fitted share at each checkpoint


def toy_plant_data(scale: str = "cpu", recompute: bool = False) -> ToyPlantData:
    """The plant toy's data set; with `recompute`, rebuild it (the fit reads the Craftax data set
    of the same scale, which is itself recomputed first if it does not exist)."""
    def build():
        import dataclasses

        from devrl.runs import sha256_file
        from devrl.toys import plant

        craftax = data_root() / f"craftax-{scale}"
        episodes = craftax_data(scale, recompute=not (craftax / "manifest.json").exists()).episodes
        fits, curves = plant.fit_tables(episodes)
        headline = {**plant.HEADLINE, "task": dataclasses.asdict(plant.HEADLINE["task"])}
        return ({"trajectories": plant.trajectory_table(scale), "sweep": plant.sweep_table(scale),
                 "fits": fits, "fit_curves": curves}, {
            "what": "plant-overshoot toy: exact and sampled dynamics of the headline task, a sweep "
                    "of overshoot summaries, fits to the Craftax PLACE_PLANT share",
            "made_by": f"devrl figure toy-plant-overshoot -p scale {scale} -p recompute True",
            "settings": plant.TOY_SETTINGS[scale], "headline": headline,
            "fit": {"learning_rate": plant.FIT_LEARNING_RATE, "updates": plant.FIT_UPDATES,
                    "craftax_manifest_sha256": sha256_file(craftax / "manifest.json")}})

    tables, manifest = table_set("toy-plant", scale, recompute, build)
    return ToyPlantData(scale=scale, path=data_root() / f"toy-plant-{scale}", manifest=manifest,
                        **tables)


@dataclass(frozen=True)
class ToyFeedbackData:
    """The feedback-loop toys' tables (`data/toy-feedback-<scale>/`)."""

    scale: str
    path: Path
    manifest: dict[str, Any]
    lagoon_curves: pd.DataFrame  # per learner, power-up and update: means over runs
    lagoon_summary: pd.DataFrame  # per learner and power-up: trapped fractions and steps
    fork: pd.DataFrame  # per exploration rate and unlucky penalty: avoidance of the left branch


def toy_feedback_data(scale: str = "cpu", recompute: bool = False) -> ToyFeedbackData:
    """The lagoon and fork toys' data set; with `recompute`, rerun every toy run first."""
    def build():
        from devrl.toys import feedback

        curves, summary = feedback.lagoon_tables(scale)
        return ({"lagoon_curves": curves, "lagoon_summary": summary,
                 "fork": feedback.fork_table(scale)}, {
            "what": "feedback-loop toys: the lagoon under three learners after a steering-bias "
                    "perturbation; the fork under a sweep of exploration rates and penalties",
            "made_by": f"devrl figure toy-lagoon -p scale {scale} -p recompute True",
            "settings": feedback.FEEDBACK_SETTINGS[scale], "perturb": feedback.PERTURB,
            "seeds": {"lagoon": feedback.LAGOON_SEED, "fork": feedback.FORK_SEED}})

    tables, manifest = table_set("toy-feedback", scale, recompute, build)
    return ToyFeedbackData(scale=scale, path=data_root() / f"toy-feedback-{scale}",
                           manifest=manifest, **tables)


@dataclass(frozen=True)
class RegimeData:
    """The regime study of the LLC estimator (`data/llc-regime-<scale>/`, `devrl.regime`)."""

    scale: str
    path: Path
    manifest: dict[str, Any]
    estimates: pd.DataFrame  # one row per (model, estimate): grid cells, ε sweep, longer, keys
    verdicts: pd.DataFrame  # one row per (model, grid cell): each criterion of the rule
    outcomes: pd.DataFrame  # one row per model: the rule's choice and whether it passed


def regime_data(scale: str = "cpu", recompute: bool = False) -> RegimeData:
    """The regime data set; with `recompute`, rerun the study (DLNs, then the policy at the
    first seed's exported checkpoints of `data/craftax-<scale>`, recomputed first if missing).
    Estimates are cached under DEVRL_RUNS/llc-regime-<scale>/, so an interrupted rerun resumes."""
    def build():
        from devrl import regime

        craftax = craftax_source(scale)
        tables, extra = regime.study_tables(scale, craftax, runs_root() / f"llc-regime-{scale}",
                                            progress=lambda message: print(message, flush=True))
        return tables, {
            "what": "regime study of the LLC estimator: λ̂ over nβ × γ (and ε) for deep linear "
                    "networks on realisable data with known λ and for the policy's "
                    "self-distillation loss, with the rule's verdicts (devrl.regime)",
            "made_by": f"devrl figure llc-regime -p scale {scale} -p recompute True", **extra}

    tables, manifest = table_set("llc-regime", scale, recompute, build)
    return RegimeData(scale=scale, path=data_root() / f"llc-regime-{scale}", manifest=manifest,
                      **tables)


@dataclass(frozen=True)
class MemoryData:
    """The environmental-memory study (`data/memory-<scale>/`, `devrl.memory`), restricted to the
    chosen seeds."""

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
        from devrl import memory

        return memory.study_tables(scale, runs_root() / f"memory-{scale}", seeds,
                                   progress=lambda message: print(message, flush=True))

    picked, manifest, folder, chosen = seeded_table_set(
        "memory", scale, seeds, recompute, build)
    return MemoryData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)


@dataclass(frozen=True)
class DiversityData:
    """The reward-structure and diversity study's tables (`data/diversity-<scale>/`)."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = object.__getattribute__(self, "tables")
        if name in tables:
            return tables[name]
        raise AttributeError(name)

    def describe(self) -> str:
        runs = [r for r in self.manifest["runs"] if r["seed"] in self.seeds]
        variants = sorted({r["variant"] for r in runs})
        seeds = sorted({r["seed"] for r in runs})
        steps = sorted({r["env_steps_done"] for r in runs})
        return (f"{len(variants)} reward structures ({', '.join(variants)}) × {len(seeds)} seeds "
                f"at the {self.scale} scale, {'/'.join(f'{s:,}' for s in steps)} env steps each")


def diversity_data(scale: str = "cpu", seeds: list[int] | None = None,
                   recompute: bool = False, train: bool = True) -> DiversityData:
    """The diversity study's data set (`seeds`, or every seed it holds); with `recompute`, train
    its sweep (`src/devrl/sweeps/reward-<scale>.yaml`, `seeds` or the sweep's own) into
    `DEVRL_RUNS/reward-<scale>/` (finished runs are skipped, interrupted ones resume), evaluate
    and measure every run (cached in the run), measure the control (`data/craftax-<scale>`,
    recomputed first if absent) and replace the data set. With `recompute` and not `train`,
    build it from the runs already digested (`data/reward-runs-<scale>`), training nothing."""
    seeds = check_seeds(seeds)

    def build():
        from devrl import diversity

        craftax = data_root() / f"craftax-{scale}"
        if recompute and not (craftax / "manifest.json").exists():
            craftax_data(scale, seeds, recompute=True)
        control = craftax_data(scale, seeds)
        return diversity.study_tables(scale, runs_root() / f"reward-{scale}", control, seeds,
                                      progress=lambda message: print(message, flush=True),
                                      train=train)

    picked, manifest, folder, chosen = seeded_table_set(
        "diversity", scale, seeds, recompute, build)
    return DiversityData(scale=scale, seeds=chosen, path=folder, manifest=manifest,
                         tables=picked)


@dataclass(frozen=True)
class LocalisationData:
    """Where training changes the actor (`data/localisation-<scale>/`, `devrl.localisation`)."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    references: pd.DataFrame  # per seed: the update of each reference checkpoint
    reversion_probe: pd.DataFrame  # per seed, reference, target, layer subset, plant context
    reversion_episodes: pd.DataFrame  # per seed, reference, target, layer subset: episode means
    updates: pd.DataFrame  # per seed, checkpoint pair, layer, tolerance: update localisation
    credit: pd.DataFrame  # per seed, checkpoint, layer, reward source: its part of the update
    credit_alignment: pd.DataFrame  # per seed, checkpoint, layer, pair of sources: cosine


def localisation_data(scale: str = "cpu", seeds: list[int] | None = None,
                      recompute: bool = False) -> LocalisationData:
    """The localisation study's data set (`seeds`, or every seed it holds); with `recompute`,
    rebuild it from the exported checkpoints of `data/craftax-<scale>` (recomputed first if
    absent)."""
    seeds = check_seeds(seeds)

    def build():
        from devrl import localisation

        craftax_source(scale, seeds)
        return localisation.study_tables(scale, craftax_data(scale, seeds),
                                         progress=lambda m: print(m, flush=True))

    picked, manifest, folder, chosen = seeded_table_set(
        "localisation", scale, seeds, recompute, build)
    return LocalisationData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)


@dataclass(frozen=True)
class ToyCreditData:
    """The credit-routing toy's tables (`data/toy-credit-<scale>/`, `devrl.toys.credit`)."""

    scale: str
    path: Path
    manifest: dict[str, Any]
    values: pd.DataFrame  # per routing, seed, region, source: what the region values
    runs: pd.DataFrame  # per routing and seed: specialisation index, its prediction, pursuit


def toy_credit_data(scale: str = "cpu", recompute: bool = False) -> ToyCreditData:
    """The credit-routing toy's data set; with `recompute`, rerun every toy run first."""
    def build():
        import dataclasses

        from devrl.toys import credit

        values, runs = credit.routing_table(scale)
        return ({"values": values, "runs": runs}, {
            "what": "credit-routing toy: REINFORCE on three reward sources with each source's "
                    "credit routed to its own region of the network to a degree",
            "made_by": f"devrl figure toy-credit-routing -p scale {scale} -p recompute True",
            "settings": {**credit.CREDIT_SETTINGS[scale],
                         "task": dataclasses.asdict(credit.CreditTask(
                             updates=credit.CREDIT_SETTINGS[scale]["updates"]))}})

    tables, manifest = table_set("toy-credit", scale, recompute, build)
    return ToyCreditData(scale=scale, path=data_root() / f"toy-credit-{scale}",
                         manifest=manifest, **tables)


@dataclass(frozen=True)
class GrokkingData:
    """The grokking study's tables (`data/grokking-<scale>/`, `devrl.grokking`)."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    metrics: pd.DataFrame  # per schedule, seed, logged step: losses and accuracies
    llc: pd.DataFrame  # per schedule, seed, kept step: λ̂ and its diagnostics
    regime_estimates: pd.DataFrame  # the regime study that chose the sampler's settings
    regime_verdicts: pd.DataFrame
    ed_scores: pd.DataFrame  # per schedule, seed, kept step, component: PC scores
    ed_turns: pd.DataFrame  # per schedule, seed: turns against the random-walk null
    ed_explained: pd.DataFrame  # per schedule, seed, component: variance share


def grokking_data(scale: str = "cpu", seeds: list[int] | None = None,
                  recompute: bool = False) -> GrokkingData:
    """The grokking data set (`seeds`, or every seed it holds); with `recompute`, train every
    schedule × seed and measure it first (`devrl.grokking.study_tables`)."""
    seeds = check_seeds(seeds)

    def build():
        from devrl import grokking

        return grokking.study_tables(scale, seeds, progress=lambda m: print(m, flush=True))

    picked, manifest, folder, chosen = seeded_table_set(
        "grokking", scale, seeds, recompute, build)
    return GrokkingData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)


@dataclass(frozen=True)
class OutputLLCData:
    """The output layer's learning coefficient with the features frozen
    (`data/output-llc-<scale>/`, `devrl.output_llc`), restricted to the chosen seeds."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    checkpoints: pd.DataFrame  # per (seed, checkpoint): H's rank, largest curvature, quadratic check
    estimates: pd.DataFrame  # per (seed, checkpoint, nβ cell, chain key): λ̂ and its closed form
    curves: pd.DataFrame  # per (seed, checkpoint, γ, nβ factor): the closed form
    spectra: pd.DataFrame  # per (seed, checkpoint, index): H's eigenvalues (float32)


def output_llc_data(scale: str = "cpu", seeds: list[int] | None = None,
                    recompute: bool = False) -> OutputLLCData:
    """The output-layer data set (`seeds`, or every seed it holds); with `recompute`, rebuild it
    from the exported checkpoints and probe sets of `data/craftax-<scale>` (recomputed first if
    absent)."""
    seeds = check_seeds(seeds)

    def build():
        from devrl import output_llc

        craftax = craftax_source(scale, seeds)
        tables, extra = output_llc.study_tables(scale, craftax, seeds,
                                                progress=lambda m: print(m, flush=True))
        return tables, {
            "what": "the output layer's LLC with the hidden features frozen: λ̂ at every exported "
                    "checkpoint against its closed form from the Hessian H of the "
                    "self-distillation loss, rank(H), and the quadratic check "
                    "(devrl.output_llc)",
            "made_by": f"devrl figure output-llc -p scale {scale} -p recompute True", **extra}

    picked, manifest, folder, chosen = seeded_table_set("output-llc", scale, seeds, recompute,
                                                        build)
    return OutputLLCData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)


def rejudge_regime(scale: str = "cpu") -> RegimeData:
    """Rewrite the regime data set's verdicts and outcomes with the current rule
    (`devrl.regime.rejudge`) from its stored estimates, without sampling again; the manifest
    keeps the study's records and names the commit whose code made the estimates."""
    check_scale_and_recompute(scale, True)
    folder = data_root() / f"llc-regime-{scale}"
    old = open_data_set(folder, scale)

    def build():
        from devrl import regime

        estimates = pd.read_parquet(folder / "estimates.parquet")
        outcomes = pd.read_parquet(folder / "outcomes.parquet")
        grids = {"policy": regime.POLICY_GRIDS[scale], "dln": regime.DLN_GRIDS[scale]}
        verdicts, outcomes = regime.rejudge(estimates, outcomes, grids)
        kept = {k: old[k] for k in ("policy_grid", "dln_grid", "dln_cases", "dln_nbeta0",
                                    "dln_num_data", "craftax_manifest_sha256") if k in old}
        return ({"estimates": estimates, "verdicts": verdicts, "outcomes": outcomes}, {
            **kept, "what": old["what"], "rule": regime.rule_settings(),
            "made_by": f"devrl.analysis.rejudge_regime({scale!r})",
            "estimates_from": {"git_commit": old.get("git_commit"),
                               "written": old.get("written"), "made_by": old.get("made_by")}})

    tables, manifest = table_set("llc-regime", scale, True, build)
    return RegimeData(scale=scale, path=folder, manifest=manifest, **tables)
