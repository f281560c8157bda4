"""The regime rule of devrl.measures.regime: each criterion on constructed tables, the closed form
of λ̂ for a quadratic loss, and the rule on deep linear networks with known λ."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from devrl.core.base import ConfigError
from devrl.measures import regime
from devrl.measures.llc import estimate_llc

GRID = regime.RegimeGrid(nbeta_factors=(1.0, 4.0), localizations=(1.0, 100.0), base_factor=1.0,
                         base_localization=100.0, step_nbeta=0.02, step_sizes=(1e-3,),
                         num_steps=100, num_chains=2, batch_size=8)


def _table(changes: dict | None = None) -> pd.DataFrame:
    """Grid rows where the cell (nβ×1, γ=100) meets every criterion; `changes` maps
    (factor, γ) → column overrides."""
    rows = []
    for cell in regime.grid_cells(GRID, 10.0):
        row = {**cell, "llc": 50.0, "llc_std": 1.0, "chain_llcs": [49.0, 51.0],
               "init_loss": 1.0, "mala_acceptance": 0.9, "drift": 0.01, "mean_distance": 1.0,
               "num_sampled": 10_000, "diverged": False,
               "prior_radius": math.sqrt(10_000 / cell["localization"]), "key": 0}
        if cell["kind"] == "grid":
            row.update((changes or {}).get((cell["nbeta_factor"], cell["localization"]), {}))
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(table: pd.DataFrame) -> pd.Series:
    verdict = regime.judge(table, GRID)
    return verdict[(verdict["nbeta_factor"] == 1.0) & (verdict["localization"] == 100.0)].iloc[0]


def test_a_cell_meeting_every_criterion_passes():
    row = _verdict(_table())
    assert row["passes"] and row["stable"] and row["nbeta_ok"] and row["gamma_ok"]
    assert row["distance_ratio"] == pytest.approx(0.1)
    assert row["confined"] and row["confinement_ratio"] < 0.2


def test_the_confinement_ratio_is_one_for_loss_free_chains():
    """A cell whose chains lie exactly as far out as SGLD without a loss term fails the
    confinement criterion (the loss does not hold them), whatever √(d/γ) says."""
    from devrl.measures.llc import loss_free_distance

    cell = _table().query("kind == 'grid' and nbeta_factor == 1.0 and localization == 100.0")
    cell = cell.iloc[0]
    free = loss_free_distance(10_000, cell["step_size"], 100.0, int(cell["num_burnin"]),
                              int(cell["num_steps"]))
    row = _verdict(_table({(1.0, 100.0): {"mean_distance": free}}))
    assert row["confinement_ratio"] == pytest.approx(1.0) and not row["confined"]


@pytest.mark.parametrize(("changes", "failing"), [
    ({(1.0, 100.0): {"diverged": True}}, "stable"),
    ({(1.0, 100.0): {"mala_acceptance": 0.3}}, "stable"),
    ({(1.0, 100.0): {"drift": -0.2}}, "stable"),
    ({(4.0, 100.0): {"llc": 56.0}}, "nbeta_ok"),  # +12% over a 4x larger nβ
    ({(4.0, 100.0): {"drift": 0.3}}, "nbeta_ok"),  # the neighbour itself has not levelled off
    ({(1.0, 1.0): {"llc": 44.0}}, "gamma_ok"),  # −12% at the 100x smaller γ
    ({(1.0, 100.0): {"mean_distance": 10.5}}, "confined"),  # about the loss-free distance
])
def test_each_criterion_can_fail(changes, failing):
    row = _verdict(_table(changes))
    assert not row[failing] and not row["passes"]


def test_cells_without_a_neighbour_cannot_pass():
    verdict = regime.judge(_table(), GRID)
    edge = verdict[(verdict["nbeta_factor"] == 4.0) | (verdict["localization"] == 1.0)]
    assert not edge["passes"].any()


def test_the_rule_needs_longer_chains_at_the_same_step_to_agree():
    verdict = regime.judge(_table(), GRID)
    longer = {"nbeta_factor": 1.0, "localization": 100.0, "llc": 54.0, "diverged": False,
              "mala_acceptance": 0.9, "drift": 0.0}
    assert regime.decide(verdict, longer, True)["passed"]
    assert not regime.decide(verdict, {**longer, "llc": 56.0}, True)["passed"]
    assert not regime.decide(verdict, {**longer, "drift": 0.2}, True)["passed"]
    assert not regime.decide(verdict, longer, False)["passed"]
    # longer chains that accept too few steps cannot show convergence, nor its absence
    unstable = regime.decide(verdict, {**longer, "llc": 80.0, "mala_acceptance": 0.2}, True)
    assert not unstable["passed"] and unstable["longer_check"] == "not judged"
    assert regime.decide(verdict, {**longer, "llc": 56.0}, True)["longer_check"] == "moved"


def test_grid_cells_hold_step_times_nbeta_and_scale_chain_length():
    grid = regime.RegimeGrid(nbeta_factors=(1.0, 4.0, 16.0), localizations=(1.0, 100.0),
                             base_factor=1.0, base_localization=1.0, step_nbeta=0.02,
                             step_sizes=(1e-3, 1e-2), num_steps=100, num_chains=2,
                             batch_size=8, skip=((16.0, 100.0),))
    cells = regime.grid_cells(grid, 50.0)
    grid_part = [c for c in cells if c["kind"] == "grid"]
    assert len(grid_part) == 5 and (16.0, 100.0) not in {
        (c["nbeta_factor"], c["localization"]) for c in grid_part}
    for cell in grid_part:
        assert cell["step_size"] * cell["nbeta"] == pytest.approx(0.02)
        assert cell["num_steps"] == round(100 * math.sqrt(cell["nbeta_factor"]))
        assert cell["num_burnin"] == cell["num_steps"] // 2
    assert [c["step_size"] for c in cells if c["kind"] == "step"] == [1e-3, 1e-2]


@pytest.mark.parametrize(("change", "name"), [
    ({"nbeta_factors": (4.0, 1.0)}, "nbeta_factors"), ({"localizations": (1.0,)}, "localizations"),
    ({"base_factor": 2.0}, "base_factor"), ({"base_localization": 3.0}, "base_localization"),
    ({"num_steps": 1}, "num_steps"), ({"step_nbeta": -1.0}, "step_nbeta")])
def test_bad_grids_name_the_setting(change, name):
    import dataclasses

    with pytest.raises(ConfigError, match=rf"^{name}=.* is not allowed"):
        dataclasses.replace(GRID, **change).validate()


def test_bad_problems_name_the_parameter():
    with pytest.raises(ConfigError, match="^case='nope' is not allowed"):
        regime.dln_estimator("nope")
    with pytest.raises(ConfigError, match="^singular_values=.* is not allowed"):
        regime.realisable_dln((4, 3, 4), 2, singular_values=(2.0, 1.0))
    with pytest.raises(ConfigError, match="^curvatures of shape"):
        regime.quadratic_sensitivity([-1.0], 1.0, 1.0)


# ------------------------------------------------------------------ a closed form for λ̂ at γ
def test_quadratic_closed_form_limits():
    h = np.geomspace(1e-4, 1e2, 61)
    assert regime.quadratic_sensitivity(h, 1e9, 1.0) == pytest.approx(len(h) / 2, rel=1e-4)
    assert regime.quadratic_sensitivity(h, 1.0, 0.0) == len(h) / 2
    # While nβh ≪ γ for every direction, it is linear in nβ.
    small = regime.quadratic_sensitivity(h, 1e-6, 1.0)
    assert regime.quadratic_sensitivity(h, 2e-6, 1.0) == pytest.approx(2 * small, rel=1e-3)


def test_sgld_matches_the_quadratic_closed_form_across_gamma():
    """A quadratic loss with curvatures over four decades: λ̂ follows ½ Σ nβh/(nβh + γ) at every
    γ, far from d/2 — the estimator counts the directions resolved at the scale γ/nβ."""
    h = jnp.asarray(np.geomspace(1e-4, 1.0, 400), jnp.float32)
    data = jnp.zeros((8, 1))

    def loss(w, batch):
        return 0.5 * jnp.sum(h * w ** 2) + 0.0 * jnp.sum(batch)

    estimates = []
    for gamma in (3.0, 30.0, 300.0):
        truth = regime.quadratic_sensitivity(np.asarray(h), 100.0, gamma)
        result = estimate_llc(loss, jnp.zeros(400), data, jax.random.PRNGKey(0), nbeta=100.0,
                              localization=gamma, step_size=0.05 / (100.0 + gamma),
                              num_steps=6000, num_burnin=3000, num_chains=4, batch_size=8,
                              draw_loss="full")
        assert result.mean == pytest.approx(truth, rel=0.1), (gamma, result.mean, truth)
        estimates.append(result.mean)
    assert estimates[0] < 0.6 * 200 and estimates[0] > 2 * estimates[2]


# ----------------------------------------------------- the committed study, and the rule on DLNs
DATA = Path(__file__).resolve().parents[1] / "data" / "llc-regime-cpu"


@pytest.fixture(scope="module")
def committed():
    from devrl.datasets import open_data_set

    manifest = open_data_set(DATA, "cpu")
    return ({name: pd.read_parquet(DATA / f"{name}.parquet")
             for name in ("estimates", "verdicts", "outcomes", "ladder")}, manifest)


def test_committed_verdicts_and_outcomes_are_what_the_rule_computes(committed):
    tables, manifest = committed
    grids = {"policy": regime.POLICY_GRIDS["cpu"], "dln": regime.DLN_GRIDS["cpu"]}
    assert manifest["rule"] == regime.rule_settings()
    for model, rows in tables["estimates"].groupby("model"):
        family = rows["family"].iloc[0]
        verdict = regime.judge(rows, grids[family])
        stored = tables["verdicts"][tables["verdicts"]["model"] == model]
        np.testing.assert_array_equal(verdict["passes"].to_numpy(), stored["passes"].to_numpy())
        longer = rows[rows["kind"] == "longer"].iloc[0].to_dict()
        outcome = regime.decide(verdict, longer, bool(verdict["passes"].any()))
        row = tables["outcomes"].set_index("model").loc[model]
        assert outcome["passed"] == row["passed"] and outcome["llc"] == row["llc"], model


def test_the_rule_recovers_known_answers_on_large_deep_linear_networks(committed):
    """At the cell the rule's grid criteria choose, λ̂ is within 15% of λ for every one of 3 chain
    keys, on at least 3 networks of >= 10^4 weights; the regular network also passes the longer
    check. (For the singular ones it is not judged: their longer chains accepted too few
    Metropolis-adjusted steps.)"""
    outcomes = committed[0]["outcomes"]
    dln = outcomes[(outcomes["family"] == "dln") & (outcomes["num_sampled"] >= 10_000)]
    chosen = dln[dln["cell_passed"] & (dln["key_llcs"].map(len) >= 3)]
    errors = {row["model"]: max(abs(v - row["true_llc"]) / row["true_llc"] for v in row["key_llcs"])
              for _, row in chosen.iterrows()}
    assert sum(error <= 0.15 for error in errors.values()) >= 3, errors
    regular = outcomes.set_index("model").loc["dln-100-100-r20"]
    assert regular["passed"] and abs(regular["longer_change"]) <= regime.MAX_CHANGE


def test_the_committed_ladder_runs_the_cells_the_code_prescribes(committed):
    """Every deep linear network's ladder holds exactly `ladder_cells` at the cell its rule chose
    (same steps, step counts and nβ), its rung at the cell's own step and length reproduces the
    stored grid estimate, and the regular network converges."""
    tables, manifest = committed
    assert manifest["ladder"] == regime.ladder_settings("cpu")
    ladder = tables["ladder"]
    for outcome in tables["outcomes"][tables["outcomes"]["family"] == "dln"].to_dict("records"):
        rows = tables["estimates"][tables["estimates"]["model"] == outcome["model"]]
        chosen = regime.chosen_cell(rows, outcome)
        want = pd.DataFrame(regime.ladder_cells(chosen, regime.LADDER_DIVISORS["cpu"]))
        got = ladder[ladder["model"] == outcome["model"]].reset_index(drop=True)
        for column in ("divisor", "length", "num_steps", "num_burnin"):
            np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy())
        for column in ("step_size", "nbeta", "localization"):
            np.testing.assert_allclose(got[column].to_numpy(), want[column].to_numpy())
        own = got[(got["divisor"] == 1) & (got["length"] == 1)].iloc[0]
        assert own["llc"] == pytest.approx(chosen["llc"], rel=1e-6), outcome["model"]
    summary = regime.ladder_summary(ladder, tables["outcomes"], manifest).set_index("model")
    assert summary.loc["dln-100-100-r20", "check"] == "converged"


def test_the_policy_meets_no_cell_of_the_rule(committed):
    verdicts = committed[0]["verdicts"]
    policy = verdicts[verdicts["family"] == "policy"]
    assert len(policy["model"].unique()) >= 3 and not policy["passes"].any()


@pytest.mark.slow
def test_the_committed_dln_estimates_are_reproduced_by_the_code(committed):
    estimates = committed[0]["estimates"]
    for case in ("dln-100-100-r20", "dln-40-80-80-40-r5"):
        estimate, d, _ = regime.dln_estimator(case)
        row = estimates[(estimates["model"] == case) & (estimates["kind"] == "key")
                        & (estimates["key"] == 1)].iloc[0]
        integers = ("num_steps", "num_burnin", "num_chains", "batch_size")
        cell = {k: int(row[k]) if k in integers else float(row[k]) for k in regime.SAMPLER_KEYS}
        again = regime.run_cell(estimate, cell, d, 1)
        assert again["llc"] == pytest.approx(row["llc"], rel=1e-3), case


# ------------------------------------------------------------- long chains at a finer step (ladder)
CHOSEN = {"nbeta_factor": 16.0, "localization": 1.0, "nbeta": 6000.0, "step_size": 4e-6,
          "num_steps": 800, "num_burnin": 400, "num_chains": 2, "batch_size": 200}


def test_ladder_rungs_keep_each_length_s_chain_time_at_every_step():
    cells = regime.ladder_cells(CHOSEN, (1, 4, 16))
    assert len(cells) == 3 * len(regime.LADDER_LENGTHS)
    assert regime.LADDER_LENGTHS == (1, regime.DLN_GRIDS["cpu"].longer_factor)
    for cell in cells:
        time = cell["step_size"] * cell["num_steps"]
        assert time == pytest.approx(CHOSEN["step_size"] * CHOSEN["num_steps"] * cell["length"])
        assert cell["num_burnin"] * 2 == cell["num_steps"]
        assert {cell[k] for k in ("nbeta", "localization")} == {6000.0, 1.0}
    with pytest.raises(ConfigError, match=r"^divisors=\(0,\) is not allowed"):
        regime.ladder_cells(CHOSEN, (0,))


def _ladder(values: dict[tuple[int, int], tuple[float, float]]) -> pd.DataFrame:
    """Ladder rows from {(divisor, length): (λ̂, acceptance)}."""
    return pd.DataFrame([{"divisor": k, "length": n, "llc": llc, "mala_acceptance": acc,
                          "diverged": False} for (k, n), (llc, acc) in values.items()])


def test_the_ladder_judges_chain_length_at_the_largest_step_that_accepts_enough():
    # at the cell's step the long chains accept too few steps and λ̂ doubles; a quarter of the
    # step accepts enough, and there λ̂ holds: the rise was the step's bias
    bias = _ladder({(1, 1): (450, 0.88), (1, 4): (800, 0.28), (4, 1): (440, 0.97),
                    (4, 4): (460, 0.90), (16, 1): (445, 0.99), (16, 4): (700, 0.99)})
    judged = regime.ladder_check(bias)
    assert (judged["check"], judged["divisor"]) == ("converged", 4)
    assert judged["change"] == pytest.approx(460 / 440 - 1)
    # the same at a quarter of the step, but λ̂ still rises by 60%: a drift, not the step
    drift = bias.copy()
    drift.loc[(drift["divisor"] == 4) & (drift["length"] == 4), "llc"] = 704.0
    assert regime.ladder_check(drift)["check"] == "moved"
    # no step where both lengths accept enough, or one diverged: not judged
    low = bias.assign(mala_acceptance=np.where(bias["length"] == 4, 0.3, 0.9))
    assert regime.ladder_check(low)["check"] == "not judged"
    broken = bias.copy()
    broken.loc[(broken["divisor"] == 4) & (broken["length"] == 4), "diverged"] = True
    assert regime.ladder_check(broken)["divisor"] == 16
    # where the cell's own step accepts enough at both lengths, it is judged there
    fine = bias.assign(mala_acceptance=0.9)
    assert (regime.ladder_check(fine)["check"], regime.ladder_check(fine)["divisor"]) \
        == ("moved", 1)
    with pytest.raises(ConfigError, match="^rows is empty"):
        regime.ladder_check(bias.iloc[:0])


def test_on_a_quadratic_loss_the_ladder_converges_to_the_closed_form():
    """A regular (quadratic) loss: λ̂ is the closed form at any chain length once burnt in, so the
    ladder's check is "converged", at the cell's own step."""
    h = jnp.asarray(np.geomspace(1e-2, 1.0, 100), jnp.float32)
    data = jnp.zeros((8, 1))

    def estimate(cell, key):
        return estimate_llc(lambda w, batch: 0.5 * jnp.sum(h * w ** 2) + 0.0 * jnp.sum(batch),
                            jnp.zeros(100), data, key, draw_loss="full", **cell)

    chosen = {"nbeta_factor": 1.0, "localization": 1.0, "nbeta": 100.0,
              "step_size": 0.05 / 101.0, "num_steps": 1500, "num_burnin": 750, "num_chains": 2,
              "batch_size": 8}
    rows = regime.run_ladder(estimate, chosen, (1, 4), 100)
    assert list(zip(rows["divisor"], rows["length"])) == [(1, 1), (1, 4), (4, 1), (4, 4)]
    judged = regime.ladder_check(rows)
    truth = regime.quadratic_sensitivity(np.asarray(h), 100.0, 1.0)
    assert (judged["check"], judged["divisor"]) == ("converged", 1)
    assert judged["longer_llc"] == pytest.approx(truth, rel=0.1)


def test_the_ladder_summary_counts_each_singular_network_under_its_check():
    def rungs(model, values):
        return _ladder(values).assign(model=model, step_size=lambda f: 4e-6 / f["divisor"],
                                      mean_distance=lambda f: 10.0 * f["length"] ** 0.5)

    ladder = pd.concat([
        rungs("deep", {(1, 1): (450, 0.9), (1, 4): (800, 0.3), (4, 1): (440, 0.95),
                       (4, 4): (600, 0.6)}),
        rungs("flat", {(1, 1): (5000, 1.0), (1, 4): (5010, 1.0), (4, 1): (5000, 1.0),
                       (4, 4): (5000, 1.0)}),
        rungs("stuck", {(1, 1): (800, 0.9), (1, 4): (1700, 0.1), (4, 1): (800, 0.9),
                        (4, 4): (1500, 0.4)})], ignore_index=True)
    outcomes = pd.DataFrame({"model": ["deep", "flat", "stuck"], "true_llc": [450, 5000, 800]})
    manifest = {"dln_cases": {"deep": {"widths": [30, 60, 60, 30]}, "flat": {"widths": [100, 100]},
                              "stuck": {"widths": [40, 80, 40]}}}
    summary = regime.ladder_summary(ladder, outcomes, manifest).set_index("model")
    assert list(summary["check"]) == ["moved", "converged", "not judged"]
    assert list(summary["singular"]) == [True, False, True]
    assert summary.loc["deep", "longer_llc_4"] == 600 and summary.loc["deep", "divisor"] == 4
    numbers = regime.ladder_numbers(summary.reset_index())
    assert (numbers["ladder-singular"], numbers["ladder-singular-moved"],
            numbers["ladder-singular-not-judged"], numbers["ladder-singular-converged"]) \
        == (2, 1, 1, 0)
    assert numbers["ladder-change-min"] == pytest.approx(100 * (600 / 440 - 1))
    assert numbers["ladder-distance-growth-max"] == pytest.approx(2.0)
    assert numbers["ladder-change-at-1-max"] == pytest.approx(100 * (1700 / 800 - 1))
    assert numbers["ladder-acceptance-at-4-min"] == pytest.approx(0.4)
    assert numbers["ladder-longer-error-at-4-max"] == pytest.approx(100 * (1500 / 800 - 1))
    assert numbers["ladder-error-at-4-min"] == pytest.approx(100 * (440 / 450 - 1))
