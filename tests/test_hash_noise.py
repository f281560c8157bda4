"""Statistical tests of the SGLD sampler's hashed random numbers (devrl.measures.llc), as the
sampler uses them.

The Gaussian noise is z = √2 erfinv(2u − 1) of uniforms u from a counter-based hash keyed by two
words of a JAX key (`_hash_uniform`, `_normal_like`); the minibatch indices come from the same
hash (`_random_indices`). `_sample` derives each step's (minibatch, noise) words from the chain
key; `_step_words` below repeats that derivation with the same functions, and the first test
checks it against the sampler itself (a model whose draw loss exposes w and the minibatch).

Every bound is a few standard errors of its statistic under the null (independent N(0, 1) or
uniform draws): moments of 2^20 draws (SE of the mean 1/√n, variance √(2/n), skewness √(6/n),
excess kurtosis √(24/n)) within 5 SE; correlations of m-vectors (SE 1/√m) pooled per lag within
5 SE, and every pair of vectors within 6 SE (the maximum of ~10^4–10^5 null |z| is ~4.5);
Kolmogorov–Smirnov and chi-square p-values above 1e-3. The keys are fixed, so the tests are
deterministic. The 2^-23 grid of u and the |z| < 5.3 truncation are far below what n = 2^20
draws resolve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from devrl.measures import llc
from devrl.measures.llc import estimate_llc

N_DRAWS = 1 << 20
KEYS = (0, 1, 2)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _step_words(key: jax.Array, num_chains: int, num_steps: int):
    """[steps, chains] hash words of every step's minibatch key and noise key, as `_sample`
    derives them: chain keys split from `key`, step keys split from each chain key, and each
    step key split into the (minibatch, noise) pair, each expanded by `llc._hash_words`."""
    step_keys = jax.vmap(lambda k: jax.random.split(k, num_steps), out_axes=1)(
        jax.random.split(key, num_chains))
    pairs = jax.vmap(jax.vmap(jax.random.split))(step_keys)
    words = jax.vmap(jax.vmap(llc._hash_words))
    return words(pairs[:, :, 0]), words(pairs[:, :, 1])


def _normals(words, shape) -> np.ndarray:
    """The sampler's noise for one parameter leaf of `shape` under each of a batch of word pairs."""
    tree = jnp.zeros(shape, jnp.float32)
    draw = jax.jit(jax.vmap(lambda k0, k1: llc._normal_like((k0, k1), tree, (True,))))
    k0, k1 = (jnp.ravel(w) for w in words)
    return np.asarray(draw(k0, k1), np.float64).reshape(*np.shape(words[0]), -1)


def test_step_words_reproduce_the_samplers_noise_and_minibatches():
    # Zero gradient and γ = 0: w_{t+1} = w_t + √ε z_t, and the "minibatch" draw loss is
    # c·w_t + mean of the minibatch's x, so the trace exposes both streams of every chain.
    num_data, batch, steps, chains = 1000, 64, 40, 3
    c = {"a": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.arange(1.0, 6.0)}
    x = jnp.arange(num_data, dtype=jnp.float32)

    def loss(params, batch_x):
        exposed = sum(jnp.sum(c[k] * params[k]) for k in c)
        return jax.lax.stop_gradient(exposed) + jnp.mean(batch_x)

    w_star = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(5)}
    key = jax.random.PRNGKey(5)
    result = estimate_llc(loss, w_star, x, key, step_size=1.0, localization=0.0,
                          num_steps=steps, num_burnin=0, num_chains=chains, batch_size=batch)
    batch_words, noise_words = _step_words(key, chains, steps)
    noise = jax.jit(jax.vmap(jax.vmap(
        lambda k0, k1: llc._normal_like((k0, k1), w_star, (True, True)))))(*noise_words)
    exposed = sum(jnp.sum(c[k] * noise[k], axis=tuple(range(2, noise[k].ndim))) for k in c)
    positions = np.concatenate([np.zeros((1, chains)), np.cumsum(exposed, axis=0)[:-1]])
    indices = jax.jit(jax.vmap(jax.vmap(
        lambda k0, k1: llc._random_indices((k0, k1), batch, num_data))))(*batch_words)
    expected = positions + np.asarray(x[indices]).mean(axis=-1)
    np.testing.assert_allclose(result.loss_trace, expected.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("key", KEYS)
def test_noise_moments_and_distribution_match_a_standard_normal(key):
    noise_words = _step_words(jax.random.PRNGKey(key), 1, 1)[1]
    z = _normals(noise_words, (N_DRAWS,)).ravel()
    n = z.size
    checks = {  # statistic, its value under N(0, 1), its standard error
        "mean": (z.mean(), 0.0, np.sqrt(1 / n)),
        "variance": (z.var(), 1.0, np.sqrt(2 / n)),
        "skewness": (stats.skew(z), 0.0, np.sqrt(6 / n)),
        "excess kurtosis": (stats.kurtosis(z), 0.0, np.sqrt(24 / n)),
    }
    for name, (value, null, se) in checks.items():
        assert abs(value - null) <= 5 * se, f"{name} = {value:.5f}, null {null}, SE {se:.1e}"
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_neighbouring_entries_of_one_noise_vector_are_uncorrelated():
    # Lags 1–8 and the powers of two (the hash mixes index ^ k0, so bit flips are the risk).
    z = _normals(_step_words(jax.random.PRNGKey(3), 1, 1)[1], (N_DRAWS,)).ravel()
    z = (z - z.mean()) / z.std()
    for lag in sorted({*range(1, 9), *(1 << p for p in range(4, 17))}):
        r = np.mean(z[:-lag] * z[lag:])
        assert abs(r) <= 5 / np.sqrt(N_DRAWS - lag), f"lag {lag}: r = {r:.5f}"


def test_noise_of_different_steps_and_chains_is_uncorrelated():
    # Every step of 4 chains (and every step's minibatch uniforms, as normals): the correlation
    # of each pair of 4096-vectors; pooled over pairs at each step lag within a chain and for
    # different chains at the same step, and for every single pair.
    chains, steps, m = 4, 64, 4096
    batch_words, noise_words = _step_words(jax.random.PRNGKey(11), chains, steps)
    noise = _normals(noise_words, (m,))  # [steps, chains, m]
    batch = _normals(batch_words, (m,))
    vectors = np.concatenate([noise, batch], axis=0).reshape(2 * steps * chains, m)
    vectors = (vectors - vectors.mean(axis=1, keepdims=True)) / vectors.std(axis=1, keepdims=True)
    corr = vectors @ vectors.T / m  # rows: (stream, step, chain)
    se = 1 / np.sqrt(m)
    r = corr[:steps * chains, :steps * chains].reshape(steps, chains, steps, chains)
    for lag in range(1, 9):
        pooled = np.mean([r[t, c, t + lag, c] for t in range(steps - lag) for c in range(chains)])
        count = (steps - lag) * chains
        assert abs(pooled) <= 5 * se / np.sqrt(count), f"step lag {lag}: r = {pooled:.5f}"
    across = [r[t, c, t, d] for t in range(steps) for c in range(chains) for d in range(c)]
    assert abs(np.mean(across)) <= 5 * se / np.sqrt(len(across)), np.mean(across)
    noise_vs_batch = corr[:steps * chains, steps * chains:]
    assert abs(np.mean(noise_vs_batch)) <= 5 * se / np.sqrt(noise_vs_batch.size)
    off_diagonal = np.abs(corr[np.triu_indices_from(corr, k=1)])
    assert off_diagonal.max() <= 6 * se, f"max |r| = {off_diagonal.max():.4f} (SE {se:.4f})"


@pytest.mark.parametrize("num_data", [3000, 997])
def test_minibatch_indices_are_uniform(num_data):
    batch_words = _step_words(jax.random.PRNGKey(num_data), 1, 1)[0]
    words = (batch_words[0][0, 0], batch_words[1][0, 0])
    indices = np.asarray(llc._random_indices(words, N_DRAWS, num_data))
    assert indices.min() >= 0 and indices.max() < num_data
    counts = np.bincount(indices, minlength=num_data)
    assert stats.chisquare(counts).pvalue > 1e-3
    # Serial test: disjoint pairs of neighbouring indices from range(32), in 32 × 32 cells.
    small = np.asarray(llc._random_indices(words, N_DRAWS, 32))
    pairs = np.bincount(small[0::2] * 32 + small[1::2], minlength=32 * 32)
    assert stats.chisquare(pairs).pvalue > 1e-3


def test_minibatch_indices_of_consecutive_steps_are_independent():
    # The overlap of two independent minibatches (b draws each from n, with replacement) has
    # mean b²/n; pooled over the consecutive steps of 4 chains.
    num_data, batch, chains, steps = 3000, 500, 4, 200
    batch_words = _step_words(jax.random.PRNGKey(21), chains, steps)[0]
    draw = jax.jit(jax.vmap(jax.vmap(
        lambda k0, k1: llc._random_indices((k0, k1), batch, num_data))))
    indices = np.asarray(draw(*batch_words))  # [steps, chains, batch]
    matches = np.stack([(indices[t + 1][:, :, None] == indices[t][:, None, :]).sum(axis=(1, 2))
                        for t in range(steps - 1)])  # [steps - 1, chains]: pairs of equal index
    expected, se = batch * batch / num_data, np.sqrt(batch * batch / num_data)
    assert abs(matches.mean() - expected) <= 5 * se / np.sqrt(matches.size), matches.mean()
    assert np.all(np.abs(matches - expected) <= 6 * se), (matches.min(), matches.max())
