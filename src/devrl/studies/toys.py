"""Motifs and their toy models (book/toy-models.md): the data sets of the toy chapters, built from
the models of `devrl.toys` and opened (or recomputed) for the notebooks.

`toy_plant_data` (the plant-overshoot toy, fitted to the Craftax data set) and
`toy_feedback_data` (the lagoon and the fork). The credit-routing toy belongs to the part on where
behaviour lives: `devrl.studies.localisation.toy_credit_data`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from devrl.datasets import craftax_data, data_root, table_set
from devrl.runs.rundir import sha256_file
from devrl.toys import feedback, plant


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
