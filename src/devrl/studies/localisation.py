"""Where behaviour lives in the network (book/where-behaviour-lives.md): layer reversion, update
localisation and credit by reward source on the exported checkpoints of `data/craftax-<scale>`,
and the credit-routing toy's data set.

The measures themselves (`revert`, `update_stats`, `credit_split`, ...) are
`devrl.measures.localisation`'s; this module builds the study's data set from them
(`study_tables`), opens it for the notebooks (`localisation_data`, `toy_credit_data`), and
summarises and judges it (`*_summary`, `verdicts`, the null of the specialisation index).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.core.config import config_from_dict
from devrl.core.envs import ACTION_NAMES, CONTEXTS, EPISODE_FIELDS, PLACE_PLANT
from devrl.core.networks import initial_hidden, with_zeros_for_missing
from devrl.core.ppo import make_network
from devrl.datasets import (
    check_seeds,
    common_probe,
    control_checkpoints,
    craftax_data,
    craftax_source,
    data_root,
    reference_updates,
    seeded_table_set,
    table_set,
)
from devrl.measures.behaviour import make_episode_runner, make_probe_policy
from devrl.measures.localisation import (
    FLOAT16_FLOOR,
    TOLERANCES,
    actor_layers,
    alignment,
    credit_split,
    credit_table,
    layer_subsets,
    revert,
    source_names,
    specialisation_index,
    update_stats,
)
from devrl.measures.verdicts import word
from devrl.runs.rundir import sha256_file
from devrl.toys import credit as credit_toy

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.measures.verdicts import status, statuses  # noqa: F401

# ------------------------------------------------------------------ the study on the Craftax runs
# The committed data set data/craftax-<scale> holds each seed's actor at EXPORT_CHECKPOINTS
# log-spaced updates (float16): the study reads those, and says so; denser checkpoints would
# need the runs retrained with the same code.
REFERENCES = ("init", "before", "peak")
REVERSION_SEED = 20_241  # the same worlds and sampling keys for every reverted network
CREDIT_SEED = 5_003
LOCALISATION_SETTINGS: dict[str, dict[str, int]] = {
    "smoke": {"episodes": 2, "max_steps": 50, "credit_envs": 8, "credit_steps": 32},
    "cpu": {"episodes": 32, "max_steps": 3000, "credit_envs": 64, "credit_steps": 256},
    "paper": {"episodes": 64, "max_steps": 10000, "credit_envs": 256, "credit_steps": 256},
}


def subset_name(subset: Sequence[str]) -> str:
    return "+".join(subset) if subset else "none"


def kl_rows(target: np.ndarray, probs: np.ndarray, contexts: np.ndarray) -> list[dict[str, Any]]:
    """Per plant context: mean KL(target || probs) over its states, and P(PLACE_PLANT) of both."""
    p = np.clip(np.asarray(target, np.float64), 1e-12, 1.0)
    q = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    rows = []
    for c, name in enumerate(CONTEXTS):
        mask = contexts == c
        if mask.any():
            rows.append({"context": name, "states": int(mask.sum()), "kl": float(kl[mask].mean()),
                         "p_place_plant": float(q[mask, PLACE_PLANT].mean()),
                         "p_place_plant_target": float(p[mask, PLACE_PLANT].mean())})
    return rows


def reversion_tables(config, checkpoints: dict[int, Any], references: dict[str, int],
                     probe: dict[str, np.ndarray], episodes: int, max_steps: int,
                     episode_targets: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each reference (name -> update), each later checkpoint (target) and every subset of
    the actor's layers: the target with those layers reverted to the reference. Probe table:
    per plant context, KL(target || reverted) and P(PLACE_PLANT). Episode table (targets in
    `episode_targets` only): means over fixed-seed episodes of return, plants placed, place
    attempts, their share of actions and achievements unlocked; the same worlds for every
    network (common random numbers)."""
    network = make_network(config, len(ACTION_NAMES))
    obs = np.asarray(probe["obs"], np.float32)[:, None]  # windows of 1: feedforward
    first = np.ones(obs.shape[:2], bool)
    hidden = initial_hidden(obs.shape[0], 0)

    def full(params):
        return with_zeros_for_missing(network, params, hidden, np.swapaxes(obs, 0, 1),
                                      np.swapaxes(first, 0, 1))

    policy = make_probe_policy(config)
    runner = make_episode_runner(config, episodes, max_steps)
    key = jax.random.PRNGKey(REVERSION_SEED)
    fields = list(EPISODE_FIELDS)
    achievements = [i for i, f in enumerate(fields) if f.startswith("achievement_")]
    probe_rows, episode_rows = [], []
    for reference, ref_update in references.items():
        ref = checkpoints[ref_update]
        for target in sorted(u for u in checkpoints if u > ref_update):
            params = checkpoints[target]
            target_probs = np.asarray(policy(full(params), obs, first))
            for subset in layer_subsets(actor_layers(params)):
                reverted = full(revert(params, ref, subset))
                probs = np.asarray(policy(reverted, obs, first))
                keys = {"reference": reference, "reference_update": ref_update,
                        "target": target, "subset": subset_name(subset),
                        "layers_reverted": len(subset)}
                probe_rows += [{**keys, **row} for row in kl_rows(target_probs, probs,
                                                                  probe["context"])]
                if target in episode_targets:
                    record, _ = jax.device_get(runner(reverted, key))
                    length = np.clip(record[:, fields.index("episode_length")], 1, None)
                    attempts = record[:, fields.index("place_attempts")]
                    episode_rows.append({
                        **keys, "episodes": len(record),
                        "episode_return": float(record[:, fields.index("episode_return")].mean()),
                        "plants_placed": float(record[:, fields.index("plants_placed")].mean()),
                        "place_attempts": float(attempts.mean()),
                        "place_attempt_share": float((attempts / length).mean()),
                        "achievements": float(record[:, achievements].sum(1).mean()),
                        "episode_length": float(length.mean())})
    return pd.DataFrame(probe_rows), pd.DataFrame(episode_rows)


def localisation_table(checkpoints: dict[int, Any]) -> pd.DataFrame:
    """`update_stats` between consecutive checkpoints (`kind` consecutive) and from the first
    checkpoint to each later one (`kind` from_init), with the updates in between."""
    updates = sorted(checkpoints)
    frames = []
    for kind, pairs in (("consecutive", list(zip(updates[:-1], updates[1:]))),
                        ("from_init", [(updates[0], u) for u in updates[1:]])):
        for a, b in pairs:
            frames.append(update_stats(checkpoints[a], checkpoints[b]).assign(
                kind=kind, update_from=a, update_to=b, updates_between=b - a))
    return pd.concat(frames, ignore_index=True)


def credit_tables(config, checkpoints: dict[int, Any], envs: int, steps: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """At each checkpoint: `credit_table` of the REINFORCE update split by reward source, with
    each source's reward events in the rollout (`events`, `reward`), and the cosine alignment of
    every pair of sources with a non-zero update, per hidden layer."""
    names = list(source_names())
    tables, aligned = [], []
    for update in sorted(checkpoints):
        key = jax.random.fold_in(jax.random.PRNGKey(CREDIT_SEED), update)
        parts, rollout = credit_split(config, checkpoints[update], envs, steps, key)
        sources = np.asarray(rollout["sources"])
        table = credit_table(parts, names).assign(update=update)
        table["events"] = table["source"].map(dict(zip(names, (sources != 0).sum((0, 1)))))
        table["reward"] = table["source"].map(dict(zip(names, sources.sum((0, 1)))))
        tables.append(table)
        live = [i for i in range(len(names)) if np.any(sources[..., i] != 0)]
        for layer in actor_layers(parts[0]):
            if layer == "actor_out":
                continue
            cosine = alignment([parts[i] for i in live], layer)
            for a, b in itertools.combinations(range(len(live)), 2):
                aligned.append({"update": update, "layer": layer, "source_a": names[live[a]],
                                "source_b": names[live[b]], "cosine": float(cosine[a, b])})
    return (pd.concat(tables, ignore_index=True),
            pd.DataFrame(aligned, columns=["update", "layer", "source_a", "source_b", "cosine"]))


def study_tables(scale: str, control, progress=print
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Reversion, update localisation and credit by reward source on the exported actor
    checkpoints of the Craftax data set `control` (datasets.CraftaxData), per seed."""
    if scale not in LOCALISATION_SETTINGS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of "
                          f"{', '.join(LOCALISATION_SETTINGS)}")
    settings = LOCALISATION_SETTINGS[scale]
    config = config_from_dict(control.manifest["runs"][0]["config"])
    probe = common_probe(control.path)
    out: dict[str, list[pd.DataFrame]] = {n: [] for n in (
        "references", "reversion_probe", "reversion_episodes", "updates", "credit",
        "credit_alignment")}
    for seed, loaders in control_checkpoints(control).items():
        checkpoints = {u: load() for u, load in loaders}
        refs = reference_updates(control.episodes[control.episodes["seed"] == seed],
                                 list(checkpoints))
        out["references"].append(pd.DataFrame({"seed": seed, "reference": list(refs),
                                               "update": list(refs.values())}))
        peak = refs.get("peak", max(checkpoints))
        progress(f"localisation: seed {seed}, references {refs}")
        probe_rows, episode_rows = reversion_tables(
            config, checkpoints, refs, probe, settings["episodes"], settings["max_steps"],
            [u for u in checkpoints if u >= peak])
        out["reversion_probe"].append(probe_rows.assign(seed=seed))
        out["reversion_episodes"].append(episode_rows.assign(seed=seed))
        out["updates"].append(localisation_table(checkpoints).assign(seed=seed))
        progress(f"localisation: seed {seed}, credit by reward source")
        credit, aligned = credit_tables(config, checkpoints, settings["credit_envs"],
                                        settings["credit_steps"])
        out["credit"].append(credit.assign(seed=seed))
        out["credit_alignment"].append(aligned.assign(seed=seed))
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in out.items()}
    return tables, {
        "what": "where training changes the actor (devrl.studies.localisation): layer reversion to "
                "earlier checkpoints, update localisation between checkpoints, and the "
                "REINFORCE update split by reward source, on the exported checkpoints",
        "made_by": f"devrl figure layer-reversion -p scale {scale} -p recompute True",
        "settings": {**settings, "tolerances": list(TOLERANCES),
                     "float16_floor": FLOAT16_FLOOR, "reversion_seed": REVERSION_SEED,
                     "credit_seed": CREDIT_SEED},
        "control": {"data_set": control.path.name,
                    "manifest_sha256": sha256_file(control.path / "manifest.json")},
        "runs": [r for r in control.manifest["runs"] if r["seed"] in control.seeds]}


# ------------------------------------------------------------------ summaries for the chapters
EPISODE_MEASURES = ("place_attempt_share", "plants_placed", "place_attempts", "episode_return",
                    "achievements")
CHANGED_TOLERANCE = 1e-2  # the tolerance the chapter's headline numbers use (all are in the data)


def reversion_moves(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per seed, reference, target and layer subset: each episode measure of the reverted
    network minus the same of the intact target (subset none), in columns `d_<measure>`."""
    keys = ["seed", "reference", "target"]
    intact = episodes[episodes["subset"] == "none"].set_index(keys)[list(EPISODE_MEASURES)]
    out = episodes.join(intact, on=keys, rsuffix="_intact")
    for m in EPISODE_MEASURES:
        out[f"d_{m}"] = out[m] - out[f"{m}_intact"]
    return out.drop(columns=[f"{m}_intact" for m in EPISODE_MEASURES])


def move_summary(episodes: pd.DataFrame, measure: str = "place_attempt_share") -> pd.DataFrame:
    """Per reference, target and subset: mean and sd over seeds of the change of `measure` and
    of its size, the seeds averaged, the reference's update in each (`reference_updates`), and
    `rank` (1 = the subset that moves it most at that reference and target, among the subsets of
    the same number of layers)."""
    moves = reversion_moves(episodes)
    moves["size"] = moves[f"d_{measure}"].abs()
    keys = ["reference", "target", "subset", "layers_reverted"]  # a reference's update may
    out = moves.groupby(keys).agg(change=(f"d_{measure}", "mean"),  # differ between seeds
                                  change_sd=(f"d_{measure}", "std"), size=("size", "mean"),
                                  seeds=("seed", "nunique"),
                                  reference_updates=("reference_update", _updates)).reset_index()
    out["rank"] = out.groupby(["reference", "target", "layers_reverted"])["size"].rank(
        ascending=False, method="min")
    return out


def probe_summary(probe: pd.DataFrame) -> pd.DataFrame:
    """Per reference, target, subset and context: mean over seeds of KL(target || reverted) and
    of the change of P(PLACE_PLANT)."""
    frame = probe.assign(d_p_place_plant=probe["p_place_plant"] - probe["p_place_plant_target"])
    keys = ["reference", "target", "subset", "layers_reverted", "context"]
    return frame.groupby(keys).agg(kl=("kl", "mean"), kl_sd=("kl", "std"),
                                   d_p_place_plant=("d_p_place_plant", "mean"),
                                   seeds=("seed", "nunique"),
                                   reference_updates=("reference_update", _updates)).reset_index()


def _updates(values: pd.Series) -> str:
    """The distinct updates of a reference over seeds, e.g. "1" or "1/3"."""
    return "/".join(str(int(u)) for u in sorted(set(values)))


def changed_summary(updates: pd.DataFrame, kind: str = "consecutive") -> pd.DataFrame:
    """Per checkpoint pair, layer and tolerance: means over seeds of the fraction changed, its
    null, and the effective rank of the update relative to its null's."""
    frame = updates[updates["kind"] == kind].assign(
        rank_ratio=lambda f: f["effective_rank"] / f["null_effective_rank"])
    keys = ["update_from", "update_to", "layer", "tolerance", "below_float16"]
    return frame.groupby(keys).agg(
        changed=("changed", "mean"), changed_sd=("changed", "std"),
        null_changed=("null_changed", "mean"), effective_rank=("effective_rank", "mean"),
        null_effective_rank=("null_effective_rank", "mean"), rank_ratio=("rank_ratio", "mean"),
        relative_norm=("relative_norm", "mean"), seeds=("seed", "nunique")).reset_index()


def credit_summary(credit: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and hidden layer: mean and sd over seeds of the specialisation index, the
    share of the update's squared norm from `other` (health and repeats) and from achievements,
    and how many sources paid anything in the rollout."""
    frame = credit.assign(is_other=credit["source"] == "other")
    per_run = frame.groupby(["seed", "update", "layer"]).apply(
        lambda g: pd.Series({
            "specialisation": g["specialisation"].iloc[0],
            "other_share": g.loc[g["is_other"], "norm_share"].sum(),
            "achievement_share": g.loc[~g["is_other"], "norm_share"].sum(),
            "sources_paid": int((g["events"] > 0).sum())}), include_groups=False).reset_index()
    return per_run.groupby(["update", "layer"]).agg(
        specialisation=("specialisation", "mean"), specialisation_sd=("specialisation", "std"),
        other_share=("other_share", "mean"), achievement_share=("achievement_share", "mean"),
        sources_paid=("sources_paid", "mean"), seeds=("seed", "nunique")).reset_index()


# The three predictions of book/where-behaviour-lives.md were written before any of its measures
# ran on the agents (tests); the null for prediction 3 and its verdict came after the results
# (exploratory). devrl.measures.verdicts gives each its status.
PREDICTION_KIND = {"p1": "test", "p2": "test", "p3": "test", "null": "exploratory"}
SPECIALISATION_THRESHOLD = 0.2  # prediction 3's bound on the hidden layers' index


def verdicts(data) -> dict[str, str]:
    """The predictions of book/where-behaviour-lives.md, each judged by a fixed rule on the data
    (studies.localisation.LocalisationData): "held", "did not hold" or "untested"."""
    out = {}
    moves = move_summary(data.reversion_episodes) if len(data.reversion_episodes) else None
    refs = data.references.groupby("reference")["update"].agg(lambda u: u.mode().iloc[0])
    single = moves[moves["layers_reverted"] == 1] if moves is not None else None
    if single is not None and "peak" in refs and len(single):
        def most(target, reference):
            rows = single[(single["target"] == target) & (single["reference"] == reference)]
            return rows.loc[rows["size"].idxmax(), "subset"] if len(rows) else None

        peak, last = int(refs["peak"]), int(single["target"].max())
        at_peak = [most(peak, r) for r in ("init", "before") if r in refs]
        at_end = [most(last, r) for r in refs.index if r != "peak" or last > peak]
        hidden = "+".join(h for h in sorted(set(single["subset"]) - {"actor_out"}))
        below = []
        for (reference, target), rows in moves.groupby(["reference", "target"]):
            sizes = rows.set_index("subset")["size"]
            if hidden in sizes and "actor_out" in sizes:
                below.append(sizes[hidden] < sizes["actor_out"])
        # 1. the output layer alone moves the share most at the peak (references init and
        # before), the first hidden layer at the end (every reference), and reverting every
        # hidden layer moves it less than reverting the output layer alone (every pair).
        out["p1"] = word(bool(all(m == "actor_out" for m in at_peak)
                              and all(m == "actor_0" for m in at_end) and below and all(below)))
        out["p1-peak"] = ", ".join(str(m) for m in at_peak)
        out["p1-end"] = ", ".join(str(m) for m in at_end)
    else:
        out["p1"] = word(None)
    # 2. at the 1e-2 tolerance, every layer of every consecutive pair has > 90% of its weights
    # changed and within 0.1 of the null's fraction; the rank ratio (update / null) of the output
    # layer below 0.5 and of every hidden layer above 0.8 (means over pairs); and the mean rank
    # ratio over layers lower at the last pair than at the first.
    changed = changed_summary(data.updates)
    at = changed[np.isclose(changed["tolerance"], CHANGED_TOLERANCE)]
    if len(at):
        dense = bool((at["changed"] > 0.9).all()
                     and ((at["changed"] - at["null_changed"]).abs() < 0.1).all())
        ratio = at.groupby("layer")["rank_ratio"].mean()
        shape = bool(ratio.get("actor_out", np.nan) < 0.5
                     and (ratio.drop("actor_out", errors="ignore") > 0.8).all())
        course = at.groupby("update_to")["rank_ratio"].mean().sort_index()
        falls = bool(len(course) > 1 and course.iloc[-1] < course.iloc[0])
        out["p2"] = word(dense and shape and falls)
        out["p2-dense"], out["p2-shape"], out["p2-falls"] = (word(dense), word(shape),
                                                             word(falls))
    else:
        out["p2"] = word(None)
    # 3. the hidden layers' specialisation index below 0.2 at every checkpoint (mean over
    # seeds); `other` carries most of the squared norm at the first checkpoint, achievements at
    # the last (means over hidden layers).
    credit = credit_summary(data.credit) if len(data.credit) else None
    if credit is not None and len(credit):
        low = bool((credit["specialisation"].dropna() < SPECIALISATION_THRESHOLD).all())
        first, last = credit["update"].min(), credit["update"].max()
        early = credit[credit["update"] == first]["other_share"].mean() > 0.5
        late = credit[credit["update"] == last]["achievement_share"].mean() > 0.5
        out["p3"] = word(bool(low and early and late))
        out["p3-low"], out["p3-early"], out["p3-late"] = word(low), word(early), word(late)
    else:
        out["p3"] = word(None)
    return out


# ------------------------------------------------------------------ a null for the index
# The specialisation index of gradients that share nothing but their event counts and norms:
# each source's update on a layer is the sum of its k reward events' contributions, each
# loading every unit with an independent random weight (the unit's energy a χ² with k degrees
# of freedom; equal gains across units). Written on 2026-12-06, after the credit data had been
# seen, so the comparison against it is exploratory.
NULL_DRAWS = 200
NULL_SEED = 7_001
NULL_QUANTILE = 0.95


def specialisation_null(events: Sequence[int], norm_shares: Sequence[float], units: int,
                        draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> np.ndarray:
    """`draws` specialisation indices of random per-source unit profiles (see above), weighted
    like `credit_table`'s by the square root of each source's gradient norm share."""
    if units < 1 or draws < 1:
        raise ConfigError(f"units={units!r}, draws={draws!r} is not allowed: both must be >= 1")
    rng = np.random.default_rng(seed)
    counts = np.asarray(events, int)
    weights = np.sqrt(np.asarray(norm_shares, float))
    out = np.empty(draws)
    for i in range(draws):
        profiles = np.zeros((len(counts), units))
        for s, k in enumerate(counts):
            if k > 0 and weights[s] > 0:
                energy = rng.chisquare(k, units)
                profiles[s] = energy / energy.sum()
        out[i] = specialisation_index(profiles, weights)
    return out


def specialisation_against_null(credit: pd.DataFrame, units: int) -> pd.DataFrame:
    """Per (seed, checkpoint, hidden layer) of the credit table: the observed index, the null's
    mean and NULL_QUANTILE quantile for the same event counts and norm shares, and `above`:
    whether the observed index exceeds that quantile (the sources specialise beyond chance)."""
    rows = []
    for (seed, update, layer), group in credit.groupby(["seed", "update", "layer"]):
        null = specialisation_null(group["events"].to_numpy(), group["norm_share"].to_numpy(),
                                   units, seed=NULL_SEED + int(seed))
        observed = float(group["specialisation"].iloc[0])
        finite = null[np.isfinite(null)]
        quantile = float(np.quantile(finite, NULL_QUANTILE)) if len(finite) else float("nan")
        rows.append({"seed": seed, "update": update, "layer": layer, "observed": observed,
                     "null_mean": float(finite.mean()) if len(finite) else float("nan"),
                     "null_quantile": quantile,
                     "above": bool(np.isfinite(observed) and observed > quantile)})
    return pd.DataFrame(rows)


def null_verdict(against: pd.DataFrame) -> dict[str, Any]:
    """The credit prediction's "achievement sources load the same units", judged against the
    null: held where no (seed, checkpoint, layer) index exceeds the null's quantile."""
    judged = against.dropna(subset=["observed", "null_quantile"])
    above = int(judged["above"].sum())
    first = judged[judged["update"] == judged["update"].min()]
    vacuous = bool(judged["null_quantile"].max() < SPECIALISATION_THRESHOLD)
    return {"word": "held" if above == 0 else "did not hold", "above": above,
            "threshold_word": "could therefore not have failed" if vacuous else
                              "could have failed",
            "threshold": SPECIALISATION_THRESHOLD,
            "cases": len(judged),
            "null_quantile_min": float(judged["null_quantile"].min()),
            "null_quantile_max": float(judged["null_quantile"].max()),
            "observed_min": float(judged["observed"].min()),
            "observed_max": float(judged["observed"].max()),
            # the first checkpoint (the untrained network) against the same null: how far the
            # null is from what no learning produces
            "first_ratio_min": float(first["observed"].div(first["null_quantile"]).min()),
            "first_ratio_max": float(first["observed"].div(first["null_quantile"]).max())}


# ------------------------------------------------------------------ the data set, for the notebooks
@dataclass(frozen=True)
class LocalisationData:
    """Where training changes the actor (`data/localisation-<scale>/`,
    `devrl.studies.localisation`)."""

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
        craftax_source(scale, seeds)
        return study_tables(scale, craftax_data(scale, seeds),
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
        values, runs = credit_toy.routing_table(scale)
        return ({"values": values, "runs": runs}, {
            "what": "credit-routing toy: REINFORCE on three reward sources with each source's "
                    "credit routed to its own region of the network to a degree",
            "made_by": f"devrl figure toy-credit-routing -p scale {scale} -p recompute True",
            "settings": {**credit_toy.CREDIT_SETTINGS[scale],
                         "task": dataclasses.asdict(credit_toy.CreditTask(
                             updates=credit_toy.CREDIT_SETTINGS[scale]["updates"]))}})

    tables, manifest = table_set("toy-credit", scale, recompute, build)
    return ToyCreditData(scale=scale, path=data_root() / f"toy-credit-{scale}",
                         manifest=manifest, **tables)
