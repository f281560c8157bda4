"""The policy LLC: the self-distillation loss, the variants, the calibration rule and the data
set it writes (on a tiny untrained network and a synthetic probe set: seconds, no training)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from devrl.core.base import ConfigError
from devrl.core.config import TrainConfig
from devrl.core.envs import ACTION_NAMES, CONTEXTS
from devrl.core.ppo import make_network
from devrl.measures.policy_llc import (
    CHECK_STEPS_FACTOR,
    LLC_SETTINGS,
    MAX_DRIFT,
    MIN_ACCEPTANCE,
    actor_params,
    check_step_size,
    choose_step_size,
    distillation_data,
    estimate_variant,
    log_probs,
    loss_for,
    trace_drift,
    variants,
)

CONFIG = TrainConfig(width=16, depth=2, memory=0)
OBS_DIM = 12


def _problem(config: TrainConfig = CONFIG, per_context: int = 6, window: int = 1):
    network = make_network(config, len(ACTION_NAMES))
    key = jax.random.PRNGKey(3)
    n = per_context * len(CONTEXTS)
    obs = jax.random.normal(key, (n, window, OBS_DIM))
    first = np.zeros((n, window), bool)
    first[:, 0] = True
    params = network.init(key, jnp.zeros((n, config.memory)), jnp.swapaxes(obs, 0, 1),
                          jnp.swapaxes(jnp.asarray(first), 0, 1))
    # Scale the output layer up so the policy is far from uniform (as a trained one is).
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 300 if "actor_out" in str(path) else x, params)
    probe = {"obs": np.asarray(obs), "first": first,
             "context": np.repeat(np.arange(len(CONTEXTS)), per_context).astype(np.int32)}
    return actor_params(params), probe


SETTINGS = LLC_SETTINGS["smoke"]


def test_the_checkpoint_is_the_minimum_of_its_distillation_loss():
    actor, probe = _problem()
    data = distillation_data(CONFIG, actor, probe)
    loss = loss_for(CONFIG)
    at_star = float(loss(actor, data))
    probs = np.asarray(data["target"])
    entropy = float(np.mean(-(probs * np.log(probs)).sum(-1)))
    assert at_star == pytest.approx(entropy, rel=1e-5)  # CE(p, p) = H(p)
    assert entropy < 0.9 * math.log(len(ACTION_NAMES))  # the test policy is not uniform
    for i in range(5):
        noise = jax.tree_util.tree_map(
            lambda x, k=i: 0.05 * jax.random.normal(jax.random.PRNGKey(k), x.shape), actor)
        moved = jax.tree_util.tree_map(jnp.add, actor, noise)
        assert float(loss(moved, data)) > at_star
    np.testing.assert_allclose(np.exp(log_probs(CONFIG, actor, probe)), probs, rtol=1e-5)


def test_the_critic_is_not_part_of_the_sampled_weights():
    actor, _ = _problem()
    assert sorted(actor["params"]) == ["actor_0", "actor_1", "actor_out"]


def test_recurrent_policies_distil_on_observation_windows():
    config = TrainConfig(width=16, depth=1, memory=8)
    actor, probe = _problem(config, window=4)
    assert "memory" in actor["params"] and "memory_in" in actor["params"]
    data = distillation_data(config, actor, probe)
    assert data["target"].shape == (len(probe["context"]), len(ACTION_NAMES))
    result = estimate_variant(config, actor, data, probe["context"], "layer", "memory", 1e-4,
                              SETTINGS, jax.random.PRNGKey(0))
    gru = sum(x.size for x in jax.tree_util.tree_leaves(actor["params"]["memory"]))
    assert result.num_sampled == gru


def test_variants_restrict_weights_and_data():
    actor, probe = _problem()
    data = distillation_data(CONFIG, actor, probe)
    kinds = variants(actor)
    assert kinds[0] == ("all", "all")
    assert [t for k, t in kinds if k == "layer"] == ["actor_0", "actor_1", "actor_out"]
    assert [t for k, t in kinds if k == "context"] == list(CONTEXTS)
    key = jax.random.PRNGKey(0)
    whole = estimate_variant(CONFIG, actor, data, probe["context"], "all", "all", 1e-4,
                             SETTINGS, key)
    layer = estimate_variant(CONFIG, actor, data, probe["context"], "layer", "actor_out", 1e-4,
                             SETTINGS, key)
    context = estimate_variant(CONFIG, actor, data, probe["context"], "context", "no_sapling",
                               1e-4, SETTINGS, key)
    out = actor["params"]["actor_out"]
    assert layer.num_sampled == out["kernel"].size + out["bias"].size
    assert whole.num_sampled == sum(x.size for x in jax.tree_util.tree_leaves(actor))
    assert whole.settings.num_data == 18 and context.settings.num_data == 6
    assert context.settings.nbeta == pytest.approx(6 / math.log(6))
    assert whole.mean > 0 and layer.mean > 0 and context.mean > 0
    again = estimate_variant(CONFIG, actor, data, probe["context"], "all", "all", 1e-4,
                             SETTINGS, key)
    np.testing.assert_array_equal(whole.chain_llcs, again.chain_llcs)  # deterministic
    with pytest.raises(ConfigError, match="target='actor_9' is not allowed: layers are"):
        estimate_variant(CONFIG, actor, data, probe["context"], "layer", "actor_9", 1e-4,
                         SETTINGS, key)
    with pytest.raises(ConfigError, match="target='grass' is not allowed: contexts are"):
        estimate_variant(CONFIG, actor, data, probe["context"], "context", "grass", 1e-4,
                         SETTINGS, key)
    with pytest.raises(ConfigError, match="kind='head' is not allowed"):
        estimate_variant(CONFIG, actor, data, probe["context"], "head", "all", 1e-4,
                         SETTINGS, key)


def _sweep_row(update, step, acceptance, drift=0.0, chains=(5.0, 6.0), below=0.0,
               diverged=False, factor=1.0):
    return {"seed": 0, "update": update, "env_steps": update * 10, "nbeta_factor": factor,
            "step_size": step, "mala_acceptance": acceptance, "drift": drift,
            "chain_llcs": list(chains), "frac_below_init": below, "diverged": diverged}


def test_calibration_rule_takes_the_largest_step_stable_at_every_checkpoint():
    ok = MIN_ACCEPTANCE + 0.05
    sweep = pd.DataFrame([
        _sweep_row(1, 1e-5, 0.99), _sweep_row(2, 1e-5, 0.99),
        _sweep_row(1, 1e-4, ok), _sweep_row(2, 1e-4, ok),
        _sweep_row(1, 1e-3, ok), _sweep_row(2, 1e-3, MIN_ACCEPTANCE - 0.05),  # one bad
        _sweep_row(1, 1e-2, 0.1, factor=2.0),  # another nβ: not judged
    ])
    step, passed, judged = choose_step_size(sweep, 1.0)
    assert (step, passed) == (1e-4, True)
    assert len(judged) == 6 and judged["stable"].sum() == 5
    for bad in ({"drift": 2 * MAX_DRIFT}, {"chains": (5.0, -1.0)}, {"below": 0.5},
                {"diverged": True}):
        sweep = pd.DataFrame([_sweep_row(1, 1e-5, 0.99), _sweep_row(1, 1e-4, ok, **bad)])
        assert choose_step_size(sweep, 1.0)[:2] == (1e-5, True), bad
    nothing = pd.DataFrame([_sweep_row(1, 1e-4, 0.1), _sweep_row(1, 1e-3, 0.1)])
    assert choose_step_size(nothing, 1.0)[:2] == (1e-4, False)


def test_drift_is_zero_for_a_level_trace_and_positive_for_a_climbing_one():
    class Fake:
        init_loss = 1.0

        def __init__(self, trace):
            self.loss_trace = np.asarray(trace, float)

    assert trace_drift(Fake([[2.0] * 10, [3.0] * 10])) == pytest.approx(0.0)
    climbing = Fake([np.linspace(1.0, 3.0, 10)] * 2)
    assert trace_drift(climbing) > 0.5


def test_check_step_size_is_the_next_smaller_of_the_grid():
    settings = LLC_SETTINGS["cpu"]
    assert check_step_size(settings, 1e-4) == 3e-5
    assert check_step_size(settings, 3e-5) == 1e-5
    assert check_step_size(settings, 1e-5) == 1e-5  # nothing smaller: the chosen step itself


def test_export_writes_a_verified_data_set_and_resumes(tmp_path, monkeypatch):
    """A fake run directory (probe set, three checkpoints), estimated and exported twice."""
    from devrl.core.base import atomic_write_json, atomic_write_npz
    from devrl.measures.policy_llc import export_llc
    from devrl.runs.rundir import RUN_SCRATCH, params_to_flat, verify_manifest, write_manifest

    _, probe = _problem()
    network = make_network(CONFIG, len(ACTION_NAMES))
    run = tmp_path / "seed_0"
    config = CONFIG
    (run / "behaviour").mkdir(parents=True)
    atomic_write_json(run / "config.json", config.to_dict())
    atomic_write_npz(run / "behaviour" / "probe.npz", probe)
    write_manifest(run / "behaviour", {"checkpoints": [0, 1, 4]})
    key = jax.random.PRNGKey(0)
    for update in (0, 1, 4):  # the initial checkpoint gets probe outputs only
        params = network.init(jax.random.fold_in(key, update),
                              jnp.zeros((1, 0)), jnp.zeros((1, 1, OBS_DIM)),
                              jnp.zeros((1, 1), bool))
        atomic_write_npz(run / "checkpoints" / f"params_{update:06d}.npz",
                         params_to_flat(params))
    write_manifest(run, {"complete": True, "updates_done": 4}, exclude=RUN_SCRATCH)
    messages = []
    out = export_llc([run], tmp_path / "llc-smoke", "smoke", progress=messages.append)
    assert verify_manifest(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["step_size"] in SETTINGS.calibration_step_sizes
    check = pd.read_parquet(out / "check.parquet")  # longer chains at the next smaller step
    assert list(check["update"]) == [1, 4]
    assert (check["num_steps"] == SETTINGS.num_steps * CHECK_STEPS_FACTOR).all()
    assert (check["step_size"] == check_step_size(SETTINGS, manifest["step_size"])).all()
    assert manifest["convergence_check"]["step_size"] == check["step_size"].iloc[0]
    table = pd.read_parquet(out / "llc.parquet")
    assert sorted(table["update"].unique()) == [1, 4]  # not the initial checkpoint
    assert set(table["kind"]) == {"all", "layer", "context"}
    with np.load(out / "logprobs" / "seed_0.npz") as data:
        assert data["logprobs"].shape == (3, len(probe["context"]), len(ACTION_NAMES))
        np.testing.assert_array_equal(data["updates"], [0, 1, 4])
    # A rerun reuses every part: no estimate runs again, and the result is the same.
    messages.clear()
    again = export_llc([run], tmp_path / "llc-smoke", "smoke", progress=messages.append)
    assert not [m for m in messages if m.startswith(("llc", "calibration seed", "check"))]
    pd.testing.assert_frame_equal(pd.read_parquet(again / "llc.parquet"), table)
    with pytest.raises(ConfigError, match="scale='huge' is not allowed"):
        export_llc([run], tmp_path / "x", "huge")


def test_log_spaced_picks_exactly_count_checkpoints_with_both_ends():
    from devrl.measures.policy_llc import log_spaced

    updates = [1, 2, 3, 5, 7, 11, 16, 32, 48, 64, 128, 256, 488]
    for count in (1, 2, 3, 5, 12):
        picked = log_spaced(updates, count)
        assert len(picked) == count and len(set(picked)) == count
        assert set(picked) <= set(updates)
        if count > 1:
            assert picked[0] == 1 and picked[-1] == 488
    assert log_spaced(updates, 3) == [1, 16, 488]  # √488 ≈ 22: 16 is nearest on a log scale
    assert log_spaced(updates, 20) == updates


def test_confinement_is_one_for_chains_with_no_loss_and_small_for_confined_ones():
    """The confinement ratio against the closed form: the sampler with a flat loss gives 1, a
    loss much stiffer than γ gives far less."""
    import jax.numpy as jnp
    import pandas as pd

    from devrl.measures.llc import estimate_llc
    from devrl.measures.policy_llc import confinement

    settings = {"localization": 50.0, "num_burnin": 100, "num_steps": 300}
    rows = []
    for stiffness in (0.0, 1e3):
        def loss(w, batch, k=stiffness):
            return 0.5 * k * jnp.sum(w ** 2) + 0.0 * jnp.sum(batch)

        result = estimate_llc(loss, jnp.zeros(2000), jnp.zeros((4, 1)), jax.random.PRNGKey(0),
                              step_size=1e-4, nbeta=1.0, localization=50.0, num_steps=300,
                              num_burnin=100, num_chains=4, batch_size=4)
        rows.append({"seed": 0, "env_steps": 0, "kind": "all", "target": "all",
                     "num_sampled": 2000, "step_size": 1e-4,
                     "mean_distance": result.mean_distance})
    ratios = confinement(pd.DataFrame(rows), settings)["confinement_ratio"].to_numpy()
    assert ratios[0] == pytest.approx(1.0, abs=0.03)
    assert ratios[1] < 0.5


def test_overshoot_window_on_a_constructed_trajectory():
    import pandas as pd

    from devrl.datasets import rank_correlation
    from devrl.studies.llc import overshoot_window

    steps = [10, 100, 1000, 10000]
    whole = pd.DataFrame({"seed": 0, "env_steps": steps, "llc": [100.0, 90.0, 110.0, 200.0],
                          "llc_std": [1.0, 3.0, 5.0, 7.0]})
    # the share peaks at 300 env steps: nearest estimate on a log scale is 100 (log distance
    # 0.48 against 0.52 to 1000); the window ends at the first estimate after it, 1000
    behaviour = pd.DataFrame({"seed": 0, "env_steps": [10, 300, 1000, 10000],
                              "place_attempt_share": [0.05, 0.2, 0.1, 0.02]})
    row = overshoot_window(whole, behaviour).iloc[0]
    assert row["share_peak_steps"] == 300 and row["window_end_steps"] == 1000
    assert row["at_share_peak"] == 90.0 and row["change_to_share_peak_pct"] == pytest.approx(-10)
    assert row["window_checkpoints"] == 3 and row["window_chain_std"] == pytest.approx(3.0)
    assert row["window_spread_pct"] == pytest.approx(100 * 20 / 100)
    assert row["change_after_window_pct"] == pytest.approx(100 * (200 / 110 - 1))
    assert (row["peak"], row["peak_steps"], row["final"]) == (200.0, 10000, 200.0)
    # shared checkpoints 10, 1000, 10000: llc ranks 1, 2, 3 against share ranks 2, 3, 1
    assert row["rank_correlation_with_share"] == pytest.approx(-0.5)
    assert rank_correlation(pd.Series([1, 2, 3]), pd.Series([3, 2, 1])) == pytest.approx(-1)
    # a share that peaks after every estimate: the window is the whole trajectory
    late = behaviour.assign(env_steps=[10, 100, 1000, 20000],
                            place_attempt_share=[0.0, 0.0, 0.0, 0.3])
    assert overshoot_window(whole, late).iloc[0]["window_end_steps"] == 10000
