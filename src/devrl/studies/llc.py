"""Learning coefficients of policies (book/learning-coefficients.md): the data sets of the part,
opened (or recomputed) for its notebooks.

The part is about the estimator itself, so its machinery is in `devrl.measures`: the sampler
(`llc`), its known answers (`known`), the policy's LLC (`policy_llc`), the regime study of the
estimator (`regime`), the output layer's LLC against its closed form (`output_llc`) and essential
dynamics (`dynamics`). Here are the loaders: `llc_data` (data/llc-<scale>), `validation_data`
(data/llc-validation-<scale>), `regime_data` and `rejudge_regime` (data/llc-regime-<scale>) and
`output_llc_data` (data/output-llc-<scale>).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devrl.core.config import SCALE_SEEDS, make_config
from devrl.datasets import (
    check_scale_and_recompute,
    check_seeds,
    choose_seeds,
    craftax_data,
    craftax_source,
    data_root,
    open_data_set,
    plural,
    rank_correlation,
    recompute_runs_dir,
    runs_root,
    seeded_table_set,
    table_set,
)
from devrl.measures import known, output_llc, regime
from devrl.measures.policy_llc import export_llc
from devrl.runs.sweep import run_dir_for

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.core.envs import CONTEXT_LABELS  # noqa: F401
from devrl.datasets import (  # noqa: F401
    over_seeds,
    per_checkpoint,
    uniform_action_share,
    with_rates,
)
from devrl.measures.dynamics import essential_dynamics, turns_frame  # noqa: F401
from devrl.measures.verdicts import status, word  # noqa: F401


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


def validation_data(scale: str = "cpu", recompute: bool = False) -> tuple[pd.DataFrame, dict]:
    """The known-answer suite of the LLC estimator (`data/llc-validation-<scale>/`) and manifest.

    With `recompute`, runs `devrl.measures.known.validation_suite(scale)` and replaces the folder.
    """
    def build():
        return ({"validation": pd.DataFrame(known.validation_suite(scale))}, {
            "what": "LLC estimates of deep linear networks against their closed-form learning "
                    "coefficients (devrl.measures.known.validation_suite)",
            "made_by": f"devrl figure llc-validation -p scale {scale} -p recompute True",
            "settings": known.VALIDATION_SETTINGS[scale]})

    tables, manifest = table_set("llc-validation", scale, recompute, build)
    return tables["validation"], manifest


@dataclass(frozen=True)
class RegimeData:
    """The regime study of the LLC estimator (`data/llc-regime-<scale>/`,
    `devrl.measures.regime`)."""

    scale: str
    path: Path
    manifest: dict[str, Any]
    estimates: pd.DataFrame  # one row per (model, estimate): grid cells, ε sweep, longer, keys
    verdicts: pd.DataFrame  # one row per (model, grid cell): each criterion of the rule
    outcomes: pd.DataFrame  # one row per model: the rule's choice and whether it passed
    ladder: pd.DataFrame  # per deep linear network: long chains at finer steps (regime.ladder_table)


def regime_data(scale: str = "cpu", recompute: bool = False) -> RegimeData:
    """The regime data set; with `recompute`, rerun the study (DLNs, then the policy at the
    first seed's exported checkpoints of `data/craftax-<scale>`, recomputed first if missing).
    Estimates are cached under DEVRL_RUNS/llc-regime-<scale>/, so an interrupted rerun resumes."""
    def build():
        craftax = craftax_source(scale)
        tables, extra = regime.study_tables(scale, craftax, runs_root() / f"llc-regime-{scale}",
                                            progress=lambda message: print(message, flush=True))
        return tables, {
            "what": "regime study of the LLC estimator: λ̂ over nβ × γ (and ε) for deep linear "
                    "networks on realisable data with known λ and for the policy's "
                    "self-distillation loss, with the rule's verdicts (devrl.measures.regime)",
            "made_by": f"devrl figure llc-regime -p scale {scale} -p recompute True", **extra}

    tables, manifest = table_set("llc-regime", scale, recompute, build)
    return RegimeData(scale=scale, path=data_root() / f"llc-regime-{scale}", manifest=manifest,
                      **tables)


@dataclass(frozen=True)
class OutputLLCData:
    """The output layer's learning coefficient with the features frozen
    (`data/output-llc-<scale>/`, `devrl.measures.output_llc`), restricted to the chosen seeds."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    checkpoints: pd.DataFrame  # per (seed, checkpoint): H's rank, largest curvature, quadratic check
    estimates: pd.DataFrame  # per (seed, checkpoint, nβ cell, chain key): λ̂ and its closed form
    curves: pd.DataFrame  # per (seed, checkpoint, γ, nβ factor): the closed form
    spectra: pd.DataFrame  # per (seed, checkpoint, index): H's eigenvalues (float32)

    def describe(self) -> str:
        """One sentence on what was loaded, for captions and the notebooks' prose."""
        checkpoints = self.checkpoints[self.checkpoints["seed"].isin(self.seeds)]
        return (f"{plural(len(self.seeds), 'seed')} ({', '.join(map(str, self.seeds))}) at the "
                f"{self.scale} scale, {plural(len(checkpoints), 'checkpoint')} in all; "
                "hidden layers frozen")


def output_llc_data(scale: str = "cpu", seeds: list[int] | None = None,
                    recompute: bool = False) -> OutputLLCData:
    """The output-layer data set (`seeds`, or every seed it holds); with `recompute`, rebuild it
    from the exported checkpoints and probe sets of `data/craftax-<scale>` (recomputed first if
    absent)."""
    seeds = check_seeds(seeds)

    def build():
        craftax = craftax_source(scale, seeds)
        tables, extra = output_llc.study_tables(scale, craftax, seeds,
                                                progress=lambda m: print(m, flush=True))
        return tables, {
            "what": "the output layer's LLC with the hidden features frozen: λ̂ at every exported "
                    "checkpoint against its closed form from the Hessian H of the "
                    "self-distillation loss, rank(H), and the quadratic check "
                    "(devrl.measures.output_llc)",
            "made_by": f"devrl figure output-llc -p scale {scale} -p recompute True", **extra}

    picked, manifest, folder, chosen = seeded_table_set("output-llc", scale, seeds, recompute,
                                                        build)
    return OutputLLCData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)


# Manifest records that describe one writing of a data set, not the study: a revision of the
# regime data set writes its own.
WRITE_RECORDS = ("files", "git_commit", "source", "written", "versions", "tables", "scale",
                 "unchecked", "pending", "made_by", "estimates_from")


Tables = dict[str, pd.DataFrame]


def _revise_regime(scale: str, revise: Callable[[Tables], Tables], made_by: str,
                   records: dict[str, Any]) -> RegimeData:
    """Rewrite the regime data set from its stored tables without sampling them again: `revise`
    (tables -> the tables it replaces or adds) runs on every stored table; the manifest keeps the
    study's records (with `records` updated), names `made_by`, and in `estimates_from` the writing
    that made the estimates."""
    check_scale_and_recompute(scale, True)
    folder = data_root() / f"llc-regime-{scale}"
    old = open_data_set(folder, scale)

    def build():
        tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in old["tables"]}
        tables.update(revise(tables))
        kept = {k: v for k, v in old.items() if k not in WRITE_RECORDS}
        return tables, {**kept, **records, "made_by": made_by,
                        "estimates_from": old.get("estimates_from") or {
                            "git_commit": old.get("git_commit"), "written": old.get("written"),
                            "made_by": old.get("made_by")}}

    tables, manifest = table_set("llc-regime", scale, True, build)
    return RegimeData(scale=scale, path=folder, manifest=manifest, **tables)


def rejudge_regime(scale: str = "cpu") -> RegimeData:
    """Rewrite the regime data set's verdicts and outcomes with the current rule
    (`devrl.measures.regime.rejudge`) from its stored estimates, without sampling again; the
    manifest keeps the study's records and names the commit whose code made the estimates."""
    def revise(tables):
        grids = {"policy": regime.POLICY_GRIDS[scale], "dln": regime.DLN_GRIDS[scale]}
        verdicts, outcomes = regime.rejudge(tables["estimates"], tables["outcomes"], grids)
        return {"verdicts": verdicts, "outcomes": outcomes}

    return _revise_regime(scale, revise, f"devrl.studies.llc.rejudge_regime({scale!r})",
                          {"rule": regime.rule_settings()})


def ladder_regime(scale: str = "cpu") -> RegimeData:
    """Add (or redo) the ladder of long chains at finer steps (`regime.ladder_table`) in the
    regime data set, from its stored estimates and outcomes, without running the rest of the
    study again; the manifest keeps the study's records and names the commit whose code made
    the estimates. Ladder estimates are cached under DEVRL_RUNS/llc-regime-<scale>/, so an
    interrupted run resumes."""
    def revise(tables):
        return {"ladder": regime.ladder_table(
            tables["estimates"], tables["outcomes"], scale, runs_root() / f"llc-regime-{scale}",
            progress=lambda message: print(message, flush=True))}

    return _revise_regime(scale, revise, f"devrl.studies.llc.ladder_regime({scale!r})",
                          {"ladder": regime.ladder_settings(scale)})


def overshoot_window(whole: pd.DataFrame, behaviour: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the whole actor's estimate (`whole`: seed, env_steps, llc, llc_std) read
    against the plant overshoot in its behaviour (`behaviour`: seed, env_steps,
    place_attempt_share per checkpoint).

    The overshoot window of a seed runs from its first estimated checkpoint up to and including
    the first estimated one after the peak of its PLACE_PLANT share (or its last, if none is
    after). Columns: the estimate at the first checkpoint, at the one nearest the share's peak
    on a log scale and its change there (percent), where the share peaks and the window ends,
    the window's checkpoints, its spread (max − min over mean, percent) and mean chain sd, the
    estimate at the window's end and its change from there to the last checkpoint (percent), the
    overall peak and where, the final estimate, and the rank correlation of the estimate with
    the share over the estimated checkpoints."""
    rows = []
    for seed, group in whole.sort_values("env_steps").groupby("seed"):
        share = behaviour[behaviour["seed"] == seed].set_index("env_steps")["place_attempt_share"]
        if share.empty:
            continue
        peak_steps = share.idxmax()
        at = group.set_index("env_steps")["llc"]
        nearest = at.index[np.argmin(np.abs(np.log(at.index) - np.log(peak_steps)))]
        after = at.index[at.index > peak_steps]
        window_end = after[0] if len(after) else at.index[-1]
        window = at.loc[:window_end]
        rows.append({
            "seed": seed, "first": at.iloc[0], "at_share_peak": at.loc[nearest],
            "change_to_share_peak_pct": 100 * (at.loc[nearest] / at.iloc[0] - 1),
            "share_peak_steps": peak_steps, "window_end_steps": window_end,
            "window_checkpoints": len(window),
            "window_spread_pct": 100 * (window.max() - window.min()) / window.mean(),
            "window_chain_std": group.set_index("env_steps")["llc_std"].loc[:window_end].mean(),
            "window_end": at.loc[window_end],
            "change_after_window_pct": 100 * (at.iloc[-1] / at.loc[window_end] - 1),
            "peak": at.max(), "peak_steps": at.idxmax(), "final": at.iloc[-1],
            "rank_correlation_with_share": rank_correlation(at, share)})
    return pd.DataFrame(rows)
