"""The feedback-loop toys' data set: the lagoon under three learners, and the fork under a sweep
of exploration rates and unlucky penalties. Settings per scale; all runs vmapped."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from devrl.toys import fork, lagoon

FEEDBACK_SETTINGS: dict[str, dict] = {
    "smoke": {"runs": 4, "lagoon_updates": 60, "perturb_at": 30, "lagoon_episodes": 4,
              "power_ups": (0.0, 0.3), "fork_episodes": 40, "epsilons": (0.05, 0.2),
              "unlucky": (0.0, 1.0)},
    "cpu": {"runs": 64, "lagoon_updates": 600, "perturb_at": 200, "lagoon_episodes": 16,
            "power_ups": (0.0, 0.15, 0.3), "fork_episodes": 400,
            "epsilons": (0.02, 0.05, 0.1, 0.2, 0.3), "unlucky": (0.0, 0.5, 1.0, 2.0, 4.0)},
    "paper": {"runs": 512, "lagoon_updates": 2000, "perturb_at": 500, "lagoon_episodes": 32,
              "power_ups": (0.0, 0.1, 0.2, 0.3, 0.4), "fork_episodes": 2000,
              "epsilons": (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
              "unlucky": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)},
}
PERTURB = 8.0  # the jump of the lagoon agent's shared steering bias
LAGOON_SEED, FORK_SEED = 11, 12


def lagoon_tables(scale: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per update: mean over runs of each measure; per learner and variant: trapped summary)."""
    s = FEEDBACK_SETTINGS[scale]
    keys = jax.random.split(jax.random.PRNGKey(LAGOON_SEED), s["runs"])
    curves, summaries = [], []
    for power_up in s["power_ups"]:
        env = lagoon.Lagoon(power_up=power_up)
        for learner in lagoon.LEARNERS:
            out = lagoon.runs(env, learner, s["lagoon_updates"], s["lagoon_episodes"], keys,
                              s["perturb_at"], PERTURB)
            trapped = out["lagoon_share"] > 0.5
            frame = pd.DataFrame({
                "update": np.arange(s["lagoon_updates"]),
                "trapped": trapped.mean(axis=0),
                "lagoon_share": out["lagoon_share"].mean(axis=0),
                "laps": out["laps"].mean(axis=0), "return": out["return"].mean(axis=0),
                "moved": out["moved"].mean(axis=0)})
            frame.insert(0, "learner", learner)
            frame.insert(1, "power_up", power_up)
            curves.append(frame)
            after = slice(s["perturb_at"], None)
            laps_trapped = out["laps"][:, after][trapped[:, after]]
            summaries.append({"learner": learner, "power_up": power_up,
                              **lagoon.trapped_summary(out, s["perturb_at"]),
                              "laps_while_trapped": float(laps_trapped.mean())
                              if laps_trapped.size else float("nan")})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(summaries)


def fork_table(scale: str) -> pd.DataFrame:
    """Per (ε, unlucky penalty): how long runs avoid the better branch after the unlucky trip."""
    s = FEEDBACK_SETTINGS[scale]
    keys = jax.random.split(jax.random.PRNGKey(FORK_SEED), s["runs"])
    rows = []
    for epsilon in s["epsilons"]:
        for unlucky in s["unlucky"]:
            out = fork.q_learning_runs(fork.ForkWorld(unlucky=unlucky), s["fork_episodes"],
                                       epsilon, 0.5, keys)
            a = fork.avoidance(out)
            tail = max(1, s["fork_episodes"] // 10)
            rows.append({"epsilon": epsilon, "unlucky": unlucky,
                         "avoided_median": float(np.median(a["avoided_for"])),
                         "avoided_mean": float(np.mean(a["avoided_for"])),
                         "recovered": float(a["recovered"].mean()),
                         "happened": float(a["happened"].mean()),
                         "left_share_end": float((out["branch"][:, -tail:] == 1).mean()),
                         "return_end": float(out["return"][:, -tail:].mean()),
                         "episodes": s["fork_episodes"], "runs": s["runs"]})
    return pd.DataFrame(rows)
