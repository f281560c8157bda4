"""A toy model of the plant overshoot: a reward paid once per episode, and a policy that shares.

The task. An episode has T steps. At each step a context c ∈ {0, …, K−1} is drawn independently
with probability p_c; context 0 is the one where placing works (in Craftax: a sapling in the
inventory and grass ahead). The agent either *places* or does *other*. Placing pays R the first
time it succeeds in an episode (in context 0) and nothing after that; every step spent on other
pays r_o (the opportunity cost of placing: what the agent could have earned instead). The agent
does not observe whether it has already placed, as a Craftax policy without memory does not.

The policy. π(place | c) = σ(ℓ_c) with logits ℓ_c = √ρ · a + √(1−ρ) · b_c: a shared weight a
seen by every context and one own weight b_c per context. A gradient step on the logit of one
context moves every other logit by the fraction ρ of that step (the "sharing", the mechanism by
which what is learned in one context generalises to the others): ρ = 0 is a tabular policy,
ρ = 1 one logit for all contexts.

Expected return (closed form, since contexts are i.i.d. and the policy stationary): with
q_c = π(place | c) and s = p_0 q_0 the chance of a successful place at a step,

    J = R · (1 − (1 − s)^T) + r_o · T · Σ_c p_c (1 − q_c).

Exact expected policy-gradient dynamics are gradient ascent on J (the expected REINFORCE update
is ∇J); `expected_trajectory` integrates them with no sampling noise, and
`sampled_trajectories` runs REINFORCE on simulated episodes for comparison. In logits the flow is

    dℓ_c/dt = α [ρ Σ_c' g_c' + (1 − ρ) g_c],   g_c = ∂J/∂ℓ_c = q_c (1 − q_c) ∂J/∂q_c,

with ∂J/∂q_0 = T p_0 [R (1 − s)^(T−1) − r_o] and ∂J/∂q_c = −T p_c r_o for c ≠ 0. Early on the
valid context's gradient dominates and, through ρ, raises placing everywhere; once placing in
context 0 is frequent enough that a success is nearly certain, (1 − s)^(T−1) falls below r_o / R,
and only the opportunity cost remains: it pulls every non-valid context down, slowly, since it is
proportional to r_o and to q_c (1 − q_c). The optimum places in context 0 only, with
q_0* = (1 − (r_o/R)^(1/(T−1))) / p_0 if that is below 1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError


@dataclass(frozen=True)
class PlantTask:
    """The episodic task; context 0 is where placing works."""

    context_probs: tuple[float, ...] = (0.1, 0.2, 0.7)
    horizon: int = 100  # T
    other_reward: float = 0.002  # r_o, per step of other
    place_reward: float = 1.0  # R, for the first successful place of an episode

    def validate(self) -> PlantTask:
        p = np.asarray(self.context_probs, float)
        if p.ndim != 1 or len(p) < 2 or (p <= 0).any() or not math.isclose(p.sum(), 1.0,
                                                                              rel_tol=1e-6):
            raise ConfigError(f"context_probs={self.context_probs!r} is not allowed: need at least "
                              "two positive probabilities summing to 1")
        if self.horizon < 1:
            raise ConfigError(f"horizon={self.horizon!r} is not allowed: must be >= 1")
        if not (self.other_reward >= 0 and self.place_reward > 0):
            raise ConfigError(f"other_reward={self.other_reward!r}, place_reward="
                              f"{self.place_reward!r} is not allowed: need other_reward >= 0 and "
                              "place_reward > 0")
        return self

    @property
    def num_contexts(self) -> int:
        return len(self.context_probs)

    def optimal_valid_propensity(self) -> float:
        """q_0* maximising J with q_c = 0 elsewhere (clipped to 1)."""
        ratio = self.other_reward / self.place_reward
        if ratio <= 0:
            return 1.0
        if ratio >= 1 or self.horizon == 1:
            return 0.0 if ratio >= 1 else 1.0
        return float(min(1.0, (1 - ratio ** (1 / (self.horizon - 1))) / self.context_probs[0]))


def check_sharing(sharing: float) -> float:
    if not (isinstance(sharing, (int, float)) and 0.0 <= sharing <= 1.0):
        raise ConfigError(f"sharing={sharing!r} is not allowed: must be in [0, 1]")
    return float(sharing)


def initial_params(task: PlantTask, sharing: float, logit: float) -> dict[str, jax.Array]:
    """Weights that give every context the same initial logit `logit`."""
    check_sharing(sharing)
    return {"shared": jnp.asarray(math.sqrt(sharing) * logit, jnp.float32),
            "own": jnp.full((task.num_contexts,), math.sqrt(1 - sharing) * logit, jnp.float32)}


def logits(params: dict[str, jax.Array], sharing: float) -> jax.Array:
    return jnp.sqrt(sharing) * params["shared"] + jnp.sqrt(1 - sharing) * params["own"]


def task_arrays(task: PlantTask) -> dict[str, jax.Array]:
    """The task as arrays, so compiled dynamics are reused across task settings (fits, sweeps)."""
    return {"probs": jnp.asarray(task.context_probs, jnp.float32),
            "horizon": jnp.float32(task.horizon),
            "other_reward": jnp.float32(task.other_reward),
            "place_reward": jnp.float32(task.place_reward)}


def expected_return(task: PlantTask | dict, propensity: jax.Array) -> jax.Array:
    """J for place propensities q_c (closed form; see the module docstring)."""
    t = task_arrays(task) if isinstance(task, PlantTask) else task
    success = t["probs"][0] * propensity[0]
    place = t["place_reward"] * (1 - (1 - success) ** t["horizon"])
    other = t["other_reward"] * t["horizon"] * jnp.sum(t["probs"] * (1 - propensity))
    return place + other


def objective(task: PlantTask | dict, sharing: float):
    def value(params):
        return expected_return(task, jax.nn.sigmoid(logits(params, sharing)))
    return value


def expected_trajectory(task: PlantTask, sharing: float, learning_rate: float, steps: int,
                        init_logit: float = -2.8, record_every: int = 1) -> np.ndarray:
    """Place propensities q_c [steps // record_every + 1, K] under exact gradient ascent on J."""
    task.validate()
    start = initial_params(task, check_sharing(sharing), init_logit)
    q = _expected_run(steps, task_arrays(task), jnp.float32(sharing),
                      jnp.float32(learning_rate), start)
    return _with_start(start, sharing, q)[::record_every]


@functools.partial(jax.jit, static_argnames=("steps",))
def _expected_run(steps, arrays, sharing, learning_rate, start):
    grad = jax.grad(objective(arrays, sharing))

    def step(params, _):
        params = jax.tree_util.tree_map(lambda w, d: w + learning_rate * d, params, grad(params))
        return params, jax.nn.sigmoid(logits(params, sharing))

    return jax.lax.scan(step, start, None, length=steps)[1]


def _with_start(start, sharing, q) -> np.ndarray:
    first = np.asarray(jax.nn.sigmoid(logits(start, sharing)))
    q = np.asarray(q)
    return np.concatenate([np.broadcast_to(first, q.shape[:-2] + (1, first.shape[-1])), q],
                          axis=-2)


def sample_episodes(task: PlantTask, propensity: jax.Array, key: jax.Array, episodes: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Simulated episodes: contexts [E, T], actions (1 = place) [E, T], returns [E]."""
    k_context, k_action = jax.random.split(key)
    p = jnp.asarray(task.context_probs, jnp.float32)
    contexts = jax.random.choice(k_context, task.num_contexts, (episodes, task.horizon), p=p)
    actions = jax.random.bernoulli(k_action, propensity[contexts]).astype(jnp.int32)
    success = (actions == 1) & (contexts == 0)
    placed = jnp.any(success, axis=1)
    returns = (task.place_reward * placed
               + task.other_reward * jnp.sum(actions == 0, axis=1))
    return contexts, actions, returns


def reinforce_gradient(task: PlantTask, sharing: float, params: dict[str, jax.Array],
                       key: jax.Array, episodes: int) -> dict[str, jax.Array]:
    """REINFORCE estimate of ∇J from `episodes` episodes, with a leave-one-out mean baseline
    (unbiased: each episode's baseline does not depend on its own actions)."""
    propensity = jax.nn.sigmoid(logits(params, sharing))
    contexts, actions, returns = sample_episodes(task, propensity, key, episodes)
    baseline = (jnp.sum(returns) - returns) / max(episodes - 1, 1)
    # ∂ log π(a | c) / ∂ℓ_c = a − q_c, summed over the episode's steps per context.
    score = jax.vmap(lambda c, a: jnp.zeros(task.num_contexts).at[c].add(a - propensity[c]))(
        contexts, actions)  # [E, K]
    weighted = jnp.mean(score * (returns - baseline)[:, None], axis=0)  # ∂J/∂ℓ estimate [K]
    return {"shared": jnp.sqrt(sharing) * jnp.sum(weighted),
            "own": jnp.sqrt(1 - sharing) * weighted}


def sampled_trajectories(task: PlantTask, sharing: float, learning_rate: float, steps: int,
                         keys: jax.Array, episodes: int, init_logit: float = -2.8,
                         record_every: int = 1) -> np.ndarray:
    """Place propensities [runs, steps // record_every + 1, K] under REINFORCE with `episodes`
    episodes per update, one independent run per key of `keys` (vmapped: one compiled call)."""
    task.validate()
    if episodes < 2:
        raise ConfigError(f"episodes={episodes!r} is not allowed: must be >= 2 (the baseline "
                          "leaves one episode out)")
    start = initial_params(task, check_sharing(sharing), init_logit)
    q = _sampled_runs(task, steps, episodes, jnp.float32(sharing), jnp.float32(learning_rate),
                      start, keys)
    return _with_start(start, sharing, q)[:, ::record_every]


@functools.partial(jax.jit, static_argnames=("task", "steps", "episodes"))
def _sampled_runs(task, steps, episodes, sharing, learning_rate, start, keys):
    def run(key):
        def step(params, k):
            g = reinforce_gradient(task, sharing, params, k, episodes)
            params = jax.tree_util.tree_map(lambda w, d: w + learning_rate * d, params, g)
            return params, jax.nn.sigmoid(logits(params, sharing))

        return jax.lax.scan(step, start, jax.random.split(key, steps))[1]

    return jax.vmap(run)(keys)


# ------------------------------------------------------------------- summaries, sweeps, the fit
def invalid_propensity(q: np.ndarray, probs) -> np.ndarray:
    """The mean place propensity over the contexts where placing cannot work (c ≠ 0)."""
    p = np.asarray(probs, float)[1:]
    return np.asarray(q)[..., 1:] @ (p / p.sum())


def overshoot_summary(q: np.ndarray, probs, record_every: int = 1) -> dict[str, float]:
    """Peak height and update of the non-valid propensity, and its decay half-time after the peak.

    `rise` is the peak over the initial level; `half_time` is the number of updates from the
    peak until the propensity has fallen to half its peak value (NaN if it does not within the
    trajectory, or if there is no overshoot: the peak is the start). `valid_time` is the first update at which q_0 reaches 90% of its final value.
    """
    invalid = invalid_propensity(q, probs)
    peak = int(np.argmax(invalid))
    after = np.flatnonzero(invalid[peak:] <= invalid[peak] / 2)
    valid = np.asarray(q)[:, 0]
    reached = np.flatnonzero(valid >= 0.9 * valid[-1])
    return {"initial": float(invalid[0]), "peak": float(invalid[peak]),
            "rise": float(invalid[peak] - invalid[0]), "peak_update": peak * record_every,
            "half_time": (float(after[0] * record_every) if len(after) and peak > 0
                          else math.nan),
            "final": float(invalid[-1]), "valid_final": float(valid[-1]),
            "valid_time": float(reached[0] * record_every) if len(reached) else math.nan}


def sweep(task: PlantTask, sharings, other_rewards, learning_rates, steps: int,
          init_logit: float = -2.8, record_every: int = 10) -> list[dict[str, float]]:
    """`overshoot_summary` of the exact dynamics on a grid of sharing × r_o × learning rate."""
    rows = []
    for sharing in sharings:
        for other_reward in other_rewards:
            variant = PlantTask(task.context_probs, task.horizon, float(other_reward),
                                task.place_reward)
            for learning_rate in learning_rates:
                q = expected_trajectory(variant, float(sharing), float(learning_rate), steps,
                                        init_logit, record_every)
                rows.append({"sharing": float(sharing), "other_reward": float(other_reward),
                             "learning_rate": float(learning_rate),
                             **overshoot_summary(q, task.context_probs, record_every)})
    return rows


@dataclass(frozen=True)
class PlantFit:
    """Least-squares fit of the toy's place share to an observed place-share curve."""

    sharing: float
    other_reward: float
    valid_prob: float  # p_0 of a two-context task (valid / not valid)
    steps_per_update: float  # env steps per toy gradient update (the time scale κ)
    horizon: int
    init_logit: float
    rmse: float
    r_squared: float
    fitted: np.ndarray  # the model's share at the observed env steps

    def as_row(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "fitted"}


FIT_LEARNING_RATE = 0.5  # the toy's learning rate in the fit; κ absorbs the time scale
FIT_UPDATES = 20_000  # toy updates simulated per evaluation of the fit's objective


def model_share(sharing: float, other_reward: float, valid_prob: float, steps_per_update: float,
                horizon: int, init_logit: float, env_steps: np.ndarray) -> np.ndarray:
    """The toy's share of place actions, Σ_c p_c q_c, at `env_steps` (two contexts)."""
    task = PlantTask((valid_prob, 1 - valid_prob), horizon, other_reward)
    q = expected_trajectory(task, sharing, FIT_LEARNING_RATE, FIT_UPDATES, init_logit)
    share = q @ np.asarray(task.context_probs)
    updates = np.asarray(env_steps, float) / steps_per_update
    return np.interp(updates, np.arange(len(share)), share)


def fit_share(env_steps: np.ndarray, share: np.ndarray, horizon: int, init_logit: float,
              sharing: float | None = None) -> PlantFit:
    """Fit (sharing, r_o, p_0, κ) to an observed share curve; `sharing` fixed if given.

    Least squares on the share at each observed checkpoint, from several starting points, within
    bounds; κ is bounded below so that the last checkpoint falls within the simulated updates.
    """
    from scipy.optimize import least_squares

    env_steps, share = np.asarray(env_steps, float), np.asarray(share, float)
    min_log_kappa = math.log(env_steps.max() / FIT_UPDATES)
    # x = ([logit ρ,] log r_o, logit p_0, log κ), each within bounds that keep the toy meaningful.
    lower = [-8.0, math.log(1e-5), -8.0, min_log_kappa]
    upper = [8.0, math.log(0.5), 0.0, min_log_kappa + 12.0]
    if sharing is not None:
        lower, upper = lower[1:], upper[1:]

    def unpack(x):
        rho = sharing if sharing is not None else 1 / (1 + math.exp(-x[0]))
        rest = x[1:] if sharing is None else x
        return rho, math.exp(rest[0]), 1 / (1 + math.exp(-rest[1])), math.exp(rest[2])

    def residual(x):
        rho, r_o, p0, kappa = unpack(x)
        return model_share(rho, r_o, p0, kappa, horizon, init_logit, env_steps) - share

    best = None
    for rho0 in ([0.0] if sharing is not None else [-1.0, 1.0, 3.0]):
        for log_r in (math.log(1e-3), math.log(1e-2)):
            start = np.array(([rho0] if sharing is None else [])
                             + [log_r, -2.0, min_log_kappa + 1.0])
            result = least_squares(residual, start, bounds=(lower, upper), method="trf",
                                   diff_step=1e-3, max_nfev=200)
            if best is None or result.cost < best.cost:
                best = result
    rho, r_o, p0, kappa = unpack(best.x)
    fitted = share + best.fun
    ss_res = float(np.sum(best.fun ** 2))
    ss_tot = float(np.sum((share - share.mean()) ** 2))
    return PlantFit(sharing=float(rho), other_reward=float(r_o), valid_prob=float(p0),
                    steps_per_update=float(kappa), horizon=int(horizon),
                    init_logit=float(init_logit), rmse=math.sqrt(ss_res / len(share)),
                    r_squared=1 - ss_res / ss_tot if ss_tot > 0 else math.nan, fitted=fitted)


# ------------------------------------------------------------------------------ the data set
HEADLINE = {"task": PlantTask((0.1, 0.2, 0.7), 100, 0.002), "sharing": 0.9,
            "learning_rate": 0.5, "init_logit": math.log(1 / 16)}  # 1/17: a uniform policy
TOY_SETTINGS: dict[str, dict] = {
    "smoke": {"steps": 200, "record_every": 10, "runs": 4, "episodes": 8,
              "sweep_steps": 400, "sharings": (0.0, 0.9), "other_rewards": (0.002,),
              "learning_rates": (0.5, 1.0)},
    "cpu": {"steps": 6000, "record_every": 20, "runs": 32, "episodes": 32,
            "sweep_steps": 30_000, "sharings": (0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
            "other_rewards": (0.0005, 0.001, 0.002, 0.004), "learning_rates": (0.25, 0.5, 1.0)},
    "paper": {"steps": 6000, "record_every": 20, "runs": 256, "episodes": 128,
              "sweep_steps": 60_000, "sharings": (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0),
              "other_rewards": (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008),
              "learning_rates": (0.125, 0.25, 0.5, 1.0)},
}


def trajectory_table(scale: str, seed: int = 0) -> pd.DataFrame:
    """Exact and sampled (mean and 10-90% range over runs) propensities of the headline task."""
    s = TOY_SETTINGS[scale]
    h = HEADLINE
    exact = expected_trajectory(h["task"], h["sharing"], h["learning_rate"], s["steps"],
                                h["init_logit"], s["record_every"])
    runs = sampled_trajectories(h["task"], h["sharing"], h["learning_rate"], s["steps"],
                                jax.random.split(jax.random.PRNGKey(seed), s["runs"]),
                                s["episodes"], h["init_logit"], s["record_every"])
    rows = []
    names = ["valid"] + [f"invalid {c}" for c in range(1, h["task"].num_contexts)]
    for c, name in enumerate(names):
        for i, update in enumerate(range(0, s["steps"] + 1, s["record_every"])):
            values = runs[:, i, c]
            rows.append({"update": update, "context": name, "exact": float(exact[i, c]),
                         "sampled_mean": float(values.mean()),
                         "sampled_low": float(np.quantile(values, 0.1)),
                         "sampled_high": float(np.quantile(values, 0.9)),
                         "sampled_se": float(values.std(ddof=1) / math.sqrt(len(values)))})
    return pd.DataFrame(rows)


def sweep_table(scale: str) -> pd.DataFrame:
    s = TOY_SETTINGS[scale]
    h = HEADLINE
    return pd.DataFrame(sweep(h["task"], s["sharings"], s["other_rewards"], s["learning_rates"],
                              s["sweep_steps"], h["init_logit"], s["record_every"]))


def fit_tables(episodes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fits of the two-context toy to the Craftax PLACE_PLANT share, per seed and for the mean
    over seeds, with sharing free and with sharing fixed at 0; and the fitted curves."""
    frame = episodes[episodes["env_steps"] > 0].assign(
        share=lambda d: d["place_attempts"] / d["episode_length"].clip(lower=1))
    horizon = round(float(frame["episode_length"].mean()))
    per_seed = frame.groupby(["seed", "env_steps"])["share"].mean().reset_index()
    targets = {f"seed {seed}": group for seed, group in per_seed.groupby("seed")}
    targets["mean over seeds"] = per_seed.groupby("env_steps")["share"].mean().reset_index()
    fits, curves = [], []
    for target, group in targets.items():
        for variant, sharing in (("sharing free", None), ("no sharing", 0.0)):
            fit = fit_share(group["env_steps"].to_numpy(), group["share"].to_numpy(), horizon,
                            HEADLINE["init_logit"], sharing)
            fits.append({"target": target, "variant": variant, **fit.as_row()})
            curves.append(pd.DataFrame({"target": target, "variant": variant,
                                        "env_steps": group["env_steps"].to_numpy(),
                                        "observed": group["share"].to_numpy(),
                                        "model": fit.fitted}))
    return pd.DataFrame(fits), pd.concat(curves, ignore_index=True)


def loglog_slope(x, y) -> float:
    """The least-squares slope of log y against log x: the exponent b of y ∝ x^b (e.g. how the
    updates to the overshoot's peak scale with the learning rate). Needs two or more positive
    pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        raise ConfigError(f"loglog_slope needs two or more positive (x, y) pairs, got {keep.sum()}")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])
