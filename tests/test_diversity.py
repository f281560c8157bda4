"""Diversity measures on constructed populations, policies and networks whose diversity is known."""

import itertools

import numpy as np
import pandas as pd
import pytest

from devrl.core.base import ConfigError
from devrl.measures import diversity as dv
from devrl.studies import diversity as study


def test_hill_numbers_of_known_distributions():
    for n in (1, 3, 17):
        assert all(v == pytest.approx(n) for v in dv.hill_numbers(np.ones(n)).values())
    h = dv.hill_numbers([2, 1, 1])  # p = 1/2, 1/4, 1/4
    entropy = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert h[0] == 3 and h[1] == pytest.approx(np.exp(entropy)) and h[2] == pytest.approx(1 / 0.375)
    # Zero abundances do not count; D0 >= D1 >= D2 for an uneven distribution.
    h = dv.hill_numbers([5, 0, 1, 1, 0])
    assert h[0] == 3 and h[0] > h[1] > h[2]
    with pytest.raises(ConfigError, match="counts="):
        dv.hill_numbers([0, 0])


def test_strategy_diversity_and_its_intervals():
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    truth = dv.hill_numbers(p)
    sample = rng.choice(4, size=4000, p=p).astype(str)
    out = dv.strategy_diversity(sample, base=0.5)
    for q in (0, 1, 2):
        for kind in ("", "_asy"):
            assert out[f"d{q}{kind}"] == pytest.approx(truth[q], rel=0.03)
            assert out[f"d{q}{kind}_low"] <= truth[q] + 1e-9 <= out[f"d{q}{kind}_high"] + 2e-9
        # every interval contains its own estimate
        for kind in ("", "_asy", "_cov"):
            assert out[f"d{q}{kind}_low"] <= out[f"d{q}{kind}"] <= out[f"d{q}{kind}_high"]
    assert out["coverage"] == 1.0
    # at a coverage of one half, a sample of one or two individuals of this assemblage
    assert out["m_cov"] in (1, 2) and out["d0_cov"] <= 2
    # Every episode different: richness = episodes, coverage 0.
    unique = dv.strategy_diversity(np.arange(10).astype(str))
    assert unique["d0"] == 10 and unique["coverage"] == 0.0 and "d1_cov" not in unique
    with pytest.raises(ConfigError, match="^strategies of 1 episodes is not allowed"):
        dv.strategy_diversity(np.array(["a"]))
    # Strategies are sets of unlocked achievements.
    labels = dv.strategy_labels(np.array([[1, 0, 1], [1, 0, 1], [0, 1, 0]]))
    assert list(labels) == ["101", "101", "010"]


def test_strategy_table_groups_by_checkpoint():
    episodes = pd.DataFrame({"seed": 0, "update": [0] * 4 + [5] * 4, "env_steps": 0,
                             "achievement_a": [1, 1, 1, 1, 1, 0, 1, 0],
                             "achievement_b": [0, 0, 0, 0, 0, 1, 1, 0]})
    table = dv.strategy_table(episodes)
    assert list(table["d0"]) == [1, 4] and list(table["episodes"]) == [4, 4]


def test_checkpoints_of_one_assemblage_agree_at_equal_coverage_but_not_at_their_own_size():
    """The same strategy distribution sampled with 32 and with 512 episodes: the plug-in richness
    differs by far more than its intervals allow, the numbers at the common coverage C* do not
    (their difference is within the combined 90% half-widths)."""
    rng = np.random.default_rng(11)
    p = 1 / np.arange(1, 31)
    rows = []
    for update, n in ((0, 32), (1, 512)):
        for kind in rng.choice(30, size=n, p=p / p.sum()):
            rows.append({"seed": 0, "update": update, **{f"achievement_{b}": (kind >> b) & 1
                                                         for b in range(5)}})
    table = dv.strategy_table(pd.DataFrame(rows)).set_index("update")
    small, large = table.loc[0], table.loc[1]
    assert small["d0_high"] < large["d0_low"]
    assert table["base_coverage"].nunique() == 1 and small["m_cov"] < large["m_cov"]
    for q in (0, 1, 2):
        width = np.hypot(*[(row[f"d{q}_cov_high"] - row[f"d{q}_cov_low"]) / 2
                           for row in (small, large)])
        assert abs(small[f"d{q}_cov"] - large[f"d{q}_cov"]) <= width, q


def test_jensen_shannon_known_values():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert dv.jensen_shannon(p, p) == pytest.approx([0, 0], abs=1e-12)
    assert dv.jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    # Bernoulli(1) against Bernoulli(1/2): 1/2 KL(1 || 3/4) + 1/2 KL(1/2 || 3/4... ) in closed form.
    a, b = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    m = (a + b) / 2
    closed = 0.5 * np.log2(1 / m[0]) + 0.5 * (0.5 * np.log2(0.5 / m[0]) + 0.5 * np.log2(0.5 / m[1]))
    assert dv.jensen_shannon(a, b) == pytest.approx(closed)
    # Three agents, two identical and one disjoint: mean pairwise JSD = (0 + 1 + 1) / 3.
    one, other = np.tile([1.0, 0.0], (5, 1)), np.tile([0.0, 1.0], (5, 1))
    assert dv.mean_pairwise_jsd([one, one, other]) == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="at least 2"):
        dv.mean_pairwise_jsd([one])


@pytest.mark.parametrize("usage", [[1], [1, 1], [1, 1, 1, 1], [1] * 8, [0.5, 0.25, 0.25]])
def test_participation_ratio_counts_the_circuits_of_a_constructed_network(usage):
    config, params, obs = dv.circuit_network(usage)
    layers, probs = dv.actor_activations(config, 4)(params, obs)
    p = np.asarray(usage) / np.sum(usage)
    expected = 1 / np.sum(p ** 2)  # K for equal usage
    for layer in layers:
        assert dv.participation_ratio(np.asarray(layer)) == pytest.approx(expected, rel=0.05)
    assert np.allclose(np.asarray(probs).sum(-1), 1, atol=1e-5)


def test_participation_ratio_of_simple_clouds():
    rng = np.random.default_rng(1)
    assert dv.participation_ratio(np.ones((50, 3))) == 0.0
    line = rng.standard_normal((500, 1)) * np.array([[1.0, 2.0, -1.0]])
    assert dv.participation_ratio(line) == pytest.approx(1.0)
    iso = rng.standard_normal((20000, 5))
    assert dv.participation_ratio(iso) == pytest.approx(5.0, rel=0.02)


def events_case():
    """Two runs whose measure rises by 1 for three checkpoints from each discovery, flat
    otherwise (30 checkpoints each)."""
    rows, episodes = [], []
    for seed, found in ((0, 10), (1, 20)):
        for update in range(30):
            rows.append({"seed": seed, "update": update,
                         "d1": 1.0 + (found <= update < found + 3)})
            hit = update >= found
            for e in range(10):
                episodes.append({"seed": seed, "update": update, "achievement_new": hit and e < 8,
                                 "achievement_old": True})
    return pd.DataFrame(rows), pd.DataFrame(episodes)


def test_discoveries_and_event_triggered_average():
    measure, episodes = events_case()
    found = dv.discoveries(episodes)
    new = found[found["achievement"] == "new"].set_index("seed")["update"]
    assert new.to_dict() == {0: 10.0, 1: 20.0}
    old = found[found["achievement"] == "old"]
    assert old["update"].isna().all()  # earned from the start, never more often: no discovery
    events = found[found["update"].notna()]
    table = dv.event_triggered(measure, "d1", events, window=3, draws=300)
    assert table["mean"].tolist() == [1.0, 1.0, 1.0]
    assert (table["null_mean"] < 0.3).all() and (table["effect"] > 2).all()
    assert (table["p"] < 0.05).all() and (table["p_local"] < 0.05).all()
    # A measure that ignores the discoveries shows no effect.
    flat = measure.assign(d1=1.0)
    table = dv.event_triggered(flat, "d1", events, window=3, draws=300)
    assert np.allclose(table["mean"], 0) and (table["p"] == 1.0).all()


def constructed_study(no_plant_peak=0.05):
    """Checkpoint, JSD, network and event tables built so that every prediction holds (with
    no_plant's peak PLACE_PLANT share below the control's 0.1 unless changed)."""
    peaks = {"default": 0.10, "no_plant": no_plant_peak, "every_plant": 0.30, "plant_x4": 0.20}
    plants = {"default": 1.3, "no_plant": 0.2, "every_plant": 5.0, "plant_x4": 1.5}
    d1_end = {"default": 4.0, "no_plant": 4.5, "every_plant": 2.0, "plant_x4": 3.0}
    peak_at = {"default": 2, "no_plant": 2, "every_plant": 3, "plant_x4": 1}
    rows, net = [], []
    for variant in study.VARIANT_ORDER:
        for seed in (0, 1):
            for update in range(5):
                share = peaks[variant] if update == peak_at[variant] else peaks[variant] / 2
                if variant == "every_plant" and update == 4:
                    share = peaks[variant]
                d1 = [1.0, 5.0, 6.0, 5.0, d1_end[variant]][update]
                rows.append({"variant": variant, "seed": seed, "update": update,
                             "place_attempt_share": share, "plants_placed": plants[variant],
                             "episode_return": 1.0, "default_return": 1.0, "d1": d1})
                net.append({"variant": variant, "seed": seed, "update": update,
                            "pr_last": d1 + 0.1 * seed})
    jsd = pd.DataFrame({"comparison": "vs_default", "variant": ["no_plant", "every_plant",
                                                                 "plant_x4"],
                        "update": 4, "jsd": [0.01, 0.2, 0.1]})
    events = pd.DataFrame([
        {"variant": "default", "measure": "d1", "offset": 0, "mean": 1.0, "null_mean": 0.2,
         "effect": 3.0, "p": 0.001},
        {"variant": "default", "measure": "d1", "offset": 1, "mean": 1.2, "null_mean": 0.8,
         "effect": 1.0, "p": 0.1},
        {"variant": "all", "measure": "pr_last", "offset": 0, "mean": 0.1, "null_mean": 0.0,
         "effect": 0.2, "p": 0.4}])
    fit = pd.DataFrame({"with_burst": [True, False], "aic": [10.0, 11.0]})
    return pd.DataFrame(rows), jsd, events, pd.DataFrame(net), fit


def test_prediction_verdicts_follow_their_rules():
    checkpoints, jsd, events, network, fit = constructed_study()
    assert study.verdicts(checkpoints, jsd, events, network, fit) == {
        f"p{i}": "held" for i in range(1, 8)}
    table = study.overshoot_table(checkpoints)
    row = table[(table["variant"] == "plant_x4") & (table["seed"] == 0)].iloc[0]
    assert (row["peak_share"], row["peak_update"], row["final_plants"]) == (0.2, 1, 1.5)
    # Each rule can fail.
    checkpoints, jsd, events, network, fit = constructed_study(no_plant_peak=0.5)
    out = study.verdicts(checkpoints, jsd, events, network, fit.assign(aic=[1.0, 11.0]))
    assert out["p2"] == "did not hold" and out["p7"] == "did not hold" and out["p3"] == "held"
    out = study.verdicts(checkpoints, jsd.assign(jsd=[0.3, 0.2, 0.1]), events.assign(p=0.01),
                      network, None)
    assert out["p5"] == "did not hold" and out["p6"] == "did not hold"
    # Prediction 1 judges the excess over the null, not the raw change.
    growing = events.copy()
    growing.loc[1, "null_mean"] = 0.0  # excess 1.2 at the last offset > 0.8 at the discovery
    assert study.verdicts(checkpoints, jsd, growing, network, fit)["p1"] == "did not hold"
    assert out["p7"] == "untested"
    # Without the variants, their predictions are untested, not failed.
    control = checkpoints[checkpoints["variant"] == "default"]
    out = study.verdicts(control, jsd.iloc[:0], events, network, None)
    assert out["p2"] == out["p3"] == out["p4"] == out["p5"] == "untested"


def test_the_local_null_controls_for_an_early_trend():
    """Every measure rises (slope 1) for 20 checkpoints, then stays flat; the discoveries fall in
    the rising phase. Against random times anywhere the discoveries look special; against
    times near them they do not."""
    rows, events = [], []
    for seed in range(3):
        for update in range(40):
            rows.append({"seed": seed, "update": update, "d1": float(min(update, 20))})
        events += [{"seed": seed, "update": float(u)} for u in (8, 10, 12)]
    table = dv.event_triggered(pd.DataFrame(rows), "d1", pd.DataFrame(events), window=2,
                               draws=500)
    assert (table["effect"] > 1.5).all() and (table["p"] < 0.05).all()
    assert (table["effect_local"].fillna(0).abs() < 1).all() and (table["p_local"] > 0.3).all()


def test_leaving_the_discovered_achievement_out_removes_its_own_contribution():
    """Episodes whose only change is the new achievement: D1 jumps at its discovery, D1 of the
    other achievements does not move."""
    rng = np.random.default_rng(3)
    episodes = []
    for update in range(12):
        for e in range(64):
            episodes.append({"variant": "default", "seed": 0, "update": update,
                             "achievement_new": update >= 6 and e % 2 == 0,
                             "achievement_a": bool(rng.integers(2)),
                             "achievement_b": bool(rng.integers(2))})
    episodes = pd.DataFrame(episodes)
    found = dv.discoveries(episodes, by=("variant", "seed"))
    events = found[found["update"].notna()]
    assert events["achievement"].tolist() == ["new"] and events["update"].tolist() == [6.0]
    table = dv.strategy_table(episodes, by=("variant", "seed", "update"))
    assert table.loc[6, "d1"] > 1.7 * table.loc[5, "d1"]  # the new bit alone, nearly 2x
    others = study.others_table(episodes, events)
    assert set(others["achievement"]) == {"new"}
    jump = others.set_index("update")["d1_others"]
    assert abs(jump[6] - jump[5]) < 0.5


def test_jsd_states_are_a_fixed_stratified_sample_of_the_probe():
    contexts = np.repeat([0, 1, 2], [500, 40, 700])
    probe = {"context": contexts, "obs": np.zeros((len(contexts), 1))}
    picked = study.jsd_states(probe, size=300)
    assert np.array_equal(picked, study.jsd_states(probe, size=300))  # fixed
    assert np.all(np.diff(picked) > 0)  # sorted, distinct
    counts = np.bincount(contexts[picked], minlength=3)
    assert list(counts) == [100, 40, 100]  # an equal share, or all a context has
    assert len(study.jsd_states(probe, size=10_000)) == len(contexts)


def _curve(rates: list[float], episodes: int = 64) -> pd.DataFrame:
    """Per-episode successes whose rate at checkpoint i is rates[i] (exactly, by count)."""
    rows = []
    for update, rate in enumerate(rates):
        wins = round(rate * episodes)
        rows += [{"seed": 0, "update": update, "achievement_x": e < wins}
                 for e in range(episodes)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("rates", "expected"), [
    ([0.3] * 10, None),  # starts high, never rises: no discovery
    ([0.3, 0.3, 0.25, 0.35, 0.3, 0.3], None),  # noise around the start
    ([0.0, 0.0, 0.0, 0.5, 0.6, 0.7], 3),  # rises at checkpoint 3
    ([0.25, 0.25, 0.3, 0.7, 0.9, 0.95], 3),  # the plant: a quarter already, then far more
    ([0.0, 0.0, 0.6, 0.0, 0.0, 0.6, 0.7], 5),  # a one-checkpoint blip is not sustained
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.9], None),  # a rise at the last checkpoint: not yet sustained
])
def test_discovery_is_a_sustained_significant_rise_over_the_untrained_rate(rates, expected):
    found = dv.discoveries(_curve(rates)).iloc[0]
    if expected is None:
        assert np.isnan(found["update"])
    else:
        assert found["update"] == expected and found["p"] < dv.DISCOVERY_ALPHA
    assert found["baseline_rate"] == pytest.approx(round(rates[0] * 64) / 64)


def test_a_stricter_level_finds_discoveries_no_earlier():
    rates = [0.05, 0.05, 0.15, 0.2, 0.3, 0.5, 0.6, 0.7]
    at = {alpha: dv.discoveries(_curve(rates), alpha).iloc[0]["update"]
          for alpha in study.DISCOVERY_ALPHAS}
    levels = sorted(study.DISCOVERY_ALPHAS, reverse=True)
    assert all(at[a] <= at[b] for a, b in itertools.pairwise(levels))
    with pytest.raises(ConfigError, match="^alpha=1.5 is not allowed"):
        dv.discoveries(_curve(rates), 1.5)


def test_prose_helpers_name_missing_structures_and_the_kind_of_each_prediction():
    table = pd.DataFrame({"variant": ["no_plant", "default"], "x": [1.234, 2.0],
                          "x_sd": [0.1, 0.25]})
    assert study.listing(table, "x", ".1f") == (
        "default 2.0 ± 0.2, no_plant 1.2 ± 0.1 (every_plant and plant_x4: no run yet)")
    assert study.listing(table, "x", ".2f", sd=False, variants=["no_plant"]) == "no_plant 1.23"
    manifest = {"planned": ["no_plant-seed_0", "no_plant-seed_1", "plant_x4-seed_0"],
                "held": ["no_plant-seed_1"]}
    assert study.holding(manifest) == ("1 of the 3 planned variant runs (no_plant 1 of 2 seeds; "
                                    "plant_x4 0 of 1 seeds)")
    said = study.stated({"p1": "held", "p2": "untested", "p3": "did not hold"})
    assert said == {"p1": "held (exploratory)", "p2": "untested (it would be a test)",
                    "p3": "did not hold (a test)"}
    assert set(study.PREDICTION_KIND) == {f"p{i}" for i in range(1, 8)}
    # p-values of a null of 2,000 draws: none below 1/2000 is resolved
    assert [study.p_text(p, 2000) for p in (0.0, 0.0004, 0.0005, 0.0123)] == [
        "p < 0.0005", "p < 0.0005", "p = 0.001", "p = 0.012"]


# ------------------------------------------------------------------ the committed study
def test_every_published_interval_contains_its_estimate_and_the_base_coverage_is_the_rule():
    """data/diversity-cpu (skipped until it is committed): every 90% interval of the strategy
    Hill numbers contains its point estimate, and every checkpoint is compared at one common
    coverage, which each reaches within twice its number of episodes (the rule for C*)."""
    from pathlib import Path

    from devrl.datasets import open_data_set

    folder = Path(__file__).resolve().parents[1] / "data" / "diversity-cpu"
    if not (folder / "manifest.json").exists():
        pytest.skip("data/diversity-cpu is not committed")
    open_data_set(folder, "cpu")
    table = pd.read_parquet(folder / "checkpoints.parquet")
    checked = 0
    for q in (0, 1, 2):
        for kind in ("", "_asy", "_cov"):
            value = table[f"d{q}{kind}"]
            finite = np.isfinite(value)
            assert (table.loc[finite, f"d{q}{kind}_low"] <= value[finite] + 1e-9).all(), (q, kind)
            assert (value[finite] <= table.loc[finite, f"d{q}{kind}_high"] + 1e-9).all(), (q, kind)
            checked += int(finite.sum())
    assert checked > 0.9 * 9 * len(table)
    assert table["base_coverage"].nunique() == 1
    assert (table["m_cov"] <= 2 * table["episodes"]).all()
