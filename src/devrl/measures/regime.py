"""When does λ̂ estimate a learning coefficient? A regime study over (nβ, γ, ε) and the rule.

λ̂ = nβ (E[L_n] − L_n(w*)) under exp(−nβ L_n(w) − γ/2 ‖w − w*‖²) is a learning coefficient only
where the localisation does not decide where the chains go and where the inverse temperature is
large enough that λ̂ no longer grows or shrinks with it. In a quadratic direction of curvature h
the expected contribution is ½ · nβh / (nβh + γ): ½ once nβh ≫ γ, and nβh/2γ (linear in nβ, and
set by γ) while nβh ≪ γ. A loss whose curvatures spread over many decades (a policy's Fisher
spectrum) can keep λ̂ growing with nβ over any affordable range: it then measures how many
directions are resolved at the scale γ/nβ, not a learning coefficient.

The study (`run_study`) estimates λ̂ on a grid of nβ (multiples of a base nβ0) × γ, each cell at
the step ε = `step_nbeta` / nβ (a fixed product ε·nβ) with chains `num_steps`·√(nβ/nβ0) long
(a singular direction's equilibrium spread shrinks like nβ^(−1/4), so at a fixed ε·nβ its
mixing takes ~√nβ more steps), a sweep of ε at the base cell up to divergence, and, at the cell
the rule picks, the same ε with `longer_factor` times the steps.

The rule (`judge`): a grid cell passes when every criterion below holds; each can fail.
- stable: no chain diverged, the approximate MALA acceptance is at least MIN_ACCEPTANCE and
  |drift| (excess loss, second half of the draws against the first) is at most MAX_DRIFT, at the
  cell and at the neighbours it is compared with;
- nβ-insensitive: λ̂ at the next larger nβ of the grid (4×) within MAX_CHANGE of λ̂ here;
- γ-insensitive: λ̂ at the next smaller γ of the grid within MAX_CHANGE of λ̂ here;
- confined: the chains' mean distance from w* at most MAX_CONFINEMENT of the distance the same
  sampler reaches with no loss term (same d, ε, γ and steps:
  `devrl.measures.llc.loss_free_distance`), i.e. the loss, not the localisation, holds the chains.
  (It replaced on 2026-12-06 a criterion on the distance against √(d/γ), which a policy at
  equilibrium cannot pass, since its loss constrains at most n(A − 1) of its d directions, and which
  chains still diffusing pass; the verdicts on the data set made before that date are therefore
  exploratory.)
- converged (at the chosen cell only): λ̂ with `longer_factor`× the steps at the same ε within
  MAX_CHANGE, judged only where the longer chains are stable too (acceptance at least
  MIN_ACCEPTANCE): below it, step-size bias is not separated from drift, and the check is
  "not judged", which does not pass.
The rule picks the passing cell of smallest nβ (then largest γ), runs the longer check there, and
passes if it holds. (The positivity and below-w* fractions of the step-size calibration in
`devrl.measures.policy_llc` are not criteria here: with paired draws on a self-distillation loss the
excess is a mean of KL terms and cannot be negative.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError, atomic_write_json
from devrl.core.config import config_from_dict
from devrl.core.envs import ACTION_NAMES, CONTEXTS
from devrl.measures import known
from devrl.measures.llc import (
    LLCDivergenceError,
    LLCResult,
    estimate_llc,
    full_loss,
    loss_free_distance,
    restrict_data,
)
from devrl.measures.policy_llc import distillation_data, log_spaced, loss_for, trace_drift
from devrl.runs.rundir import load_params, sha256_file

MIN_ACCEPTANCE = 0.5
MAX_DRIFT = 0.1
MAX_CHANGE = 0.10
# The loss must hold the chains measurably: their distance at most this fraction of the loss-free
# one. Set on 2026-12-06 after the stored estimates had been seen (the policy's chains scatter
# within ±0.7% of the loss-free distance, the deep linear networks' lie at 0.07-0.95), so the
# verdicts it gives on them are exploratory.
MAX_CONFINEMENT = 0.95
# The grid criteria, as columns of the verdicts table (each True where the cell meets it).
CRITERIA = ("stable", "nbeta_ok", "gamma_ok", "confined")


@dataclass(frozen=True)
class RegimeGrid:
    """The cells of one regime study."""

    nbeta_factors: tuple[float, ...]  # multiples of nβ0, ascending, each 4× the one before
    localizations: tuple[float, ...]  # γ, ascending
    base_factor: float  # the cell the existing estimates used (its ε sweep and fallback check)
    base_localization: float
    step_nbeta: float  # ε · nβ at every grid cell
    step_sizes: tuple[float, ...]  # ε swept at the base cell (to divergence)
    num_steps: int  # SGLD steps at nβ0 (half of them burn-in); × √(nβ/nβ0) elsewhere
    num_chains: int
    batch_size: int
    longer_factor: int = 4
    skip: tuple[tuple[float, float], ...] = ()  # (factor, γ) cells left out to save time

    def validate(self) -> RegimeGrid:
        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        for name in ("nbeta_factors", "localizations"):
            values = getattr(self, name)
            if len(values) < 2 or any(not (math.isfinite(v) and v > 0) for v in values) \
                    or list(values) != sorted(set(values)):
                bad(name, "need at least two distinct positive numbers in ascending order")
        if self.base_factor not in self.nbeta_factors:
            bad("base_factor", f"must be one of nbeta_factors={self.nbeta_factors}")
        if self.base_localization not in self.localizations:
            bad("base_localization", f"must be one of localizations={self.localizations}")
        for name in ("num_steps", "num_chains", "batch_size", "longer_factor"):
            if getattr(self, name) < (2 if name == "num_steps" else 1):
                bad(name, "must be a positive integer (num_steps >= 2)")
        if not (math.isfinite(self.step_nbeta) and self.step_nbeta > 0):
            bad("step_nbeta", "must be a finite number > 0")
        return self

    def steps_at(self, factor: float) -> int:
        return int(round(self.num_steps * math.sqrt(factor / self.nbeta_factors[0])))


# The policy study at the cpu scale: the grid spans 16× in nβ and 4 decades in γ around the
# settings of data/llc-cpu (nβ0 = n/log n, γ = 100, ε = 1e-4); 2 chains, since the question is
# bias across cells, not the spread within one. Chains of 500 steps at nβ0, as in data/llc-cpu
# (×2 and ×4 at nβ×4, ×16). The γ = 10^4 row skips nβ×16 (at that γ the prior holds every chain
# anyway). One 1000-step estimate of 2 chains takes ~35 s on the 2-core machine.
POLICY_GRIDS: dict[str, RegimeGrid] = {
    "smoke": RegimeGrid(nbeta_factors=(1.0, 4.0), localizations=(1.0, 100.0), base_factor=1.0,
                        base_localization=100.0, step_nbeta=0.02, step_sizes=(1e-3,),
                        num_steps=40, num_chains=2, batch_size=8),
    "cpu": RegimeGrid(nbeta_factors=(1.0, 4.0, 16.0), localizations=(1.0, 100.0, 1e4),
                      base_factor=1.0, base_localization=100.0, step_nbeta=0.0209,
                      step_sizes=(3e-4, 1e-3, 3e-3), num_steps=500, num_chains=2,
                      batch_size=64, skip=((16.0, 1e4),)),
}
POLICY_CHECKPOINTS = {"smoke": 2, "cpu": 3}  # log-spaced trained checkpoints of the first seed

# Deep linear networks with d ≥ 10^4 weights on realisable (noiseless) data, like the policy's
# self-distillation loss: L_n(w) = (1/n) Σ ½‖x_i (W_1⋯W_L − W0_1⋯W0_L)‖², minimised exactly at
# w* = w0, where λ is Aoyagi's. nβ is then a free inverse temperature, as for the policy. The
# "sloppy" case has the true product's singular values spread over two decades. (With hidden
# layers twice as wide as the ends, λ = H_1 H_{L+1} / 2 at every rank, so neither the rank nor
# the spread changes λ here: the sloppy case checks that small singular values do not move the
# estimate, not that the nβ criterion sees unresolved rank.)
DLN_CASES: dict[str, dict[str, Any]] = {
    "dln-30-60-60-60-30-r5": {"widths": (30, 60, 60, 60, 30), "rank": 5},
    "dln-40-80-80-40-r5": {"widths": (40, 80, 80, 40), "rank": 5},
    "dln-100-100-r20": {"widths": (100, 100), "rank": 20},
    "dln-50-100-100-50-r10": {"widths": (50, 100, 100, 50), "rank": 10},
    "dln-40-80-80-40-r10-sloppy": {"widths": (40, 80, 80, 40), "rank": 10,
                                   "singular_values": (0.02, 2.0)},
}
DLN_NUM_DATA = 3000
DLN_NBETA0 = DLN_NUM_DATA / math.log(DLN_NUM_DATA)  # ≈ 375, as in the known-answer suite
DLN_GRIDS: dict[str, RegimeGrid] = {
    "smoke": RegimeGrid(nbeta_factors=(1.0, 4.0, 16.0), localizations=(1.0, 100.0),
                        base_factor=1.0, base_localization=1.0, step_nbeta=0.02,
                        step_sizes=(2e-4,), num_steps=500, num_chains=2, batch_size=200),
    "cpu": RegimeGrid(nbeta_factors=(1.0, 4.0, 16.0, 64.0), localizations=(0.01, 1.0, 100.0),
                      base_factor=1.0, base_localization=1.0, step_nbeta=0.02,
                      step_sizes=(2e-4, 6e-4, 2e-3), num_steps=2000, num_chains=2,
                      batch_size=200, skip=((64.0, 0.01), (64.0, 100.0), (16.0, 100.0))),
}
DLN_STUDY_CASES = {"smoke": ("dln-30-60-60-60-30-r5",),
                   "cpu": tuple(c for c in DLN_CASES if c != "dln-50-100-100-50-r10")}

Estimator = Callable[[dict[str, Any], jax.Array], LLCResult]


# ----------------------------------------------------------------------------------- problems
def realisable_dln(widths: tuple[int, ...], rank: int, num_data: int = DLN_NUM_DATA,
                   singular_values: tuple[float, float] | None = None, seed: int = 0
                   ) -> tuple[known.DLNParams, tuple[jax.Array, jax.Array]]:
    """(w0, data): a deep linear network at a true parameter of rank `rank` and noiseless data.

    `singular_values` (low, high) spaces the product's singular values geometrically between
    them; by default they are `known.dln_true_params`' (evenly in [1, 2]).
    """
    truth_key, data_key = jax.random.split(jax.random.fold_in(
        jax.random.PRNGKey(sum(widths) * 10 + rank), seed))
    if singular_values is None:
        w0 = known.dln_true_params(truth_key, widths, rank)
    else:
        low, high = singular_values
        if not 0 < low < high:
            raise ConfigError(f"singular_values={singular_values!r} is not allowed: need "
                              "0 < low < high")
        w0 = known.dln_true_params(truth_key, widths, rank,
                                   singular_values=np.geomspace(low, high, rank))
    x = jax.random.normal(data_key, (num_data, widths[0]))
    return w0, (x, known.dln_apply(w0, x))


def dln_estimator(case: str) -> tuple[Estimator, int, float]:
    """(estimate(cell, key), number of weights d, true λ) of one of DLN_CASES."""
    if case not in DLN_CASES:
        raise ConfigError(f"case={case!r} is not allowed: must be one of {', '.join(DLN_CASES)}")
    spec = DLN_CASES[case]
    w0, data = realisable_dln(spec["widths"], spec["rank"],
                              singular_values=spec.get("singular_values"))

    def estimate(cell: dict[str, Any], key: jax.Array) -> LLCResult:
        return estimate_llc(known.dln_loss, w0, data, key, draw_loss="paired", **cell)

    return (estimate, known.dln_num_params(spec["widths"]),
            known.dln_learning_coefficient(spec["widths"], spec["rank"]))


# ---------------------------------------------------------------------------------- the study
def grid_cells(grid: RegimeGrid, nbeta0: float) -> list[dict[str, Any]]:
    """Every estimate of phase one: the (nβ, γ) grid, then the ε sweep at the base cell."""
    grid.validate()
    cells = []
    for factor in grid.nbeta_factors:
        for gamma in grid.localizations:
            if (factor, gamma) in grid.skip:
                continue
            cells.append(_cell(grid, "grid", factor, gamma, grid.step_nbeta / (factor * nbeta0),
                               grid.steps_at(factor), nbeta0))
    for step in grid.step_sizes:
        cells.append(_cell(grid, "step", grid.base_factor, grid.base_localization, step,
                           grid.steps_at(grid.base_factor), nbeta0))
    return cells


def _cell(grid: RegimeGrid, kind: str, factor: float, gamma: float, step: float, steps: int,
          nbeta0: float) -> dict[str, Any]:
    return {"kind": kind, "nbeta_factor": factor, "localization": gamma, "step_size": step,
            "num_steps": steps, "num_burnin": steps // 2, "nbeta": factor * nbeta0,
            "num_chains": grid.num_chains, "batch_size": grid.batch_size}


SAMPLER_KEYS = ("nbeta", "localization", "step_size", "num_steps", "num_burnin", "num_chains",
                "batch_size")


def run_cell(estimate: Estimator, cell: dict[str, Any], num_sampled: int, seed: int,
             cache: Path | None = None, model_id: str = "") -> dict[str, Any]:
    """The row of one estimate (cached as JSON under `cache`, keyed by model and settings)."""
    sampler = {k: cell[k] for k in SAMPLER_KEYS}
    part = None
    if cache is not None:
        blob = json.dumps({"model": model_id, "seed": seed, **sampler}, sort_keys=True)
        part = Path(cache) / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
        if part.exists():
            return {**cell, **json.loads(part.read_text())}
    try:
        result = estimate(sampler, jax.random.PRNGKey(seed))
        drift = trace_drift(result)
        row = {"llc": result.mean, "llc_std": result.std,
               "chain_llcs": [float(v) for v in result.chain_llcs],
               "init_loss": result.init_loss, "mala_acceptance": result.mala_acceptance,
               "drift": drift, "mean_distance": result.mean_distance,
               "num_sampled": result.num_sampled, "diverged": False}
    except LLCDivergenceError:
        row = {"llc": math.nan, "llc_std": math.nan, "chain_llcs": [], "init_loss": math.nan,
               "mala_acceptance": math.nan, "drift": math.nan, "mean_distance": math.nan,
               "num_sampled": num_sampled, "diverged": True}
    row["prior_radius"] = math.sqrt(num_sampled / cell["localization"]) \
        if cell["localization"] > 0 else math.inf
    row["key"] = seed
    if part is not None:
        atomic_write_json(part, row)
    return {**cell, **row}


def run_study(estimate: Estimator, grid: RegimeGrid, nbeta0: float, num_sampled: int,
              seed: int = 0, cache: Path | None = None, model_id: str = "",
              progress: Callable[[str], None] = lambda message: None
              ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(estimates, per-cell verdicts, the rule's outcome) of one model; see the module doc."""
    rows = []
    for cell in grid_cells(grid, nbeta0):
        progress(f"{model_id} {cell['kind']} nβ×{cell['nbeta_factor']:g} "
                 f"γ={cell['localization']:g} ε={cell['step_size']:.3g}")
        rows.append(run_cell(estimate, cell, num_sampled, seed, cache, model_id))
    verdict = judge(pd.DataFrame(rows), grid)
    passing = verdict[verdict["passes"]].sort_values(["nbeta_factor", "localization"],
                                                      ascending=[True, False])
    chosen = passing.iloc[0] if len(passing) else verdict[
        (verdict["nbeta_factor"] == grid.base_factor)
        & (verdict["localization"] == grid.base_localization)].iloc[0]
    base = next(r for r in rows if r["kind"] == "grid"
                and r["nbeta_factor"] == chosen["nbeta_factor"]
                and r["localization"] == chosen["localization"])
    longer = {**{k: base[k] for k in ("nbeta_factor", "localization", "step_size", "nbeta",
                                       "num_chains", "batch_size")},
              "kind": "longer", "num_steps": base["num_steps"] * grid.longer_factor,
              "num_burnin": base["num_burnin"] * grid.longer_factor}
    progress(f"{model_id} longer nβ×{longer['nbeta_factor']:g} γ={longer['localization']:g}")
    rows.append(run_cell(estimate, longer, num_sampled, seed, cache, model_id))
    outcome = decide(verdict, rows[-1], bool(len(passing)))
    return pd.DataFrame(rows), verdict, outcome


def _stable(row: Any) -> bool:
    return (not bool(row["diverged"]) and row["mala_acceptance"] >= MIN_ACCEPTANCE
            and abs(row["drift"]) <= MAX_DRIFT)


# Two parts of the rule (the confinement ratio, the acceptance band of the chain-length check)
# were changed on 2026-12-06 after the estimates had been seen: its verdicts are exploratory
# (devrl.measures.verdicts).
RULE_KIND = "exploratory"


def judge(rows: pd.DataFrame, grid: RegimeGrid) -> pd.DataFrame:
    """One row per grid cell: each criterion's value and verdict, and `passes` (all of them)."""
    cells = rows[rows["kind"] == "grid"].set_index(["nbeta_factor", "localization"])
    factors, gammas = list(grid.nbeta_factors), list(grid.localizations)
    out = []
    for (factor, gamma), row in cells.iterrows():
        record = {"nbeta_factor": factor, "localization": gamma, "nbeta": row["nbeta"],
                  "step_size": row["step_size"], "num_steps": row["num_steps"],
                  "llc": row["llc"], "stable": _stable(row)}
        for name, neighbour in (
                ("nbeta", (factors[factors.index(factor) + 1], gamma)
                 if factor != factors[-1] else None),
                ("gamma", (factor, gammas[gammas.index(gamma) - 1]) if gamma != gammas[0]
                 else None)):
            if neighbour is None or neighbour not in cells.index:
                record[f"{name}_change"], record[f"{name}_ok"] = math.nan, False
                continue
            other = cells.loc[neighbour]
            change = other["llc"] / row["llc"] - 1 if row["llc"] else math.nan
            record[f"{name}_change"] = change
            record[f"{name}_ok"] = bool(_stable(other) and abs(change) <= MAX_CHANGE)
        record["distance_ratio"] = row["mean_distance"] / row["prior_radius"]
        record["confinement_ratio"] = confinement_ratio(row, gamma)
        record["confined"] = bool(record["confinement_ratio"] <= MAX_CONFINEMENT)
        record["passes"] = bool(record["stable"] and record["nbeta_ok"] and record["gamma_ok"]
                                and record["confined"])
        out.append(record)
    return pd.DataFrame(out)


def confinement_ratio(row: Any, localization: float) -> float:
    """The row's mean distance from w* over the distance plain SGLD with no loss term reaches
    with the same d, ε, γ and steps (1: the loss does not hold the chains at all)."""
    free = loss_free_distance(int(row["num_sampled"]), float(row["step_size"]),
                              float(localization), int(row["num_burnin"]),
                              int(row["num_steps"]))
    return float(row["mean_distance"]) / free


def longer_check(cell: Any, longer: dict[str, Any]) -> str:
    """The chain-length check: "converged" (λ̂ within MAX_CHANGE with the longer chains),
    "moved", or "not judged" where the longer chains are not stable (acceptance below
    MIN_ACCEPTANCE, drift or divergence): there step-size bias is not separated from drift."""
    if not _stable(longer):
        return "not judged"
    change = longer["llc"] / cell["llc"] - 1 if cell["llc"] else math.nan
    return "converged" if abs(change) <= MAX_CHANGE else "moved"


def decide(verdict: pd.DataFrame, longer: dict[str, Any], any_passing: bool) -> dict[str, Any]:
    """The rule's outcome from the verdicts and the longer-chain check at the chosen cell."""
    cell = verdict[(verdict["nbeta_factor"] == longer["nbeta_factor"])
                   & (verdict["localization"] == longer["localization"])].iloc[0]
    change = longer["llc"] / cell["llc"] - 1 if cell["llc"] else math.nan
    check = longer_check(cell, longer)
    converged = check == "converged"
    return {"passed": bool(any_passing and converged), "cell_passed": any_passing,
            "longer_check": check, "longer_acceptance": float(longer["mala_acceptance"]),
            "nbeta_factor": float(cell["nbeta_factor"]), "localization": float(cell["localization"]),
            "nbeta": float(cell["nbeta"]), "step_size": float(cell["step_size"]),
            "num_steps": int(cell["num_steps"]), "llc": float(cell["llc"]),
            "longer_llc": float(longer["llc"]), "longer_change": float(change),
            "converged": converged}


def rejudge(estimates: pd.DataFrame, outcomes: pd.DataFrame, grids: dict[str, RegimeGrid]
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Verdicts and outcomes of the current rule on a data set's stored estimates, without
    sampling again. Where the rule now picks another cell than the one whose longer chains were
    run, the chain-length check is "not run at this cell" and the model does not pass. The
    facts of each outcome (n, caps, true λ, the chain keys' estimates at the cell they were run
    at, `key_cell_*`) are kept."""
    verdicts, rows = [], []
    for model, group in estimates.groupby("model", sort=False):
        family = group["family"].iloc[0]
        verdict = judge(group, grids[family])
        old = outcomes.set_index("model").loc[model]
        longer = group[group["kind"] == "longer"].iloc[0].to_dict()
        passing = verdict[verdict["passes"]].sort_values(["nbeta_factor", "localization"],
                                                          ascending=[True, False])
        grid = grids[family]
        chosen = passing.iloc[0] if len(passing) else verdict[
            (verdict["nbeta_factor"] == grid.base_factor)
            & (verdict["localization"] == grid.base_localization)].iloc[0]
        same = (chosen["nbeta_factor"] == longer["nbeta_factor"]
                and chosen["localization"] == longer["localization"])
        outcome = decide(verdict, longer, bool(len(passing)))
        if not same:
            outcome.update({"passed": False, "longer_check": "not run at this cell",
                            "nbeta_factor": float(chosen["nbeta_factor"]),
                            "localization": float(chosen["localization"]),
                            "nbeta": float(chosen["nbeta"]),
                            "step_size": float(chosen["step_size"]),
                            "num_steps": int(chosen["num_steps"]), "llc": float(chosen["llc"]),
                            "converged": False})
        facts = {k: old[k] for k in old.index if k not in outcome and k != "family"}
        facts["key_cell_nbeta_factor"] = float(longer["nbeta_factor"])
        facts["key_cell_localization"] = float(longer["localization"])
        rows.append({"model": model, "family": family, **facts, **outcome})
        verdicts.append(verdict.assign(model=model, family=family))
    return pd.concat(verdicts, ignore_index=True), pd.DataFrame(rows)


# ------------------------------------------------------------------ long chains at a finer step
# The open question of the chain-length check on the deep linear networks: their chains run
# `longer_factor` times longer raise λ̂, but at an acceptance below MIN_ACCEPTANCE, where a bias of
# the step is not separated from a drift along the set of minimisers. The ladder reruns the chosen
# cell's chain length (1×) and the longer one (LADDER_LENGTHS) at the cell's step divided by each
# of LADDER_DIVISORS, with that many times the steps, so that every rung covers the same chain
# time ε × steps as its length at the cell's own step. `ladder_check` judges the chain-length
# question at the largest step where both lengths accept at least MIN_ACCEPTANCE. The ladder and
# its check were committed on 2026-12-06, before any chain of it ran; MIN_ACCEPTANCE and
# MAX_CHANGE are the rule's (see the module doc for when they were set). The smoke scale runs
# the cell's own step only (it checks the plumbing, not the question).
LADDER_DIVISORS = {"smoke": (1,), "cpu": (1, 4, 16)}
LADDER_LENGTHS = (1, 4)  # the cell's chain length and the rule's longer one (longer_factor)
LADDER_CHECKS = ("converged", "moved", "not judged")


def ladder_cells(chosen: dict[str, Any], divisors: tuple[int, ...]) -> list[dict[str, Any]]:
    """The ladder's cells at a chosen cell (`chosen`: nbeta_factor, localization, nbeta,
    step_size, num_steps, num_burnin, num_chains, batch_size of the rule's cell), for each of
    `divisors` of its step and each of LADDER_LENGTHS."""
    if not divisors or any(int(k) != k or k < 1 for k in divisors):
        raise ConfigError(f"divisors={divisors!r} is not allowed: need whole numbers >= 1")
    cells = []
    for divisor in divisors:
        for length in LADDER_LENGTHS:
            cells.append({
                **{k: chosen[k] for k in ("nbeta_factor", "localization", "nbeta", "num_chains",
                                          "batch_size")},
                "kind": "ladder", "divisor": int(divisor), "length": int(length),
                "step_size": float(chosen["step_size"]) / divisor,
                "num_steps": int(chosen["num_steps"]) * divisor * length,
                "num_burnin": int(chosen["num_burnin"]) * divisor * length})
    return cells


def run_ladder(estimate: Estimator, chosen: dict[str, Any], divisors: tuple[int, ...],
               num_sampled: int, seed: int = 0, cache: Path | None = None, model_id: str = "",
               progress: Callable[[str], None] = lambda message: None) -> pd.DataFrame:
    """One row per ladder cell (`ladder_cells`), each a `run_cell` estimate."""
    rows = []
    for cell in ladder_cells(chosen, divisors):
        progress(f"{model_id} ladder ε/{cell['divisor']} × {cell['length']} "
                 f"({cell['num_steps']} steps)")
        row = run_cell(estimate, {k: v for k, v in cell.items()
                                  if k not in ("divisor", "length")}, num_sampled, seed, cache,
                       model_id)
        rows.append({**row, "divisor": cell["divisor"], "length": cell["length"]})
    return pd.DataFrame(rows)


def ladder_check(rows: pd.DataFrame) -> dict[str, Any]:
    """The chain-length check on one model's ladder (`rows`: divisor, length, llc,
    mala_acceptance, diverged): at the largest step (smallest divisor) where the chains of both
    lengths ran without diverging and accept at least MIN_ACCEPTANCE, "converged" when λ̂ of the
    longest chains is within MAX_CHANGE of λ̂ of the shortest, "moved" otherwise; "not judged"
    where no step has both lengths that stable. Also the step, both λ̂ and their change."""
    if rows.empty:
        raise ConfigError("rows is empty: need the ladder's estimates of one model")
    short, long = min(LADDER_LENGTHS), max(LADDER_LENGTHS)
    for divisor in sorted(rows["divisor"].unique()):
        rung = rows[rows["divisor"] == divisor].set_index("length")
        if short not in rung.index or long not in rung.index:
            continue
        pair = rung.loc[[short, long]]
        if pair["diverged"].astype(bool).any() or (pair["mala_acceptance"] < MIN_ACCEPTANCE).any():
            continue
        change = float(pair.loc[long, "llc"] / pair.loc[short, "llc"] - 1)
        return {"check": "converged" if abs(change) <= MAX_CHANGE else "moved",
                "divisor": int(divisor), "llc": float(pair.loc[short, "llc"]),
                "longer_llc": float(pair.loc[long, "llc"]), "change": change,
                "acceptance": float(pair["mala_acceptance"].min())}
    return {"check": "not judged", "divisor": math.nan, "llc": math.nan,
            "longer_llc": math.nan, "change": math.nan, "acceptance": math.nan}


def chosen_cell(estimates: pd.DataFrame, outcome: Any) -> dict[str, Any]:
    """The grid cell (a row of one model's `estimates`) that the rule's `outcome` chose."""
    rows = estimates[(estimates["kind"] == "grid")
                     & (estimates["nbeta_factor"] == outcome["nbeta_factor"])
                     & (estimates["localization"] == outcome["localization"])]
    if len(rows) != 1:
        raise ConfigError(f"outcome={outcome['model']!r} names no single grid cell "
                          f"(nβ×{outcome['nbeta_factor']:g}, γ={outcome['localization']:g})")
    return rows.iloc[0].to_dict()


def ladder_table(estimates: pd.DataFrame, outcomes: pd.DataFrame, scale: str,
                 cache: Path | None = None,
                 progress: Callable[[str], None] = lambda message: None) -> pd.DataFrame:
    """The ladder of every deep linear network of a regime data set (its `estimates` and
    `outcomes`), at the cell its rule chose."""
    if scale not in DLN_GRIDS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(DLN_GRIDS)}")
    tables = []
    for outcome in outcomes[outcomes["family"] == "dln"].to_dict("records"):
        case = outcome["model"]
        estimate, d, _ = dln_estimator(case)
        chosen = chosen_cell(estimates[estimates["model"] == case], outcome)
        tables.append(run_ladder(estimate, chosen, LADDER_DIVISORS[scale], d, 0, cache, case,
                                 progress)
                      .assign(model=case, family="dln"))
    if not tables:
        raise ConfigError("outcomes has no deep linear network: the ladder needs one")
    return pd.concat(tables, ignore_index=True)


def nbeta_slope(rows: pd.DataFrame, localization: float) -> float:
    """d log λ̂ / d log nβ along the grid at `localization` (least squares over the cells)."""
    cells = rows[(rows["kind"] == "grid") & (rows["localization"] == localization)
                 & ~rows["diverged"]]
    if len(cells) < 2:
        return math.nan
    return float(np.polyfit(np.log(cells["nbeta"]), np.log(cells["llc"]), 1)[0])


def is_singular(manifest: dict[str, Any], model: str) -> bool:
    """Whether a deep linear network of a regime data set (`manifest`'s dln_cases) is singular:
    more than one layer of weights."""
    return len(manifest["dln_cases"][model]["widths"]) > 2


def ladder_summary(ladder: pd.DataFrame, outcomes: pd.DataFrame, manifest: dict[str, Any]
                   ) -> pd.DataFrame:
    """One row per deep linear network of the ladder: its true λ, whether it is singular (depth
    above one), the cell's step, and `ladder_check`'s verdict with the step it was judged at, λ̂ of
    both lengths there, their change and the lower acceptance; and, for every step of the
    ladder (the cell's divided by k), λ̂ at both lengths (`llc_<k>`, `longer_llc_<k>`), the
    longer chains' acceptance (`longer_acceptance_<k>`) and the chains' mean distance from w*
    at both lengths (`distance_<k>`, `longer_distance_<k>`)."""
    truth = outcomes.set_index("model")["true_llc"]
    rows = []
    for model, rungs in ladder.groupby("model", sort=False):
        row = {"model": model, "true_llc": float(truth[model]),
               "singular": is_singular(manifest, model),
               "step_size": float(rungs.loc[rungs["divisor"] == 1, "step_size"].iloc[0]),
               **ladder_check(rungs)}
        for divisor, rung in rungs.groupby("divisor"):
            at = rung.set_index("length")
            row[f"llc_{divisor}"] = float(at.loc[min(LADDER_LENGTHS), "llc"])
            row[f"longer_llc_{divisor}"] = float(at.loc[max(LADDER_LENGTHS), "llc"])
            row[f"longer_acceptance_{divisor}"] = float(at.loc[max(LADDER_LENGTHS),
                                                               "mala_acceptance"])
            row[f"distance_{divisor}"] = float(at.loc[min(LADDER_LENGTHS), "mean_distance"])
            row[f"longer_distance_{divisor}"] = float(at.loc[max(LADDER_LENGTHS),
                                                             "mean_distance"])
        rows.append(row)
    return pd.DataFrame(rows)


def ladder_numbers(summary: pd.DataFrame) -> dict[str, float]:
    """The numbers the regime chapter quotes about the ladder (`ladder_summary`), keys
    ladder-*: how many singular networks each check word names; over the singular ones judged,
    the range of λ̂'s change with 4× the chain length (percent), the lowest acceptance, the
    largest divisor of the step at which they were judged and how far the chains' mean distance
    from w* grew; and at every step of the ladder, the range over the singular networks of that
    change (percent), of the longer chains' acceptance, and of λ̂'s error against the true λ
    (percent, signed) at both lengths (`ladder-error-at-<k>-*`, `ladder-longer-error-at-<k>-*`)."""
    singular = summary[summary["singular"]]
    judged = singular[singular["check"] != "not judged"]
    numbers = {f"ladder-singular-{check.replace(' ', '-')}": int((singular["check"] == check).sum())
               for check in LADDER_CHECKS}
    numbers["ladder-singular"] = len(singular)
    for divisor in sorted(int(c.rpartition("_")[2]) for c in singular.columns
                          if c.startswith("longer_llc_")):
        change = 100 * (singular[f"longer_llc_{divisor}"] / singular[f"llc_{divisor}"] - 1)
        numbers.update({f"ladder-change-at-{divisor}-min": float(change.min()),
                        f"ladder-change-at-{divisor}-max": float(change.max()),
                        f"ladder-acceptance-at-{divisor}-min":
                            float(singular[f"longer_acceptance_{divisor}"].min()),
                        f"ladder-acceptance-at-{divisor}-max":
                            float(singular[f"longer_acceptance_{divisor}"].max())})
        for length, column in (("", f"llc_{divisor}"), ("longer-", f"longer_llc_{divisor}")):
            error = 100 * (singular[column] / singular["true_llc"] - 1)
            numbers.update({f"ladder-{length}error-at-{divisor}-min": float(error.min()),
                            f"ladder-{length}error-at-{divisor}-max": float(error.max())})
    if len(judged):
        growth = [float(row[f"longer_distance_{int(row['divisor'])}"]
                        / row[f"distance_{int(row['divisor'])}"]) for _, row in judged.iterrows()]
        numbers.update({
            "ladder-change-min": 100 * float(judged["change"].min()),
            "ladder-change-max": 100 * float(judged["change"].max()),
            "ladder-acceptance-min": float(judged["acceptance"].min()),
            "ladder-divisor-max": int(judged["divisor"].max()),
            "ladder-distance-growth-min": min(growth), "ladder-distance-growth-max": max(growth)})
    return numbers


def ladder_settings(scale: str) -> dict[str, list[int]]:
    return {"divisors": list(LADDER_DIVISORS[scale]), "lengths": list(LADDER_LENGTHS)}


def rule_settings() -> dict[str, float]:
    return {"min_acceptance": MIN_ACCEPTANCE, "max_drift": MAX_DRIFT, "max_change": MAX_CHANGE,
            "max_confinement": MAX_CONFINEMENT}


def grid_record(grid: RegimeGrid) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(grid).items()}


# ------------------------------------------------------------------------------- the policy
def policy_estimator(folder: Path, seed: int, update: int
                     ) -> tuple[Estimator, int, float, dict[str, Any]]:
    """(estimate(cell, key), d, nβ0 = n/log n, facts) for one exported checkpoint of a
    Craftax data set (`folder`, e.g. data/craftax-cpu: float16 actor checkpoints and probe sets).

    The loss is the self-distillation loss of `devrl.measures.policy_llc` at the stored (float16)
    weights, which are exactly its minimum. `facts` holds n, the entropy L_n(w*) and the cap
    n(A − 1)/2.
    """
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    runs = {r["seed"]: r for r in manifest["runs"]}
    if seed not in runs:
        raise ConfigError(f"seed={seed!r} is not allowed: {folder} holds seeds {sorted(runs)}")
    config = config_from_dict(runs[seed]["config"])
    path = Path(folder) / "checkpoints" / f"seed_{seed}" / f"params_{update:06d}.npz"
    if not path.exists():
        raise ConfigError(f"update={update!r} is not allowed: {folder} keeps checkpoints "
                          f"{runs[seed]['exported_checkpoints']} of seed {seed}")
    actor = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), load_params(path))
    with np.load(Path(folder) / "probes" / f"seed_{seed}.npz") as probe_file:
        probe = {k: probe_file[k] for k in probe_file.files}
    data = distillation_data(config, actor, probe)
    loss = loss_for(config)
    n = int(data["obs"].shape[0])
    d = int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(actor)))

    def estimate(cell: dict[str, Any], key: jax.Array, context: str | None = None
                 ) -> LLCResult:
        """One estimate; with `context`, on that plant context's probe states only (at the
        cell's nβ, so that contexts and the whole probe set are compared at one nβ)."""
        if context is None:
            return estimate_llc(loss, actor, data, key, draw_loss="paired", **cell)
        if context not in CONTEXTS:
            raise ConfigError(f"context={context!r} is not allowed: must be one of "
                              f"{', '.join(CONTEXTS)}")
        subset = restrict_data(data, probe["context"] == CONTEXTS.index(context))
        return estimate_llc(loss, actor, subset, key, draw_loss="paired", **cell)

    facts = {"num_data": n, "entropy": float(full_loss(loss, actor, data)),
             "cap": n * (len(ACTION_NAMES) - 1) / 2, "num_sampled": d}
    return estimate, d, n / math.log(n), facts


def study_tables(scale: str, craftax: Path, cache: Path | None = None,
                 progress: Callable[[str], None] = lambda message: None
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The regime data set: the policy (first seed's checkpoints) and the DLN cases, each
    through `run_study`; for each DLN also λ̂ at the rule's chosen cell with two more keys, and
    for each policy checkpoint the estimate on each plant context's probe states alone at the
    base cell's nβ (kind "context", column `target`: a common nβ for contexts and whole); and
    each DLN's ladder of long chains at finer steps (`ladder_table`)."""
    if scale not in POLICY_GRIDS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of "
                          f"{', '.join(POLICY_GRIDS)}")
    estimates, verdicts, outcomes = [], [], []

    def add(model: str, family: str, rows: pd.DataFrame, verdict: pd.DataFrame,
            outcome: dict[str, Any], extra: dict[str, Any]) -> None:
        estimates.append(rows.assign(model=model, family=family))
        verdicts.append(verdict.assign(model=model, family=family))
        outcomes.append({"model": model, "family": family, **extra, **outcome})

    manifest = json.loads((Path(craftax) / "manifest.json").read_text())
    seed = min(r["seed"] for r in manifest["runs"])
    run = next(r for r in manifest["runs"] if r["seed"] == seed)
    updates = [u for u in run["exported_checkpoints"] if u > 0]
    grid = POLICY_GRIDS[scale]
    for update in sorted(log_spaced(updates, POLICY_CHECKPOINTS[scale]), reverse=True):
        estimate, d, nbeta0, facts = policy_estimator(Path(craftax), seed, update)
        model = f"policy-seed{seed}-update{update:06d}"
        rows, verdict, outcome = run_study(estimate, grid, nbeta0, d, 0, cache, model, progress)
        rows = rows.assign(update=update, env_steps=update * run["config"]["num_envs"]
                           * run["config"]["num_steps"])
        base = rows[(rows["kind"] == "grid") & (rows["nbeta_factor"] == grid.base_factor)
                    & (rows["localization"] == grid.base_localization)].iloc[0]
        cell = {**base[["nbeta_factor", "localization", "step_size", "num_steps", "num_burnin",
                        "nbeta", "num_chains", "batch_size"]].to_dict(), "kind": "context"}
        contexts = []
        for context in CONTEXTS:
            progress(f"{model} context {context} at nβ={cell['nbeta']:.0f}")
            contexts.append({**run_cell(functools.partial(_in_context, estimate, context), cell,
                                        d, 0, cache, f"{model}-{context}"), "target": context})
        rows = pd.concat([rows, pd.DataFrame(contexts).assign(
            update=update, env_steps=rows["env_steps"].iloc[0])], ignore_index=True)
        add(model, "policy", rows, verdict, outcome, {
            **facts, "seed": seed, "update": update,
            "slope": nbeta_slope(rows, grid.base_localization)})
    grid = DLN_GRIDS[scale]
    for case in DLN_STUDY_CASES[scale]:
        estimate, d, truth = dln_estimator(case)
        rows, verdict, outcome = run_study(estimate, grid, DLN_NBETA0, d, 0, cache, case,
                                           progress)
        chosen = chosen_cell(rows, {**outcome, "model": case})
        cell = {**{k: chosen[k] for k in ("nbeta_factor", "localization", "step_size",
                                          "num_steps", "num_burnin", "nbeta", "num_chains",
                                          "batch_size")}, "kind": "key"}
        keyed = [run_cell(estimate, cell, d, key, cache, case) for key in (1, 2)]
        rows = pd.concat([rows, pd.DataFrame(keyed)], ignore_index=True)
        key_llcs = [outcome["llc"], *(r["llc"] for r in keyed)]
        add(case, "dln", rows, verdict, outcome, {
            "num_sampled": d, "true_llc": truth, "key_llcs": key_llcs,
            "max_key_error": float(max(abs(v - truth) / truth for v in key_llcs)),
            "slope": nbeta_slope(rows, grid.base_localization)})

    estimates, outcomes = pd.concat(estimates, ignore_index=True), pd.DataFrame(outcomes)
    ladder = ladder_table(estimates, outcomes, scale, cache, progress)
    return ({"estimates": estimates, "verdicts": pd.concat(verdicts, ignore_index=True),
             "outcomes": outcomes, "ladder": ladder},
            {"rule": rule_settings(), "ladder": ladder_settings(scale),
             "policy_grid": grid_record(POLICY_GRIDS[scale]),
             "dln_grid": grid_record(DLN_GRIDS[scale]), "dln_cases": {
                 k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                 for k, v in DLN_CASES.items() if k in DLN_STUDY_CASES[scale]},
             "dln_nbeta0": DLN_NBETA0, "dln_num_data": DLN_NUM_DATA,
             "craftax_manifest_sha256": _sha(Path(craftax) / "manifest.json")})


def _in_context(estimate: Callable[..., LLCResult], context: str, cell: dict[str, Any],
                key: jax.Array) -> LLCResult:
    return estimate(cell, key, context)


def _sha(path: Path) -> str:
    return sha256_file(path)


def quadratic_sensitivity(curvatures: Any, nbeta: float, localization: float) -> float:
    """E[nβ (L − L*)] for L(w) = ½ Σ h_i w_i² under exp(−nβ L − γ/2 ‖w‖²): ½ Σ nβh / (nβh + γ).

    The closed form of λ̂ for a quadratic loss: d/2 when every nβh ≫ γ (a learning coefficient),
    and a count of the directions resolved at the scale γ/nβ otherwise.
    """
    h = np.asarray(curvatures, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ConfigError(f"curvatures of shape {h.shape} is not allowed: need a non-empty 1-d "
                          "array of finite numbers >= 0")
    if not (nbeta > 0 and localization >= 0):
        raise ConfigError(f"nbeta={nbeta!r}, localization={localization!r} is not allowed: need "
                          "nbeta > 0 and localization >= 0")
    resolved = nbeta * h
    with np.errstate(invalid="ignore"):
        share = np.where(resolved > 0, resolved / (resolved + localization), 0.0)
    return float(0.5 * share.sum())


def calibration_slopes(calibration: pd.DataFrame, step_size: float) -> pd.Series:
    """Per checkpoint of a `devrl.measures.policy_llc` calibration sweep, d log λ̂ / d log nβ over
    its nβ factors at one step size (ε fixed while nβ changes, as that sweep was run)."""
    rows = calibration[np.isclose(calibration["step_size"], step_size)
                       & ~calibration["diverged"].astype(bool)]
    return rows.groupby("update")[["nbeta", "llc"]].apply(
        lambda c: float(np.polyfit(np.log(c["nbeta"]), np.log(c["llc"]), 1)[0]))


def summary_numbers(estimates: pd.DataFrame, verdicts: pd.DataFrame, outcomes: pd.DataFrame,
                    manifest: dict[str, Any]) -> dict[str, float]:
    """The numbers the regime chapter quotes, from the three tables of the data set."""
    grid = manifest["policy_grid"]
    policy = outcomes[outcomes["family"] == "policy"]
    dln = outcomes[outcomes["family"] == "dln"]
    cells = verdicts[verdicts["family"] == "policy"]
    rows = estimates[estimates["family"] == "policy"]
    gridrows = rows[rows["kind"] == "grid"]
    base = gridrows[(gridrows["nbeta_factor"] == grid["base_factor"])
                    & (gridrows["localization"] == grid["base_localization"])].set_index("model")
    gammas = sorted(gridrows["localization"].unique())
    at_factor = gridrows[gridrows["nbeta_factor"] == grid["base_factor"]].pivot_table(
        index="model", columns="localization", values="llc")
    slopes = {g: pd.Series({model: nbeta_slope(group, g)
                            for model, group in gridrows.groupby("model")}) for g in gammas}
    longer = rows[rows["kind"] == "longer"].set_index("model")
    longer_change = longer["llc"] / base["llc"].reindex(longer.index) - 1
    steps = rows[rows["kind"] == "step"]
    contexts = rows[rows["kind"] == "context"]
    ratio = (base["llc"].reindex(contexts["model"]).to_numpy() / contexts["llc"].to_numpy())
    spread = contexts.groupby("model")["llc"].agg(lambda v: (v.max() - v.min()) / v.mean())
    singular = dln[dln["model"].map(lambda m: is_singular(manifest, m))]
    chosen = dln[dln["cell_passed"]]
    drows = estimates[(estimates["family"] == "dln") & (estimates["kind"] == "longer")]
    numbers = {
        "checkpoints": len(policy), "cells": len(cells), "cells-passing": int(cells["passes"].sum()),
        "criteria": len(CRITERIA),
        "criteria-failing": int(sum(not cells[c].all() for c in CRITERIA)),
        "passed": int(policy["passed"].sum()),
        "nbeta-range": gridrows["nbeta"].max() / gridrows["nbeta"].min(),
        "gamma-low": gammas[0], "gamma-high": gammas[-1],
        "slope-base-min": slopes[grid["base_localization"]].min(),
        "slope-base-max": slopes[grid["base_localization"]].max(),
        "slope-low-gamma-min": slopes[gammas[0]].min(),
        "slope-low-gamma-max": slopes[gammas[0]].max(),
        "gamma-ratio-min": (at_factor[gammas[0]] / at_factor[grid["base_localization"]]).min(),
        "gamma-ratio-max": (at_factor[gammas[0]] / at_factor[grid["base_localization"]]).max(),
        "high-gamma-ratio-min": (at_factor[gammas[-1]] / at_factor[grid["base_localization"]]).min(),
        "high-gamma-ratio-max": (at_factor[gammas[-1]] / at_factor[grid["base_localization"]]).max(),
        "low-gamma-max-drift": gridrows[gridrows["localization"] == gammas[0]]["drift"].abs().max(),
        "distance-ratio-min": (base["mean_distance"] / base["prior_radius"]).min(),
        "distance-ratio-max": (base["mean_distance"] / base["prior_radius"]).max(),
        "confinement-min": float(base.apply(lambda r: confinement_ratio(
            r, r["localization"]), axis=1).min()),
        "confinement-max": float(base.apply(lambda r: confinement_ratio(
            r, r["localization"]), axis=1).max()),
        "confinement-deviation": 100 * float(base.apply(lambda r: abs(confinement_ratio(
            r, r["localization"]) - 1), axis=1).max()),
        "max-confinement": MAX_CONFINEMENT, "max-change-pct": 100 * MAX_CHANGE,
        "longer-acceptance-min": float(longer["mala_acceptance"].min()),
        "dln-not-judged": int((dln["longer_check"] == "not judged").sum())
        if "longer_check" in dln else 0,
        "longer-change-min": 100 * longer_change.min(),
        "longer-change-max": 100 * longer_change.max(),
        **{f"step-{i}-{name}": value for i, step in enumerate(grid["step_sizes"])
           for name, value in _step_numbers(steps[np.isclose(steps["step_size"], step)],
                                            base, step).items()},
        "cap": float(policy["cap"].iloc[0]), "max-llc": float(gridrows["llc"].max()),
        "dln-models": len(dln), "dln-min-params": int(dln["num_sampled"].min()),
        "dln-max-params": int(dln["num_sampled"].max()),
        "dln-cell-passed": int(dln["cell_passed"].sum()), "dln-passed": int(dln["passed"].sum()),
        "dln-max-key-error": 100 * float(chosen["max_key_error"].max()),
        "dln-singular": len(singular),
        "dln-singular-longer-min": 100 * float(singular["longer_change"].min()),
        "dln-singular-longer-max": 100 * float(singular["longer_change"].max()),
        "dln-longer-acceptance-max": float(drows[drows["model"].isin(singular["model"])][
            "mala_acceptance"].max()),
    }
    if len(contexts):
        numbers.update({"context-ratio-min": float(ratio.min()),
                        "context-ratio-max": float(ratio.max()),
                        "context-spread-max": 100 * float(spread.max())})
    return numbers


def _step_numbers(steps: pd.DataFrame, base: pd.DataFrame, step: float) -> dict[str, float]:
    ratio = steps.set_index("model")["llc"] / base["llc"]
    return {"size": step, "acceptance-min": float(steps["mala_acceptance"].min()),
            "acceptance-max": float(steps["mala_acceptance"].max()),
            "ratio-min": float(ratio.min()), "ratio-max": float(ratio.max()),
            "diverged": int(steps["diverged"].sum())}


def context_ratios(llc: pd.DataFrame) -> pd.Series:
    """Per (seed, checkpoint) of a `devrl.measures.policy_llc` table, the whole probe set's λ̂ over
    the mean of the plant contexts' (each context at the nβ of its own n, as that table has
    them)."""
    detail = llc[llc["kind"].isin(["all", "context"]) & llc["detail"]]
    whole = detail[detail["kind"] == "all"].set_index(["seed", "update"])["llc"]
    parts = detail[detail["kind"] == "context"].groupby(["seed", "update"])["llc"].mean()
    return (whole / parts).dropna()
