"""Credit routing: does a region of a network value what the rewards that updated it paid for?

The claim under test (from the shard-theory discussion in the source material): take any
partition of a network's parameters into regions; under policy-gradient credit assignment a
region is shaped only by the reward events whose updates reach it, so how specialised the
credit is decides what each region ends up valuing.

The task. A one-step contextual bandit with K reward sources. A context shows which sources are
present (one presence bit per source, each on with probability `presence`) and `noise` channels
of Gaussian noise. The agent chooses one of K + 1 actions: action k pursues source k and pays
`rewards[k]` if source k is present, action K does nothing and pays 0.

The policy. A one-hidden-layer tanh network (no output bias) whose hidden units are split into K
equal regions; region k is the units k·m .. (k+1)·m − 1 with their input weights, biases and
output weights. REINFORCE with a batch-mean baseline per source, split by source: the update is
sum_k M_k ⊙ g_k with g_k = E[∇log π(a|x) (R_k − mean R_k)], R_k the reward paid by source k,
and M_k the routing mask: 1 on region k's parameters and 1 − `routing` on every other region's.
`routing` = 0 is plain REINFORCE (every region gets every source's credit); 1 routes each
source's credit to its own region only (gradient routing, Cloud et al. 2024).

What a region values. `value[j, k]` is how much more region j on its own (every other region's
hidden units set to 0) pursues source k, in contexts where only source k is present, than it did
at initialisation. (`value_matrix(..., how="silenced")` gives the other reading, what the whole
network loses when region j alone is silenced; it mixes in what the other regions do: with
shared credit they duplicate each other, with routed credit they compete, each pushing its own
action everywhere.) The credit region j received from source k is 1 if j = k, else
1 − routing; the claim read literally predicts value in proportion to it, so the share of a
region's (positive) value that is its own is 1 / (1 + (K − 1)(1 − routing)). The specialisation
index (K · own share − 1) / (K − 1) is 1 when every region values only its own source and 0 when
they all value every source alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.measures.verdicts import word


@dataclass(frozen=True)
class CreditTask:
    rewards: tuple[float, ...] = (1.0, 1.0, 1.0)
    presence: float = 0.5
    noise: int = 4
    units_per_region: int = 8
    learning_rate: float = 0.5
    batch: int = 256
    updates: int = 400
    baseline: bool = False  # subtract each source's batch-mean reward from its own credit

    def validate(self) -> CreditTask:
        if len(self.rewards) < 2 or any(r <= 0 for r in self.rewards):
            raise ConfigError(f"rewards={self.rewards!r} is not allowed: need at least two "
                              "positive rewards (one per source)")
        if not 0 < self.presence < 1:
            raise ConfigError(f"presence={self.presence!r} is not allowed: must be in (0, 1)")
        for name in ("units_per_region", "batch", "updates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed: must be >= 1")
        if self.noise < 0 or not self.learning_rate > 0:
            raise ConfigError("noise must be >= 0 and learning_rate > 0")
        return self

    @property
    def sources(self) -> int:
        return len(self.rewards)

    @property
    def hidden(self) -> int:
        return self.sources * self.units_per_region


def check_routing(routing: float) -> float:
    if not 0.0 <= routing <= 1.0:
        raise ConfigError(f"routing={routing!r} is not allowed: must be in [0, 1] (0: every "
                          "region gets every source's credit, 1: only its own)")
    return float(routing)


def init_params(task: CreditTask, key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    inputs = task.sources + task.noise
    return {"w1": jax.random.normal(k1, (inputs, task.hidden)) / jnp.sqrt(inputs),
            "b1": jnp.zeros(task.hidden),
            "w2": jax.random.normal(k2, (task.hidden, task.sources + 1)) * 0.1}


def region_of(task: CreditTask) -> np.ndarray:
    return np.repeat(np.arange(task.sources), task.units_per_region)


def masks(task: CreditTask, routing: float) -> list[dict[str, jax.Array]]:
    """Per source k, the routing mask over the parameters (1 on region k, 1 - routing else)."""
    region = region_of(task)
    out = []
    for k in range(task.sources):
        unit = jnp.where(region == k, 1.0, 1.0 - routing)
        out.append({"w1": jnp.broadcast_to(unit, (task.sources + task.noise, task.hidden)),
                    "b1": unit, "w2": jnp.broadcast_to(unit[:, None],
                                                       (task.hidden, task.sources + 1))})
    return out


def logits(params, x, silenced: jax.Array | None = None) -> jax.Array:
    """Action logits [B, K+1]; `silenced` [hidden] (1 = unit set to 0)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    if silenced is not None:
        h = h * (1.0 - silenced)
    return h @ params["w2"]


def contexts(task: CreditTask, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(key)
    present = jax.random.bernoulli(k1, task.presence, (n, task.sources)).astype(jnp.float32)
    noise = jax.random.normal(k2, (n, task.noise))
    return jnp.concatenate([present, noise], axis=1), present


def source_rewards(task: CreditTask, present: jax.Array, actions: jax.Array) -> jax.Array:
    """[B, K]: the reward each source paid for each action."""
    chosen = jax.nn.one_hot(actions, task.sources + 1)[:, :task.sources]
    return chosen * present * jnp.asarray(task.rewards)


def source_gradients(task: CreditTask, params, x, actions, paid) -> list[dict[str, jax.Array]]:
    """Per source k, the REINFORCE gradient (ascent direction) of its reward (minus its batch
    mean with `task.baseline`)."""
    def logp(p):
        return jax.nn.log_softmax(logits(p, x))[jnp.arange(x.shape[0]), actions]

    out = []
    for k in range(task.sources):
        advantage = paid[:, k] - paid[:, k].mean() if task.baseline else paid[:, k]
        out.append(jax.grad(lambda p: jnp.mean(logp(p) * advantage))(params))
    return out


def routed_update(task: CreditTask, params, x, actions, paid, routing: float):
    grads = source_gradients(task, params, x, actions, paid)
    total = jax.tree.map(jnp.zeros_like, params)
    for grad, mask in zip(grads, masks(task, routing)):
        total = jax.tree.map(lambda t, g, m: t + g * m, total, grad, mask)
    return total


@functools.partial(jax.jit, static_argnums=(0,))
def train(task: CreditTask, routing: float, key: jax.Array) -> dict[str, jax.Array]:
    """Parameters after `task.updates` routed REINFORCE updates (and the initial ones)."""
    k_init, k_loop = jax.random.split(key)
    params0 = init_params(task, k_init)

    def step(params, k):
        k_ctx, k_act = jax.random.split(k)
        x, present = contexts(task, k_ctx, task.batch)
        actions = jax.random.categorical(k_act, logits(params, x))
        paid = source_rewards(task, present, actions)
        update = routed_update(task, params, x, actions, paid, routing)
        return jax.tree.map(lambda p, u: p + task.learning_rate * u, params, update), None

    params, _ = jax.lax.scan(step, params0, jax.random.split(k_loop, task.updates))
    return {"init": params0, "final": params}


def pursuit(task: CreditTask, params, silenced=None, samples: int = 2000,
            seed: int = 7) -> np.ndarray:
    """[K]: P(action k) in contexts where only source k is present (noise channels drawn)."""
    out = []
    noise = jax.random.normal(jax.random.PRNGKey(seed), (samples, task.noise))
    for k in range(task.sources):
        present = jnp.zeros((samples, task.sources)).at[:, k].set(1.0)
        x = jnp.concatenate([present, noise], axis=1)
        out.append(float(jax.nn.softmax(logits(params, x, silenced))[:, k].mean()))
    return np.array(out)


def value_matrix(task: CreditTask, params, init=None, how: str = "isolated") -> np.ndarray:
    """value[j, k] for region j and source k, in contexts where only source k is present.

    `isolated`: P(pursue k) with only region j active (every other region silenced), minus the
    same at initialisation (`init`): what region j alone has learned to go for. `silenced`: the
    drop of P(pursue k) when region j alone is silenced: what the whole network loses without
    it, which also depends on whether other regions do the same job (redundancy) or fight it."""
    region = region_of(task)
    if how == "isolated":
        if init is None:
            raise ConfigError("how='isolated' needs init: the parameters at initialisation")
        rows = []
        for j in range(task.sources):
            others = jnp.asarray(region != j, jnp.float32)
            rows.append(pursuit(task, params, others) - pursuit(task, init, others))
        return np.array(rows)
    if how == "silenced":
        intact = pursuit(task, params)
        return np.array([intact - pursuit(task, params, jnp.asarray(region == j, jnp.float32))
                         for j in range(task.sources)])
    raise ConfigError(f"how={how!r} is not allowed: must be 'isolated' or 'silenced'")


def specialisation(value: np.ndarray) -> float:
    """(K · own share − 1) / (K − 1) with own share = sum_j v+[j, j] / sum_{j,k} v+[j, k], v+ the
    positive part of `value` (a region that pursues a source less than it did untrained does not
    value it): 1 when every region values only its own source, 0 when each values all alike."""
    k = value.shape[0]
    positive = np.clip(value, 0, None)
    total = positive.sum()
    if total <= 0:
        return float("nan")
    own = np.trace(positive) / total
    return float((k * own - 1) / (k - 1))


def predicted_specialisation(routing: float, sources: int) -> float:
    """The claim's prediction: value in proportion to the credit each region received."""
    own = 1.0 / (1.0 + (sources - 1) * (1.0 - routing))
    return (sources * own - 1) / (sources - 1)


ROUTINGS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
CREDIT_SETTINGS = {"smoke": {"routings": (0.0, 1.0), "seeds": 2, "updates": 100},
                   "cpu": {"routings": ROUTINGS, "seeds": 10, "updates": 400},
                   "paper": {"routings": ROUTINGS, "seeds": 30, "updates": 1000}}


def routing_table(scale: str, task: CreditTask | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Over routing degrees and seeds: the value matrix (long) and per run the specialisation
    index, its prediction and the pursuit of each source."""
    if scale not in CREDIT_SETTINGS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of "
                          f"{', '.join(CREDIT_SETTINGS)}")
    settings = CREDIT_SETTINGS[scale]
    task = (task or CreditTask(updates=settings["updates"])).validate()
    values, runs = [], []
    for routing in settings["routings"]:
        for seed in range(settings["seeds"]):
            trained = train(task, check_routing(routing), jax.random.PRNGKey(seed))
            params = trained["final"]
            value = value_matrix(task, params, trained["init"])
            silenced = value_matrix(task, params, how="silenced")
            for j in range(task.sources):
                for k in range(task.sources):
                    values.append({"routing": routing, "seed": seed, "region": j, "source": k,
                                   "value": float(value[j, k]),
                                   "silenced_drop": float(silenced[j, k])})
            intact = pursuit(task, params)
            runs.append({"routing": routing, "seed": seed, "specialisation": specialisation(value),
                         "specialisation_silenced": specialisation(silenced),
                         "predicted": predicted_specialisation(routing, task.sources),
                         **{f"pursuit_{k}": float(p) for k, p in enumerate(intact)}})
    return pd.DataFrame(values), pd.DataFrame(runs)


def routing_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per routing degree: mean and sd over seeds of the specialisation index, and the claim's
    prediction."""
    return runs.groupby("routing", as_index=False).agg(
        specialisation=("specialisation", "mean"), specialisation_sd=("specialisation", "std"),
        predicted=("predicted", "first"), seeds=("seed", "nunique"))


OWN_VALUE, NO_VALUE = 0.2, 0.02  # the limits' rules: a clear own value; nothing beyond untrained

# The limits' rules were written after the toy's results were seen: exploratory
# (devrl.measures.verdicts).
ROUTING_KIND = {"routed": "exploratory", "shared": "exploratory"}


def routing_verdicts(values: pd.DataFrame, runs: pd.DataFrame) -> dict[str, str]:
    """The claim's two limits, judged on every seed: fully routed (ρ = 1), each region's value of
    its own source above OWN_VALUE and of every other source below NO_VALUE; fully shared
    (ρ = 0), no region values its own source more than the mean of the others (mean over seeds,
    within 0.05), and the mean specialisation index within 0.15 of 0. "held", "did not hold",
    "untested" (that limit was not run)."""
    routed = values[values["routing"] == 1.0]
    shared = values[values["routing"] == 0.0]
    own = (routed["region"] == routed["source"]).to_numpy()
    value = routed["value"].to_numpy()
    out = {"routed": word(None if routed.empty else bool(
        (value[own] > OWN_VALUE).all() and (value[~own] < NO_VALUE).all()))}
    if shared.empty:
        out["shared"] = word(None)
    else:
        means = shared.groupby(["region", "source"])["value"].mean().unstack()
        diagonal = np.diag(means.to_numpy())
        others = (means.to_numpy().sum(1) - diagonal) / (len(diagonal) - 1)
        index = runs.loc[runs["routing"] == 0.0, "specialisation"].mean()
        out["shared"] = word(bool((diagonal - others < 0.05).all() and abs(index) < 0.15))
    return out


def routed_limit_values(values: pd.DataFrame) -> dict[str, float]:
    """At ρ = 1: the smallest own-source value of any region and seed, the largest value of any
    other source, and how many (region, seed) pairs pass the routed rule's OWN_VALUE."""
    routed = values[values["routing"] == 1.0]
    own = routed[routed["region"] == routed["source"]]
    off = routed[routed["region"] != routed["source"]]
    return {"min_own": float(own["value"].min()), "max_other": float(off["value"].max()),
            "own_passing": int((own["value"] > OWN_VALUE).sum()), "own_total": int(len(own)),
            "own_value_rule": OWN_VALUE, "no_value_rule": NO_VALUE}
