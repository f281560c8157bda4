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
  assemblage (`devrl.chao`), and checkpoints are compared at equal sample coverage
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

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl import chao
from devrl.config import ConfigError, TrainConfig

DISCOVERY_ALPHA = 0.01  # level of the one-sided test against the untrained policy's count
DISCOVERY_ALPHAS = (0.05, 0.01, 0.001)  # the rule's level and two others, side by side
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
    from the bootstrap of `devrl.chao` (samples drawn from the estimated assemblage, the
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
    from devrl.networks import ACTIVATIONS, initial_hidden, with_zeros_for_missing
    from devrl.ppo import make_network

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
    from devrl.config import make_config
    from devrl.ppo import make_network

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


# ------------------------------------------------------------------ the study
# The study's reward structures: the control (default) comes from data/craftax-<scale>, the
# others from the sweep src/devrl/sweeps/reward-<scale>.yaml.
CONTROL = "default"
PLANT_REWARD = {"default": 1.0, "no_plant": 0.0, "every_plant": 1.0, "plant_x4": 4.0}
CHECKPOINT_COLUMNS = ("episode_return", "default_return", "episode_length", "plants_placed",
                      "place_attempts", "place_attempt_share", "saplings_collected",
                      "plants_eaten")
TRAINING_COLUMNS = ("episode_return", "default_return", "plants_placed", "place_attempts",
                    "episode_length")
UPDATES_PER_BIN = {"smoke": 1, "cpu": 4, "paper": 32}
EVENT_MEASURES = ("d1", "d1_others", "d2", "pr_last")


def study_spec(scale: str):
    """The reward sweep at `scale`: `src/devrl/sweeps/reward-<scale>.yaml`."""
    from pathlib import Path

    from devrl.config import SCALES
    from devrl.sweep import load_spec

    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    return load_spec(Path(__file__).resolve().parent / "sweeps" / f"reward-{scale}.yaml")


def common_probe(control_path) -> dict[str, np.ndarray]:
    """The probe states of every control seed (data/craftax-<scale>/probes/seed_N.npz), pooled:
    one set of states on which every agent of the study is compared."""
    from pathlib import Path

    paths = sorted(Path(control_path, "probes").glob("seed_*.npz"))
    if not paths:
        raise ConfigError(f"{control_path} has no probes/seed_N.npz: not a Craftax data set")
    obs, context = [], []
    for path in paths:
        with np.load(path) as data:
            obs.append(data["obs"][:, -1])  # feedforward: the state itself
            context.append(data["context"])
    return {"obs": np.concatenate(obs).astype(np.float32),
            "context": np.concatenate(context).astype(np.int32)}


def network_measures(config: TrainConfig, checkpoints, probe: dict[str, np.ndarray],
                     cache=None) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Per checkpoint (update, params): participation ratio of each actor layer on the common
    probe states, and the action probabilities there ([states, actions], float16). With `cache`
    (a folder inside a run directory), each checkpoint's result is kept as `network_UUUUUU.npz`
    and reused; the folder has a manifest of its own, so the run's manifest does not cover it."""
    from devrl.envs import ACTION_NAMES
    from devrl.runs import atomic_write_npz, write_manifest

    def manifest() -> None:
        write_manifest(cache, {"what": "devrl.diversity.network_measures per checkpoint",
                               "run_config_hash": config.config_hash(),
                               "probe_states": int(len(probe["obs"]))})

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        manifest()
    run = actor_activations(config, len(ACTION_NAMES))
    rows, policies = [], {}
    for update, load in checkpoints:
        path = None if cache is None else cache / f"network_{update:06d}.npz"
        if path is not None and path.exists():
            with np.load(path) as data:
                pr, probs = data["pr"], data["probs"]
        else:
            params = jax.tree.map(lambda x: np.asarray(x, np.float16).astype(np.float32), load())
            layers, probs = run(params, probe["obs"])
            pr = np.array([participation_ratio(np.asarray(layer)) for layer in layers])
            probs = np.asarray(probs, np.float16)
            if path is not None:
                atomic_write_npz(path, {"pr": pr, "probs": probs})
        row = {"update": update, "env_steps": update * config.steps_per_update}
        row.update({f"pr_{i}": float(v) for i, v in enumerate(pr)})
        row["pr_last"] = float(pr[-1])
        rows.append(row)
        policies[update] = probs
    if cache is not None:
        manifest()
    return pd.DataFrame(rows), policies


def checkpoint_table(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, seed, checkpoint): means of the episode measures and achievement rates over
    the evaluation episodes, with the strategy diversity of those episodes."""
    from devrl.analysis import with_rates

    episodes = with_rates(episodes)
    achievements = [c for c in episodes.columns if c.startswith("achievement_")]
    keys = ["variant", "seed", "update", "env_steps"]
    means = episodes.groupby(keys)[list(CHECKPOINT_COLUMNS) + achievements].mean().reset_index()
    strategies = strategy_table(episodes, by=("variant", "seed", "update")).drop(
        columns="env_steps", errors="ignore")
    return means.merge(strategies, on=["variant", "seed", "update"])


def jsd_table(policies: dict[tuple[str, int], dict[int, np.ndarray]]) -> pd.DataFrame:
    """Mean pairwise JSD at every update two or more agents share: among the seeds of each
    variant (`comparison` seeds), and between each variant's seeds and the control's
    (`comparison` vs_default: the mean over cross pairs)."""
    variants = sorted({v for v, _ in policies})
    rows = []
    for variant in variants:
        seeds = sorted(s for v, s in policies if v == variant)
        updates = sorted(set.intersection(*(set(policies[(variant, s)]) for s in seeds)))
        for update in updates:
            agents = [policies[(variant, s)][update].astype(np.float32) for s in seeds]
            if len(agents) >= 2:
                rows.append({"comparison": "seeds", "variant": variant, "update": update,
                             "jsd": mean_pairwise_jsd(agents), "pairs": len(agents) * (
                                 len(agents) - 1) // 2})
            if variant == CONTROL:
                continue
            control = [(s, policies[(CONTROL, s)]) for v, s in policies if v == CONTROL]
            cross = [jensen_shannon(a, c[update].astype(np.float32)).mean()
                     for a in agents for _, c in control if update in c]
            if cross:
                rows.append({"comparison": "vs_default", "variant": variant, "update": update,
                             "jsd": float(np.mean(cross)), "pairs": len(cross)})
    return pd.DataFrame(rows)


def others_table(episodes: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """For each discovery (variant, seed, achievement), the strategy D1 of that run at every
    checkpoint with the discovered achievement left out of the strategies (`d1_others`): the
    diversity of the rest of the agent's behaviour, which the discovery does not change by
    definition (a new achievement at a success rate of p alone multiplies D1 by up to
    exp(H(p)), the entropy of its own bit)."""
    rows = []
    for (variant, seed), run in episodes.groupby(["variant", "seed"]):
        mine = events[(events["variant"] == variant) & (events["seed"] == seed)]
        for achievement in mine["achievement"].unique():
            columns = [c for c in run.columns if c.startswith("achievement_")
                       and c != f"achievement_{achievement}"]
            for update, group in run.groupby("update"):
                labels = strategy_labels(group[columns].to_numpy())
                counts = np.unique(labels, return_counts=True)[1]
                rows.append({"variant": variant, "seed": seed, "achievement": achievement,
                             "update": update, "d1_others": hill_numbers(counts, (1,))[1]})
    return pd.DataFrame(rows, columns=["variant", "seed", "achievement", "update", "d1_others"])


def event_tables(checkpoints: pd.DataFrame, network: pd.DataFrame, episodes: pd.DataFrame,
                 window: int, draws: int, alpha: float = DISCOVERY_ALPHA
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Discoveries per (variant, seed, achievement) at level `alpha` (from the per-episode
    table), and the event-triggered average of each EVENT_MEASURES around them, per variant and
    over all variants ("all"). `d1_others` is measured per discovery (`others_table`), the
    others per run."""
    achievements = [c for c in episodes.columns if c.startswith("achievement_")]
    found = []
    for variant, group in episodes.groupby("variant"):
        table = discoveries(group[["seed", "update", *achievements]], alpha)
        table.insert(0, "variant", variant)
        found.append(table)
    found = pd.concat(found, ignore_index=True)
    events = found[found["update"].notna()]
    measures = checkpoints[["variant", "seed", "update", "d1", "d2"]].merge(
        network[["variant", "seed", "update", "pr_last"]], on=["variant", "seed", "update"],
        how="left")
    others = others_table(episodes, events)
    rows = []
    for variant in ["all", *sorted(measures["variant"].unique())]:
        chosen_events = events if variant == "all" else events[events["variant"] == variant]
        for column in EVENT_MEASURES:
            source, by = (others, ("variant", "seed", "achievement")) \
                if column == "d1_others" else (measures, ("variant", "seed"))
            chosen = source if variant == "all" else source[source["variant"] == variant]
            values = chosen.dropna(subset=[column])
            if chosen_events.empty or values.empty:
                continue
            try:
                table = event_triggered(values, column, chosen_events, by=by, window=window,
                                        draws=draws)
            except ConfigError:  # no event at a measured checkpoint
                continue
            table.insert(0, "measure", column)
            table.insert(0, "variant", variant)
            rows.append(table)
    columns = ["variant", "measure", "offset", "events", "mean", "null_mean", "null_sd",
               "effect", "p", "null_mean_local", "null_sd_local", "effect_local", "p_local"]
    return found, (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns))


def event_sensitivity(by_alpha: dict[float, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """The event-triggered averages over all variants at each level (`by_alpha`: alpha →
    `event_tables` at that level), side by side (column `alpha`; `discoveries`: how many (run,
    achievement) events that level finds)."""
    rows = []
    for alpha, (found, events) in by_alpha.items():
        pooled = events[events["variant"] == "all"] if len(events) else events
        rows.append(pooled.assign(alpha=alpha, discoveries=int(found["update"].notna().sum())))
    return pd.concat(rows, ignore_index=True)


# The model's jump sweep (devrl.toys.evolution.jump_sweep) per scale: the full grid, or a
# corner of it for the smoke tests.
MODEL_SWEEP = {"new_rewards": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "betas": (0.05, 0.1, 0.2),
               "mus": (0.0005, 0.002, 0.008), "sigmas": (0.0, 0.5)}
STUDY_SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {"window": 2, "draws": 100, "fit": False,
              "sweep": {"new_rewards": (0.0, 1.0), "betas": (0.1,), "mus": (0.002,),
                        "sigmas": (0.0, 0.5), "steps": 200}},
    "cpu": {"window": EVENT_WINDOW, "draws": NULL_DRAWS, "fit": True, "sweep": MODEL_SWEEP},
    "paper": {"window": EVENT_WINDOW, "draws": NULL_DRAWS, "fit": True, "sweep": MODEL_SWEEP},
}
# The model's stated predictions (book/diversity.md): one discovery of a plant-like source, with
# each variant's plant reward; every_plant pays more to the variants that plant more, which the
# two-source landscape reads as a wider fitness spread among the new source's variants.
PREDICTION_RATES = {"beta": 0.1, "mu": 0.002, "sigma": 0.5}
PREDICTION_SPREAD = {"default": 0.2, "no_plant": 0.2, "every_plant": 0.4, "plant_x4": 0.2}
PREDICTION_STEPS, PREDICTION_DISCOVERY = 600, 100


def prediction_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model's curves and jump summaries for each reward structure (no data involved)."""
    from devrl.toys import evolution as ev

    curves, jumps = [], []
    for variant, reward in PLANT_REWARD.items():
        land = ev.two_source_landscape(new_reward=reward, spread=PREDICTION_SPREAD[variant],
                                       discovery=PREDICTION_DISCOVERY)
        d1 = ev.diversity(ev.simulate(land, steps=PREDICTION_STEPS, **PREDICTION_RATES))
        curves.append(pd.DataFrame({"variant": variant, "t": np.arange(len(d1)), "d1": d1}))
        jumps.append({"variant": variant, "plant_reward": reward,
                      "spread": PREDICTION_SPREAD[variant],
                      **ev.jump_summary(d1, PREDICTION_DISCOVERY)})
    return pd.concat(curves, ignore_index=True), pd.DataFrame(jumps)


def fit_inputs(checkpoints: pd.DataFrame, found: pd.DataFrame):
    """Per variant, the model's Curve: the mean D1 over seeds at each checkpoint, source 0 for
    what is known at the start, then every achievement discovered in at least half the variant's
    seeds, found at its median discovery update, paying 1 (place_plant: the variant's reward)."""
    from devrl.toys.evolution import Curve

    curves = {}
    for variant, group in checkpoints.groupby("variant"):
        mean = group.groupby("update")["d1"].mean()
        seeds = group["seed"].nunique()
        events = found[(found["variant"] == variant) & found["update"].notna()]
        rewards, times = [1.0], [0.0]
        for achievement, rows in sorted(events.groupby("achievement"),
                                        key=lambda item: item[1]["update"].median()):
            if len(rows) * 2 >= seeds:
                rewards.append(PLANT_REWARD[variant] if achievement == "place_plant" else 1.0)
                times.append(float(rows["update"].median()))
        curves[variant] = Curve(mean.index.to_numpy(), mean.to_numpy(float), np.array(rewards),
                                np.array(times))
    return curves


def fit_tables(checkpoints: pd.DataFrame, found: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model fitted to every variant's mean D1 curve at once, with and without the burst."""
    from devrl.toys.evolution import fit_curves

    curves = fit_inputs(checkpoints, found)
    plain, plain_table = fit_curves(curves, with_burst=False)
    # The burst model contains the plain one (sigma = 0): start it there as well as from the
    # default start, and keep the better fit, so adding the term can only lower the error.
    nested = (plain["beta"], plain["mu"], 1e-3, plain["spread"])
    burst, burst_table = min((fit_curves(curves, with_burst=True, start=start)
                              for start in (nested, None)), key=lambda fit: fit[0]["rmse"])
    params = [burst, plain]
    tables = [burst_table.assign(with_burst=True), plain_table.assign(with_burst=False)]
    return pd.DataFrame(params), pd.concat(tables, ignore_index=True).rename(
        columns={"curve": "variant"})


def control_checkpoints(control) -> dict[int, list[tuple[int, Any]]]:
    """Per control seed, its exported actor checkpoints as (update, loader)."""
    from devrl.runs import load_params

    out = {}
    for seed in control.seeds:
        paths = sorted((control.path / "checkpoints" / f"seed_{seed}").glob("params_*.npz"))
        out[seed] = [(int(p.stem.split("_")[1]), lambda p=p: load_params(p)) for p in paths]
    return out


def _eval_settings(scale: str) -> dict[str, int]:
    from devrl.analysis import EVAL_SETTINGS

    return EVAL_SETTINGS[scale]


def probe_sha256(probe: dict[str, np.ndarray]) -> str:
    """A checksum of the common probe states: a digest is tied to the states it was measured on."""
    import hashlib

    digest = hashlib.sha256()
    for key in ("obs", "context"):
        digest.update(np.ascontiguousarray(probe[key]).tobytes())
    return digest.hexdigest()


JSD_STATES = 1024  # probe states (stratified by plant context) on which policies are compared
JSD_SEED = 3_301


def jsd_states(probe: dict[str, np.ndarray], size: int = JSD_STATES) -> np.ndarray:
    """Indices of a fixed sample of `size` probe states, as equal a share of each plant context
    as the probe holds (sorted): the states on which agents' policies are compared (JSD). The
    mean JSD over ~10^3 states has a sampling error far below the differences it measures, and
    keeping the policies on all probe states would make each run's digest four times larger."""
    contexts = np.asarray(probe["context"])
    rng = np.random.default_rng(JSD_SEED)
    groups = [np.flatnonzero(contexts == c) for c in np.unique(contexts)]
    share, chosen = size // max(len(groups), 1), []
    for group in groups:
        chosen.append(rng.choice(group, min(share, len(group)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


# A run's digest: everything the study reads from one trained run, compact enough to commit
# (data/reward-runs-<scale>/<reward>-seed_<N>/), so that a finished run is measured once and the
# study survives the loss of the runs folder. Each digest has its own manifest.
DIGEST_TABLES = ("episodes", "training", "network", "probe_policy")


def probe_policy_rows(policies: dict[int, np.ndarray], probe: dict[str, np.ndarray],
                      variant: str, seed: int) -> pd.DataFrame:
    """`behaviour.probe_table` of every checkpoint's policy on the probe states."""
    from devrl.behaviour import probe_table

    rows = []
    for update, p in policies.items():
        table = probe_table(np.asarray(p, np.float32), probe["context"])
        table.insert(0, "update", update)
        table.insert(0, "seed", seed)
        table.insert(0, "variant", variant)
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def digest_root(scale: str):
    from devrl.analysis import data_root

    return data_root() / f"reward-runs-{scale}"


def digest_name(config: TrainConfig) -> str:
    return f"{config.reward}-seed_{config.seed}"


def make_digest(run_dir, config: TrainConfig, probe: dict[str, np.ndarray], scale: str,
                out) -> dict[str, Any]:
    """Evaluate and measure the finished run `run_dir` of `config` (cached in the run) and write
    its digest to the folder `out` (staged, then moved in by renames). Returns the digest."""
    from devrl.analysis import EVAL_SETTINGS, bin_updates
    from devrl.behaviour import evaluate_run, load_config
    from devrl.runs import (
        atomic_write_npz,
        atomic_write_parquet,
        check_verified,
        list_checkpoints,
        load_params,
        replace_dir,
        write_manifest,
    )

    manifest = check_verified(run_dir, "run")
    if not manifest.get("complete"):
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: it has not finished training")
    if load_config(run_dir).config_hash() != config.config_hash():
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: its config is not {config}")
    evaluate_run(run_dir, **EVAL_SETTINGS[scale], show_progress=False)
    episodes = pd.read_parquet(run_dir / "behaviour" / "episodes.parquet")
    checkpoints = [(u, lambda p=p: load_params(p)) for u, p in list_checkpoints(run_dir)]
    network, policies = network_measures(config, checkpoints, probe, run_dir / "diversity")
    metrics = pd.read_parquet(run_dir / "metrics.parquet").assign(seed=config.seed)
    digest = {
        "episodes": episodes.assign(variant=config.reward),
        "training": bin_updates(metrics, list(TRAINING_COLUMNS), UPDATES_PER_BIN[scale]).assign(
            variant=config.reward),
        "network": network.assign(variant=config.reward, seed=config.seed),
        "probe_policy": probe_policy_rows(policies, probe, config.reward, config.seed),
        "policies": {u: np.asarray(p)[jsd_states(probe)] for u, p in policies.items()},
        "run": {"variant": config.reward, "seed": config.seed, "config": config.to_dict(),
                "config_hash": config.config_hash(), "complete": True,
                "env_steps_done": manifest["updates_done"] * config.steps_per_update,
                "run_git_commit": manifest.get("git_commit")}}
    out = Path(out)
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in DIGEST_TABLES:
        atomic_write_parquet(staging / f"{name}.parquet", digest[name])
    atomic_write_npz(staging / "policies.npz",
                     {f"update_{u:06d}": np.asarray(p, np.float16)
                      for u, p in digest["policies"].items()},
                     compress=True)
    write_manifest(staging, {"what": "one reward-sweep run, evaluated and measured "
                                     "(devrl.diversity.make_digest)",
                             "scale": scale, "eval": EVAL_SETTINGS[scale],
                             "probe_sha256": probe_sha256(probe),
                             "jsd_states": {"size": JSD_STATES, "seed": JSD_SEED},
                             "run": digest["run"]})
    replace_dir(staging, out)
    return digest


def read_digest(folder, config: TrainConfig, probe: dict[str, np.ndarray], scale: str
                ) -> dict[str, Any] | None:
    """The digest in `folder` if it is one of `config`'s run on these probe states at these
    evaluation settings; None if there is none or it is out of date (config, probe or settings
    changed); a ConfigError if its files do not match its manifest."""
    from devrl.analysis import EVAL_SETTINGS
    from devrl.runs import check_verified

    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        return None
    manifest = check_verified(folder, "digest")
    if (manifest.get("run", {}).get("config_hash") != config.config_hash()
            or manifest.get("probe_sha256") != probe_sha256(probe)
            or manifest.get("eval") != EVAL_SETTINGS[scale]
            or manifest.get("jsd_states") != {"size": JSD_STATES, "seed": JSD_SEED}):
        return None
    digest = {name: pd.read_parquet(folder / f"{name}.parquet") for name in DIGEST_TABLES}
    with np.load(folder / "policies.npz") as data:
        digest["policies"] = {int(key.split("_")[1]): data[key] for key in data.files}
    digest["run"] = manifest["run"]
    return digest


def write_digest_index(root) -> None:
    """The digests folder's own manifest: every digest and its manifest's checksum (each digest
    is checked against its own manifest; the index says which digests the folder holds)."""
    from devrl.runs import sha256_file, write_manifest

    root = Path(root)
    names = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists())
    write_manifest(root, {"what": "digests of finished reward-sweep runs "
                                  "(devrl.diversity.make_digest), one folder each",
                          "digests": {n: sha256_file(root / n / "manifest.json") for n in names}},
                   exclude=tuple(f"{n}/" for n in names))


def digest_finished(scale: str, runs_dir, control, progress=print) -> dict[str, str]:
    """Digest every finished run of the reward sweep in `runs_dir` that has no up-to-date digest
    in `digest_root(scale)`; leave unfinished runs alone. Returns {digest name: status}, status
    one of digested, up to date, not finished."""
    from devrl.sweep import run_dir_for, run_finished

    probe = common_probe(control.path)
    root = digest_root(scale)
    status = {}
    for _, config in study_spec(scale).configs():
        name = digest_name(config)
        if read_digest(root / name, config, probe, scale) is not None:
            status[name] = "up to date"
        elif run_finished(run_dir_for(runs_dir, config)):
            progress(f"diversity: digesting {name}")
            root.mkdir(parents=True, exist_ok=True)
            make_digest(run_dir_for(runs_dir, config), config, probe, scale, root / name)
            status[name] = "digested"
        else:
            status[name] = "not finished"
    if root.exists():
        write_digest_index(root)
    return status


def study_tables(scale: str, runs_dir, control, seeds: list[int] | None = None, progress=print,
                 train: bool = True) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The study's tables from each run's digest (`digest_root(scale)`); with `train`, runs
    without an up-to-date digest are trained into `runs_dir` first (finished runs skipped,
    interrupted ones resumed; runs that have a digest are not retrained) and digested; without
    it, the study holds the runs that have a digest (the manifest's `held` of `planned`). The
    control is the data set `control` (analysis.CraftaxData of the same scale), measured here."""
    from devrl.analysis import bin_updates
    from devrl.config import config_from_dict
    from devrl.runs import sha256_file
    from devrl.sweep import SweepSpec, run_dir_for, run_name, run_sweep
    from devrl.toys.evolution import jump_sweep

    settings = STUDY_SETTINGS[scale]
    spec = study_spec(scale)
    if seeds is not None:
        spec = SweepSpec(spec.scale, spec.grid, tuple(seeds))
    probe = common_probe(control.path)
    root = digest_root(scale)
    digests = {digest_name(c): read_digest(root / digest_name(c), c, probe, scale)
               for _, c in spec.configs()}
    missing = [c for _, c in spec.configs() if digests[digest_name(c)] is None]
    planned = [digest_name(c) for _, c in spec.configs()]
    if missing and train:
        only = {run_name(c) for c in missing}
        if run_sweep(spec, runs_dir, show_progress=False, only=only) != 0:
            raise RuntimeError(f"training did not complete; see devrl sweep status {runs_dir}")
        root.mkdir(parents=True, exist_ok=True)
        for config in missing:
            progress(f"diversity: digesting {digest_name(config)}")
            digests[digest_name(config)] = make_digest(run_dir_for(runs_dir, config), config,
                                                       probe, scale, root / digest_name(config))
        write_digest_index(root)
    held = [c for _, c in spec.configs() if digests[digest_name(c)] is not None]
    if not held:
        raise ConfigError(f"no run of the reward sweep has a digest in {root}: train and "
                          "digest some first (devrl sweep, devrl digest)")
    control_config = config_from_dict(control.manifest["runs"][0]["config"])

    episodes = [control.episodes.assign(
        variant=CONTROL, default_return=control.episodes.get(
            "default_return", control.episodes["episode_return"]))]
    training = [bin_updates(control.metrics.assign(default_return=control.metrics.get(
        "default_return", control.metrics["episode_return"])), list(TRAINING_COLUMNS),
        UPDATES_PER_BIN[scale]).assign(variant=CONTROL)]
    network, policies, probe_rows, runs = [], {}, [], []
    subset = jsd_states(probe)
    for seed, checkpoints in control_checkpoints(control).items():
        progress(f"diversity: control seed {seed}")
        table, probs = network_measures(control_config, checkpoints, probe)
        network.append(table.assign(variant=CONTROL, seed=seed))
        probe_rows.append(probe_policy_rows(probs, probe, CONTROL, seed))
        policies[(CONTROL, seed)] = {u: np.asarray(p)[subset] for u, p in probs.items()}
    for config in held:
        digest = digests[digest_name(config)]
        episodes.append(digest["episodes"])
        training.append(digest["training"])
        network.append(digest["network"])
        probe_rows.append(digest["probe_policy"])
        policies[(config.reward, config.seed)] = digest["policies"]
        runs.append({**digest["run"], "digest": digest_name(config)})
    episodes = pd.concat(episodes, ignore_index=True)
    checkpoints = checkpoint_table(episodes)
    network = pd.concat(network, ignore_index=True)
    by_alpha = {alpha: event_tables(checkpoints, network, episodes, settings["window"],
                                    settings["draws"], alpha) for alpha in DISCOVERY_ALPHAS}
    found, events = by_alpha[DISCOVERY_ALPHA]  # the rule's level, computed once
    sensitivity = event_sensitivity(by_alpha)
    curves, jumps = prediction_tables()
    tables = {"checkpoints": checkpoints, "network": network,
              "probe_policy": pd.concat(probe_rows, ignore_index=True),
              "jsd": jsd_table(policies), "training": pd.concat(training, ignore_index=True),
              "discoveries": found, "events": events, "event_sensitivity": sensitivity,
              "model_predictions": curves,
              "model_jumps": jumps, "model_sweep": jump_sweep(**settings["sweep"])}
    if settings["fit"]:
        tables["model_fit"], tables["model_fit_curves"] = fit_tables(checkpoints, found)
    control_runs = [{**r, "variant": CONTROL} for r in control.manifest["runs"]
                    if r["seed"] in control.seeds]
    return tables, {
        "what": "reward structures (devrl.envs.REWARD_SPECS) and behavioural diversity "
                "(devrl.diversity): strategy Hill numbers, pairwise JSD, participation ratio, "
                "discoveries and event-triggered averages, and the replicator-mutator model",
        "made_by": f"devrl figure reward-variants -p scale {scale} -p recompute True",
        "sweep": spec.to_dict(), "planned": planned,
        "held": [digest_name(c) for c in held],
        "settings": {**settings, "discovery_alpha": DISCOVERY_ALPHA,
                                              "discovery_alphas": list(DISCOVERY_ALPHAS),
                                              "bootstrap": BOOTSTRAP,
                                              "eval": _eval_settings(scale),
                                              "jsd_states": {"size": JSD_STATES,
                                                             "seed": JSD_SEED}},
        "control": {"data_set": control.path.name,
                    "manifest_sha256": sha256_file(control.path / "manifest.json"),
                    "network_checkpoints": sorted({u for c in control_checkpoints(control).values()
                                                   for u, _ in c})},
        "digests": {"data_set": root.name,
                    "manifest_sha256": {digest_name(c): sha256_file(root / digest_name(c)
                                                                    / "manifest.json")
                                        for c in held}},
        "runs": control_runs + runs}


# ------------------------------------------------------------------ summaries for the chapters
VARIANT_ORDER = ("default", "no_plant", "every_plant", "plant_x4")


def mean_sd(frame: pd.DataFrame, column: str, by: str = "variant") -> pd.DataFrame:
    """Mean, sd (ddof 1; 0 for one seed) and count of `column` over seeds, per `by`."""
    out = frame.groupby(by)[column].agg(mean="mean", sd="std", seeds="count").reset_index()
    out["sd"] = out["sd"].fillna(0.0)
    return out


def listing(table: pd.DataFrame, column: str, spec: str = ".2f", sd: bool = True,
            variants: Sequence[str] = VARIANT_ORDER) -> str:
    """The value of `column` per reward structure, in `VARIANT_ORDER`, for the prose (glued text
    shows no markup): "default 1.23 ± 0.45, no_plant 0.98 ± 0.10, …" (mean ± sd over seeds from
    the columns `column` and `column`_sd of `table`, one row per `variant`); a structure the
    table lacks is named as having no run yet."""
    rows = table.set_index("variant")
    parts, absent = [], []
    for variant in variants:
        if variant not in rows.index:
            absent.append(variant)
            continue
        text = f"{variant} {format(float(rows.loc[variant, column]), spec)}"
        if sd:
            text += f" ± {format(float(rows.loc[variant, f'{column}_sd']), spec)}"
        parts.append(text)
    out = ", ".join(parts)
    if absent:
        out += f" ({' and '.join(absent)}: no run yet)"
    return out


def p_text(p: float, draws: int) -> str:
    """A null-distribution p-value for the prose, rounded to what `draws` null draws resolve:
    "p = 0.012", or "p < 0.0005" where no draw reached the observed value."""
    if not np.isfinite(p):
        return "p undefined"
    if p * draws < 1:
        return f"p < {format(1 / draws, '.1g')}"
    return f"p = {p:.3f}"


def holding(manifest: dict[str, Any]) -> str:
    """How many of the planned variant runs a study's data set holds, per reward structure, for
    the prose (the control's seeds are not counted: they are `data/craftax-<scale>`'s)."""
    planned, held = manifest["planned"], set(manifest["held"])
    per = {}
    for name in planned:
        variant = name.rsplit("-seed_", 1)[0]
        per.setdefault(variant, [0, 0])
        per[variant][0] += 1
        per[variant][1] += name in held
    detail = "; ".join(f"{v} {h} of {p} seeds" for v, (p, h) in per.items())
    return f"{len(held)} of the {len(planned)} planned variant runs ({detail})"


def last_checkpoint(frame: pd.DataFrame) -> pd.DataFrame:
    """Each (variant, seed)'s row at its last checkpoint."""
    index = frame.groupby(["variant", "seed"])["update"].idxmax()
    return frame.loc[index].reset_index(drop=True)


def overshoot_table(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, seed): the peak PLACE_PLANT share of actions over the evaluation
    checkpoints and the update of the peak, and at the last checkpoint the plants placed per
    episode, the share, the return (own reward and the game's) and the strategy D1."""
    rows = []
    for (variant, seed), group in checkpoints.groupby(["variant", "seed"]):
        group = group.sort_values("update")
        peak = group.loc[group["place_attempt_share"].idxmax()]
        last = group.iloc[-1]
        rows.append({"variant": variant, "seed": seed,
                     "peak_share": float(peak["place_attempt_share"]),
                     "peak_update": int(peak["update"]),
                     "final_share": float(last["place_attempt_share"]),
                     "final_plants": float(last["plants_placed"]),
                     "final_return": float(last["episode_return"]),
                     "final_default_return": float(last["default_return"]),
                     "final_d1": float(last["d1"]), "final_update": int(last["update"])})
    return pd.DataFrame(rows)


# Whether each prediction of book/diversity.md is a test (its rule, as it stands, committed
# before any data it judges was computed) or exploratory; the page gives the history by commit.
PREDICTION_KIND = {"p1": "exploratory", "p2": "test", "p3": "test", "p4": "test", "p5": "test",
                   "p6": "exploratory", "p7": "exploratory"}


def stated(said: dict[str, str]) -> dict[str, str]:
    """Each verdict of `verdicts` with its prediction's kind, for the prose: "held (a test)",
    "did not hold (exploratory)", "untested (it would be a test)"."""
    out = {}
    for key, word in said.items():
        kind = "a test" if PREDICTION_KIND[key] == "test" else "exploratory"
        out[key] = f"{word} ({'it would be ' + kind if word == 'untested' else kind})"
    return out


def verdicts(checkpoints: pd.DataFrame, jsd: pd.DataFrame, events: pd.DataFrame,
             network: pd.DataFrame, fit: pd.DataFrame | None) -> dict[str, str]:
    """The stated predictions of book/diversity.md, each judged by a fixed rule on the data:
    "held", "did not hold", or "untested" (the data to judge it is missing)."""
    def word(ok) -> str:
        return "untested" if ok is None else ("held" if ok else "did not hold")

    summary = overshoot_table(checkpoints)
    means = summary.groupby("variant").mean(numeric_only=True)
    have = set(means.index)
    out = {}

    # 1. Control: D1 peaks after the start and ends below the peak; a positive event effect at
    # the discovery checkpoint (p < 0.05, uniform null) whose excess over the null's mean is
    # smaller at the last offset than at the discovery.
    control = checkpoints[checkpoints["variant"] == CONTROL].groupby("update")["d1"].mean()
    rise_fall = (len(control) > 2 and control.idxmax() > control.index.min()
                 and control.iloc[-1] < control.max())
    ev = events[(events["variant"] == CONTROL) & (events["measure"] == "d1")] \
        if len(events) else events
    if len(ev):
        first, last = ev.sort_values("offset").iloc[0], ev.sort_values("offset").iloc[-1]
        event_ok = bool(first["effect"] > 0 and first["p"] < 0.05
                        and last["mean"] - last["null_mean"] < first["mean"] - first["null_mean"])
    out["p1"] = word(None if not len(ev) else bool(rise_fall and event_ok))
    # 2. no_plant: lower peak share and fewer final plants than the control.
    out["p2"] = word(None if not {"no_plant", CONTROL} <= have else bool(
        means.loc["no_plant", "peak_share"] < means.loc[CONTROL, "peak_share"]
        and means.loc["no_plant", "final_plants"] < means.loc[CONTROL, "final_plants"]))
    # 3. plant_x4: earlier and higher peak share, final D1 at most the control's.
    out["p3"] = word(None if not {"plant_x4", CONTROL} <= have else bool(
        means.loc["plant_x4", "peak_share"] > means.loc[CONTROL, "peak_share"]
        and means.loc["plant_x4", "peak_update"] <= means.loc[CONTROL, "peak_update"]
        and means.loc["plant_x4", "final_d1"] <= means.loc[CONTROL, "final_d1"]))
    # 4. every_plant: final share within 10% of its peak (no narrowing), final plants above the
    # control's, lowest final D1.
    out["p4"] = word(None if not {"every_plant", CONTROL} <= have else bool(
        means.loc["every_plant", "final_share"] >= 0.9 * means.loc["every_plant", "peak_share"]
        and means.loc["every_plant", "final_plants"] > means.loc[CONTROL, "final_plants"]
        and means.loc["every_plant", "final_d1"] == means["final_d1"].min()))
    # 5. JSD from the control at the last shared update: no_plant smallest, every_plant largest.
    cross = jsd[jsd["comparison"] == "vs_default"] if len(jsd) else jsd
    if len(cross) and {"no_plant", "every_plant", "plant_x4"} <= set(cross["variant"]):
        at = cross["update"].max()
        final = cross[cross["update"] == at].set_index("variant")["jsd"]
        out["p5"] = word(bool(final.idxmin() == "no_plant" and final.idxmax() == "every_plant"))
    else:
        out["p5"] = word(None)
    # 6. Network: PR rises with D1 across checkpoints (positive rank correlation), no event
    # effect on it (p >= 0.05 at every offset, pooled over variants).
    merged = checkpoints[["variant", "seed", "update", "d1"]].merge(
        network[["variant", "seed", "update", "pr_last"]], on=["variant", "seed", "update"])
    pr_events = events[(events["variant"] == "all") & (events["measure"] == "pr_last")] \
        if len(events) else events
    if len(merged) > 3 and len(pr_events):
        rho = merged["d1"].rank().corr(merged["pr_last"].rank())
        out["p6"] = word(bool(rho > 0 and (pr_events["p"] >= 0.05).all()))
    else:
        out["p6"] = word(None)
    # 7. The fit: the burst term lowers the AIC by less than 2.
    if fit is not None and len(fit) == 2:
        aic = fit.set_index("with_burst")["aic"]
        out["p7"] = word(bool(aic[False] - aic[True] < 2))
    else:
        out["p7"] = word(None)
    return out
