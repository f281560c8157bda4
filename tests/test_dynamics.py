"""Essential dynamics on synthetic trajectories whose principal components and turns are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from devrl.core.base import ConfigError
from devrl.measures.dynamics import (
    compare_turns,
    essential_dynamics,
    limit_pc1_share,
    log_steps,
    match_drift,
    output_matrix,
    pca,
    progress,
    random_walks,
    scores_frame,
    simulated_null,
    smooth,
    turning_points,
    turns_frame,
)

NUM_STATES, NUM_ACTIONS = 5, 8  # F = 40 features


def orthonormal(num: int, dim: int, seed: int = 0) -> np.ndarray:
    """`num` random orthonormal rows of length `dim`."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, num)))
    return q.T


def embed(path: np.ndarray, seed: int = 0) -> np.ndarray:
    """A [C, d] path placed in F = S·A dimensions around a random offset, shaped [C, S, A]."""
    rng = np.random.default_rng(seed + 1)
    features = NUM_STATES * NUM_ACTIONS
    matrix = path @ orthonormal(path.shape[1], features, seed) + rng.normal(size=features)
    return matrix.reshape(len(path), NUM_STATES, NUM_ACTIONS)


def test_pca_recovers_known_variances_and_directions():
    # Coefficients along two orthonormal directions with exactly zero mean, zero covariance and
    # variances 9 and 1, so the explained-variance ratios are exactly 0.9 and 0.1.
    num, dim = 64, 40
    angle = 2 * np.pi * np.arange(num) / num
    coefficients = np.stack([3 * np.sqrt(2) * np.cos(angle), np.sqrt(2) * np.sin(angle)], axis=1)
    directions = orthonormal(2, dim)
    offset = np.random.default_rng(5).normal(size=dim)
    matrix = coefficients @ directions + offset
    result = pca(matrix, num_components=2)
    np.testing.assert_allclose(result.explained_variance_ratio, [0.9, 0.1], atol=1e-12)
    np.testing.assert_allclose(result.mean, offset, atol=1e-12)
    for i in range(2):  # each component is ± the known direction
        assert abs(result.components[i] @ directions[i]) == pytest.approx(1, abs=1e-10)
    np.testing.assert_allclose(np.abs(result.scores), np.abs(coefficients), atol=1e-10)

    # Against the eigendecomposition of the feature covariance, on unstructured data.
    matrix = np.random.default_rng(3).normal(size=(30, 20)) * np.linspace(0.5, 3, 20)
    result = pca(matrix, num_components=3)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(matrix, rowvar=False))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    np.testing.assert_allclose(result.explained_variance_ratio,
                               eigenvalues[:3] / eigenvalues.sum(), rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(result.components * eigenvectors[:, :3].T, axis=1)),
                               1, atol=1e-8)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(result.scores, (matrix - matrix.mean(0)) @ result.components.T,
                               atol=1e-10)


def test_sign_convention_is_deterministic_and_documented():
    matrix = np.random.default_rng(7).normal(size=(20, 50))
    first, second = pca(matrix, 4), pca(matrix, 4)
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.components, second.components)
    assert np.all(first.scores[-1] > 0)  # the documented convention: last checkpoint's score >= 0
    # Reflecting every checkpoint through the mean negates the centred data: the convention is
    # fixed by the scores, so they stay the same and the components flip.
    reflected = pca(2 * matrix.mean(axis=0) - matrix, 4)
    np.testing.assert_allclose(reflected.scores, first.scores, atol=1e-10)
    np.testing.assert_allclose(reflected.components, -first.components, atol=1e-10)
    # When the last score is zero the largest-|loading| entry is positive instead.
    symmetric = np.array([[1.0, 0.2], [-1.0, -0.2], [0.0, 0.0]])
    component = pca(symmetric, 1).components[0]
    assert component[np.argmax(np.abs(component))] > 0


def test_smoothing_constant_linear_and_width():
    x = np.sort(np.random.default_rng(0).uniform(0, 3, size=25))
    np.testing.assert_allclose(smooth(np.full(25, 4.2), x, 0.3), 4.2, rtol=1e-14)
    a, b = np.random.default_rng(1).normal(size=(2, 25, 3))
    np.testing.assert_allclose(smooth(2 * a - 3 * b, x, 0.2),
                               2 * smooth(a, x, 0.2) - 3 * smooth(b, x, 0.2), atol=1e-12)
    np.testing.assert_allclose(smooth(a, x, 1e-6), a)  # a tiny kernel is the identity
    assert np.ptp(smooth(a, x, 100.0), axis=0) == pytest.approx(0, abs=1e-3)  # a huge one, flat
    for width in (0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match=r"^width=.* is not allowed: must be"):
            smooth(a, x, width)


def test_turn_of_pc1_found_where_the_trajectory_turns():
    # Out along e1 and back (a V) while drifting along e2: PC1 ≈ e1 rises then falls at x0.
    x = np.linspace(3, 7, 81)  # resolution 0.05 decades
    for x0 in (5.02, 4.3):
        path = np.stack([(x0 - 3) - np.abs(x - x0), 0.3 * (x - 3)], axis=1)
        result = essential_dynamics(embed(path), 10**x, num_components=2, width=0.1)
        np.testing.assert_allclose(result.x, x, atol=1e-12)
        (turn,) = [turn for turn in result.turns if turn["component"] == 0]
        assert abs(turn["x"] - x0) <= (x[1] - x[0]) / 2 + 1e-9  # the nearest checkpoint
        assert turn["x"] == result.x[turn["index"]]
        # The trajectory ends nearer its start than its far point, so with the last score >= 0
        # PC1 falls then rises: the turn is a minimum.
        assert turn["kind"] == "min"
        assert result.smoothed[turn["index"], 0] == result.smoothed[:, 0].min()
        if x0 == 5.02:
            # Nearly symmetric V: PC2 ≈ e2 (the drift) is monotone, so PC1's is the only turn.
            # (At x0 = 4.3 the V's asymmetry tilts PC2 enough towards e1 that it turns too.)
            assert result.turns == [turn]

    # A monotone trajectory (a straight line at uneven speed) has no turns.
    line = np.stack([(x - 3) ** 3, 2 * (x - 3) ** 3], axis=1)
    assert essential_dynamics(embed(line), 10**x, num_components=1, width=0.1).turns == []


def test_turning_points_kinds_margin_and_flat_stretches():
    x = np.linspace(0, 1, 13)
    y = np.stack([np.sin(2 * np.pi * x), np.full(13, 2.0)], axis=1)  # max at 0.25, min at 0.75
    turns = turning_points(y, x)
    assert turns == [{"component": 0, "index": 3, "x": 0.25, "kind": "max"},
                     {"component": 0, "index": 9, "x": 0.75, "kind": "min"}]
    assert turning_points(y, x, margin=0.25) == turns  # exactly `margin` from an end: kept
    assert turning_points(y, x, margin=0.3) == []  # both within 0.3 of an end
    plateau = np.array([0.0, 1.0, 2.0, 2.0, 2.0, 1.0, 0.0, -1.0])
    (turn,) = turning_points(plateau, np.arange(8.0))
    assert turn == {"component": 0, "index": 2, "x": 2.0, "kind": "max"}
    with pytest.raises(ConfigError, match=r"^margin="):
        turning_points(plateau, np.arange(8.0), margin=-1)


def test_frames_are_tidy():
    x = np.linspace(3, 7, 41)
    path = np.stack([2 - np.abs(x - 5), 0.3 * x, np.cos(3 * x)], axis=1)
    steps = np.round(10**x).astype(np.int64)
    steps[0] = 0
    result = essential_dynamics(embed(path), steps, num_components=3, width=0.15)
    assert result.x[0] == pytest.approx(np.log10(steps[1] / 2))
    assert result.margin == result.width == 0.15
    frame = scores_frame(result)
    assert list(frame.columns) == ["env_steps", "x", "component", "score", "smoothed"]
    assert len(frame) == 41 * 3
    row = frame[(frame.env_steps == steps[7]) & (frame.component == 2)].iloc[0]
    assert row.score == result.pca.scores[7, 2] and row.smoothed == result.smoothed[7, 2]
    turns = turns_frame(result)
    assert list(turns.columns) == ["component", "index", "env_steps", "x", "kind", "occurrence",
                                   "progress"]
    assert len(turns) == len(result.turns) > 0
    assert turns.x.is_monotonic_increasing
    assert (turns.env_steps == steps[turns["index"]]).all()
    pc1 = result.smoothed[:, 0]
    np.testing.assert_allclose(turns.progress,
                               (pc1[turns["index"]] - pc1.min()) / (pc1.max() - pc1.min()))
    for (component, kind), group in turns.groupby(["component", "kind"]):
        assert list(group.occurrence) == list(range(len(group)))  # in x order, per kind
    empty = turns_frame(essential_dynamics(embed(path[:, 1:2]), steps, num_components=1))
    assert isinstance(empty, pd.DataFrame) and empty.empty and "kind" in empty.columns


@pytest.mark.parametrize(("logprobs", "steps", "kwargs", "name"), [
    (np.zeros((4, 6)), np.arange(1, 5), {}, "logprobs"),
    (np.where(np.eye(4)[:, :, None] > 0, np.nan, 0.0), np.arange(1, 5), {}, "logprobs"),
    (None, np.arange(1, 5), {"num_components": 4}, "num_components"),  # C - 1 = 3
    (None, np.arange(1, 5), {"num_components": 0}, "num_components"),
    (None, np.array([1, 2, 2, 3]), {}, "env_steps"),
    (None, np.array([1, 3, 2, 4]), {}, "env_steps"),
    (None, np.arange(1, 4), {}, "env_steps"),
    (None, np.array([-1, 2, 3, 4]), {}, "env_steps"),
    (None, np.arange(1, 5), {"width": 0}, "width"),
    (None, np.arange(1, 5), {"margin": -0.1}, "margin"),
])
def test_bad_inputs_name_the_parameter(logprobs, steps, kwargs, name):
    if logprobs is None:
        logprobs = np.random.default_rng(0).normal(size=(4, 3, 2))
    with pytest.raises(ConfigError, match=rf"^{name}\b.* is not allowed: "):
        essential_dynamics(logprobs, steps, **{"num_components": 2, **kwargs})


def test_small_helpers():
    assert output_matrix(np.ones((2, 3, 4))).shape == (2, 12)
    assert output_matrix(np.ones((2, 3, 4), np.float32)).dtype == np.float64
    np.testing.assert_allclose(log_steps([0, 100, 1000]), [np.log10(50), 2, 3])
    with pytest.raises(ConfigError, match="^matrix with identical rows"):
        pca(np.ones((5, 3)), 1)


def test_progress_is_the_place_along_smoothed_pc1():
    np.testing.assert_allclose(progress([2.0, 3.0, 6.0, 4.0]), [0, 0.25, 1, 0.5])
    np.testing.assert_allclose(progress(np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])),
                               [[0, np.nan], [1, np.nan], [0.5, np.nan]])


@pytest.fixture(scope="module")
def even_null():
    """Turns of nearly infinite-dimensional driftless walks at 101 evenly spaced checkpoints,
    unsmoothed."""
    return simulated_null(np.arange(1, 102), num_walks=40, num_features=10**8, width=1e-6,
                          margin=0.0, num_components=3, seed=4)


def test_null_on_an_even_schedule_matches_the_cosines(even_null):
    # A high-dimensional random walk's k-th principal component is ≈ cos(kπt): PC2 turns (a min,
    # given the last score >= 0) at t = 1/2 and PC3 turns (max, min) at t = 1/3, 2/3, which is
    # progress (1 - cos(πt))/2 = 0.5, 0.25, 0.75 along PC1; PC1 itself is monotone. With 101
    # checkpoints one checkpoint is ≈ 0.016 of progress near the middle: tolerance 0.02.
    null = even_null
    summary = null.summary.set_index(["component", "kind", "occurrence"])
    expected = {(1, "min", 0): 0.5, (2, "max", 0): 0.25, (2, "min", 0): 0.75}
    assert set(summary.index) == set(expected)  # no other turns: F = 1e8 leaves no noise
    for key, value in expected.items():
        assert summary.loc[key, "share"] == 1
        assert summary.loc[key, "mean"] == pytest.approx(value, abs=0.02)
        assert summary.loc[key, "sd"] < 0.01
    np.testing.assert_array_equal(null.counts, 3)
    # The explained share of PC1 tends to 6/π² (Karhunen–Loève of a centred Brownian motion).
    assert limit_pc1_share(np.arange(1, 401)) == pytest.approx(6 / np.pi**2, abs=2e-5)
    assert null.explained[:, 0].mean() == pytest.approx(limit_pc1_share(np.arange(1, 102)),
                                                        abs=1e-3)


def test_null_runs_the_same_pipeline_as_a_run():
    steps = np.round(np.geomspace(1e3, 1e6, 30)).astype(int)
    null = simulated_null(steps, num_walks=12, num_features=200, drift_share=0.8, width=0.2,
                          seed=9)
    walks = random_walks(steps, 12, 200, match_drift(steps, 0.8), seed=9)
    for walk, matrix in enumerate(walks):
        result = essential_dynamics(matrix[:, None, :], steps, num_components=3, width=0.2)
        np.testing.assert_allclose(null.explained[walk], result.pca.explained_variance_ratio,
                                   rtol=1e-10)
        expected = turns_frame(result)
        got = null.turns[null.turns.walk == walk].reset_index(drop=True)
        assert list(got.component) == list(expected.component)
        assert list(got.kind) == list(expected.kind)
        assert list(got.occurrence) == list(expected.occurrence)
        np.testing.assert_array_equal(got.env_steps, expected.env_steps)
        np.testing.assert_allclose(got.progress, expected.progress, rtol=1e-9)
    assert null.counts.sum() == len(null.turns)


@pytest.mark.parametrize("num_features", [300, 20])  # Bartlett factor; features drawn directly
def test_walks_have_the_gram_matrix_of_a_walk_in_training_time(num_features):
    # Uneven checkpoints; the increment between two has variance ∝ the steps between them, so
    # E[G] / F = min(t_i, t_j) + r t_i t_j and Var(G_ij) = F (K_ii K_jj + K_ij²) without drift.
    steps = np.array([0, 10, 30, 100, 400, 1000])
    t = steps / steps[-1]
    kernel = np.minimum.outer(t, t)
    walks = random_walks(steps, 20000, num_features, drift=0.0, seed=1)
    gram = walks @ np.swapaxes(walks, 1, 2)
    np.testing.assert_allclose(gram.mean(axis=0) / num_features, kernel, atol=0.03)
    variance = num_features * (np.outer(np.diag(kernel), np.diag(kernel)) + kernel**2)
    np.testing.assert_allclose(gram.var(axis=0)[1:, 1:], variance[1:, 1:], rtol=0.08)
    drifted = random_walks(steps, 20000, num_features, drift=2.0, seed=1)
    gram = drifted @ np.swapaxes(drifted, 1, 2)
    np.testing.assert_allclose(gram.mean(axis=0) / num_features, kernel + 2.0 * np.outer(t, t),
                               atol=0.05)


def test_drift_is_matched_to_the_pc1_share():
    steps = np.round(np.geomspace(1e4, 8e6, 40)).astype(int)
    base = limit_pc1_share(steps)
    assert 0.55 < base < 0.75
    for target in (base + 0.01, 0.83, 0.95):
        drift = match_drift(steps, target)
        assert limit_pc1_share(steps, drift) == pytest.approx(target, abs=1e-9)
        null = simulated_null(steps, num_walks=200, num_features=5000, drift_share=target)
        assert null.drift == drift and null.drift_share == target
        assert null.explained[:, 0].mean() == pytest.approx(target, abs=0.01)
    without = simulated_null(steps, num_walks=200, num_features=5000)
    assert without.drift == 0 and without.drift_share is None
    assert without.explained[:, 0].mean() == pytest.approx(base, abs=0.01)


def test_compare_turns_places_observed_turns_in_the_null(even_null):
    null = even_null
    observed = pd.DataFrame({"component": [1, 2, 2, 0], "kind": ["min", "max", "min", "max"],
                             "occurrence": [0, 0, 0, 0], "progress": [0.9, 0.25, 0.0, 0.5],
                             "seed": [7, 7, 7, 7]})
    table = compare_turns(observed, null)
    assert list(table.columns[:5]) == list(observed.columns)
    first = table.iloc[0]
    assert first.below == 1 and first.walks == 40 and first.share == 1
    assert first.z == pytest.approx((0.9 - first.q50) / first.spread)
    assert first.z > 10
    assert table.iloc[2].below == 0 and table.iloc[2].z < -10
    assert table.iloc[3].walks == 0 and np.isnan(table.iloc[3].below)  # PC1 never turns
    with pytest.raises(ConfigError, match=r"^observed with columns"):
        compare_turns(observed.drop(columns="kind"), null)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"num_walks": 0}, "num_walks"),
    ({"num_walks": 2.5}, "num_walks"),
    ({"num_features": 1}, "num_features"),
    ({"drift_share": 0.3}, "drift_share"),  # below the driftless share: no drift reaches it
    ({"drift_share": 1.0}, "drift_share"),
    ({"drift_share": "most"}, "drift_share"),
    ({"width": 0}, "width"),
    ({"margin": -1}, "margin"),
    ({"num_components": 0}, "num_components"),
    ({"num_components": 12}, "num_components"),  # C - 1 = 9
    ({"env_steps": [1, 3, 2, 4, 5, 6, 7, 8, 9, 10]}, "env_steps"),
    ({"seed": 1.5}, "seed"),
])
def test_null_bad_inputs_name_the_parameter(kwargs, name):
    arguments = {"env_steps": np.arange(1, 11) * 100, "num_walks": 3, "num_features": 50,
                 **kwargs}
    with pytest.raises(ConfigError, match=rf"^{name}\b.* is not allowed"):
        simulated_null(**arguments)


def test_shared_turns_match_turns_by_name_across_seeds():
    from devrl.measures.dynamics import shared_turns

    turns = pd.DataFrame({
        "component": [2, 2, 2, 3], "kind": ["max", "max", "min", "max"],
        "occurrence": [0, 0, 0, 0], "seed": [0, 1, 0, 1],
        "env_steps": [1000, 4000, 50, 800], "progress": [0.2, 0.4, 0.1, 0.9]})
    shared = shared_turns(turns)
    assert list(zip(shared["component"], shared["kind"])) == [(2, "min"), (3, "max"), (2, "max")]
    both = shared.iloc[2]
    assert (both["seeds"], both["first"], both["last"], both["median"]) == (2, 1000, 4000, 2500)
    assert both["progress"] == pytest.approx(0.3) and both["last / first"] == pytest.approx(4)
    assert (both["progress_low"], both["progress_high"]) == (0.2, 0.4)
