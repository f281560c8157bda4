"""Hill numbers from incomplete samples (devrl.measures.chao) against assemblages whose D0, D1 and
D2 are known: the estimators converge, and the intervals from the estimated assemblage cover the
truth in about the stated share of samples."""

from __future__ import annotations

import numpy as np
import pytest

from devrl.core.base import ConfigError
from devrl.measures import chao


def truth(p: np.ndarray) -> dict[int, float]:
    p = p / p.sum()
    return {0: float(len(p)), 1: float(np.exp(-(p * np.log(p)).sum())),
            2: float(1 / (p ** 2).sum())}


ZIPF = 1 / np.arange(1, 41)  # 40 types, a long tail
GEOMETRIC = 0.9 ** np.arange(60)  # 60 types, most of them rare


@pytest.mark.parametrize("p", [ZIPF, GEOMETRIC], ids=["zipf40", "geometric60"])
def test_the_estimators_converge_to_the_assemblage(p):
    rng = np.random.default_rng(0)
    known = truth(p)
    for n, tolerance in ((2_000, 0.1), (50_000, 0.01)):
        found = chao.estimates(rng.multinomial(n, p / p.sum()))
        for q in (1, 2):
            assert found[q] == pytest.approx(known[q], rel=tolerance), (n, q)
    assert found[0] == pytest.approx(known[0], rel=0.01)


def coverage_of(n: int, seed: int, replicates: int = 200) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    known, p = truth(ZIPF), ZIPF / ZIPF.sum()
    hits = {q: 0 for q in known}
    for replicate in range(replicates):
        found = chao.intervals(rng.multinomial(n, p), seed=replicate)  # as shipped
        for q, (_, low, high) in found.items():
            hits[q] += low <= known[q] <= high
    return {q: hits[q] / replicates for q in hits}


def test_the_intervals_cover_the_truth_in_most_samples():
    """200 samples of 1,000 from the Zipf assemblage: each 90% interval covers the true D0, D1
    and D2 in at least 85% of them."""
    covered = coverage_of(1_000, seed=1)
    assert all(share >= 0.85 for share in covered.values()), covered


def test_at_64_episodes_the_estimated_assemblage_covers_far_more_than_the_sample_itself(
        monkeypatch):
    """At the reward runs' sample size (64 episodes a checkpoint), D1 and D2 are still covered
    in at least 85% of samples; D0 is not (about 70%: richness of a long-tailed assemblage is not
    estimable from 64 individuals), but resampling the sample itself, the plug-in bootstrap
    these intervals replace, covers D0 and D1 in far fewer."""
    covered = coverage_of(64, seed=3)
    assert covered[1] >= 0.85 and covered[2] >= 0.85, covered
    monkeypatch.setattr(chao, "estimated_assemblage", lambda x: x / x.sum())
    plug_in = coverage_of(64, seed=3)
    assert covered[0] >= plug_in[0] + 0.15 and covered[1] >= plug_in[1] + 0.15, (covered,
                                                                                   plug_in)


def test_every_interval_contains_its_estimate_and_d0_never_falls_below_what_was_seen():
    rng = np.random.default_rng(2)
    for _ in range(50):
        counts = rng.multinomial(64, rng.dirichlet(np.full(30, 0.3)))
        found = chao.intervals(counts, bootstrap=50)
        for estimate, low, high in found.values():
            assert low <= estimate <= high
        assert found[0][1] >= (counts > 0).sum()


def test_known_small_cases_and_bad_counts():
    # Chao1 with f1 = 2, f2 = 1, n = 7 (counts 1, 1, 2, 3): S_obs + (n−1)/n f1(f1−1)/(2(f2+1))
    assert chao.estimates([1, 1, 2, 3])[0] == pytest.approx(4 + 6 / 7 * 2 * 1 / 4)
    # no singletons: nothing unseen, Shannon's estimate is the Miller-Madow-like first term only
    even = chao.estimates([50, 50])
    assert even[0] == 2 and even[2] == pytest.approx(1 / (2 * 50 * 49 / (100 * 99)))
    with pytest.raises(ConfigError, match="^counts of shape"):
        chao.estimates([0.5, 2])
    with pytest.raises(ConfigError, match="^level=1.5 is not allowed"):
        chao.intervals([1, 2, 3], level=1.5)


# ------------------------------------------------------------------ at equal sample coverage
P = ZIPF / ZIPF.sum()


def expected_at(m: int, rng: np.random.Generator) -> dict[int, float]:
    """What the rarefied and extrapolated numbers estimate, for samples of m from P: the expected
    richness and coverage in closed form, D2 as 1/E[Simpson], D1 as exp(E[entropy]) (simulated)."""
    entropies = []
    for _ in range(2_000):
        counts = rng.multinomial(m, P)
        share = counts[counts > 0] / m
        entropies.append(-(share * np.log(share)).sum())
    return {0: float(np.sum(1 - (1 - P) ** m)), 1: float(np.exp(np.mean(entropies))),
            2: float(1 / (1 / m + (1 - 1 / m) * np.sum(P ** 2)))}


def test_at_its_own_size_a_sample_has_its_own_numbers_and_the_curve_is_continuous():
    from devrl.measures.diversity import hill_numbers

    x = np.random.default_rng(4).multinomial(64, P)
    x = x[x > 0]
    own, plug_in = chao.diversity_at(x, 64), hill_numbers(x)
    for q in (0, 1, 2):
        assert own[q] == pytest.approx(plug_in[q], rel=1e-9)
        below, above = chao.diversity_at(x, 63)[q], chao.diversity_at(x, 65)[q]
        assert below <= own[q] <= above and above - below < 0.05 * own[q]
    assert chao.coverage_at(x, 64) == pytest.approx(chao.coverage(x))
    assert chao.coverage_at(x, 63) < chao.coverage_at(x, 64) < chao.coverage_at(x, 65)


def test_rarefied_richness_and_coverage_are_unbiased_for_samples_of_m():
    """A subsample of m from a multinomial sample of n is a multinomial sample of m, so the
    rarefied richness and coverage are unbiased for the expected richness 1 − Σ(1 − p)^m and
    coverage 1 − Σ p(1 − p)^m of m individuals."""
    rng = np.random.default_rng(6)
    samples = [rng.multinomial(64, P) for _ in range(400)]
    for m in (8, 32):
        richness = np.mean([chao.diversity_at(x, m)[0] for x in samples])
        covered = np.mean([chao.coverage_at(x, m) for x in samples])
        assert richness == pytest.approx(np.sum(1 - (1 - P) ** m), rel=0.01)
        assert covered == pytest.approx(1 - np.sum(P * (1 - P) ** m), rel=0.01)


def test_the_size_for_a_coverage_reaches_it_and_the_base_is_the_least_complete_sample():
    rng = np.random.default_rng(8)
    samples = [rng.multinomial(n, P) for n in (32, 64, 256)]
    base = chao.base_coverage(samples)
    assert base == pytest.approx(min(chao.coverage_at(x, 2 * x.sum()) for x in samples))
    for x in samples:
        m = chao.size_for_coverage(x, base)
        assert m <= 2 * x.sum()
        assert abs(chao.coverage_at(x, m) - base) <= abs(chao.coverage_at(x, m + 1) - base)
        assert abs(chao.coverage_at(x, m) - base) <= abs(chao.coverage_at(x, max(m - 1, 1)) - base)
    assert chao.size_for_coverage([5, 5, 2], 1.0) <= 12  # complete already: never beyond n
    with pytest.raises(ConfigError, match=r"^target=1.5 is not allowed: must be a coverage in"):
        chao.size_for_coverage(samples[0], 1.5)


@pytest.mark.parametrize("m", [32, 128], ids=["rarefied", "extrapolated"])
def test_intervals_at_a_common_size_cover_what_they_estimate(m):
    """200 samples of 64 (the episodes of a checkpoint) from the Zipf assemblage, taken to m = 32
    and m = 128: each 90% interval covers the expected D_q of m individuals in at least 85% of
    samples and contains its own estimate. (Measured over m = 16-128: D0 0.85-0.995 with the
    unconditional variance, 0.825-0.865 with the bootstrap's se it replaced; D1 0.85-0.885; D2
    0.88-0.925.)"""
    rng = np.random.default_rng(10)
    target = expected_at(m, rng)
    hits = {q: 0 for q in target}
    for replicate in range(200):
        found = chao.standardised(rng.multinomial(64, P), m, seed=replicate)
        for q, (estimate, low, high) in found.items():
            assert low <= estimate <= high
            hits[q] += low <= target[q] <= high
    assert all(count / 200 >= 0.85 for count in hits.values()), hits


def test_richness_variance_is_continuous_at_the_sample_size_and_grows_with_extrapolation():
    """At m = n both branches are the unconditional variance of S_obs, S_obs (1 − S_obs/Ŝ); it
    is zero where nothing is left undetected, and grows with the distance extrapolated."""
    x = np.random.default_rng(12).multinomial(64, P)
    x = x[x > 0]
    seen, total = len(x), chao.chao1(x)
    assert chao.richness_variance(x, 64) == pytest.approx(seen * (1 - seen / total), rel=1e-9)
    assert chao.richness_variance(x, 65) == pytest.approx(seen * (1 - seen / total), rel=0.05)
    assert chao.richness_variance(x, 63) == pytest.approx(seen * (1 - seen / total), rel=0.05)
    assert chao.richness_variance(x, 96) < chao.richness_variance(x, 128)
    assert chao.richness_variance([3, 4, 5, 2], 14) == 0.0  # no singleton: Ŝ = S_obs
    with pytest.raises(ConfigError, match="^m=0 is not allowed"):
        chao.richness_variance(x, 0)
