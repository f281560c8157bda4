"""Essential dynamics: the principal components of a run's trajectory in output space.

After Hoogland et al. (2024) and Carroll et al. (2025), "the developmental landscape of in-context
learning": every checkpoint of one run is summarised by its outputs on a fixed probe set (here
the policy's action log-probabilities on S probe states, a vector of S·A numbers), the C vectors
are projected on their top principal components, each PC coordinate is smoothed as a function of
x = log10(env steps), and the points where a smoothed coordinate turns (changes direction) are the
candidate stage boundaries. The smoothing width is the only knob: there is deliberately no
threshold on how large a turn must be, so which turns matter is judged downstream (e.g. against
the LLC and behaviour curves), not hidden in a cutoff here.

Pure numpy: C is small (tens of checkpoints), so one thin SVD of the C×F matrix is cheap even for
F in the tens of thousands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from devrl.config import ConfigError

KINDS = ("max", "min")
# Differences smaller than this times a curve's largest |value| are floating-point noise (e.g. of
# smoothing a constant), not a direction: they count as flat. This is a rounding tolerance, not a
# threshold on the size of a turn.
FLAT_RTOL = 1e-10


@dataclass(frozen=True, eq=False)
class PCAResult:
    """Top-k principal components of the checkpoints' output vectors.

    Sign convention: each component is oriented so that the last checkpoint's score is >= 0 (the
    axis points towards where training ends); if that score is zero up to rounding, so that the
    last checkpoint does not fix the sign, the component's largest-|loading| entry is positive.
    """

    scores: np.ndarray  # [C, k] projections of the centred rows on the components
    components: np.ndarray  # [k, F] orthonormal rows
    explained_variance_ratio: np.ndarray  # [k] share of the total variance across checkpoints
    mean: np.ndarray  # [F] mean row, subtracted before projecting


@dataclass(frozen=True, eq=False)
class EDResult:
    """Essential dynamics of one run: PCA, smoothed PC curves and their turning points."""

    pca: PCAResult
    env_steps: np.ndarray  # [C] as given
    x: np.ndarray  # [C] log10(env_steps), a step of 0 replaced by half the first positive one
    smoothed: np.ndarray  # [C, k] Gaussian-kernel smoothed scores
    turns: list[dict[str, Any]]  # see turning_points
    width: float  # kernel standard deviation, in x units (decades of env steps)
    margin: float  # turns this close to either end of x were dropped


def _bad(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is not allowed: {allowed}")


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    allowed = f"must be a finite number {'>=' if allow_zero else '>'} 0"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(name, value, allowed) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise _bad(name, value, allowed)
    return number


def _check_finite(name: str, values: np.ndarray) -> None:
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise ConfigError(f"{name} with {bad} non-finite values is not allowed: every value must "
                          "be finite")


def _check_x(x: Any, length: int, name: str = "x") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (length,):
        raise _bad(f"{name} of shape", x.shape, f"must have shape ({length},)")
    if not np.all(np.isfinite(x)):
        raise _bad(name, x.tolist(), "must be finite")
    if np.any(np.diff(x) <= 0):
        raise _bad(name, x.tolist(), "must be strictly increasing")
    return x


def output_matrix(logprobs: Any) -> np.ndarray:
    """The [C, S·A] float64 matrix whose rows are the checkpoints' flattened outputs."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    if logprobs.ndim != 3:
        raise _bad("logprobs of shape", logprobs.shape,
                   "must be 3-dimensional [checkpoints, states, actions]")
    if logprobs.size == 0:
        raise _bad("logprobs of shape", logprobs.shape, "must not be empty")
    _check_finite("logprobs", logprobs)
    return logprobs.reshape(logprobs.shape[0], -1)


def pca(matrix: Any, num_components: int = 3) -> PCAResult:
    """Principal components of the rows of `matrix` [C, F], by thin SVD of the centred rows.

    The explained-variance ratios are shares of the total variance of the C rows (the sum over
    all, not just the top k, components). At most C - 1 components carry variance after centring.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise _bad("matrix of shape", matrix.shape, "must be 2-dimensional [checkpoints, features]")
    _check_finite("matrix", matrix)
    num_rows, num_features = matrix.shape
    limit = min(num_rows - 1, num_features)
    if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) \
            or not 1 <= num_components <= limit:
        raise _bad("num_components", num_components,
                   f"must be an integer in [1, min(C - 1, F)] = [1, {limit}] for C={num_rows} "
                   f"checkpoints and F={num_features} features")
    mean = matrix.mean(axis=0)
    centred = matrix - mean
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = float(np.sum(s**2))
    if total == 0:
        raise ConfigError("matrix with identical rows is not allowed: the checkpoints' outputs "
                          "must vary")
    k = int(num_components)
    scores = u[:, :k] * s[:k]
    components = vt[:k].copy()
    for i in range(k):
        column = scores[:, i]
        last = column[-1]
        if abs(last) > 1e-9 * np.max(np.abs(column)):
            flip = last < 0
        else:
            flip = components[i, np.argmax(np.abs(components[i]))] < 0
        if flip:
            scores[:, i] = -column
            components[i] = -components[i]
    return PCAResult(scores=scores, components=components,
                     explained_variance_ratio=s[:k] ** 2 / total, mean=mean)


def smooth(scores: Any, x: Any, width: float) -> np.ndarray:
    """Nadaraya–Watson Gaussian-kernel smoothing of each column of `scores` [C] or [C, k] over x.

    The weights exp(-(x_i - x_j)² / 2 width²) are normalised per row, so the kernel works in x
    units whatever the spacing: checkpoints are log-spaced early and linear later, hence dense at
    large x = log10(steps), and there each smoothed value simply averages more checkpoints.
    The Gaussian kernel is totally positive, so smoothing never adds turns: a monotone curve
    stays monotone.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim not in (1, 2):
        raise _bad("scores of shape", scores.shape, "must be [C] or [C, k]")
    _check_finite("scores", scores)
    x = _check_x(x, scores.shape[0])
    width = _positive("width", width)
    weights = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * width**2))
    weights /= weights.sum(axis=1, keepdims=True)  # the diagonal is 1, so rows never sum to 0
    return weights @ scores


def turning_points(smoothed: Any, x: Any, margin: float = 0.0) -> list[dict[str, Any]]:
    """Where each column of `smoothed` [C, k] (or [C]) changes direction, sorted by x.

    A turn is a sign change of the finite differences Δy/Δx (x increases, so the sign of Δy
    decides). Each is reported as {"component": column, "index": checkpoint of the extremum,
    "x": x there, "kind": "max" or "min"}; across a flat stretch the index is that of the extreme
    value within it. Turns closer than `margin` (in x units) to either end of x are dropped: there
    the smoothing kernel is one-sided and bends the curve. Any turn counts, however small.
    """
    smoothed = np.asarray(smoothed, dtype=np.float64)
    if smoothed.ndim == 1:
        smoothed = smoothed[:, None]
    if smoothed.ndim != 2:
        raise _bad("smoothed of shape", smoothed.shape, "must be [C] or [C, k]")
    _check_finite("smoothed", smoothed)
    x = _check_x(x, smoothed.shape[0])
    margin = _positive("margin", margin, allow_zero=True)
    turns = []
    for component in range(smoothed.shape[1]):
        y = smoothed[:, component]
        diffs = np.diff(y)
        scale = np.max(np.abs(y)) if y.size else 0.0
        signs = np.where(np.abs(diffs) <= FLAT_RTOL * scale, 0, np.sign(diffs)).astype(int)
        previous = None  # index j of the last non-flat difference y[j + 1] - y[j]
        for j in np.flatnonzero(signs):
            if previous is not None and signs[j] != signs[previous]:
                kind = "max" if signs[previous] > 0 else "min"
                stretch = y[previous + 1: j + 1]  # the points between the two differences
                offset = np.argmax(stretch) if kind == "max" else np.argmin(stretch)
                index = int(previous + 1 + offset)
                if x[index] - x[0] >= margin and x[-1] - x[index] >= margin:
                    turns.append({"component": component, "index": index,
                                  "x": float(x[index]), "kind": kind})
            previous = j
    return sorted(turns, key=lambda turn: (turn["x"], turn["component"]))


def log_steps(env_steps: Any, length: int | None = None) -> np.ndarray:
    """log10 of strictly increasing env steps; a first step of 0 becomes half the next one.

    Step 0 (the initial policy) has no logarithm; placing it at half the first positive step
    (log10(2) ≈ 0.3 decades before it) keeps the initial checkpoint in the analysis rather than
    dropping it or letting it sit at -inf.
    """
    steps = np.asarray(env_steps, dtype=np.float64)
    if length is not None and steps.shape != (length,):
        raise _bad("env_steps of shape", steps.shape,
                   f"must have shape ({length},), one per checkpoint")
    if steps.ndim != 1 or steps.size == 0:
        raise _bad("env_steps of shape", steps.shape, "must be a non-empty 1-d array")
    if not np.all(np.isfinite(steps)) or np.any(steps < 0):
        raise _bad("env_steps", steps.tolist(), "must be finite and >= 0")
    if np.any(np.diff(steps) <= 0):
        raise _bad("env_steps", steps.tolist(), "must be strictly increasing")
    if steps[0] == 0:
        if steps.size < 2:
            raise _bad("env_steps", steps.tolist(), "a lone step 0 has no log scale")
        steps = steps.copy()
        steps[0] = steps[1] / 2
    return np.log10(steps)


def essential_dynamics(logprobs: Any, env_steps: Any, num_components: int = 3,
                       width: float = 0.15, margin: float | None = None) -> EDResult:
    """PCA of one run's [C, S, A] probe log-probabilities, smoothed over log10 steps, and turns.

    `width` (the Gaussian kernel's standard deviation in decades of env steps) is the only
    knob deciding which turns appear; `margin` (default: `width`) drops turns within that many
    decades of either end, where the smoothing is one-sided.
    """
    matrix = output_matrix(logprobs)
    x = log_steps(env_steps, matrix.shape[0])
    width = _positive("width", width)
    margin = width if margin is None else _positive("margin", margin, allow_zero=True)
    result = pca(matrix, num_components)
    smoothed = smooth(result.scores, x, width)
    return EDResult(pca=result, env_steps=np.asarray(env_steps).copy(), x=x, smoothed=smoothed,
                    turns=turning_points(smoothed, x, margin), width=width, margin=margin)


def scores_frame(result: EDResult) -> pd.DataFrame:
    """Tidy scores: one row per (checkpoint, component) with env_steps, x, score, smoothed."""
    num_checkpoints, k = result.pca.scores.shape
    return pd.DataFrame({
        "env_steps": np.repeat(result.env_steps, k),
        "x": np.repeat(result.x, k),
        "component": np.tile(np.arange(k), num_checkpoints),
        "score": result.pca.scores.reshape(-1),
        "smoothed": result.smoothed.reshape(-1),
    })


def turns_frame(result: EDResult) -> pd.DataFrame:
    """One row per turning point: component, index, env_steps, x, kind (sorted by x)."""
    columns = ["component", "index", "env_steps", "x", "kind"]
    rows = [{**turn, "env_steps": result.env_steps[turn["index"]]} for turn in result.turns]
    return pd.DataFrame(rows, columns=columns)
