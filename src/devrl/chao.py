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

Individual-based abundance data: `counts[i]` is how many of the n sampled individuals (here:
evaluation episodes) belong to type i (here: the strategy, the set of achievements unlocked).

- D0, richness: the bias-corrected Chao1, S_obs + (n−1)/n · f1(f1−1)/(2(f2+1)).
- D1, exp(Shannon entropy): the estimator of Chao, Wang and Jost (2013).
- D2, inverse Simpson: 1 / Σ X_i(X_i − 1) / (n(n − 1)), unbiased for Σ p_i² (infinite where no
  type was seen twice: then D2 has no finite estimate).
- Intervals: estimate ± z·se, the se from `BOOTSTRAP` samples of n individuals drawn from the
  estimated assemblage (detected types with Good-Turing-adjusted abundances, f̂0 undetected
  types sharing the undetected mass equally); D0's lower end is at least S_obs.

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
from scipy.stats import norm

from devrl.config import ConfigError

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


def intervals(counts: Sequence[float] | np.ndarray, level: float = 0.9,
              bootstrap: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED
              ) -> dict[int, tuple[float, float, float]]:
    """{q: (estimate, low, high)} for q = 0, 1, 2 at `level`; each interval contains its
    estimate by construction."""
    if not 0 < level < 1:
        raise ConfigError(f"level={level!r} is not allowed: must be in (0, 1)")
    x = _counts(counts)
    point = estimates(x)
    assemblage = estimated_assemblage(x)
    rng = np.random.default_rng(seed)
    n = int(x.sum())
    draws = {q: [] for q in point}
    for _ in range(bootstrap):
        sample = rng.multinomial(n, assemblage)
        sample = sample[sample > 0]
        for q, value in estimates(sample).items():
            draws[q].append(value)
    z = float(norm.ppf(0.5 + level / 2))
    out = {}
    for q, value in point.items():
        finite = np.asarray([d for d in draws[q] if math.isfinite(d)])
        se = float(finite.std(ddof=1)) if len(finite) > 1 else math.inf
        low, high = value - z * se, value + z * se
        if q == 0:
            low = max(low, float(len(x)))
        out[q] = (value, max(low, 1.0), high)
    return out
