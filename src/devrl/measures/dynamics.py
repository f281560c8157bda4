"""Essential dynamics: the principal components of a run's trajectory in output space.

After Hoogland et al. (2024) and Carroll et al. (2025), "the developmental landscape of in-context
learning": every checkpoint of one run is summarised by its outputs on a fixed probe set (here
the policy's action log-probabilities on S probe states, a vector of S·A numbers), the C vectors
are projected on their top principal components, each PC coordinate is smoothed as a function of
x = log10(env steps), and the points where a smoothed coordinate turns (changes direction) are the
candidate stage boundaries. The smoothing width is the only knob: there is deliberately no
threshold on how large a turn must be, so which turns matter is judged downstream (e.g. against
the LLC and behaviour curves), not hidden in a cutoff here.

Pure numpy: C is small (tens of checkpoints), so the PCA, from the C×C Gram matrix of the C×F
outputs, is cheap even for F in the tens of thousands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from devrl.core.base import ConfigError

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
    """Principal components of the rows of `matrix` [C, F], from the eigendecomposition of the
    C×C Gram matrix of the centred rows (the same as a thin SVD of them; C is small).

    The explained-variance ratios are shares of the total variance of the C rows (the sum over
    all, not just the top k, components). At most C - 1 components carry variance after centring;
    a requested component that carries none has zero scores and zero loadings.
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
    scores, components, ratios, mean = _principal(matrix[None], int(num_components))
    return PCAResult(scores=scores[0], components=components[0],
                     explained_variance_ratio=ratios[0], mean=mean[0])


def _principal(matrices: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """`pca` of each of a stack of [C, F] matrices [W, C, F], unchecked: scores [W, C, k],
    components [W, k, F], explained-variance ratios [W, k] and means [W, F]."""
    mean = matrices.mean(axis=1)
    centred = matrices - mean[:, None, :]
    # Eigenvectors of the C×C Gram matrix of the centred rows are the left singular vectors, its
    # eigenvalues the squared singular values. C is small, so this is cheap whatever F, and one
    # batched eigh stays fast where a batched SVD is slowed badly by BLAS threads on a busy CPU.
    gram = centred @ np.swapaxes(centred, 1, 2)
    eigenvalues, eigenvectors = np.linalg.eigh(gram)  # ascending
    total = np.trace(gram, axis1=1, axis2=2)
    if np.any(total == 0):
        raise ConfigError("matrix with identical rows is not allowed: the checkpoints' outputs "
                          "must vary")
    variances = np.clip(eigenvalues[:, ::-1][:, :k], 0.0, None)
    u = eigenvectors[:, :, ::-1][:, :, :k]
    singular = np.sqrt(variances)
    scores = u * singular[:, None, :]
    # Components: v = uᵀ·centred / s; one that carries no variance (s = 0 up to rounding) has
    # no direction, and is left as zeros.
    carried = singular > 1e-12 * np.sqrt(total)[:, None]
    components = np.swapaxes(u, 1, 2) @ centred
    components *= np.where(carried, 1 / np.where(carried, singular, 1.0), 0.0)[:, :, None]
    # The sign convention (see PCAResult), for every matrix and component at once.
    last = scores[:, -1, :]
    decided = np.abs(last) > 1e-9 * np.max(np.abs(scores), axis=1)
    largest = np.take_along_axis(components, np.argmax(np.abs(components), axis=2)[..., None],
                                 axis=2)[..., 0]
    sign = np.where(np.where(decided, last < 0, largest < 0), -1.0, 1.0)
    scores *= sign[:, None, :]
    components *= sign[:, :, None]
    return scores, components, variances / total[:, None], mean


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


def progress(pc1: Any) -> np.ndarray:
    """Place along a smoothed PC1 curve [C] (or each column of [C, n]): 0 at its lowest, 1 at
    its highest, i.e. (y - min y) / (max y - min y).

    Where PC1 rises monotonically (as in our runs) this is how far along the trajectory's main
    direction a checkpoint lies. A flat curve (up to rounding) gives NaN.
    """
    y = np.asarray(pc1, dtype=np.float64)
    low, span = y.min(axis=0), np.ptp(y, axis=0)
    flat = span <= FLAT_RTOL * np.max(np.abs(y), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flat, np.nan, (y - low) / np.where(flat, 1.0, span))


def turns_frame(result: EDResult) -> pd.DataFrame:
    """One row per turning point, sorted by x: component, index, env_steps, x, kind, occurrence
    (0 for the component's first turn of that kind, 1 for its second, ...) and progress (the
    turn's place along PC1, see `progress`)."""
    columns = ["component", "index", "env_steps", "x", "kind", "occurrence", "progress"]
    along = progress(result.smoothed[:, 0])
    rows = [{**turn, "env_steps": result.env_steps[turn["index"]],
             "progress": along[turn["index"]]} for turn in result.turns]
    frame = pd.DataFrame(rows, columns=columns)
    frame["occurrence"] = frame.groupby(["component", "kind"]).cumcount()  # rows sorted by x
    return frame


@dataclass(frozen=True, eq=False)
class NullResult:
    """Turns of simulated random walks sampled at a run's checkpoints (see `simulated_null`)."""

    turns: pd.DataFrame  # walk, component, kind, occurrence, progress, env_steps, x
    summary: pd.DataFrame  # per (component, kind, occurrence): walks having it, progress stats
    explained: np.ndarray  # [num_walks, k] explained-variance ratios of each walk's components
    counts: np.ndarray  # [num_walks] number of turns of each walk (all k components)
    drift: float  # r of `match_drift` (squared drift distance over the run / noise's); 0: none
    drift_share: float | None  # the PC1 share the drift was matched to (None: no drift)
    num_features: int
    width: float
    margin: float


def shared_turns(turns: pd.DataFrame) -> pd.DataFrame:
    """The turns of several seeds (`turns_frame` rows with a `seed` column) matched by name
    (component, kind and occurrence): per name, the seeds that have it, the first, last and
    median env steps at which they do, its mean progress along PC1 and the range over seeds,
    and how many times later the last seed turns than the first; sorted by the median."""
    shared = (turns.groupby(["component", "kind", "occurrence"])
              .agg(seeds=("env_steps", "count"), first=("env_steps", "min"),
                   last=("env_steps", "max"), median=("env_steps", "median"),
                   progress=("progress", "mean"), progress_low=("progress", "min"),
                   progress_high=("progress", "max"))
              .reset_index().sort_values("median").reset_index(drop=True))
    shared["last / first"] = shared["last"] / shared["first"]
    return shared


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise _bad(name, value, f"must be an integer >= {low}")
    return int(value)


def _walk_kernel(t: np.ndarray, drift: float) -> np.ndarray:
    """The centred Gram matrix per feature of a walk with drift `drift` (r) at times t, F -> inf."""
    kernel = np.minimum(t[:, None], t[None, :]) + drift * np.outer(t, t)
    centre = np.eye(len(t)) - 1.0 / len(t)
    return centre @ kernel @ centre


def limit_pc1_share(env_steps: Any, drift: float = 0.0) -> float:
    """PC1's explained-variance share of a walk with drift r at these checkpoints, as F -> inf.

    The expected Gram matrix of an F-feature walk (see `random_walks`) is
    F·(min(t_i, t_j) + r·t_i·t_j), t the env steps divided by the last one, and as F grows the
    walk's own Gram matrix divided by F tends to it; the share is the top eigenvalue of its
    centred form over its trace. It rises with r from the driftless walk's share (6/π² for
    many evenly spaced checkpoints) towards 1.
    """
    t = _walk_times(env_steps)
    eigenvalues = np.linalg.eigvalsh(_walk_kernel(t, _positive("drift", drift, allow_zero=True)))
    return float(eigenvalues[-1] / eigenvalues.sum())


def _walk_times(env_steps: Any) -> np.ndarray:
    log_steps(env_steps)  # validates: finite, >= 0, strictly increasing
    steps = np.asarray(env_steps, dtype=np.float64)
    return steps / steps[-1]


def match_drift(env_steps: Any, drift_share: float) -> float:
    """The drift r at which `limit_pc1_share(env_steps, r)` equals `drift_share`.

    r is the squared distance the drift covers over the run in units of the squared distance
    the noise covers on average (r = 1: as far as the noise). The share is increasing in r, so
    the root is unique; it is bracketed by doubling and found by Brent's method.
    """
    from scipy.optimize import brentq

    base = limit_pc1_share(env_steps)
    try:
        target = float(drift_share)
    except (TypeError, ValueError):
        target = float("nan")
    if not base < target < 1 - 1e-9:
        raise _bad("drift_share", drift_share,
                   f"must be a number in ({base:.4f}, 1): above the PC1 share of a walk without "
                   "drift at these checkpoints, as a drift can only raise it")

    def gap(drift: float) -> float:
        return limit_pc1_share(env_steps, drift) - target

    high = 1.0
    while gap(high) < 0:
        high *= 4
        if high > 1e15:  # unreachable for targets below 1 - 1e-9 on sane schedules
            raise _bad("drift_share", drift_share, "is too close to 1 for these checkpoints")
    return float(brentq(gap, 0.0, high, xtol=1e-12 * high, rtol=1e-12))


def random_walks(env_steps: Any, num_walks: int, num_features: int, drift: float = 0.0,
                 seed: int = 0) -> np.ndarray:
    """[num_walks, C, m] matrices with the Gram matrices of F-feature random walks at env_steps.

    Time is env steps divided by the last checkpoint's (t ∈ (0, 1]) and each feature moves
    independently, with variance t between times 0 and t; feature 1 also drifts by
    sqrt(r·F)·t. Every output of essential dynamics depends on the checkpoints only through
    their Gram matrix, so the F - 1 driftless features are drawn through one C×C Bartlett factor
    of their Wishart(F - 1) matrix when F - 1 >= C (m = C + 1, exact in distribution and at a
    cost independent of F), and directly otherwise (m = F).
    """
    t = _walk_times(env_steps)
    num_walks = _integer("num_walks", num_walks, 1)
    num_features = _integer("num_features", num_features, 2)
    drift = _positive("drift", drift, allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise _bad("seed", seed, "must be an integer")
    rng = np.random.default_rng(seed)
    num_checkpoints = len(t)
    first = rng.normal(size=(num_walks, num_checkpoints, 1))
    rest = num_features - 1
    if rest >= num_checkpoints:
        factor = np.tril(rng.normal(size=(num_walks, num_checkpoints, num_checkpoints)), k=-1)
        diagonal = np.arange(num_checkpoints)
        factor[:, diagonal, diagonal] = np.sqrt(
            rng.chisquare(rest - diagonal, size=(num_walks, num_checkpoints)))
    else:
        factor = rng.normal(size=(num_walks, num_checkpoints, rest))
    increments = np.concatenate([first, factor], axis=2)
    increments *= np.sqrt(np.diff(t, prepend=0.0))[None, :, None]  # sd of each time step
    walks = np.cumsum(increments, axis=1)
    walks[:, :, 0] += np.sqrt(drift * num_features) * t[None, :]
    return walks


def simulated_null(env_steps: Any, num_walks: int = 500, num_features: int = 1000,
                   drift_share: float | None = None, width: float = 0.15,
                   margin: float | None = None, num_components: int = 3,
                   seed: int = 0) -> NullResult:
    """Turning points of random walks observed at the checkpoints `env_steps`, found as in
    `essential_dynamics` (the same PCA, smoothing of width `width` over log10 steps, `margin`
    and turn rule) and placed along PC1 by the same `progress` as a real run's turns.

    Each walk moves in `num_features` dimensions in training time: the increment between two
    checkpoints is Gaussian, with independent features whose variance is proportional to the
    env steps between the checkpoints (env steps are a fixed multiple of PPO updates, so
    equally: to the updates between them), as if every update took an independent step; the
    checkpoints observe the walk at their own uneven times. It starts at step 0 (a checkpoint
    at step 0, if given, is kept and placed on the log axis by `log_steps`).

    With `drift_share` each walk also moves at constant velocity along one fixed direction, of
    size chosen by `match_drift` so that PC1's share of the variance in the many-features limit
    equals `drift_share` (e.g. a run's observed share); the walks' own shares (`explained`)
    scatter around it, with a small bias at small F. See `random_walks` for how they are drawn.

    `turns` has one row per turn of every walk (components from 0, occurrence as in
    `turns_frame`); `summary` per (component, kind, occurrence) the `walks` having that turn,
    their `share` of all walks, the `mean`, `sd` and quantiles `q05` ... `q95` of its progress,
    and `spread` = (q84 - q16) / 2, the sd for a normal distribution but not inflated by the rare
    walks whose matching turn is a wiggle among the first checkpoints (see `compare_turns`).
    """
    x = log_steps(env_steps)
    num_features = _integer("num_features", num_features, 2)
    width = _positive("width", width)
    margin = width if margin is None else _positive("margin", margin, allow_zero=True)
    limit = min(len(x) - 1, num_features)
    if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) \
            or not 1 <= num_components <= limit:
        raise _bad("num_components", num_components,
                   f"must be an integer in [1, {limit}] for {len(x)} checkpoints and "
                   f"{num_features} features")
    k = int(num_components)
    drift = 0.0 if drift_share is None else match_drift(env_steps, drift_share)
    walks = random_walks(env_steps, num_walks, num_features, drift, seed)  # checks num_walks
    num_walks = len(walks)
    scores, _, explained, _ = _principal(walks, k)
    columns = np.moveaxis(scores, 0, 1).reshape(len(x), num_walks * k)  # column = walk·k + PC
    smoothed = smooth(columns, x, width)
    along = progress(smoothed.reshape(len(x), num_walks, k)[:, :, 0])  # [C, walks]
    steps = np.asarray(env_steps)
    rows = [{"walk": turn["component"] // k, "component": turn["component"] % k,
             "kind": turn["kind"], "progress": along[turn["index"], turn["component"] // k],
             "env_steps": steps[turn["index"]], "x": turn["x"]}
            for turn in turning_points(smoothed, x, margin)]
    turns = pd.DataFrame(rows, columns=["walk", "component", "kind", "progress", "env_steps", "x"])
    turns = turns.sort_values(["walk", "x", "component"], kind="stable").reset_index(drop=True)
    turns.insert(3, "occurrence", turns.groupby(["walk", "component", "kind"]).cumcount())
    summary = (turns.groupby(["component", "kind", "occurrence"])["progress"]
               .agg(walks="count", mean="mean", sd="std", **{
                   f"q{round(100 * q):02d}": (lambda p, q=q: p.quantile(q))
                   for q in (0.05, 0.16, 0.5, 0.84, 0.95)})
               .reset_index())
    summary.insert(4, "share", summary["walks"] / num_walks)
    summary["spread"] = (summary["q84"] - summary["q16"]) / 2
    counts = np.bincount(turns["walk"].to_numpy(dtype=np.int64), minlength=num_walks)
    return NullResult(turns=turns, summary=summary, explained=explained, counts=counts,
                      drift=drift,
                      drift_share=None if drift_share is None else float(drift_share),
                      num_features=num_features, width=width, margin=margin)


def compare_turns(observed: pd.DataFrame, null: NullResult) -> pd.DataFrame:
    """Each observed turn (rows of `turns_frame`) against the null's turn of the same component,
    kind and occurrence.

    Adds the null's `walks` having that turn (and their `share`), its `mean`, `sd`, `q05`,
    `q50`, `q95` and `spread`; `z` = (progress - q50) / spread, the distance from the null's
    median in units of its spread; and `below`, the fraction of those walks whose turn comes
    earlier along PC1 than the observed one (0.5: at the null's median; 1: later than every
    walk). A turn the null has in no walk gets NaN. Rows of `observed` keep their order and columns.
    """
    missing = {"component", "kind", "occurrence", "progress"} - set(observed.columns)
    if missing:
        raise _bad("observed with columns", sorted(observed.columns),
                   f"must include {sorted(missing)} (rows of turns_frame)")
    keys = ["component", "kind", "occurrence"]
    stats = null.summary[keys + ["walks", "share", "mean", "sd", "q05", "q50", "q95", "spread"]]
    result = observed.merge(stats, on=keys, how="left", validate="many_to_one")
    result.index = observed.index
    groups = {key: group.to_numpy() for key, group
              in null.turns.groupby(keys)["progress"]}
    below = []
    for row in result.itertuples():
        values = groups.get((row.component, row.kind, row.occurrence))
        below.append(np.nan if values is None or np.isnan(row.progress)
                     else float(np.mean(values < row.progress)))
    result["below"] = below
    with np.errstate(divide="ignore", invalid="ignore"):
        result["z"] = (result["progress"] - result["q50"]) / result["spread"]
    result["walks"] = result["walks"].fillna(0).astype(int)
    result["share"] = result["share"].fillna(0.0)
    return result
