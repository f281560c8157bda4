"""Behavioural diversity of Craftax agents over training, and around the discovery of achievements.

Three measures, each per checkpoint, each checked on constructed cases in `tests/test_diversity.py`:

* **within one agent** (`hill_numbers`, `strategy_diversity`): Hill numbers D0 (richness), D1 (the
  exponential of the Shannon entropy) and D2 (inverse Simpson) of the distribution of *episode
  strategies* over the agent's fixed-seed evaluation episodes at the checkpoint. A strategy is the
  set of achievements the episode unlocked (a 22-bit pattern; `strategy_labels`). The set, not the
  order of unlocking, because the evaluation tables of every run hold it at every checkpoint,
  including the committed default-reward runs whose intermediate parameters were not kept.
  Plug-in Hill numbers are biased low when many strategies are seen once, and a percentile
  bootstrap over the episodes cannot see what the sample missed (its intervals excluded their
  own estimates at most checkpoints); so each number comes with an interval from the estimated
  assemblage (`devrl.measures.chao`), and checkpoints are compared at equal sample coverage
  (`d{q}_cov`, rarefied or extrapolated to the coverage C* of the least complete sample at
  twice its size) besides the sample's own numbers and the asymptotic estimates.
* **across agents** (`mean_pairwise_jsd`): the mean over pairs of agents (seeds, or reward
  variants) at the same training step of the Jensen-Shannon divergence, in bits (0 = the same
  policy, 1 = disjoint actions), between their action distributions, averaged over one common set
  of probe states.
* **inside the network** (`participation_ratio`): the effective number of directions the actor's
  hidden activations use across the probe states, (tr C)^2 / tr(C^2) for their covariance C. It is
  the inverse Simpson index (the Hill number D2) of the covariance's eigenvalue spectrum. A
  network whose states are served by K disjoint circuits, each varying along one direction and
  used equally, has a participation ratio of K; used with frequencies p_k, 1 / sum p_k^2
  (`circuit_network` builds such a network from ActorCritic parameters). We chose it over
  counting clusters of activation patterns because it needs no number of clusters, no distance
  and no threshold, and it reads the same on tanh and relu networks. Its limit: a single circuit
  that varies along d directions counts as d.

**Events** (`discoveries`, `event_triggered`): an achievement is *discovered* at the first
checkpoint after the first where its success count over the evaluation episodes exceeds the
untrained policy's (the first checkpoint's) by a margin that a one-sided Fisher exact test (the
binomial comparison of two success counts) calls significant at level `DISCOVERY_ALPHA`, and
again at the next checkpoint. So an achievement the untrained policy already earns (the plant,
in about a quarter of its episodes) is discovered when the trained policy earns it
significantly more often, and one that starts high and never rises is never discovered. This
rule replaced on 2026-12-06, before any diversity data set was built with it, a fixed success
rate of 0.2, which the untrained policy already met for the plant, wood, sapling and wake-up.
`DISCOVERY_ALPHAS` are the levels of the sensitivity check. The
event-triggered average of a measure is its mean change from the checkpoint before the discovery to
each checkpoint after, over (run, achievement) events; the null draws the same number of events
at random checkpoints of the same runs (anywhere after the first checkpoint, and, against slow
trends, within `LOCAL_NULL` checkpoints of each event).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.core.config import TrainConfig, make_config
from devrl.core.networks import ACTIVATIONS, initial_hidden, with_zeros_for_missing
from devrl.core.ppo import make_network
from devrl.measures import chao

DISCOVERY_ALPHA = 0.01  # level of the one-sided test against the untrained policy's count
BOOTSTRAP = 200  # bootstrap samples from the estimated assemblage for the Hill numbers' intervals
BOOTSTRAP_SEED = 2024
HILL_ORDERS = (0, 1, 2)
EVENT_WINDOW = 4  # checkpoints after (and one before) a discovery in the event-triggered average
NULL_DRAWS = 2000  # random-time replicates of the whole set of events
LOCAL_NULL = 8  # the local null draws within this many checkpoints of each event


# ------------------------------------------------------------------ within one agent
def hill_numbers(counts: Sequence[float] | np.ndarray, orders: Sequence[float] = HILL_ORDERS
                 ) -> dict[float, float]:
    """Hill numbers D_q = (sum p_i^q)^(1/(1-q)) of the abundances `counts` (D1 = exp(entropy))."""
    counts = np.asarray(counts, float)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ConfigError(f"counts={counts!r} is not allowed: must be a 1-d array of "
                          "non-negative abundances with a positive sum")
    p = counts[counts > 0] / counts.sum()
    out = {}
    for q in orders:
        if q == 1:
            out[q] = float(np.exp(-(p * np.log(p)).sum()))
        else:
            out[q] = float((p ** q).sum() ** (1.0 / (1.0 - q)))
    return out


def strategy_labels(unlocked: np.ndarray) -> np.ndarray:
    """Each episode's strategy (its row of unlocked achievements, 0/1) as a 0/1 string."""
    bits = np.asarray(unlocked) > 0.5
    return np.array(["".join("1" if b else "0" for b in row) for row in bits])


def strategy_diversity(strategies: np.ndarray, base: float | None = None,
                       bootstrap: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.9) -> dict[str, float]:
    """D0, D1, D2 of the strategies' distribution, three ways, each with its `level` interval
    from the bootstrap of `devrl.measures.chao` (samples drawn from the estimated assemblage, the
    interval estimate ± z·se, which contains its estimate):

    * `d{q}`: the sample's own (plug-in) numbers, those of `episodes` individuals;
    * `d{q}_asy`: the asymptotic estimates (Chao1, Chao-Wang-Jost, unbiased inverse Simpson);
    * `d{q}_cov` (with `base`, a sample coverage C*): the numbers at the sample size `m_cov`
      whose expected coverage is C*, rarefied or extrapolated (Chao & Jost 2012).

    `coverage` is the sample's own estimated coverage (Chao & Jost's Good-Turing)."""
    strategies = np.asarray(strategies)
    if strategies.size < 2:
        raise ConfigError(f"strategies of {strategies.size} episodes is not allowed: need at "
                          "least two")
    counts = np.unique(strategies, return_counts=True)[1]
    n = int(strategies.size)
    out: dict[str, float] = {"episodes": n, "coverage": chao.coverage(counts)}
    kinds = {"": chao.standardised(counts, n, level, bootstrap, seed),
             "_asy": chao.intervals(counts, level, bootstrap, seed)}
    if base is not None:
        out["m_cov"] = chao.size_for_coverage(counts, base)
        kinds["_cov"] = chao.standardised(counts, out["m_cov"], level, bootstrap, seed)
    for kind, found in kinds.items():
        for q, (value, low, high) in found.items():
            out[f"d{q}{kind}"], out[f"d{q}{kind}_low"], out[f"d{q}{kind}_high"] = value, low, high
    return out


def strategy_table(episodes: pd.DataFrame, by: Sequence[str] = ("seed", "update")
                   ) -> pd.DataFrame:
    """Per group of evaluation episodes (default: per seed and checkpoint), strategy diversity,
    with the numbers at equal coverage taken at the base coverage C* of all the groups
    (`chao.base_coverage`, column `base_coverage`)."""
    columns = [c for c in episodes.columns if c.startswith("achievement_")]
    if not columns:
        raise ConfigError("episodes has no achievement_* columns: not an evaluation table")
    groups = []
    for key, group in episodes.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        groups.append((key, group, strategy_labels(group[columns].to_numpy())))
    base = chao.base_coverage([np.unique(labels, return_counts=True)[1]
                               for _, _, labels in groups])
    rows = []
    for key, group, labels in groups:
        row = dict(zip(by, key))
        if "env_steps" in group:
            row["env_steps"] = int(group["env_steps"].iloc[0])
        row.update(strategy_diversity(labels, base=base))
        row["base_coverage"] = base
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ across agents
def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JSD in bits between the distributions in the last axis of `p` and `q` (0 <= JSD <= 1)."""
    p = np.asarray(p, float)
    q = np.asarray(q, float)
    m = (p + q) / 2

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log2(a) - np.log2(np.where(b > 0, b, 1.0))), 0.0)
        return terms.sum(-1)

    return np.clip((kl(p, m) + kl(q, m)) / 2, 0.0, 1.0)


def mean_pairwise_jsd(policies: Sequence[np.ndarray]) -> float:
    """Mean over pairs of policies (each [states, actions] on the same states) of their JSD
    averaged over the states."""
    if len(policies) < 2:
        raise ConfigError(f"policies has {len(policies)} entries: need at least 2 agents")
    values = [jensen_shannon(policies[i], policies[j]).mean()
              for i in range(len(policies)) for j in range(i + 1, len(policies))]
    return float(np.mean(values))


# ------------------------------------------------------------------ inside the network
def participation_ratio(activations: np.ndarray) -> float:
    """(tr C)^2 / tr(C^2) of the covariance C of `activations` [states, units] (0 if constant)."""
    x = np.asarray(activations, np.float64)
    x = x - x.mean(0)
    # The non-zero eigenvalues of C are those of the smaller Gram matrix.
    gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x
    total = np.trace(gram)
    if total <= 1e-300:
        return 0.0
    return float(total ** 2 / (gram * gram).sum())


def actor_activations(config: TrainConfig, num_actions: int):
    """jit(params, obs [N, D]) -> (per hidden layer of the actor, its activations [N, width],
    action probabilities [N, A]). Feedforward networks only (the diversity study's)."""
    if config.memory:
        raise ConfigError(f"memory={config.memory} is not allowed here: the network measure "
                          "reads a feedforward actor (memory 0)")
    network = make_network(config, num_actions)
    act = ACTIVATIONS[config.activation]
    names = [f"actor_{i}" for i in range(config.depth)]

    @jax.jit
    def run(params, obs):
        hidden = initial_hidden(obs.shape[0], 0)
        first = jnp.ones((1, obs.shape[0]), bool)
        # Exported checkpoints hold the actor only: the critic's branch gets zeros (unused).
        full = with_zeros_for_missing(network, params, hidden, obs[None], first)
        (_, logits, _), state = network.apply(
            full, hidden, obs[None], first,
            capture_intermediates=lambda m, _: m.name in names)
        inter = state["intermediates"]
        layers = [act(inter[name]["__call__"][0][0]) for name in names]
        return layers, jax.nn.softmax(logits[0])

    return run


def circuit_network(usage: Sequence[float], width: int = 32, depth: int = 2,
                    num_actions: int = 4, gain: float = 0.05, states: int = 4000,
                    seed: int = 0) -> tuple[TrainConfig, Any, np.ndarray]:
    """A constructed ActorCritic with K = len(usage) disjoint circuits, and probe states using
    circuit k with frequency usage[k].

    A state of type k carries a standard-normal feature z in input channel k (the other channels
    are 0). The first hidden layer gives circuit k its own unit (unit k) reading channel k with
    weight `gain`; each deeper layer applies a random rotation (the activations stay small, so the
    tanh is near linear), so there a circuit is a direction spread over every unit. On type-k
    states only circuit k's direction varies, along z, so the activation covariance is
    sum_k usage_k var_k u_k u_k^T with orthonormal u_k: K equal directions for equal usage.
    Returns (config, params, obs [states, K])."""
    usage = np.asarray(usage, float)
    k = len(usage)
    if k < 1 or k > width or (usage <= 0).any():
        raise ConfigError(f"usage={usage.tolist()!r} is not allowed: need 1..width positive "
                          "frequencies (one per circuit)")
    config = make_config("smoke", width=width, depth=depth, activation="tanh")
    network = make_network(config, num_actions)
    params = network.init(jax.random.PRNGKey(seed), jnp.zeros((1, 0)), jnp.zeros((1, 1, k)),
                          jnp.ones((1, 1), bool))
    params = jax.tree.map(np.asarray, params)
    inner = params["params"]
    rng = np.random.default_rng(seed)
    for i in range(depth):
        kernel = np.zeros_like(inner[f"actor_{i}"]["kernel"])
        if i == 0:
            kernel[np.arange(k), np.arange(k)] = gain
        else:  # a random rotation: circuits are directions, not single units
            kernel[:] = np.linalg.qr(rng.standard_normal((width, width)))[0]
        inner[f"actor_{i}"]["kernel"] = kernel
        inner[f"actor_{i}"]["bias"] = np.zeros_like(inner[f"actor_{i}"]["bias"])
    kinds = rng.choice(k, size=states, p=usage / usage.sum())
    obs = np.zeros((states, k), np.float32)
    obs[np.arange(states), kinds] = rng.standard_normal(states)
    return config, params, obs


# ------------------------------------------------------------------ events
def discoveries(episodes: pd.DataFrame, alpha: float = DISCOVERY_ALPHA,
                by: Sequence[str] = ("seed",)) -> pd.DataFrame:
    """Per run (`by`) and achievement, from per-episode 0/1 `achievement_*` columns: the first
    checkpoint after the first at which, and at the next, the success count is larger than the
    first checkpoint's by a one-sided Fisher exact test at level `alpha`. Rows: *by,
    achievement, `update` (NaN if never), `baseline_rate` (the first checkpoint's rate),
    `rate` (at the discovery), `p` (the test's p-value there)."""
    from scipy.stats import fisher_exact

    if not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha!r} is not allowed: must be in (0, 1)")
    columns = [c for c in episodes.columns if c.startswith("achievement_")]
    counts = episodes.groupby([*by, "update"])[columns].agg(["sum", "count"])
    rows = []
    for key, group in counts.groupby(level=list(range(len(by))), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        group = group.droplevel(list(range(len(by)))).sort_index()
        updates = group.index.to_numpy()
        for column in columns:
            wins = group[(column, "sum")].to_numpy(dtype=int)
            total = group[(column, "count")].to_numpy(dtype=int)
            p = np.ones(len(updates))
            for i in range(1, len(updates)):
                table = [[wins[i], total[i] - wins[i]], [wins[0], total[0] - wins[0]]]
                p[i] = fisher_exact(table, alternative="greater").pvalue
            hits = [i for i in range(1, len(updates) - 1) if p[i] < alpha and p[i + 1] < alpha]
            first = hits[0] if hits else None
            rows.append({**dict(zip(by, key)), "achievement": column[len("achievement_"):],
                         "update": float(updates[first]) if first is not None else np.nan,
                         "baseline_rate": wins[0] / total[0] if total[0] else np.nan,
                         "rate": wins[first] / total[first] if first is not None else np.nan,
                         "p": p[first] if first is not None else np.nan})
    return pd.DataFrame(rows)


def _event_deltas(values: np.ndarray, index: int, window: int) -> np.ndarray:
    """values[index + j] - values[index - 1] for j = 0 .. window-1 (NaN past the end)."""
    out = np.full(window, np.nan)
    base = values[index - 1]
    for j in range(window):
        if index + j < len(values):
            out[j] = values[index + j] - base
    return out


def event_triggered(measure: pd.DataFrame, column: str, events: pd.DataFrame,
                    by: Sequence[str] = ("seed",), window: int = EVENT_WINDOW,
                    draws: int = NULL_DRAWS, seed: int = BOOTSTRAP_SEED,
                    local: int = LOCAL_NULL) -> pd.DataFrame:
    """Mean change of `measure[column]` from the checkpoint before each event to the `window`
    checkpoints from it on, against two nulls of as many events per run at random checkpoints:
    anywhere in the run after its first checkpoint (`uniform`), and within `local` checkpoints
    of each event, the event's own excluded (`local`: it controls for slow trends, such as the
    early rise of everything while discoveries are also early).

    `measure` has one row per (*by, update); `events` rows (*by, update) name the checkpoint of
    each discovery (not known at start, not NaN). Returns one row per offset: `offset` (0 = the
    discovery checkpoint), `events`, `mean`, and per null (suffix `_local` for the local one)
    `null_mean`, `null_sd`, `effect` ((mean - null_mean) / null_sd) and `p` (the null's share at
    least as large as the mean, one-sided)."""
    series = {}
    for key, group in measure.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        group = group.sort_values("update")
        series[key] = (group["update"].to_numpy(), group[column].to_numpy(float))
    observed, at = [], []
    for _, event in events.iterrows():
        key = tuple(event[b] for b in by)
        if key not in series or not np.isfinite(event["update"]):
            continue
        updates, values = series[key]
        where = np.flatnonzero(updates == event["update"])
        if not len(where) or where[0] == 0:
            continue
        observed.append(_event_deltas(values, int(where[0]), window))
        at.append((key, int(where[0])))
    if not observed:
        raise ConfigError("events has no discovery at a measured checkpoint after the first: "
                          "nothing to average")
    observed = np.array(observed)
    mean = np.nanmean(observed, axis=0)
    rng = np.random.default_rng(seed)

    def uniform(key, index, n):
        return rng.integers(1, n)

    def nearby(key, index, n):
        choices = [i for i in range(max(1, index - local), min(n, index + local + 1))
                   if i != index]
        return rng.choice(choices) if choices else index

    out = {"offset": np.arange(window), "events": np.isfinite(observed).sum(0), "mean": mean}
    for suffix, draw in (("", uniform), ("_local", nearby)):
        null = np.empty((draws, window))
        for d in range(draws):
            sample = []
            for key, index in at:
                values = series[key][1]
                sample.append(_event_deltas(values, int(draw(key, index, len(values))), window))
            sample = np.array(sample)
            seen = np.isfinite(sample).sum(0)
            null[d] = np.where(seen > 0, np.nansum(sample, axis=0) / np.maximum(seen, 1),
                               np.nan)
        null_mean, null_sd = np.nanmean(null, axis=0), np.nanstd(null, axis=0)
        out[f"null_mean{suffix}"] = null_mean
        out[f"null_sd{suffix}"] = null_sd
        out[f"effect{suffix}"] = (mean - null_mean) / np.where(null_sd > 0, null_sd, np.nan)
        out[f"p{suffix}"] = (null >= mean[None]).sum(0) / np.isfinite(null).sum(0)
    return pd.DataFrame(out)
