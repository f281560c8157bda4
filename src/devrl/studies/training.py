"""Training and behaviour (the book's first part): the PPO runs on Craftax-Classic, their
training curves, the plant overshoot and the context of plant placing.

Its data set is the Craftax data set, which most other studies are built on as well, so it is
opened by `devrl.datasets.craftax_data` (with the shared table helpers `over_seeds`,
`per_checkpoint`, `mean_curve_peaks`, ...), which this module hands on to the part's notebooks;
what only this part's figures need is defined here.
"""

from __future__ import annotations

import pandas as pd

from devrl.measures.verdicts import word

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.core.envs import CONTEXT_LABELS  # noqa: F401
from devrl.datasets import (  # noqa: F401
    bin_updates,
    craftax_data,
    first_reaching,
    mean_curve_peaks,
    over_seeds,
    peak_and_final,
    per_checkpoint,
    plural,
    uniform_action_share,
    with_rates,
)
from devrl.measures.verdicts import status  # noqa: F401


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


# The overshoot as a judged claim, for the findings page. The rule was written on 2026-12-06,
# after the curves had been seen, so it is exploratory (devrl.measures.verdicts).
OVERSHOOT_KIND = "exploratory"
PLANTS_PAID = 1  # plants per episode the reward pays for (the achievement counts once)


def overshoot_verdict(peaks: pd.DataFrame) -> str:
    """"held" when in every seed (`peaks`: `datasets.peak_and_final` of plants placed and place
    attempts per episode) plants placed per episode peak above the PLANTS_PAID the reward pays
    for, and place attempts end below their own peak; "untested" without both measures."""
    by = peaks.set_index(["measure", "seed"])
    if not {"plants_placed", "place_attempts"} <= set(peaks["measure"]):
        return word(None)
    plants, attempts = by.loc["plants_placed"], by.loc["place_attempts"]
    return word(bool((plants["peak"] > PLANTS_PAID).all()
                     and (attempts["final"] < attempts["peak"]).all()))
