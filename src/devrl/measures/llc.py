"""Local learning coefficient (LLC) estimation by localised SGLD, in pure JAX.

The estimate at a point w* (a local minimum of the loss) is

    λ̂(w*) = nβ · (E_w[L_n(w)] − L_n(w*)),

where L_n is the average loss over the n data points, L_n(w*) is computed over the full dataset,
and the expectation is over the tempered, localised posterior exp(−nβ L_n(w) − γ/2 ‖w − w*‖²),
approximated by the post-burn-in draws of Langevin chains started at w*. The default inverse
temperature is β = 1/log n (nβ = n / log n). One SGLD step on a minibatch is

    w ← w − (ε/2) · (nβ ∇L_batch(w) + γ (w − w*)) + √ε · ξ,    ξ ~ N(0, I).

The loss must be the average negative log-likelihood (up to an additive constant) for λ̂ to
estimate the learning coefficient: nL_n then is the log-likelihood that the posterior tempers.
The loss of each draw is by default the loss on that step's minibatch at the current w (unbiased
for L_n(w), noisy); `draw_loss` can pair it with the same minibatch's loss at w* or evaluate L_n.

Steps are `jax.lax.scan`ned, chains are `jax.vmap`ped within each step, and one estimate is one
`jax.jit` call, deterministic for a fixed PRNG key. The compiled sampler is cached per loss_fn,
integer/string settings and shapes (ε, nβ, γ are passed as values): reuse the same `loss_fn`
object to reuse it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from devrl.core.base import ConfigError

SAMPLERS = ("sgld", "rmsprop_sgld")
# How the loss of each draw is measured, each an unbiased estimate of L_n(w): "minibatch", the
# loss on the step's minibatch (free, noisy); "paired", L_batch(w) − L_batch(w*) + L_n(w*) on the
# same minibatch (one more forward pass, far less noisy since the two losses are correlated);
# "full", L_n(w) itself (exact, one pass over the data per draw).
DRAW_LOSSES = ("minibatch", "paired", "full")

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]
PathPredicate = Callable[[tuple[str, ...]], bool]


class LLCDivergenceError(RuntimeError):
    """The sampler produced non-finite losses or weights: the step is too large for this nβ, γ."""


@dataclass(frozen=True)
class LLCSettings:
    """Every setting of one LLC estimate, as recorded in its result and validated before use."""

    step_size: float  # ε
    nbeta: float  # nβ
    localization: float  # γ
    num_steps: int  # SGLD steps per chain, burn-in included
    num_burnin: int  # leading steps that are not draws
    num_chains: int
    batch_size: int  # minibatch size of the gradient (n: full-batch gradients)
    sampler: str
    num_data: int  # n
    draw_loss: str
    rmsprop_decay: float  # running-average decay of squared gradients (rmsprop_sgld only)
    rmsprop_eps: float  # added to the RMS gradient before inverting (rmsprop_sgld only)
    eval_batch_size: int  # chunk size of full-dataset loss evaluations
    mala_every: int  # the MALA acceptance is computed on every this-many-th draw step

    @property
    def num_draws(self) -> int:
        return self.num_steps - self.num_burnin

    @property
    def beta(self) -> float:
        return self.nbeta / self.num_data

    def validate(self) -> LLCSettings:
        """Raise ConfigError naming the first setting that is out of range."""
        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        if self.num_data < 2:
            bad("num_data", "need at least 2 data points (the default β is 1/log n)")
        for name in ("step_size", "nbeta", "rmsprop_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                bad(name, "must be a finite number > 0")
        if not (math.isfinite(self.localization) and self.localization >= 0):
            bad("localization", "must be a finite number >= 0")
        if not 0 < self.rmsprop_decay < 1:
            bad("rmsprop_decay", "must be in (0, 1)")
        for name in ("num_steps", "num_chains", "batch_size", "eval_batch_size", "mala_every"):
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer (>= 1)")
        if self.num_burnin < 0:
            bad("num_burnin", "must be >= 0")
        if self.num_burnin >= self.num_steps:
            bad("num_burnin", f"must be < num_steps={self.num_steps} (at least one draw)")
        if self.batch_size > self.num_data:
            bad("batch_size", f"must be at most num_data={self.num_data}")
        if self.sampler not in SAMPLERS:
            bad("sampler", f"must be one of {', '.join(SAMPLERS)}")
        if self.draw_loss not in DRAW_LOSSES:
            bad("draw_loss", f"must be one of {', '.join(DRAW_LOSSES)}")
        return self


@dataclass(frozen=True, eq=False)
class LLCResult:
    """One LLC estimate: per-chain values, the traces they come from, settings and diagnostics."""

    chain_llcs: np.ndarray  # [chains] nβ (mean draw loss of the chain − L_n(w*))
    mean: float  # mean of chain_llcs
    std: float  # sample standard deviation of chain_llcs (0 for one chain)
    loss_trace: np.ndarray  # [chains, draws] loss of each draw (see LLCSettings.draw_loss)
    init_loss: float  # L_n(w*) over the full dataset
    settings: LLCSettings
    mala_acceptance: float  # mean MALA acceptance probability over every mala_every-th draw step
    frac_below_init: float  # fraction of draws whose (estimated) loss is below L_n(w*)
    distance_trace: np.ndarray  # [chains, draws] ‖w − w*‖ over the sampled weights
    num_sampled: int  # number of sampled (not frozen) weights

    @property
    def mean_distance(self) -> float:
        return float(np.mean(self.distance_trace))

    @property
    def max_distance(self) -> float:
        return float(np.max(self.distance_trace))


def num_data_points(data: PyTree) -> int:
    """The shared leading-axis length of every leaf of `data` (the number of data points n)."""
    lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1
               for leaf in jax.tree_util.tree_leaves(data)}
    if len(lengths) != 1 or -1 in lengths:
        shapes = [np.shape(leaf) for leaf in jax.tree_util.tree_leaves(data)]
        raise ConfigError(f"data shapes={shapes} is not allowed: every leaf must be an array whose "
                          "leading axis indexes the same n data points")
    return lengths.pop()


def restrict_data(data: PyTree, index_mask: Any) -> PyTree:
    """The data points where `index_mask` is true, for a data-restricted LLC (n = their count)."""
    n = num_data_points(data)
    index_mask = np.asarray(index_mask)
    if index_mask.dtype != bool or index_mask.shape != (n,):
        raise ConfigError(f"index_mask of dtype {index_mask.dtype} and shape {index_mask.shape} is "
                          f"not allowed: must be a boolean array of shape ({n},)")
    if index_mask.sum() < 2:
        raise ConfigError(f"index_mask selecting {int(index_mask.sum())} points is not allowed: "
                          "must select at least 2 data points")
    indices = np.flatnonzero(index_mask)
    return jax.tree_util.tree_map(lambda leaf: leaf[indices], data)


def parameter_paths(params: PyTree) -> list[tuple[str, ...]]:
    """The path of every parameter leaf as a tuple of names, as a `restrict_to` predicate sees it."""
    return [_path_names(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def sample_mask(params: PyTree, restrict_to: PyTree | PathPredicate | None = None) -> PyTree:
    """Boolean pytree shaped like `params`: true where SGLD samples, false where w stays at w*.

    `restrict_to` is None (sample everything), a predicate on parameter paths (tuples of names,
    e.g. ("params", "Dense_0", "kernel") for Flax), or a pytree like `params` of booleans, each
    leaf a scalar or an array broadcastable to its parameter's shape.
    """
    if restrict_to is None:
        mask = jax.tree_util.tree_map(lambda leaf: np.ones(np.shape(leaf), bool), params)
    elif callable(restrict_to):
        mask = jax.tree_util.tree_map_with_path(
            lambda path, leaf: np.full(np.shape(leaf), bool(restrict_to(_path_names(path)))),
            params)
    else:
        if jax.tree_util.tree_structure(restrict_to) != jax.tree_util.tree_structure(params):
            raise ConfigError(f"restrict_to with structure {jax.tree_util.tree_structure(restrict_to)}"
                              " is not allowed: must have the structure of params, "
                              f"{jax.tree_util.tree_structure(params)}")
        try:
            mask = jax.tree_util.tree_map(
                lambda m, leaf: np.broadcast_to(np.asarray(m, bool), np.shape(leaf)).copy(),
                restrict_to, params)
        except ValueError as error:
            raise ConfigError(f"restrict_to is not allowed: every leaf must broadcast to its "
                              f"parameter's shape ({error})") from None
    if not any(np.any(leaf) for leaf in jax.tree_util.tree_leaves(mask)):
        raise ConfigError("restrict_to is not allowed: it selects no parameter; allowed are "
                          f"masks or predicates selecting some of {parameter_paths(params)}")
    return mask


def full_loss(loss_fn: LossFn, params: PyTree, data: PyTree, batch_size: int = 4096) -> jax.Array:
    """L_n(params): the loss averaged over the whole dataset, in chunks of `batch_size` points."""
    n = num_data_points(data)
    if n <= batch_size:
        return loss_fn(params, data)
    num_chunks, remainder = divmod(n, batch_size)
    head = jax.tree_util.tree_map(
        lambda leaf: leaf[:num_chunks * batch_size].reshape(
            (num_chunks, batch_size) + leaf.shape[1:]), data)
    total = jnp.sum(jax.lax.map(lambda chunk: loss_fn(params, chunk), head)) * batch_size
    if remainder:
        tail = jax.tree_util.tree_map(lambda leaf: leaf[num_chunks * batch_size:], data)
        total = total + loss_fn(params, tail) * remainder
    return total / n


def estimate_llc(
    loss_fn: LossFn,
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    *,
    step_size: float = 1e-4,
    nbeta: float | None = None,
    localization: float = 100.0,
    num_steps: int = 1000,
    num_burnin: int = 250,
    num_chains: int = 4,
    batch_size: int = 256,
    sampler: str = "sgld",
    draw_loss: str = "minibatch",
    restrict_to: PyTree | PathPredicate | None = None,
    rmsprop_decay: float = 0.999,
    rmsprop_eps: float = 1e-5,
    eval_batch_size: int = 4096,
    mala_every: int = 10,
) -> LLCResult:
    """Estimate the local learning coefficient of `loss_fn` at w* = `params` on `data`.

    `loss_fn(params, batch)` is the mean loss over a batch (a pytree of arrays whose leading axis
    indexes data points, like `data`). `nbeta` defaults to n / log n. A `batch_size` of n or more
    means full-batch gradients; smaller minibatches are drawn with replacement. `restrict_to`
    samples only some weights (see `sample_mask`); the others stay at w*, and restricting to all
    weights gives bitwise the unrestricted estimate. For a data-restricted LLC pass
    `restrict_data(data, index_mask)`. `draw_loss` says how each draw's loss is measured
    (see DRAW_LOSSES): on the step's minibatch by default, paired with w* on it, or in full.
    "rmsprop_sgld" preconditions drift and noise by G = 1 / (rmsprop_eps + RMS of the minibatch
    loss gradient), as pSGLD (Li et al. 2016): there ε is the step before preconditioning. Like
    pSGLD it omits the drift term from G's derivative, which is harmless only if G varies slowly
    next to the chain's motion: hence the slow default decay (with 0.99 G follows the chain's
    position and measured λ̂ came out ~20% high on a regular model).
    Rule of thumb for ε: ε · nβ · (largest loss curvature) ≲ 0.05, and mala_acceptance near 1.
    The default γ = 100 follows Lau et al. (2023); at nβ of a few hundred it biased estimates at
    singular points low in the known-answer tests, which use γ = 1.
    Raises LLCDivergenceError when any chain produces a non-finite loss or weight.
    """
    n = num_data_points(data)
    if nbeta is None:
        nbeta = n / math.log(n) if n > 1 else math.nan
    settings = LLCSettings(
        step_size=float(step_size), nbeta=float(nbeta), localization=float(localization),
        num_steps=int(num_steps), num_burnin=int(num_burnin), num_chains=int(num_chains),
        batch_size=min(int(batch_size), n), sampler=sampler, num_data=n, draw_loss=draw_loss,
        rmsprop_decay=float(rmsprop_decay), rmsprop_eps=float(rmsprop_eps),
        eval_batch_size=int(eval_batch_size), mala_every=int(mala_every),
    ).validate()
    mask = sample_mask(params, restrict_to)
    init_loss, losses, distances, acceptance = (
        np.asarray(x) for x in _run_chains(loss_fn, settings, params, mask, data, key))
    if not np.isfinite(init_loss):
        raise ValueError(f"the loss at w* is {init_loss}: params must be a point of finite loss")
    finite = np.isfinite(losses).all(axis=1) & np.isfinite(distances).all(axis=1)
    if not finite.all():
        raise LLCDivergenceError(
            f"SGLD diverged (non-finite loss or weights in chains {np.flatnonzero(~finite).tolist()}"
            f" of {settings.num_chains}) with step_size={settings.step_size:g}, "
            f"nbeta={settings.nbeta:g}, localization={settings.localization:g}: use a smaller "
            "step_size or a larger localization")
    chain_llcs = settings.nbeta * (losses.astype(np.float64).mean(axis=1) - float(init_loss))
    return LLCResult(
        chain_llcs=chain_llcs,
        mean=float(chain_llcs.mean()),
        std=float(chain_llcs.std(ddof=1)) if settings.num_chains > 1 else 0.0,
        loss_trace=losses,
        init_loss=float(init_loss),
        settings=settings,
        mala_acceptance=float(np.mean(acceptance)),
        frac_below_init=float(np.mean(losses < init_loss)),
        distance_trace=distances,
        num_sampled=int(sum(np.sum(leaf) for leaf in jax.tree_util.tree_leaves(mask))),
    )


def loss_free_distance(num_sampled: int, step_size: float, localization: float,
                       num_burnin: int, num_steps: int) -> float:
    """The mean over draws of E‖w − w*‖ that plain SGLD reaches with no loss term at all: the
    chains of `estimate_llc` (sampler "sgld") with the same d, ε, γ and steps, held by the
    localisation alone. The chain is then w_t − w* = a (w_{t−1} − w*) + √ε ξ with a = 1 − εγ/2,
    so w_t − w* ~ N(0, σ_t² I) with σ_t² = ε (1 − a^{2t}) / (1 − a²), and ‖w_t − w*‖ = σ_t·χ_d,
    E χ_d = √2 Γ((d + 1)/2) / Γ(d/2). Draw t is the state after t steps, t = burn-in … steps − 1
    (as `LLCResult.distance_trace`). The confinement ratio observed/this is 1 where the loss
    does not hold the chains at all and small where it does.
    """
    if not (num_sampled >= 1 and step_size > 0 and localization > 0
            and 0 <= num_burnin < num_steps):
        raise ConfigError(f"num_sampled={num_sampled!r}, step_size={step_size!r}, "
                          f"localization={localization!r}, num_burnin={num_burnin!r}, "
                          f"num_steps={num_steps!r} is not allowed: need d >= 1, ε > 0, γ > 0 "
                          "and 0 <= burn-in < steps")
    a = 1.0 - 0.5 * step_size * localization
    if not abs(a) < 1:
        raise ConfigError(f"step_size={step_size!r} is not allowed with localization="
                          f"{localization!r}: plain SGLD diverges once εγ >= 4")
    t = np.arange(num_burnin, num_steps, dtype=np.float64)
    sigma = np.sqrt(step_size * -np.expm1(2 * t * np.log(abs(a))) / (1 - a * a))
    chi_mean = math.exp(0.5 * math.log(2) + math.lgamma((num_sampled + 1) / 2)
                        - math.lgamma(num_sampled / 2))
    return float(chi_mean * sigma.mean())


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    names = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                names.append(str(getattr(entry, attribute)))
                break
        else:
            names.append(str(entry))
    return tuple(names)


def _sum_leaves(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def _fmix32(h: jax.Array) -> jax.Array:
    """The murmur3 finaliser: a bijective, well-mixing hash of uint32 words."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _hash_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two words of `key` that key `_hash_uniform` (one threefry call per key)."""
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    return k0, k1


def _hash_uniform(key: jax.Array | tuple[jax.Array, jax.Array], size: int, offset: int = 0
                  ) -> jax.Array:
    """`size` uniforms in (0, 1), a counter-based hash of their index keyed by two words of `key`.

    u = ((fmix32(fmix32(index ^ k0) + k1) >> 9) + 1/2) / 2^23, on a grid of 2^-23 (exact in
    float32, never 0 or 1). Drawing 10^6 normals with `jax.random.normal` (threefry) took ~75 ms
    on this CPU, more than a gradient of a width-512 policy on a minibatch, and the threefry
    minibatch indices of a small model took a fifth of its step; this is ~6x (normals) to ~30x
    (indices) cheaper. The known-answer tests validate the sampler with it. `key` may also be
    the words `_hash_words(key)` themselves.
    """
    k0, k1 = key if isinstance(key, tuple) else _hash_words(key)
    index = jax.lax.iota(jnp.uint32, size) + jnp.uint32(offset)
    bits = _fmix32(_fmix32(index ^ k0) + k1)
    return ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 23))


def _normal_like(key: jax.Array, tree: PyTree, sampled: tuple[bool, ...]) -> PyTree:
    """Standard normal noise shaped like `tree`, exact zeros at the leaves not `sampled`.

    z = √2 erfinv(2u − 1) of `_hash_uniform` draws (|z| < 5.3), one counter range per leaf, in
    leaf order: drawn as one vector over all sampled leaves (one key expansion, one erfinv) and
    split, which gives the same numbers as drawing leaf by leaf.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    sizes = [int(np.prod(jnp.shape(leaf), dtype=np.int64)) for leaf in leaves]
    total = sum(size for size, active in zip(sizes, sampled, strict=True) if active)
    if total >= 1 << 32:
        raise ValueError(f"{total} sampled weights is not allowed: at most 2^32 - 1")
    z = jnp.sqrt(2.0) * jax.lax.erf_inv(2.0 * _hash_uniform(key, total) - 1.0) if total else None
    noise, offset = [], 0
    for leaf, size, active in zip(leaves, sizes, sampled, strict=True):
        if not active:
            noise.append(jnp.zeros_like(leaf))
            continue
        noise.append(z[offset:offset + size].reshape(jnp.shape(leaf)).astype(
            jnp.result_type(leaf)))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, noise)


def _random_indices(key: jax.Array, size: int, num_data: int) -> jax.Array:
    """`size` indices drawn from range(num_data) with replacement (hashed uniforms; each index
    has probability within num_data / 2^23 (relative) of 1/num_data)."""
    return jnp.minimum((_hash_uniform(key, size) * num_data).astype(jnp.int32), num_data - 1)


def _mala_acceptance(old: tuple, new: tuple, precond: PyTree, step_size: float) -> jax.Array:
    """Metropolis-adjusted Langevin acceptance probability of the move old → new.

    Each state is (w, U(w), ∇U(w)) with U = nβ L_batch + γ/2 ‖w − w*‖² on the step's minibatch
    (the same one at both ends), so the value is exact for that minibatch's potential and only
    approximate for the full-data one; the step's preconditioner G serves both directions.
    """
    w_old, potential_old, grad_old = old
    w_new, potential_new, grad_new = new

    def log_proposal(to, start, grad):
        return -_sum_leaves(jax.tree_util.tree_map(
            lambda t, s, g, p: (t - s + 0.5 * step_size * p * g) ** 2 / p,
            to, start, grad, precond)) / (2 * step_size)

    log_ratio = (potential_old - potential_new + log_proposal(w_old, w_new, grad_new)
                 - log_proposal(w_new, w_old, grad_old))
    return jnp.exp(jnp.minimum(0.0, log_ratio))


class _Hyper(NamedTuple):
    """The real-valued settings, passed to the compiled sampler as values (no recompiling)."""

    step_size: float
    nbeta: float
    localization: float
    rmsprop_decay: float
    rmsprop_eps: float


def _sample(loss_fn: LossFn, layout: LLCSettings, coverage: tuple[str, ...], hyper: _Hyper,
            w_star: PyTree, mask: PyTree, data: PyTree, init_loss: jax.Array, key: jax.Array
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """All chains from w*: [draws, chains] draw losses and ‖w − w*‖, and the MALA acceptances.

    Steps are scanned over, chains vmapped within each step; the acceptance is computed on every
    `mala_every`-th draw step only (zero elsewhere), under a real (unbatched) conditional.
    `coverage[i]` says how much of parameter leaf i the mask samples: "none" (no noise is drawn
    for it), "some" (masked elementwise) or "all" (never masked).
    """
    s, h = layout, hyper
    tree_map = jax.tree_util.tree_map
    value_and_grad = jax.value_and_grad(loss_fn)
    sampled = tuple(covered != "none" for covered in coverage)

    def masked(tree):
        """Zero outside the mask; leaves the mask covers entirely are passed through."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        masks = jax.tree_util.tree_leaves(mask)
        return jax.tree_util.tree_unflatten(treedef, [
            x if covered == "all" else jnp.where(m, x, jnp.zeros_like(x))
            for m, x, covered in zip(masks, leaves, coverage, strict=True)])

    def minibatch(batch_key):
        if s.batch_size >= s.num_data:
            return data
        indices = _random_indices(batch_key, s.batch_size, s.num_data)
        return tree_map(lambda leaf: leaf[indices], data)

    def potential(w, batch):
        """(U(w), ∇U(w) at the sampled weights, ∇L_batch(w) there, L_batch(w), w − w*)."""
        loss, grad = value_and_grad(w, batch)
        offset = tree_map(jnp.subtract, w, w_star)  # exactly zero at unsampled weights
        grad_potential = masked(tree_map(lambda g, d: h.nbeta * g + h.localization * d,
                                         grad, offset))
        value = h.nbeta * loss + 0.5 * h.localization * _sum_leaves(tree_map(jnp.square, offset))
        return value, grad_potential, masked(grad), loss, offset

    def move(state, step_words):
        """One (preconditioned) SGLD step of one chain, and what its draw and MALA check need.

        `step_words`: the hash words of the step's minibatch key and of its noise key.
        """
        w, second_moment, t = state
        batch_key, noise_key = step_words
        value, grad_potential, grad, loss, offset = potential(w, minibatch(batch_key))
        if s.sampler == "rmsprop_sgld":
            second_moment = tree_map(
                lambda v, g: h.rmsprop_decay * v + (1 - h.rmsprop_decay) * g * g,
                second_moment, grad)
            debias = 1 - h.rmsprop_decay ** (t + 1)
            precond = tree_map(lambda v: 1 / (h.rmsprop_eps + jnp.sqrt(v / debias)),
                               second_moment)
        else:
            precond = tree_map(jnp.ones_like, w)
        noise = masked(_normal_like(noise_key, w, sampled))
        w_next = tree_map(
            lambda x, g, p, z: x - 0.5 * h.step_size * p * g + jnp.sqrt(h.step_size * p) * z,
            w, grad_potential, precond, noise)
        return (w_next, second_moment, t + 1), (batch_key, value, grad_potential, precond, loss,
                                                offset)

    def draw(w, batch_key, loss, offset):
        if s.draw_loss == "full":
            loss = full_loss(loss_fn, w, data, s.eval_batch_size)
        elif s.draw_loss == "paired":
            loss = loss - loss_fn(w_star, minibatch(batch_key)) + init_loss
        return loss, jnp.sqrt(_sum_leaves(tree_map(jnp.square, offset)))

    def acceptance(w, w_next, batch_key, value, grad_potential, precond):
        value_next, grad_potential_next, *_ = potential(w_next, minibatch(batch_key))
        return _mala_acceptance((w, value, grad_potential),
                                (w_next, value_next, grad_potential_next), precond, h.step_size)

    def burn_in(states, step_keys):
        return jax.vmap(move)(states, step_keys)[0], None

    def sample(states, inputs):
        step_keys, index = inputs
        next_states, (batch_key, value, grad_potential, precond, loss, offset) = \
            jax.vmap(move)(states, step_keys)
        losses, distances = jax.vmap(draw)(states[0], batch_key, loss, offset)
        accepted = jax.lax.cond(
            index % s.mala_every == 0,
            lambda: jax.vmap(acceptance)(states[0], next_states[0], batch_key, value,
                                         grad_potential, precond),
            lambda: jnp.zeros(s.num_chains, losses.dtype))
        return next_states, (losses, distances, accepted)

    chains = s.num_chains
    step_keys = jax.vmap(lambda k: jax.random.split(k, s.num_steps), out_axes=1)(
        jax.random.split(key, chains))  # [steps, chains]
    # Each step's (minibatch, noise) key pair, expanded into hash words for all steps at once
    # (vectorised threefry before the loop rather than three small calls inside every step).
    pairs = jax.vmap(jax.vmap(jax.random.split))(step_keys)  # [steps, chains, 2]
    step_words = (jax.vmap(jax.vmap(_hash_words))(pairs[:, :, 0]),
                  jax.vmap(jax.vmap(_hash_words))(pairs[:, :, 1]))
    starts = tree_map(lambda x: jnp.broadcast_to(x, (chains, *jnp.shape(x))), w_star)
    states = (starts, tree_map(jnp.zeros_like, starts), jnp.zeros(chains, jnp.int32))
    head = jax.tree_util.tree_map(lambda x: x[:s.num_burnin], step_words)
    tail = jax.tree_util.tree_map(lambda x: x[s.num_burnin:], step_words)
    states, _ = jax.lax.scan(burn_in, states, head)
    _, draws = jax.lax.scan(sample, states, (tail, jnp.arange(s.num_draws)))
    return draws


def _run_chains(loss_fn: LossFn, settings: LLCSettings, w_star: PyTree, mask: PyTree,
                data: PyTree, key: jax.Array) -> tuple[jax.Array, ...]:
    """L_n(w*) and the chains' draw losses, distances and acceptances, from one compiled call.

    The compiled program depends on the integer and string settings only: the real-valued ones
    are passed as values, so changing ε, nβ or γ does not recompile.
    """
    hyper = _Hyper(settings.step_size, settings.nbeta, settings.localization,
                   settings.rmsprop_decay, settings.rmsprop_eps)
    layout = dataclasses.replace(settings, **dict.fromkeys(_Hyper._fields, 0.0))
    coverage = tuple("all" if np.all(leaf) else "some" if np.any(leaf) else "none"
                     for leaf in jax.tree_util.tree_leaves(mask))
    return _run_compiled(loss_fn, layout, coverage, hyper, w_star, mask, data, key)


@functools.partial(jax.jit, static_argnames=("loss_fn", "layout", "coverage"))
def _run_compiled(loss_fn: LossFn, layout: LLCSettings, coverage: tuple[str, ...],
                  hyper: _Hyper, w_star: PyTree, mask: PyTree, data: PyTree, key: jax.Array
                  ) -> tuple[jax.Array, ...]:
    init_loss = full_loss(loss_fn, w_star, data, layout.eval_batch_size)
    losses, distances, acceptance = _sample(loss_fn, layout, coverage, hyper, w_star, mask, data,
                                            init_loss, key)
    return init_loss, losses.T, distances.T, acceptance[::layout.mala_every].T
