"""Hill numbers of an assemblage from an incomplete sample: the asymptotic estimators of Chao et
al. (2014, Ecological Monographs 84:45-67) and their bootstrap from an estimated assemblage.

Why not the plug-in numbers with a percentile bootstrap: resampling the sample itself can never
produce a type it did not see, so at low sample coverage the bootstrap distribution of D0 or D1
lies below the plug-in estimate and its percentile interval can exclude it (it did, in 258 of 265
checkpoints of the reward runs). Chao et al. estimate what the sample has not seen (the Good-
Turing coverage, the number and abundance of undetected types) and resample from that estimated
assemblage. We implement the three estimators and the bootstrap from the papers because no
maintained Python package offers both (scikit-bio has Chao1 and plug-in Hill numbers; iNEXT,
which has everything, is R).

Comparing samples at equal completeness (`coverage_at`, `diversity_at`, `size_for_coverage`,
`standardised`, `base_coverage`): Chao & Jost (2012) and Chao et al. (2014) compare assemblages
not at their own sample sizes but at a common sample coverage C*, the share of the assemblage's
individuals that belong to types a sample has seen. Each sample is rarefied (m < n, the exact
expectations over subsamples of size m) or extrapolated (m > n, from the estimated undetected
types) to the size m at which its expected coverage is C*, and D_q is taken there. C* is the
smallest coverage any of the compared samples reaches at twice its size (`base_coverage`), so
that no sample is extrapolated further than that.

Individual-based abundance data: `counts[i]` is how many of the n sampled individuals (here:
evaluation episodes) belong to type i (here: the strategy, the set of achievements unlocked).

- D0, richness: the bias-corrected Chao1, S_obs + (n−1)/n · f1(f1−1)/(2(f2+1)).
- D1, exp(Shannon entropy): the estimator of Chao, Wang and Jost (2013).
- D2, inverse Simpson: 1 / Σ X_i(X_i − 1) / (n(n − 1)), unbiased for Σ p_i² (infinite where no
  type was seen twice: then D2 has no finite estimate).
- Intervals: estimate ± z·se, the se from `BOOTSTRAP` samples of n individuals drawn from the
  estimated assemblage (detected types with Good-Turing-adjusted abundances, f̂0 undetected
  types sharing the undetected mass equally); D0's lower end is at least S_obs. At a common
  sample size (`standardised`), D0's se is instead from the unconditional variance of Colwell et
  al. (2012) (`richness_variance`), under which that bootstrap's intervals undercovered.

Checked on a Zipf assemblage of 40 types (tests/test_chao.py, 200 samples each): at n = 1,000
every 90% interval covers the truth in at least 85% of samples; at n = 64, the reward runs'
episodes per checkpoint, D1 and D2 still do (0.86, 0.93) but D0 only in 0.69 (the plug-in
bootstrap: 0.46, 0.64, 0.76). Richness of a long-tailed assemblage is not estimable from 64
individuals; comparisons of D0 across checkpoints belong at equal sample coverage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln
from scipy.stats import norm

from devrl.core.base import ConfigError

BOOTSTRAP = 200
BOOTSTRAP_SEED = 7_207


def _counts(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(counts, float)
    if x.ndim != 1 or (x < 0).any() or not np.all(np.isclose(x, np.round(x))) or x.sum() < 2:
        raise ConfigError(f"counts of shape {x.shape} is not allowed: need non-negative whole "
                          "numbers (individuals per type) summing to at least 2")
    return np.round(x[x > 0]).astype(int)


def chao1(x: np.ndarray) -> float:
    n, f1, f2 = x.sum(), int((x == 1).sum()), int((x == 2).sum())
    return float(len(x) + (n - 1) / n * f1 * (f1 - 1) / (2 * (f2 + 1)))


def _a(n: int, f1: int, f2: int) -> float:
    if f2 > 0:
        return 2 * f2 / ((n - 1) * f1 + 2 * f2)
    if f1 > 0:
        return 2 / ((n - 1) * (f1 - 1) + 2)
    return 1.0


def chao_shannon(x: np.ndarray) -> float:
    """Chao, Wang & Jost (2013): the entropy estimate (nats)."""
    n, f1, f2 = int(x.sum()), int((x == 1).sum()), int((x == 2).sum())
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n))])  # H_k = Σ_{r<=k} 1/r
    seen = x[x <= n - 1]
    # Σ_{k=X}^{n-1} 1/k = H_{n-1} − H_{X-1}
    first = float(np.sum(seen / n * (harmonic[n - 1] - harmonic[seen - 1])))
    a = _a(n, f1, f2)
    if f1 == 0 or a == 1:
        return first
    r = np.arange(1, n)
    tail = -math.log(a) - float(np.sum((1 - a) ** r / r))
    return first + f1 / n * (1 - a) ** (1 - n) * tail


def inverse_simpson(x: np.ndarray) -> float:
    n = x.sum()
    s = float(np.sum(x * (x - 1)) / (n * (n - 1)))
    return 1.0 / s if s > 0 else math.inf


def estimates(counts: Sequence[float] | np.ndarray) -> dict[int, float]:
    """{0: Chao1, 1: exp(Chao-Wang-Jost entropy), 2: unbiased inverse Simpson}."""
    x = _counts(counts)
    return {0: chao1(x), 1: math.exp(chao_shannon(x)), 2: inverse_simpson(x)}


def coverage(x: np.ndarray) -> float:
    """Good-Turing sample coverage with Chao & Jost's (2012) correction."""
    n, f1, f2 = x.sum(), int((x == 1).sum()), int((x == 2).sum())
    if f1 == 0:
        return 1.0
    return float(1 - f1 / n * ((n - 1) * f1 / ((n - 1) * f1 + 2 * f2)
                               if (f2 > 0 or f1 > 1) else 1.0))


def estimated_assemblage(x: np.ndarray) -> np.ndarray:
    """Relative abundances of the detected types, p̃_i = X_i/n (1 − λ e^{−θ X_i}) (Chao et al.
    2014): λ makes them sum to the estimated coverage, θ makes the expected number of
    singletons in a sample of n from them equal the observed f1 (θ = 0 where no θ does); and
    f̂0 = Chao1 − S_obs undetected types sharing 1 − coverage equally."""
    n = int(x.sum())
    f1 = int((x == 1).sum())
    c = coverage(x)
    f0 = math.ceil(chao1(x) - len(x) - 1e-9)
    p = x / n
    if c >= 1 or f0 <= 0:
        return p / p.sum()

    def detected(theta: float) -> np.ndarray:
        decay = np.exp(-theta * x)
        lam = (1 - c) / float(np.sum(p * decay))
        return p * (1 - lam * decay)

    def singletons(theta: float) -> float:
        q = np.clip(detected(theta), 1e-15, 1.0)
        return float(np.sum(n * q * (1 - q) ** (n - 1))) - f1

    try:
        theta = brentq(singletons, 0.0, 50.0)
    except ValueError:  # no sign change: keep the plain adjustment
        theta = 0.0
    shares = np.clip(detected(theta), 1e-12, None)
    shares = shares / shares.sum() * c
    return np.concatenate([shares, np.full(f0, (1 - c) / f0)])


def _with_intervals(x: np.ndarray, statistic, level: float, bootstrap: int, seed: int
                    ) -> dict[int, tuple[float, float, float]]:
    """{q: (estimate, estimate − z·se, estimate + z·se)} of `statistic` (counts → {q: value}) at
    `level`, the se over `bootstrap` samples of n individuals from the estimated assemblage (the
    lower end at least 1, which every D_q is)."""
    if not 0 < level < 1:
        raise ConfigError(f"level={level!r} is not allowed: must be in (0, 1)")
    point = statistic(x)
    assemblage = estimated_assemblage(x)
    rng = np.random.default_rng(seed)
    n = int(x.sum())
    draws = {q: [] for q in point}
    for _ in range(bootstrap):
        sample = rng.multinomial(n, assemblage)
        for q, value in statistic(sample[sample > 0]).items():
            draws[q].append(value)
    z = float(norm.ppf(0.5 + level / 2))
    out = {}
    for q, value in point.items():
        finite = np.asarray([d for d in draws[q] if math.isfinite(d)])
        se = float(finite.std(ddof=1)) if len(finite) > 1 else math.inf
        out[q] = (value, max(value - z * se, 1.0), value + z * se)
    return out


def intervals(counts: Sequence[float] | np.ndarray, level: float = 0.9,
              bootstrap: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED
              ) -> dict[int, tuple[float, float, float]]:
    """{q: (estimate, low, high)} of the asymptotic estimates for q = 0, 1, 2 at `level`; each
    interval contains its estimate by construction, and D0's never reaches below the types
    seen."""
    x = _counts(counts)
    out = _with_intervals(x, estimates, level, bootstrap, seed)
    value, low, high = out[0]
    out[0] = (value, max(low, float(len(x))), high)
    return out


# ------------------------------------------------------------------ at equal sample coverage
def _lchoose(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """log C(a, b), −inf where b < 0 or b > a."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = (b >= 0) & (b <= a)
    safe_b, safe_ab = np.where(ok, b, 0.0), np.where(ok, a - b, 0.0)
    return np.where(ok, gammaln(a + 1) - gammaln(safe_b + 1) - gammaln(safe_ab + 1), -np.inf)


def _f0_and_decay(x: np.ndarray) -> tuple[float, float]:
    """`_f0_and_decay_of` a sample's counts."""
    return _f0_and_decay_of(int(x.sum()), int((x == 1).sum()), int((x == 2).sum()))


def _f0_and_decay_of(n: int, f1: float, f2: float) -> tuple[float, float]:
    """Chao et al. (2014)'s f̂0 (f1²/(2f2) · (n−1)/n, or f1(f1−1)/2 · (n−1)/n where f2 = 0) and
    A = n f̂0 / (n f̂0 + f1), the factor by which the undetected share shrinks per extra
    individual (A = 1: nothing left to detect), from n and the numbers of singletons and
    doubletons."""
    f0 = (n - 1) / n * (f1 ** 2 / (2 * f2) if f2 > 0 else f1 * (f1 - 1) / 2)
    if f1 <= 0 or f0 <= 0:
        return 0.0, 1.0
    return f0, n * f0 / (n * f0 + f1)


def coverage_at(counts: Sequence[float] | np.ndarray, m: float) -> float:
    """Expected sample coverage of a sample of m individuals (Chao & Jost 2012): by rarefaction,
    1 − Σ X_i/n · C(n−X_i, m)/C(n−1, m), for m < n; 1 − f1/n · A^(m−n+1) for m ≥ n."""
    x = _counts(counts)
    n, f1 = int(x.sum()), int((x == 1).sum())
    if m < n:
        return float(1 - np.sum(x / n * np.exp(_lchoose(n - x, m) - _lchoose(n - 1, m))))
    _, decay = _f0_and_decay(x)
    return float(1 - f1 / n * decay ** (m - n + 1))


def diversity_at(counts: Sequence[float] | np.ndarray, m: int) -> dict[int, float]:
    """{q: expected D_q of a sample of m individuals} (Chao et al. 2014, their eqs. for the
    interpolated and extrapolated Hill numbers of orders 0, 1, 2); at m = n these are the
    sample's own (plug-in) numbers."""
    x = _counts(counts)
    n = int(x.sum())
    m = int(m)
    if m < 1:
        raise ConfigError(f"m={m!r} is not allowed: need a sample size of at least 1")
    simpson = float(np.sum(x * (x - 1)) / (n * (n - 1)))
    d2 = 1 / (1 / m + (1 - 1 / m) * simpson)
    if m <= n:
        absent = np.exp(_lchoose(n - x, m) - _lchoose(n, m))  # P(type i not in the subsample)
        d0 = float(np.sum(1 - absent))
        k = np.arange(1, m + 1)
        # f̂_k(m): expected number of types seen exactly k times in the subsample
        fk = np.exp(_lchoose(x[:, None], k[None, :]) + _lchoose(n - x[:, None], m - k[None, :])
                    - _lchoose(n, m)).sum(axis=0)
        d1 = float(np.exp(-np.sum(k / m * np.log(k / m) * fk)))
        return {0: d0, 1: d1, 2: float(d2)}
    f0, decay = _f0_and_decay(x)
    extra = m - n
    d0 = len(x) + f0 * (1 - decay ** extra)
    p = x / n
    observed = float(-np.sum(p * np.log(p)))
    entropy = n / m * observed + extra / m * chao_shannon(x)
    return {0: float(d0), 1: float(math.exp(entropy)), 2: float(d2)}


def size_for_coverage(counts: Sequence[float] | np.ndarray, target: float) -> int:
    """The sample size (whole individuals, at least 1) whose expected coverage is nearest
    `target`: by bisection on the rarefaction curve below the sample's own coverage, and by the
    closed form of the extrapolated curve above it."""
    if not 0 < target <= 1:
        raise ConfigError(f"target={target!r} is not allowed: must be a coverage in (0, 1]")
    x = _counts(counts)
    n, f1 = int(x.sum()), int((x == 1).sum())
    own = coverage_at(x, n)
    if target <= own:
        low, high = 1, n
        while high - low > 1:  # coverage rises with m
            mid = (low + high) // 2
            low, high = (mid, high) if coverage_at(x, mid) < target else (low, mid)
        return min((low, high), key=lambda m: abs(coverage_at(x, m) - target))
    _, decay = _f0_and_decay(x)
    if decay >= 1 or f1 == 0 or target >= 1:  # no extrapolation reaches a coverage of 1
        return n
    extra = math.log((1 - target) * n / f1) / math.log(decay) - 1
    return n + max(0, round(extra))


def base_coverage(samples: Sequence[Sequence[float] | np.ndarray]) -> float:
    """C*: the smallest coverage that any of `samples` reaches when extrapolated to twice its
    size (Chao et al. 2014's rule for comparing samples)."""
    values = [coverage_at(x, 2 * int(_counts(x).sum())) for x in samples]
    if not values:
        raise ConfigError("samples=[] is not allowed: need at least one sample")
    return float(min(values))


def richness_variance(counts: Sequence[float] | np.ndarray, m: int) -> float:
    """The variance of D0 at sample size m (`diversity_at`) unconditional on the assemblage,
    i.e. over samples of n from it (Colwell et al. 2012, J. Plant Ecol. 5:3-21), with Ŝ the
    Chao1 estimate and f_k the number of types seen k times:

    * m ≤ n: Σ_k (1 − α_km)² f_k − S̃(m)²/Ŝ, α_km = C(n − k, m)/C(n, m);
    * m > n: the delta method on S_obs + f̂0 (1 − A^(m−n)) as a function of (f1, f2, S_obs), with
      cov(f_i, f_j) = f_i (1 − f_i/Ŝ) for i = j and −f_i f_j/Ŝ otherwise (S_obs = Σ f_k).

    Both give S_obs (1 − S_obs/Ŝ) at m = n."""
    x = _counts(counts)
    n, m = int(x.sum()), int(m)
    if m < 1:
        raise ConfigError(f"m={m!r} is not allowed: need a sample size of at least 1")
    total = chao1(x)
    f = np.bincount(x, minlength=n + 1)[1:].astype(float)
    if m <= n:
        k = np.arange(1, n + 1)
        alpha = np.exp(_lchoose(n - k, m) - _lchoose(n, m))  # 0 where n − k < m
        return max(float(np.sum((1 - alpha) ** 2 * f) - diversity_at(x, m)[0] ** 2 / total), 0.0)
    f1, f2, seen = f[0], f[1], float(f.sum())

    def extrapolated(f1: float, f2: float, seen: float) -> float:  # diversity_at's D0, m > n
        f0, decay = _f0_and_decay_of(n, f1, f2)
        return seen + f0 * (1 - decay ** (m - n))

    h = 1e-4
    gradient = np.array([
        (extrapolated(f1 + h, f2, seen) - extrapolated(f1 - h, f2, seen)) / (2 * h),
        (extrapolated(f1, f2 + h, seen) - extrapolated(f1, f2 - h, seen)) / (2 * h)
        if f2 > 0 else 0.0,
        1.0])
    cov = np.array([[f1 * (1 - f1 / total), -f1 * f2 / total, f1 * (1 - seen / total)],
                    [-f1 * f2 / total, f2 * (1 - f2 / total), f2 * (1 - seen / total)],
                    [f1 * (1 - seen / total), f2 * (1 - seen / total), seen * (1 - seen / total)]])
    return max(float(gradient @ cov @ gradient), 0.0)


def standardised(counts: Sequence[float] | np.ndarray, m: int, level: float = 0.9,
                 bootstrap: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED
                 ) -> dict[int, tuple[float, float, float]]:
    """{q: (D_q at sample size m, low, high)}: each interval is estimate ± z·se and contains its
    estimate. For D1 and D2 the se is from `bootstrap` samples of n individuals drawn from the
    estimated assemblage, each taken to the same m (as iNEXT does); for D0 it is the square root
    of `richness_variance`, since that bootstrap's se is too small for richness (measured: the
    90% intervals covered the expected D0 of m individuals in only 0.83-0.87 of samples of 64
    from a Zipf assemblage; with the unconditional variance 0.85-0.995, tests/test_chao.py)."""
    x = _counts(counts)
    out = _with_intervals(x, lambda sample: diversity_at(sample, m), level, bootstrap, seed)
    value = out[0][0]
    spread = float(norm.ppf(0.5 + level / 2)) * math.sqrt(richness_variance(x, m))
    out[0] = (value, max(value - spread, 1.0), value + spread)
    return out
