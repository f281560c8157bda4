"""Training and behaviour (the book's first part): the PPO runs on Craftax-Classic, their
training curves, the plant overshoot and the context of plant placing.

Its data set is the Craftax data set, which most other studies are built on as well, so it is
opened by `devrl.datasets.craftax_data` (with the shared table helpers `over_seeds`,
`per_checkpoint`, `mean_curve_peaks`, ...); what only this part's figures need is here.
"""

from __future__ import annotations

import pandas as pd


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
