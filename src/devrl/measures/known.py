"""Models with closed-form learning coefficients, to test LLC estimators against known answers.

Convention: every model is a regression y = f(w, x) + noise with unit Gaussian noise, so the
negative log-likelihood of one point is ½‖y − f(w, x)‖² + (M/2) log 2π. The loss used here is
L_n(w) = (1/n) Σ_i ½‖y_i − f(w, x_i)‖² (squared error summed over the M outputs, halved, averaged
over points): the average negative log-likelihood minus a constant, which is what the learning
coefficient of the model refers to. (A mean over outputs, or no ½, multiplies the loss by a
constant c; that leaves λ unchanged and, asymptotically, λ̂ too: λ̂ = nβ(E[cL] − cL*) under
exp(−nβ·cL) is the same estimator at the inverse temperature nβc. Only the effective temperature
changes, and with it the finite-nβ bias.)

Learning coefficients:
- regular model with d parameters: λ = d/2;
- reduced-rank regression (two-layer linear network): Aoyagi & Watanabe (2005), "Stochastic
  complexities of reduced rank regression in Bayesian estimation", Neural Networks 18;
- deep linear network of any depth: M. Aoyagi (2024), "Consideration on the learning efficiency
  of multiple-layered neural networks with linear units", Neural Networks 172, Theorem 2, with
  the index set of Definition 3 in the form restated by Furman & Lau (arXiv:2402.03698, Thm. B.1;
  the printed Definition 3 reportedly has a misprinted inequality). The tests check it against
  Aoyagi & Watanabe at depth 2 and against half the fibre's codimension at depths 1–4.

The deep-linear network here maps x (batch × widths[0]) to x @ W_1 @ ... @ W_L, with W_s of shape
(widths[s-1], widths[s]); the input is widths[0] and the output widths[-1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from itertools import combinations, pairwise

import jax
import jax.numpy as jnp
import optax

from devrl.core.base import ConfigError
from devrl.core.config import SCALES
from devrl.measures.llc import estimate_llc

DLNParams = tuple[jax.Array, ...]


def regular_learning_coefficient(num_params: int) -> float:
    """λ = d/2: the learning coefficient of a regular (identifiable, non-degenerate) model."""
    if num_params < 1:
        raise ConfigError(f"num_params={num_params!r} is not allowed: must be >= 1")
    return num_params / 2


def rrr_learning_coefficient(input_dim: int, hidden_dim: int, output_dim: int, rank: int) -> float:
    """λ of reduced-rank regression y = B A x (true product of rank r), Aoyagi & Watanabe 2005."""
    _check_widths((input_dim, hidden_dim, output_dim), rank)
    n, h, m, r = input_dim, hidden_dim, output_dim, rank
    if n + r <= m + h and m + r <= n + h and h + r <= m + n:
        parity = (m + h + n + r) % 2
        value = Fraction(2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2 + parity, 8)
    elif m + h < n + r:
        value = Fraction(h * m - h * r + n * r, 2)
    elif n + h < m + r:
        value = Fraction(h * n - h * r + m * r, 2)
    else:  # m + n < h + r
        value = Fraction(m * n, 2)
    return float(value)


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> float:
    """λ of a deep linear network with layer widths H_1..H_{L+1} at a true product of rank r.

    Aoyagi (2024), Theorem 2. With reduced widths M_s = H_s − r, the index set Σ (Definition 3)
    of ℓ + 1 layers satisfies: max_{Σ} M < min_{not Σ} M, Σ_{Σ} M ≥ ℓ · max_{Σ} M, and
    Σ_{Σ} M < ℓ · min_{not Σ} M. With P = Σ_{Σ} M, M* = ⌈P/ℓ⌉ and a = P − (M* − 1)ℓ,

        λ = (−r² + r(H_1 + H_{L+1}))/2 + a(ℓ − a)/(4ℓ) − ℓ(ℓ − 1)/4 · (P/ℓ)²
            + ½ Σ_{i<j in Σ} M_i M_j.

    Depth 1 (a single matrix) is linear regression: the formula gives H_1 H_2 / 2 = d/2.
    """
    selected, ell, total, a = _aoyagi_terms(widths, rank)
    r = rank
    value = (Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
             + Fraction(a * (ell - a), 4 * ell)
             - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
             + Fraction(sum(x * y for x, y in combinations(selected, 2)), 2))
    return float(value)


def dln_multiplicity(widths: Sequence[int], rank: int) -> int:
    """θ = a(ℓ − a) + 1, the order of the learning coefficient's pole (Aoyagi 2024, Theorem 2).

    The Bayes free energy is n L_n(w0) + λ log n − (θ − 1) log log n + O_p(1); θ > 1 makes
    finite-n LLC estimates converge slowly (they sit below λ at moderate n).
    """
    _, ell, _, a = _aoyagi_terms(widths, rank)
    return a * (ell - a) + 1


def _aoyagi_terms(widths: Sequence[int], rank: int) -> tuple[list[int], int, int, int]:
    """Aoyagi's (reduced widths in Σ, ℓ, P = their sum, a = P − (⌈P/ℓ⌉ − 1)ℓ)."""
    _check_widths(widths, rank)
    selected = _aoyagi_index_set([h - rank for h in widths])
    ell = len(selected) - 1
    total = sum(selected)
    m_star = -(-total // ell)  # ⌈P/ℓ⌉
    return selected, ell, total, total - (m_star - 1) * ell


def _aoyagi_index_set(reduced: Sequence[int]) -> list[int]:
    """The reduced widths {M_s : s in Σ} of Aoyagi's Definition 3, checked to be unique.

    By the first condition Σ holds the smallest reduced widths, so the candidates are the
    prefixes of the sorted list; exactly one prefix of length >= 2 meets all three conditions.
    """
    ordered = sorted(reduced)
    found = []
    for size in range(2, len(ordered) + 1):
        inside, outside = ordered[:size], ordered[size:]
        ell = size - 1
        if outside and not max(inside) < min(outside):
            continue
        if sum(inside) < ell * max(inside):
            continue
        if outside and not sum(inside) < ell * min(outside):
            continue
        found.append(inside)
    if len(found) != 1:
        raise AssertionError(f"Aoyagi's index set is not unique for reduced widths {reduced}: "
                             f"{found}")
    return found[0]


def _check_widths(widths: Sequence[int], rank: int) -> None:
    if len(widths) < 2 or any(int(h) != h or h < 1 for h in widths):
        raise ConfigError(f"widths={tuple(widths)!r} is not allowed: need at least two positive "
                          "integer widths (input, hidden..., output)")
    if int(rank) != rank or not 0 <= rank <= min(widths):
        raise ConfigError(f"rank={rank!r} is not allowed: must be an integer in "
                          f"[0, min(widths)={min(widths)}]")


def dln_num_params(widths: Sequence[int]) -> int:
    """Number of weights of a deep linear network (no biases) with these layer widths."""
    return sum(a * b for a, b in pairwise(widths))


def dln_apply(params: DLNParams, x: jax.Array) -> jax.Array:
    """The deep linear network's output x @ W_1 @ ... @ W_L for inputs x of shape [batch, H_1]."""
    for weight in params:
        x = x @ weight
    return x


def dln_loss(params: DLNParams, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean over the batch of ½‖y − DLN(x)‖²: the Gaussian negative log-likelihood up to a constant."""
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((dln_apply(params, x) - y) ** 2, axis=-1))


def squared_error_loss(apply_fn: Callable[[object, jax.Array], jax.Array]
                       ) -> Callable[[object, tuple[jax.Array, jax.Array]], jax.Array]:
    """The loss (params, (x, y)) -> mean ½‖y − apply_fn(params, x)‖² for any regression model.

    Keep the returned function: the compiled LLC sampler is cached per loss function object.
    """

    def loss(params: object, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return 0.5 * jnp.mean(jnp.sum((apply_fn(params, x) - y) ** 2, axis=-1))

    return loss


def dln_true_params(key: jax.Array, widths: Sequence[int], rank: int,
                    singular_values: Sequence[float] | None = None) -> DLNParams:
    """A true parameter w0 at which every layer, and so the product, has rank exactly `rank`.

    W_s = Q_s D^(1/L) Q_{s+1}ᵀ with random orthonormal frames Q_s (H_s × r) and D holding the
    product's singular values (`singular_values`, r positive numbers; by default evenly spaced
    in [1, 2]); the layers are balanced, so no layer's
    curvature dominates. Every layer having rank r makes w0 the deepest (most singular) point of
    the set of true parameters, where the local learning coefficient equals Aoyagi's global one
    (Aoyagi 2024, Theorem 4).
    """
    _check_widths(widths, rank)
    if rank == 0:
        return tuple(jnp.zeros((a, b)) for a, b in pairwise(widths))
    keys = jax.random.split(key, len(widths))
    frames = [jnp.linalg.qr(jax.random.normal(k, (h, rank)))[0]
              for k, h in zip(keys, widths, strict=True)]
    values = jnp.linspace(1.0, 2.0, rank) if singular_values is None else \
        jnp.asarray(singular_values, jnp.float32)
    if values.shape != (rank,) or not bool(jnp.all(values > 0)):
        raise ConfigError(f"singular_values={singular_values!r} is not allowed: need {rank} "
                          "positive numbers (one per rank)")
    scale = values ** (1 / (len(widths) - 1))
    return tuple((left * scale) @ right.T for left, right in pairwise(frames))


def sample_regression_data(key: jax.Array, apply_fn: Callable[[object, jax.Array], jax.Array],
                           params: object, num_data: int, input_dim: int
                           ) -> tuple[jax.Array, jax.Array]:
    """(x, y) with x ~ N(0, I) of shape [num_data, input_dim] and y = apply_fn(params, x) + N(0, I)."""
    if num_data < 1:
        raise ConfigError(f"num_data={num_data!r} is not allowed: must be >= 1")
    input_key, noise_key = jax.random.split(key)
    x = jax.random.normal(input_key, (num_data, input_dim))
    mean = apply_fn(params, x)
    return x, mean + jax.random.normal(noise_key, mean.shape)


def train_to_minimum(loss_fn: Callable[[object, object], jax.Array], params: object, data: object,
                     num_steps: int = 2000, learning_rate: float = 1e-2) -> object:
    """Full-batch Adam from `params`: a nearby minimum of the empirical loss L_n (for LLC's w*)."""
    if num_steps < 1 or not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ConfigError(f"num_steps={num_steps!r}, learning_rate={learning_rate!r} is not "
                          "allowed: need num_steps >= 1 and learning_rate > 0")
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def run(start, batch):
        def step(state, _):
            current, opt_state = state
            grads = jax.grad(loss_fn)(current, batch)
            updates, opt_state = optimizer.update(grads, opt_state, current)
            return (optax.apply_updates(current, updates), opt_state), None

        (final, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=num_steps)
        return final

    return run(params, data)


# ------------------------------------------------------------------------ the validation suite
# Deep linear networks (widths, true rank) of depth 1 to 4, from regular to highly singular; the
# last two have high multiplicity θ, where λ̂ converges slowly in n and is known to come out low.
VALIDATION_CASES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((4, 3), 3),
    ((4, 3, 4), 1),
    ((4, 3, 4), 2),
    ((4, 3, 4), 3),
    ((5, 2, 3), 1),
    ((4, 2, 3, 4), 2),
    ((2, 3, 3, 2), 1),
    ((3, 3, 3, 3, 3), 2),
    ((3, 3, 3, 3), 1),
    ((3, 3, 3, 3, 3), 1),
)
# The known-answer settings per scale (n data points and the SGLD settings, fixed across cases;
# "cases": how many of VALIDATION_CASES to run, all if absent).
VALIDATION_SETTINGS: dict[str, dict[str, object]] = {
    "smoke": {"num_data": 500, "step_size": 2e-4, "localization": 1.0, "num_steps": 300,
              "num_burnin": 100, "num_chains": 2, "batch_size": 100, "draw_loss": "paired",
              "cases": 3},
    "cpu": {"num_data": 3000, "step_size": 6e-5, "localization": 1.0, "num_steps": 8000,
            "num_burnin": 1000, "num_chains": 4, "batch_size": 500, "draw_loss": "paired"},
    "paper": {"num_data": 10000, "step_size": 2e-5, "localization": 1.0, "num_steps": 30000,
              "num_burnin": 5000, "num_chains": 8, "batch_size": 1000, "draw_loss": "paired"},
}
VALIDATION_TOLERANCE = 0.15  # the bound on |λ̂ − λ| / λ of the pass rule
# The chain keys (seeds of jax.random.PRNGKey) every case is estimated with, one estimate each.
VALIDATION_KEYS: tuple[int, ...] = (0, 1, 2)
# The pass rule of a case, applied by `validation_suite` and asserted by the known-answer tests.
VALIDATION_RULE = (f"every chain key's λ̂ (the mean over its chains) lies within "
                   f"{VALIDATION_TOLERANCE:.0%} of λ")


def passes_validation_rule(estimates: Sequence[float], truth: float) -> bool:
    """VALIDATION_RULE: every estimate (one per chain key) within VALIDATION_TOLERANCE of λ."""
    if len(estimates) == 0:
        raise ConfigError("estimates=[] is not allowed: need one estimate per chain key")
    return all(abs(float(e) - truth) <= VALIDATION_TOLERANCE * truth for e in estimates)


def dln_problem(widths: Sequence[int], rank: int, num_data: int
                ) -> tuple[DLNParams, tuple[jax.Array, jax.Array]]:
    """(w*, data) of a deep linear network with true rank `rank`: w* is the empirical minimum.

    The true parameter and the data come from a key fixed by the case, so every caller (the tests,
    the validation figure) sees the same problem. λ is the learning coefficient at the true
    parameter w0, but λ̂ measures the excess over L_n(w*): at w0 itself λ̂ comes out low by about
    β·λ, since L_n(w0) lies above the empirical minimum by the fitted noise. So w* is the point
    full-batch Adam reaches from w0, which stays next to w0.
    """
    widths = tuple(widths)
    truth_key, data_key = jax.random.split(jax.random.PRNGKey(sum(widths) * 10 + rank))
    w0 = dln_true_params(truth_key, widths, rank)
    data = sample_regression_data(data_key, dln_apply, w0, num_data, widths[0])
    return train_to_minimum(dln_loss, w0, data, num_steps=3000, learning_rate=1e-3), data


def validation_suite(scale: str, cases: Sequence[tuple[tuple[int, ...], int]] = VALIDATION_CASES,
                     keys: Sequence[int] = VALIDATION_KEYS) -> list[dict[str, object]]:
    """One row per (case, chain key): true λ and multiplicity, λ̂ per chain, mean ± std over the
    chains, diagnostics, and the case's verdict under VALIDATION_RULE over all its keys.

    Each key is a separate estimate (its own `jax.random.PRNGKey(key)`, the same w* and data):
    `within_tolerance` says whether this key's λ̂ meets the bound, `case_passes` whether every
    key of the case does; `case_llc_mean` and `case_key_spread` are the mean and the range
    (max − min) of λ̂ over the case's keys.
    """
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    keys = tuple(keys)
    if (not keys or len(set(keys)) != len(keys)
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in keys)):
        raise ConfigError(f"keys={keys!r} is not allowed: must be a non-empty tuple of distinct "
                          "integers >= 0 (seeds of jax.random.PRNGKey)")
    settings = dict(VALIDATION_SETTINGS[scale])
    num_data = int(settings.pop("num_data"))
    cases = cases[:settings.pop("cases", len(cases))]
    rows = []
    for widths, rank in cases:
        w_star, data = dln_problem(widths, rank, num_data)
        truth = dln_learning_coefficient(widths, rank)
        case_rows = []
        for key in keys:  # the same loss_fn, shapes and settings: one compiled sampler per case
            result = estimate_llc(dln_loss, w_star, data, jax.random.PRNGKey(key), **settings)
            case_rows.append({
                "widths": "-".join(map(str, widths)), "depth": len(widths) - 1, "rank": rank,
                "key": key, "num_params": dln_num_params(widths), "true_llc": truth,
                "multiplicity": dln_multiplicity(widths, rank), "llc": result.mean,
                "llc_std": result.std, "chain_llcs": [float(v) for v in result.chain_llcs],
                "relative_error": (result.mean - truth) / truth,
                "within_tolerance": abs(result.mean - truth) <= VALIDATION_TOLERANCE * truth,
                "mala_acceptance": result.mala_acceptance, "num_data": num_data,
                "nbeta": result.settings.nbeta, **{k: v for k, v in settings.items()}})
        estimates = [row["llc"] for row in case_rows]
        verdict = {"case_passes": passes_validation_rule(estimates, truth),
                   "case_llc_mean": sum(estimates) / len(estimates),
                   "case_key_spread": max(estimates) - min(estimates), "num_keys": len(keys)}
        rows.extend({**row, **verdict} for row in case_rows)
    return rows
