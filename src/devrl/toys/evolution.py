"""Replicator-mutator dynamics of a population of behaviours whose reward sources get discovered.

The population. Shares x_i of n behaviours (a policy's distribution over episode strategies).
Behaviour i collects `payoff[i, k]` of reward source k per episode; source k pays `reward[k]` from
its discovery time `discovery[k]` on (before it, the reward is there but no behaviour has been
paid by it, so it cannot select). The fitness is f_i(t) = sum_k reward_k payoff_ik [t >= tau_k].

The dynamics, per unit of time (a PPO update),

    dx_i/dt = beta x_i (f_i - f_bar) + mu (1/n - x_i),

selection of strength beta (the learning rate's role) and uniform mutation at rate mu (the entropy
bonus's). `simulate` integrates them by operator splitting: over a step dt the selection part is
solved exactly (x_i <- x_i exp(beta dt f_i), normalised) and then the mutation part exactly
(x <- u + (x - u) exp(-mu dt)). Each part is exact alone, so the limits below hold to rounding.

The fast-diversification term. At the discovery of source k a fraction s_k = 1 - exp(-sigma r_k)
of the population moves at once onto the behaviours that collect it, in proportion to what they
collect (x <- (1 - s_k) x + s_k q_k): a newly rewarded act generalises across the contexts and
variants that share its parameters before selection has had time to sort them (the plant
overshoot's sharing, in `devrl.toys.plant`). The fraction grows with the reward, as the first
rewarded update does, and is 0 for an unrewarded source. With sigma = 0 every change comes from
selection.

What the model says (the tests check the first three; `jump_sweep` shows the rest):

* with no mutation, from a uniform population and fixed rewards, diversity (the Hill number D1)
  only falls: x(t) is proportional to exp(beta f t), whose entropy has derivative
  -beta^2 t Var_x(f) <= 0;
* with a single reward source there is no jump: before its discovery the population stays
  uniform, after it selection only concentrates it;
* a jump needs a second source whose collectors were held rare by the first: when it is found,
  mass flows from the old favourite to many nearly equal new variants, diversity rises at a rate
  set by beta * reward, then decays at a rate set by beta times the fitness spread among the new
  variants (`spread`), down to a floor set by mu / beta;
* the jump grows with the new reward (saturating at the number of new variants) and with sigma;
  mutation raises the floor and so shrinks the jump.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.measures.diversity import hill_numbers


@dataclass(frozen=True)
class Landscape:
    payoff: np.ndarray  # [behaviours, sources]
    reward: np.ndarray  # [sources]
    discovery: np.ndarray  # [sources]: time of discovery (0: known from the start)
    names: tuple[str, ...] = field(default=())

    def validate(self) -> Landscape:
        payoff = np.asarray(self.payoff, float)
        if payoff.ndim != 2 or payoff.shape[0] < 1 or (payoff < 0).any():
            raise ConfigError("payoff must be a [behaviours, sources] array of non-negative "
                              "amounts")
        for name in ("reward", "discovery"):
            value = np.asarray(getattr(self, name), float)
            if value.shape != (payoff.shape[1],):
                raise ConfigError(f"{name} must have one entry per source ({payoff.shape[1]})")
        if (np.asarray(self.discovery) < 0).any():
            raise ConfigError("discovery times must be >= 0")
        return self

    def fitness(self, t: float) -> np.ndarray:
        found = (np.asarray(self.discovery) <= t).astype(float)
        return np.asarray(self.payoff, float) @ (np.asarray(self.reward, float) * found)


def check_rates(beta: float, mu: float, sigma: float) -> None:
    for name, value, upper in (("beta", beta, None), ("mu", mu, None), ("sigma", sigma, None)):
        if not np.isfinite(value) or value < 0 or (upper is not None and value > upper):
            allowed = f">= 0 and <= {upper}" if upper is not None else ">= 0"
            raise ConfigError(f"{name}={value!r} is not allowed: must be {allowed}")


def simulate(landscape: Landscape, beta: float, mu: float, sigma: float = 0.0,
             steps: int = 500, dt: float = 0.1, start: np.ndarray | None = None) -> np.ndarray:
    """Shares [steps + 1, behaviours] at t = 0, 1, ..., steps (the uniform population at t = 0
    unless `start` is given)."""
    landscape = landscape.validate()
    check_rates(beta, mu, sigma)
    payoff = np.asarray(landscape.payoff, float)
    n = payoff.shape[0]
    uniform = np.full(n, 1.0 / n)
    x = uniform.copy() if start is None else np.asarray(start, float) / np.sum(start)
    substeps = max(1, round(1.0 / dt))
    h = 1.0 / substeps
    discovery = np.asarray(landscape.discovery, float)
    out = np.empty((steps + 1, n))

    reward = np.asarray(landscape.reward, float)

    def burst(x, sources):
        for k in sources:
            moved = 1 - np.exp(-sigma * max(reward[k], 0.0))
            if moved > 0 and payoff[:, k].sum() > 0:
                x = (1 - moved) * x + moved * payoff[:, k] / payoff[:, k].sum()
        return x

    out[0] = x  # sources known from the start select, but were never "found": no burst
    t = 0.0
    for step in range(steps):
        for _ in range(substeps):
            f = landscape.fitness(t)
            logw = np.log(np.maximum(x, 1e-300)) + beta * h * (f - f.max())
            x = np.exp(logw - logw.max())
            x /= x.sum()
            x = uniform + (x - uniform) * np.exp(-mu * h)
            t_next = t + h
            x = burst(x, np.flatnonzero((discovery > t) & (discovery <= t_next + 1e-12)))
            t = t_next
        out[step + 1] = x
    return out


def diversity(shares: np.ndarray, order: int = 1) -> np.ndarray:
    """The Hill number of `order` of each row of `shares`."""
    return np.array([hill_numbers(row, (order,))[order] for row in np.atleast_2d(shares)])


def two_source_landscape(new_reward: float = 1.0, variants: int = 8, spread: float = 0.2,
                         cost: float = 0.2, old_reward: float = 1.0, discovery: float = 100.0,
                         others: int = 8) -> Landscape:
    """The landscape of a discovery: `others` behaviours collect nothing, one behaviour collects
    the old source (known from the start), and `variants` behaviours collect the old source at a
    cost (1 - cost) and the new source (found at `discovery`) with efficiencies spread evenly
    from 1 down to 1 - spread. Behaviour order: others, the old favourite, the variants."""
    if variants < 1 or others < 0:
        raise ConfigError(f"variants={variants}, others={others} are not allowed: need "
                          "variants >= 1 and others >= 0")
    if not 0 <= spread <= 1 or not 0 <= cost <= 1:
        raise ConfigError(f"spread={spread}, cost={cost} are not allowed: both must be in [0, 1]")
    efficiency = 1 - spread * np.arange(variants) / max(variants - 1, 1)
    payoff = np.zeros((others + 1 + variants, 2))
    payoff[others, 0] = 1.0
    payoff[others + 1:, 0] = 1 - cost
    payoff[others + 1:, 1] = efficiency
    return Landscape(payoff, np.array([old_reward, new_reward]), np.array([0.0, discovery]),
                     ("old", "new"))


def jump_summary(d1: np.ndarray, discovery: int) -> dict[str, float]:
    """The jump of a diversity curve at a discovery: the value just before it, the peak after it
    (and when, relative to the discovery), the jump (peak - before; 0 if it only falls), the
    half-life of the decay from the peak towards the final value (NaN if it does not decay by
    half), and the final value."""
    before = float(d1[max(discovery - 1, 0)])
    after = d1[discovery:]
    peak_at = int(np.argmax(after))
    peak = float(after[peak_at])
    final = float(d1[-1])
    half = np.nan
    if peak - final > 1e-9:
        below = np.flatnonzero(after[peak_at:] <= final + (peak - final) / 2)
        half = float(below[0]) if len(below) else np.nan
    return {"before": before, "peak": peak, "jump": max(peak - before, 0.0),
            "rise_time": float(peak_at), "half_life": half, "final": final}


def jump_sweep(new_rewards=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0), betas=(0.05, 0.1, 0.2),
               mus=(0.0005, 0.002, 0.008), sigmas=(0.0, 0.5), steps: int = 600,
               discovery: int = 100, **landscape) -> pd.DataFrame:
    """jump_summary of D1 over a grid of the new reward, selection, mutation and burst sizes."""
    rows = []
    for r in new_rewards:
        land = two_source_landscape(new_reward=r, discovery=discovery, **landscape)
        for beta in betas:
            for mu in mus:
                for sigma in sigmas:
                    d1 = diversity(simulate(land, beta, mu, sigma, steps=steps))
                    rows.append({"new_reward": r, "beta": beta, "mu": mu, "sigma": sigma,
                                 **jump_summary(d1, discovery)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ fitting measured curves
FIT_VARIANTS = 4  # behaviours per group in the cascade landscape of a fit
FIT_COST = 0.2  # what each group pays for also collecting the newest source
FIT_DT = 0.25


def cascade_landscape(rewards: np.ndarray, discoveries: np.ndarray, spread: float,
                      variants: int = FIT_VARIANTS, cost: float = FIT_COST) -> Landscape:
    """Sources 0..K-1 found at `discoveries` (source 0 usually at 0: what is known from the
    start). Group g (g = 0..K-1) has `variants` behaviours that collect sources 0..g, each of its
    sources but the first at (1 - cost) and with efficiencies spread from 1 to 1 - spread; one
    more behaviour collects nothing. Finding source g lifts group g over group g - 1."""
    rewards = np.asarray(rewards, float)
    k = len(rewards)
    efficiency = 1 - spread * np.arange(variants) / max(variants - 1, 1)
    payoff = np.zeros((1 + k * variants, k))
    for g in range(k):
        rows = slice(1 + g * variants, 1 + (g + 1) * variants)
        payoff[rows, 0] = efficiency if g == 0 else 1.0
        for s in range(1, g + 1):
            payoff[rows, s] = (1 - cost) * (efficiency if s == g else 1.0)
    return Landscape(payoff, rewards, np.asarray(discoveries, float))


@dataclass(frozen=True)
class Curve:
    """A measured diversity curve and what the fit knows about its run(s)."""

    updates: np.ndarray  # checkpoints (PPO updates)
    d1: np.ndarray  # measured diversity there
    rewards: np.ndarray  # per source: its reward (source 0: what is known from the start)
    discoveries: np.ndarray  # per source: the update it was found (source 0: 0)


FIT_START_SPREAD = 0.01  # share of the untrained population spread evenly over all behaviours


def untrained_start(behaviours: int, spread: float = FIT_START_SPREAD) -> np.ndarray:
    """An untrained policy's population: nearly all on behaviour 0 (which collects nothing),
    the rest spread evenly, so no skill exists before selection builds it."""
    start = np.full(behaviours, spread / behaviours)
    start[0] += 1 - spread
    return start


def model_curve(curve: Curve, beta: float, mu: float, sigma: float, spread: float,
                steps: int | None = None) -> np.ndarray:
    """The model's D1 at every update 0..steps (default: the curve's last update), from the
    untrained population (`untrained_start`)."""
    steps = int(curve.updates.max()) if steps is None else steps
    land = cascade_landscape(curve.rewards, curve.discoveries, spread)
    start = untrained_start(land.payoff.shape[0])
    return diversity(simulate(land, beta, mu, sigma, steps=steps, dt=FIT_DT, start=start))


def _readout(model: np.ndarray, observed: np.ndarray) -> tuple[float, float]:
    """The least-squares affine map observed ~ a + b * model (b >= 0)."""
    design = np.stack([np.ones_like(model), model], 1)
    (a, b), *_ = np.linalg.lstsq(design, observed, rcond=None)
    if b < 0:
        return float(observed.mean()), 0.0
    return float(a), float(b)


FIT_START = (0.05, 0.002, 0.5, 0.2)  # beta, mu, sigma, spread


def fit_curves(curves: dict[str, Curve], with_burst: bool = True, start=None
               ) -> tuple[dict[str, float], pd.DataFrame]:
    """Fit beta, mu, sigma (0 without the burst) and spread, shared by every curve, with an
    affine read-out per curve (the model's D1 counts abstract behaviours, the measurement
    strategies). Returns the parameters with `rmse`, `r_squared` and `aic` over all points, and
    the table of (curve, update, observed, model)."""
    from scipy.optimize import least_squares

    start = FIT_START if start is None else start
    names = ["beta", "mu", "sigma", "spread"] if with_burst else ["beta", "mu", "spread"]
    x0 = [start[0], start[1], start[2], start[3]] if with_burst else [start[0], start[1],
                                                                      start[3]]
    lower = [1e-4, 1e-6, 0.0, 0.0][: len(names)] if with_burst else [1e-4, 1e-6, 0.0]
    upper = [5.0, 0.5, 20.0, 1.0] if with_burst else [5.0, 0.5, 1.0]
    x0 = np.clip(x0, lower, upper)

    def unpack(x):
        values = dict(zip(names, x))
        values.setdefault("sigma", 0.0)
        return values

    def predictions(x):
        p = unpack(x)
        out = {}
        for name, curve in curves.items():
            model = model_curve(curve, p["beta"], p["mu"], p["sigma"], p["spread"])
            at = model[curve.updates.astype(int)]
            a, b = _readout(at, curve.d1)
            out[name] = a + b * at
        return out

    def residual(x):
        pred = predictions(x)
        return np.concatenate([pred[n] - curves[n].d1 for n in curves])

    result = least_squares(residual, x0, bounds=(lower, upper), x_scale="jac", max_nfev=200)
    params = unpack(result.x)
    pred = predictions(result.x)
    observed = np.concatenate([c.d1 for c in curves.values()])
    res = residual(result.x)
    n, k = len(observed), len(names) + 2 * len(curves)
    sse = float((res ** 2).sum())
    params.update({"rmse": float(np.sqrt(sse / n)),
                   "r_squared": 1 - sse / float(((observed - observed.mean()) ** 2).sum()),
                   "aic": n * np.log(max(sse, 1e-300) / n) + 2 * k, "points": n,
                   "parameters": k, "with_burst": with_burst})
    table = pd.concat([pd.DataFrame({"curve": name, "update": curve.updates,
                                     "observed": curve.d1, "model": pred[name]})
                       for name, curve in curves.items()], ignore_index=True)
    return params, table
