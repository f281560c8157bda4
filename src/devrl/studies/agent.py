"""The agent, shown: the policy in designed stimulus states (`devrl.measures.designed_states`)
over training, and its predictions.

The data set `data/designed-states-<scale>/` holds, for every exported actor checkpoint of every
seed of the Craftax data set, the policy's P(PLACE_PLANT), its most likely action and that
action's probability in each designed state of each of `WORLDS[scale]` worlds (table `policy`),
and each seed's reference checkpoints (table `references`: `datasets.reference_updates`, the
plant overshoot's peak among them).

The predictions (`PREDICTIONS`) and their rules (`verdicts`) were committed on 2026-12-06, before
any designed-state probability was computed; both are tests (`PREDICTION_KIND`). They were
written knowing the probe-set results of the plant-context chapter, which they carry over to
states that isolate the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.core.config import SCALES, config_from_dict
from devrl.core.envs import ACTION_NAMES
from devrl.core.networks import initial_hidden, with_zeros_for_missing
from devrl.core.ppo import make_network
from devrl.datasets import (
    check_seeds,
    control_checkpoints,
    craftax_data,
    craftax_source,
    reference_updates,
    seeded_table_set,
)
from devrl.measures import designed_states as ds
from devrl.measures import episode_film
from devrl.measures.behaviour import make_probe_policy
from devrl.measures.verdicts import word

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.datasets import over_seeds, plural, uniform_action_share  # noqa: F401
from devrl.measures.verdicts import statuses  # noqa: F401

WORLDS = {"smoke": 4, "cpu": 32, "paper": 64}  # worlds per designed state
assert set(WORLDS) == set(SCALES)

FAILING = ("sapling_stone", "sapling_water", "sapling_plant")  # a sapling held, planting fails
SELECTIVITY = 2.0  # prediction 1: how many times the grass state's P must exceed the others'
PREDICTIONS = {
    "p1": "At the last exported checkpoint of every seed, P(PLACE_PLANT) with a sapling facing "
          f"grass (the mean over the worlds) is at least {SELECTIVITY:g} times the largest of "
          "the other four designed states' means.",
    "p2": "In every seed, the mean P(PLACE_PLANT) over the three states where a sapling is held "
          "but planting fails (facing stone, water or a plant) is higher at the seed's plant "
          "overshoot peak than at its last exported checkpoint.",
}
PREDICTION_KIND = {"p1": "test", "p2": "test"}


def policy_over_training(config, checkpoints: dict[int, Any], obs: np.ndarray,
                         index: pd.DataFrame, per_update: int) -> pd.DataFrame:
    """`designed_states.policy_table` at every checkpoint ({update: actor params})."""
    policy = make_probe_policy(config)
    network = make_network(config, len(ACTION_NAMES))
    windows = np.asarray(obs, np.float32)[:, None]  # windows of 1 (a recurrent policy starts
    first = np.ones(windows.shape[:2], bool)       # from its zero state)
    hidden = initial_hidden(windows.shape[0], config.memory)
    frames = []
    for update, params in sorted(checkpoints.items()):
        full = with_zeros_for_missing(network, params, hidden, np.swapaxes(windows, 0, 1),
                                      np.swapaxes(first, 0, 1))  # an actor-only checkpoint
        probs = np.asarray(policy(full, windows, first))
        frames.append(ds.policy_table(probs, index).assign(
            update=update, env_steps=update * per_update))
    return pd.concat(frames, ignore_index=True)


def study_tables(scale: str, control, progress=print
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The designed-states data set from the Craftax data set `control` (datasets.CraftaxData)."""
    if scale not in WORLDS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(WORLDS)}")
    config = config_from_dict(control.manifest["runs"][0]["config"])
    worlds = ds.base_worlds(WORLDS[scale], config.env_name)
    states, index = ds.designed_batch(worlds)
    obs = ds.observations(states, config.env_name)
    policy, references = [], []
    for seed, loaders in control_checkpoints(control).items():
        progress(f"designed states: seed {seed}, {len(loaders)} checkpoints")
        checkpoints = {update: load() for update, load in loaders}
        policy.append(policy_over_training(config, checkpoints, obs, index,
                                           control.env_steps_per_update).assign(seed=seed))
        refs = reference_updates(control.episodes[control.episodes["seed"] == seed],
                                 list(checkpoints))
        refs["last"] = max(checkpoints)
        references.append(pd.DataFrame({"seed": seed, "reference": list(refs),
                                        "update": list(refs.values())}))
    return ({"policy": pd.concat(policy, ignore_index=True),
             "references": pd.concat(references, ignore_index=True)},
            {"worlds": WORLDS[scale], "designed_seed": ds.DESIGNED_SEED,
             "states": {d.name: d.label for d in ds.DESIGNED_STATES},
             "runs": [{"seed": s} for s in control.seeds]})


def state_means(policy: pd.DataFrame) -> pd.DataFrame:
    """Per seed, checkpoint and designed state: P(PLACE_PLANT) averaged over the worlds."""
    return (policy.groupby(["seed", "update", "env_steps", "state"])["p_place_plant"].mean()
            .reset_index())


def verdicts(policy: pd.DataFrame, references: pd.DataFrame) -> dict[str, str]:
    """The predictions of `PREDICTIONS`, each judged on the data: "held", "did not hold", or
    "untested" (a seed without the states or the checkpoints a rule needs)."""
    means = state_means(policy).pivot_table(index=["seed", "update"], columns="state",
                                            values="p_place_plant")
    refs = references.pivot_table(index="seed", columns="reference", values="update")
    needed = set(ds.NAMES)
    out = {}
    if means.empty or not needed <= set(means.columns) or "last" not in refs.columns:
        return {"p1": word(None), "p2": word(None)}
    last = means.loc[[(s, int(u)) for s, u in refs["last"].items()]]
    others = last[[n for n in ds.NAMES if n != "sapling_grass"]].max(axis=1)
    out["p1"] = word(bool((last["sapling_grass"] >= SELECTIVITY * others).all()))
    failing = failing_by_seed(policy, references)
    out["p2"] = word(None if failing.empty else bool((failing["peak"] > failing["last"]).all()))
    return out


def failing_by_seed(policy: pd.DataFrame, references: pd.DataFrame) -> pd.DataFrame:
    """Per seed (index), P(PLACE_PLANT) averaged over the worlds and the FAILING states at the
    seed's overshoot peak (`peak`) and last checkpoint (`last`); empty when a seed lacks either
    reference or a FAILING state is missing."""
    means = state_means(policy).pivot_table(index=["seed", "update"], columns="state",
                                            values="p_place_plant")
    refs = references.pivot_table(index="seed", columns="reference", values="update")
    if (means.empty or not set(FAILING) <= set(means.columns)
            or not {"peak", "last"} <= set(refs.columns) or refs[["peak", "last"]].isna().any().any()):
        return pd.DataFrame(columns=["peak", "last"])
    failing = means[list(FAILING)].mean(axis=1)
    return pd.DataFrame({name: [failing[(s, int(u))] for s, u in refs[name].items()]
                         for name in ("peak", "last")}, index=refs.index)


@dataclass
class DesignedData:
    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    policy: pd.DataFrame
    references: pd.DataFrame

    def describe(self) -> str:
        return (f"{len(ds.DESIGNED_STATES)} designed states × {self.manifest['worlds']} worlds, "
                f"{len(self.seeds)} seeds at the {self.scale} scale")


def designed_states_data(scale: str = "cpu", seeds: list[int] | None = None,
                         recompute: bool = False) -> DesignedData:
    """The designed-states data set (`seeds`, or every seed it holds); with `recompute`, rebuild
    it from the exported checkpoints of `data/craftax-<scale>` (recomputed first if absent)."""
    seeds = check_seeds(seeds)

    def build():
        craftax_source(scale, seeds)
        control = craftax_data(scale, seeds)
        tables, extra = study_tables(scale, control, progress=lambda m: print(m, flush=True))
        return tables, {
            "what": "the policy in designed stimulus states (one plant context each, in fresh "
                    "worlds without creatures) at every exported checkpoint: P(PLACE_PLANT), "
                    "the most likely action and its probability (devrl.measures.designed_states)",
            "made_by": f"devrl figure designed-states -p scale {scale} -p recompute True",
            **extra}

    picked, manifest, folder, chosen = seeded_table_set("designed-states", scale, seeds,
                                                        recompute, build)
    return DesignedData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)


FILM_STEPS = {"smoke": 40, "cpu": 250, "paper": 250}  # steps of an episode recorded at most


@dataclass
class Film:
    """One recorded episode of one checkpoint (`episode_film.record_episode`)."""

    reference: str  # before, peak or last (`datasets.reference_updates`)
    update: int
    env_steps: int
    states: Any
    table: pd.DataFrame


def episode_films(control, seed: int, scale: str) -> list[Film]:
    """One episode of seed `seed` of the Craftax data set `control` (datasets.CraftaxData) at
    each of its checkpoints before, at and after the plant overshoot's peak (the exported
    checkpoints `reference_updates` names `before` and `peak`, and the last), in that order;
    the same world and sampling keys for each, at most `FILM_STEPS[scale]` steps."""
    if scale not in FILM_STEPS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(FILM_STEPS)}")
    loaders = dict(control_checkpoints(control).get(seed, []))
    if not loaders:
        raise ConfigError(f"seed={seed!r} is not allowed: the data set holds seeds "
                          f"{control.seeds}")
    config = config_from_dict(control.manifest["runs"][0]["config"])
    refs = reference_updates(control.episodes[control.episodes["seed"] == seed], list(loaders))
    chosen = {name: refs[name] for name in ("before", "peak") if name in refs}
    chosen["last"] = max(loaders)
    films = []
    for name, update in chosen.items():
        states, table = episode_film.record_episode(config, loaders[update](), FILM_STEPS[scale])
        films.append(Film(name, update, update * control.env_steps_per_update, states, table))
    return films


def film_summary(films: list[Film]) -> pd.DataFrame:
    """Per film: its checkpoint, the steps recorded, whether the episode ended in them,
    PLACE_PLANT attempts, saplings planted, the steps with a sapling facing grass and the
    reward collected."""
    from devrl.core.envs import CONTEXTS

    return pd.DataFrame([{
        "checkpoint": f.reference, "env steps": f.env_steps, "steps": len(f.table),
        "ended": bool(f.table["done"].any()),
        "PLACE_PLANT attempts": int((f.table["action"] == "place_plant").sum()),
        "planted": int(f.table["planted"].sum()),
        "steps with a sapling facing grass": int((f.table["context"] == CONTEXTS[0]).sum()),
        "reward": float(f.table["reward"].sum())} for f in films])
