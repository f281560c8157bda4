"""Grokking modular addition, with a learning-rate switch (book part on learning coefficients).

The task: all pairs (a, b) of residues mod p, labelled (a + b) mod p; a fixed random fraction of
the p² pairs is the training set, the rest the validation set. The model: each of a and b is
embedded (one learned table of p × `embed` shared by both positions), the two embeddings are
concatenated and passed through one ReLU layer of `hidden` units to p logits. Trained full-batch
with AdamW (decoupled weight decay, multiplied by the learning rate as in optax and PyTorch) on
the cross-entropy. Weight decay on a one-hidden-layer MLP over learned embeddings is the setting
in which grokking (training accuracy first, validation accuracy much later) is well documented
(Power et al. 2022; Liu et al. 2022, "Omnigrok"; Gromov 2023).

The schedules: the base learning rate throughout, or the base until `switch_step` and
`multiplier` × the base from then on (10× and 50× in the source discussion, after step 1,000).

Everything a run does is a pure function of its config: the split, the initialisation and the
(full-batch) updates, so a run is deterministic per seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from devrl.core.base import ConfigError
from devrl.datasets import check_seeds, plural, seeded_table_set
from devrl.measures import dynamics
from devrl.measures import regime as rg
from devrl.measures.llc import LLCDivergenceError, estimate_llc
from devrl.measures.policy_llc import trace_drift
from devrl.measures.regime import RegimeGrid
from devrl.measures.verdicts import word

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.measures.verdicts import statuses  # noqa: F401

SCHEDULES = {"base": 1.0, "x10": 10.0, "x50": 50.0}  # learning-rate multiplier after the switch


@dataclass(frozen=True)
class GrokConfig:
    p: int = 97
    train_fraction: float = 0.4
    embed: int = 128
    hidden: int = 256
    lr: float = 1e-3
    weight_decay: float = 1.0
    steps: int = 6000
    switch_step: int = 1000
    schedule: str = "base"
    seed: int = 0
    log_every: int = 25  # train/validation metrics every this many steps
    checkpoints: int = 40  # parameters kept at this many log-spaced steps (and the last)

    def validate(self) -> GrokConfig:
        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        if self.p < 3:
            bad("p", "must be an integer >= 3")
        if not 0 < self.train_fraction < 1:
            bad("train_fraction", "must be in (0, 1)")
        for name in ("embed", "hidden", "steps", "log_every", "checkpoints"):
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        for name in ("lr", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be a finite number >= 0")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if not 0 <= self.switch_step <= self.steps:
            bad("switch_step", f"must be in [0, steps={self.steps}]")
        if self.seed < 0:
            bad("seed", "must be an integer >= 0")
        return self

    @property
    def multiplier(self) -> float:
        return SCHEDULES[self.schedule]


# The scales: smoke for the tests; cpu within about an hour for 3 schedules × 3 seeds on the
# 2-core machine; paper the literature's p = 113 with longer training.
GROK_SCALES: dict[str, dict[str, Any]] = {
    # smoke: groks within the test budget (training accuracy 1 by step ~200, validation > 0.9 by
    # ~1000 at the higher rate), so the tests see the phenomenon, not only the code path
    "smoke": {"p": 31, "train_fraction": 0.6, "embed": 64, "hidden": 128, "lr": 1e-2,
              "steps": 1200, "switch_step": 300, "log_every": 25, "checkpoints": 16},
    "cpu": {"p": 97, "train_fraction": 0.4, "embed": 128, "hidden": 256, "steps": 6000,
            "switch_step": 1000, "log_every": 25, "checkpoints": 40},
    "paper": {"p": 113, "train_fraction": 0.3, "embed": 128, "hidden": 512, "steps": 30000,
              "switch_step": 1000, "log_every": 50, "checkpoints": 60},
}
GROK_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}


def make_grok_config(scale: str, **overrides: Any) -> GrokConfig:
    if scale not in GROK_SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of "
                          f"{', '.join(GROK_SCALES)}")
    fields = {f.name for f in dataclasses.fields(GrokConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"{unknown[0]}= is not allowed: not a grokking setting (allowed: "
                          f"{', '.join(sorted(fields))})")
    return GrokConfig(**{**GROK_SCALES[scale], **overrides}).validate()


# ------------------------------------------------------------------ task, model, schedule
def dataset(config: GrokConfig) -> dict[str, np.ndarray]:
    """Every pair (a, b) with its label, split at random (by the seed) into train and validation:
    `train_x` [n, 2], `train_y` [n], `val_x`, `val_y`."""
    p = config.p
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], 1).astype(np.int32)
    y = ((x[:, 0] + x[:, 1]) % p).astype(np.int32)
    order = np.random.default_rng(config.seed).permutation(len(x))
    n = int(round(config.train_fraction * len(x)))
    train, val = np.sort(order[:n]), np.sort(order[n:])
    return {"train_x": x[train], "train_y": y[train], "val_x": x[val], "val_y": y[val]}


def init_params(config: GrokConfig, key: jax.Array) -> dict[str, jax.Array]:
    k_e, k_1, k_2 = jax.random.split(key, 3)
    d = 2 * config.embed
    return {"embed": jax.random.normal(k_e, (config.p, config.embed)) / math.sqrt(config.embed),
            "w1": jax.random.normal(k_1, (d, config.hidden)) * math.sqrt(2.0 / d),
            "b1": jnp.zeros(config.hidden),
            "w2": jax.random.normal(k_2, (config.hidden, config.p)) / math.sqrt(config.hidden)}


def logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    e = params["embed"][x].reshape(x.shape[0], -1)
    return jax.nn.relu(e @ params["w1"] + params["b1"]) @ params["w2"]


def loss_fn(params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
    """Mean cross-entropy (the average negative log-likelihood, as devrl.measures.llc expects)."""
    out = jax.nn.log_softmax(logits(params, batch["x"]))
    return -jnp.take_along_axis(out, batch["y"][:, None], 1).mean()


def learning_rate(config: GrokConfig) -> Callable[[jax.Array], jax.Array]:
    """The schedule: `lr` for steps < switch_step, `multiplier` × `lr` from then on (step 0 is
    the first update)."""
    return optax.join_schedules(
        [optax.constant_schedule(config.lr),
         optax.constant_schedule(config.lr * config.multiplier)], [config.switch_step])


def checkpoint_steps(config: GrokConfig) -> list[int]:
    """Steps after which the parameters are kept: 0, log-spaced, the switch and its
    neighbours, and the last."""
    marks = {0, config.steps, config.switch_step, max(config.switch_step - 1, 0),
             min(config.switch_step + 1, config.steps)}
    marks |= {int(round(v)) for v in np.geomspace(1, config.steps, config.checkpoints)}
    return sorted(marks)


# ------------------------------------------------------------------ training
def train(config: GrokConfig) -> tuple[pd.DataFrame, dict[int, dict[str, np.ndarray]]]:
    """Train one run: (metrics every `log_every` steps and at step 0, {step: parameters})."""
    config = config.validate()
    data = dataset(config)
    train_b = {"x": jnp.asarray(data["train_x"]), "y": jnp.asarray(data["train_y"])}
    val_b = {"x": jnp.asarray(data["val_x"]), "y": jnp.asarray(data["val_y"])}
    optimizer = optax.adamw(learning_rate(config), weight_decay=config.weight_decay)
    params = init_params(config, jax.random.PRNGKey(config.seed))
    state = optimizer.init(params)

    @jax.jit
    def measure(params):
        def one(batch):
            out = logits(params, batch["x"])
            loss = -jnp.take_along_axis(jax.nn.log_softmax(out), batch["y"][:, None], 1).mean()
            return loss, (out.argmax(-1) == batch["y"]).mean()

        return one(train_b), one(val_b)

    @functools.partial(jax.jit, static_argnames=("length",))
    def run(params, state, start, length):
        def step(carry, i):
            params, state = carry
            grads = jax.grad(loss_fn)(params, train_b)
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, state), _ = jax.lax.scan(step, (params, state), start + jnp.arange(length))
        return params, state

    keep = set(checkpoint_steps(config))
    marks = sorted(keep | set(range(0, config.steps + 1, config.log_every)))
    rows, kept, done = [], {}, 0
    for mark in marks:
        if mark > done:
            params, state = run(params, state, done, mark - done)
            done = mark
        if mark % config.log_every == 0 or mark == config.steps:
            (tl, ta), (vl, va) = jax.device_get(measure(params))
            rows.append({"step": mark, "lr": float(learning_rate(config)(max(mark - 1, 0))),
                         "train_loss": float(tl), "train_acc": float(ta),
                         "val_loss": float(vl), "val_acc": float(va)})
        if mark in keep:
            kept[mark] = jax.tree.map(np.asarray, params)
    return pd.DataFrame(rows), kept



# ------------------------------------------------------------------ measures of a run
def windowed_correlation(train: Any, val: Any, window: int) -> np.ndarray:
    """Pearson correlation of two curves in sliding windows of `window` consecutive points,
    centred (NaN in the first and last window // 2 points, and where either curve is constant
    over the window): how the two move together at each moment of training."""
    a, b = np.asarray(train, np.float64), np.asarray(val, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"train and val of shapes {a.shape}, {b.shape} are not allowed: must "
                          "be 1-d curves of the same length")
    if not isinstance(window, (int, np.integer)) or not 3 <= window <= len(a):
        raise ConfigError(f"window={window!r} is not allowed: must be an integer in "
                          f"[3, {len(a)}]")
    out = np.full(len(a), np.nan)
    half = window // 2
    for i in range(half, len(a) - (window - 1 - half)):
        x, y = a[i - half:i - half + window], b[i - half:i - half + window]
        sx, sy = x.std(), y.std()
        if sx > 1e-12 and sy > 1e-12:
            out[i] = float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))
    return out


def first_step_reaching(metrics: pd.DataFrame, column: str, threshold: float) -> float:
    """The first logged step at which `column` is at least `threshold` (NaN if never)."""
    hits = metrics.loc[metrics[column] >= threshold, "step"]
    return float(hits.min()) if len(hits) else math.nan


def probe_pairs(config: GrokConfig, size: int) -> np.ndarray:
    """A fixed sample of `size` pairs (train and validation alike) on which the outputs of every
    checkpoint are compared (essential dynamics)."""
    p = config.p
    rng = np.random.default_rng(PROBE_SEED)
    index = np.sort(rng.choice(p * p, min(size, p * p), replace=False))
    return np.stack([index // p, index % p], 1).astype(np.int32)


PROBE_SEED = 97
CORRELATION_WINDOW = 9  # logged points in each window of `windowed_correlation`
GENERALISED = 0.95  # validation accuracy that counts as generalised
ED_PROBE = {"smoke": 64, "cpu": 512, "paper": 1024}


def regime_grid(scale: str):
    """The regime study's grid for the grokking model at `scale` (see devrl.measures.regime)."""
    grids = {
        "smoke": RegimeGrid(nbeta_factors=(1.0, 4.0), localizations=(1.0, 100.0),
                            base_factor=1.0, base_localization=100.0, step_nbeta=0.02,
                            step_sizes=(1e-4,), num_steps=40, num_chains=2, batch_size=16),
        "cpu": RegimeGrid(nbeta_factors=(1.0, 4.0, 16.0), localizations=(1.0, 100.0, 1e4),
                          base_factor=1.0, base_localization=100.0, step_nbeta=0.02,
                          step_sizes=(2e-5, 6e-5, 2e-4), num_steps=500, num_chains=2,
                          batch_size=256, skip=((16.0, 1e4),)),
    }
    grids["paper"] = grids["cpu"]
    if scale not in grids:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(grids)}")
    return grids[scale]


def llc_estimator(config: GrokConfig, params: dict[str, np.ndarray]):
    """estimate(cell, key) -> LLCResult at `params` on the run's training set (paired draws)."""
    data = dataset(config)
    train_b = {"x": jnp.asarray(data["train_x"]), "y": jnp.asarray(data["train_y"])}

    def estimate(cell: dict[str, Any], key: jax.Array):
        return estimate_llc(loss_fn, params, train_b, key, draw_loss="paired", **cell)

    return estimate, len(data["train_y"])


def num_weights(params: dict[str, Any]) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def study_tables(scale: str, seeds: list[int] | None = None, progress=print
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Every schedule × seed trained; the LLC at every kept checkpoint with the settings the
    regime rule picks on the base schedule's last checkpoint (seed = the first); essential
    dynamics of each run's outputs on a fixed probe of pairs, with the random-walk null."""
    seeds = list(GROK_SEEDS[scale]) if not seeds else list(seeds)
    runs, metrics, kept = [], [], {}
    for schedule in SCHEDULES:
        for seed in seeds:
            config = make_grok_config(scale, schedule=schedule, seed=seed)
            progress(f"grokking: training {schedule} seed {seed}")
            table, checkpoints = train(config)
            metrics.append(table.assign(schedule=schedule, seed=seed))
            kept[(schedule, seed)] = (config, checkpoints)
            runs.append({"schedule": schedule, "seed": seed, "config": dataclasses.asdict(config),
                         "train_size": int(len(dataset(config)["train_y"]))})
    metrics = pd.concat(metrics, ignore_index=True)

    # The sampler's settings: the regime study on the base schedule's last checkpoint.
    config, checkpoints = kept[("base", seeds[0])]
    estimate, n = llc_estimator(config, checkpoints[config.steps])
    grid = regime_grid(scale)
    progress("grokking: regime study of the LLC sampler")
    estimates, verdict, outcome = rg.run_study(estimate, grid, n / math.log(n),
                                               num_weights(checkpoints[config.steps]),
                                               progress=progress)
    cell = {"nbeta": outcome["nbeta"], "localization": outcome["localization"],
            "step_size": outcome["step_size"], "num_steps": outcome["num_steps"],
            "num_burnin": outcome["num_steps"] // 2, "num_chains": grid.num_chains,
            "batch_size": grid.batch_size}

    llc_rows, ed_scores, ed_turns, ed_null = [], [], [], []
    for (schedule, seed), (config, checkpoints) in kept.items():
        progress(f"grokking: LLC and essential dynamics of {schedule} seed {seed}")
        for step, params in checkpoints.items():
            estimate, _ = llc_estimator(config, params)
            key = jax.random.fold_in(jax.random.PRNGKey(LLC_SEED), step)
            try:
                result = estimate(cell, key)
                row = {"llc": result.mean, "llc_std": result.std, "init_loss": result.init_loss,
                       "mala_acceptance": result.mala_acceptance, "drift": trace_drift(result),
                       "diverged": False}
            except LLCDivergenceError:  # the only failure expected here
                row = {"llc": math.nan, "llc_std": math.nan, "init_loss": math.nan,
                       "mala_acceptance": math.nan, "drift": math.nan, "diverged": True}
            llc_rows.append({"schedule": schedule, "seed": seed, "step": step, **row})
        steps = sorted(checkpoints)
        pairs = jnp.asarray(probe_pairs(config, ED_PROBE[scale]))
        outputs = np.stack([np.asarray(jax.nn.log_softmax(logits(checkpoints[s], pairs)))
                            for s in steps])
        ed = dynamics.essential_dynamics(outputs, steps)
        ed_scores.append(dynamics.scores_frame(ed).rename(columns={"env_steps": "step"})
                         .assign(schedule=schedule, seed=seed))
        turns = dynamics.turns_frame(ed)
        null = dynamics.simulated_null(steps, num_walks=NULL_WALKS[scale],
                                       drift_share=float(ed.pca.explained_variance_ratio[0]),
                                       seed=seed)
        ed_turns.append(dynamics.compare_turns(turns, null).rename(
            columns={"env_steps": "step"}).assign(schedule=schedule, seed=seed))
        shares = ed.pca.explained_variance_ratio
        ed_null.append(pd.DataFrame({"schedule": schedule, "seed": seed,
                                     "component": np.arange(len(shares)), "explained": shares}))
    tables = {"metrics": metrics, "llc": pd.DataFrame(llc_rows),
              "regime_estimates": estimates.drop(columns=["chain_llcs"], errors="ignore"),
              "regime_verdicts": verdict, "ed_scores": pd.concat(ed_scores, ignore_index=True),
              "ed_turns": pd.concat(ed_turns, ignore_index=True),
              "ed_explained": pd.concat(ed_null, ignore_index=True)}
    return tables, {
        "what": "grokking modular addition under three learning-rate schedules "
                "(devrl.studies.grokking): accuracies, the LLC along training, essential dynamics",
        "made_by": f"devrl figure grokking-lr-switch -p scale {scale} -p recompute True",
        "settings": {**{k: v for k, v in dataclasses.asdict(make_grok_config(scale)).items()
                        if k not in ("schedule", "seed")},
                     "schedules": SCHEDULES, "window": CORRELATION_WINDOW,
                     "generalised": GENERALISED, "ed_probe": ED_PROBE[scale],
                     "null_walks": NULL_WALKS[scale], "llc_seed": LLC_SEED},
        "sampler": cell, "regime": outcome, "runs": runs}


LLC_SEED = 1_013
NULL_WALKS = {"smoke": 50, "cpu": 500, "paper": 500}


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def correlation_table(metrics: pd.DataFrame, switch_step: int,
                      window: int = CORRELATION_WINDOW) -> pd.DataFrame:
    """Per schedule, seed and logged step: the windowed train/validation accuracy correlation,
    with windows inside the segments before and from the switch step (none straddles it)."""
    frames = []
    for (schedule, seed), run in metrics.groupby(["schedule", "seed"]):
        run = run.sort_values("step")
        for part in (run[run["step"] < switch_step], run[run["step"] >= switch_step]):
            corr = (windowed_correlation(part["train_acc"], part["val_acc"], window)
                    if len(part) >= window else np.full(len(part), np.nan))
            frames.append(pd.DataFrame({"schedule": schedule, "seed": seed,
                                        "step": part["step"].to_numpy(), "corr": corr}))
    return pd.concat(frames, ignore_index=True)


def summary_table(metrics: pd.DataFrame, llc: pd.DataFrame, switch_step: int,
                  window: int = CORRELATION_WINDOW) -> pd.DataFrame:
    """Per schedule and seed: the first logged step with validation (and training) accuracy at
    least GENERALISED (NaN: never), the mean windowed train/validation accuracy correlation
    before the switch step and from it on (windows inside each segment, so none straddles the
    switch), the final accuracies and the final λ̂."""
    corr = correlation_table(metrics, switch_step, window)
    rows = []
    for (schedule, seed), run in metrics.groupby(["schedule", "seed"]):
        run = run.sort_values("step")
        mine = corr[(corr["schedule"] == schedule) & (corr["seed"] == seed)]
        rows.append({"schedule": schedule, "seed": seed,
                     "val_generalised_step": first_step_reaching(run, "val_acc", GENERALISED),
                     "train_fitted_step": first_step_reaching(run, "train_acc", GENERALISED),
                     "corr_before": _nanmean(mine.loc[mine["step"] < switch_step, "corr"]),
                     "corr_after": _nanmean(mine.loc[mine["step"] >= switch_step, "corr"]),
                     "final_train_acc": float(run["train_acc"].iloc[-1]),
                     "final_val_acc": float(run["val_acc"].iloc[-1])})
    out = pd.DataFrame(rows)
    last = llc.sort_values("step").groupby(["schedule", "seed"]).tail(1)
    return out.merge(last[["schedule", "seed", "llc"]].rename(columns={"llc": "final_llc"}),
                     on=["schedule", "seed"], how="left")


# The six predictions of book/grokking.md (adaec47) and their rules, `verdicts` below (102bb14),
# were committed on 2026-12-04 before any cpu run of the study; the rules are unchanged since
# (only where `word` comes from moved), so each is a test.
PREDICTION_KIND = {f"p{i}": "test" for i in range(1, 7)}


SWITCH_WITHIN = 500  # steps after the switch in which prediction 2 looks for a fall
SWITCH_DROP = 0.1  # the fall in training accuracy that prediction 2 asks for


def switch_response(metrics: pd.DataFrame, switch_step: int) -> pd.DataFrame:
    """Per schedule and seed: training and validation accuracy at the last logged step up to
    the switch, their lowest values in the SWITCH_WITHIN steps after it, whether training
    accuracy fell by more than SWITCH_DROP there (prediction 2's first half), and the final
    training accuracy (a run that fell and never recovered ends near chance, 1/p)."""
    rows = []
    for (schedule, seed), run in metrics.groupby(["schedule", "seed"]):
        run = run.sort_values("step")
        before = run[run["step"] <= switch_step].iloc[-1]
        after = run[(run["step"] > switch_step) & (run["step"] <= switch_step + SWITCH_WITHIN)]
        low_train = float(after["train_acc"].min()) if len(after) else math.nan
        rows.append({"schedule": schedule, "seed": seed,
                     "train_at_switch": float(before["train_acc"]),
                     "val_at_switch": float(before["val_acc"]),
                     "train_low_after": low_train,
                     "val_low_after": float(after["val_acc"].min()) if len(after) else math.nan,
                     "fell": bool(len(after) and low_train < before["train_acc"] - SWITCH_DROP),
                     "final_train_acc": float(run["train_acc"].iloc[-1])})
    return pd.DataFrame(rows)


def verdicts(metrics: pd.DataFrame, llc: pd.DataFrame, turns: pd.DataFrame,
             switch_step: int) -> dict[str, str]:
    """The predictions of book/grokking.md, each judged by its stated rule: "held", "did not
    hold" or "untested" (a schedule it needs is missing)."""
    summary = summary_table(metrics, llc, switch_step)
    have = set(summary["schedule"])
    by = summary.groupby("schedule")
    out = {}
    # 1. base: train ≥ 95% before half the validation step, and validation reaches 95%.
    base = summary[summary["schedule"] == "base"]
    out["p1"] = word(None if base.empty else bool(
        base["val_generalised_step"].notna().all()
        and (base["train_fitted_step"] < base["val_generalised_step"] / 2).all()))
    # 2. x10 and x50: training accuracy falls by > 0.1 within 500 steps of the switch, and the
    # mean windowed correlation from the switch on exceeds the base schedule's.
    if {"base", "x10", "x50"} <= have:
        response = switch_response(metrics, switch_step)
        falls = response.loc[response["schedule"].isin(["x10", "x50"]), "fell"].tolist()
        corr = by["corr_after"].mean()
        out["p2"] = word(bool(all(falls) and corr["x10"] > corr["base"]
                              and corr["x50"] > corr["base"]))
    else:
        out["p2"] = word(None)
    # 3. x50 earlier than base (mean; a run that never generalises counts as never); x10 later
    # than x50 or never in at least one seed.
    if {"base", "x10", "x50"} <= have:
        steps = summary.assign(when=summary["val_generalised_step"].fillna(np.inf))
        mean = steps.groupby("schedule")["when"].mean()
        never_x10 = bool(summary.loc[summary["schedule"] == "x10",
                                     "val_generalised_step"].isna().any())
        out["p3"] = word(bool(mean["x50"] < mean["base"]
                              and (never_x10 or mean["x10"] > mean["x50"])))
    else:
        out["p3"] = word(None)
    # 4. base: λ̂ peaks before the 95% validation step and ends below its peak; runs that
    # generalised end with a lower λ̂ than runs that did not (when both kinds exist).
    ok = None
    if not base.empty and len(llc):
        ok = True
        for seed, row in base.set_index("seed").iterrows():
            run = llc[(llc["schedule"] == "base") & (llc["seed"] == seed)].sort_values("step")
            if run["llc"].isna().all() or np.isnan(row["val_generalised_step"]):
                ok = False
                continue
            peak = run.loc[run["llc"].idxmax()]
            ok &= bool(peak["step"] < row["val_generalised_step"]
                       and run["llc"].iloc[-1] < peak["llc"])
        done = summary["val_generalised_step"].notna()
        if done.any() and (~done).any():
            ok &= bool(summary.loc[done, "final_llc"].mean()
                       < summary.loc[~done, "final_llc"].mean())
    out["p4"] = word(ok)
    # 5. x10 and x50: |λ̂ change| from the last kept step before the switch to the first kept
    # step ≥ switch + 100 exceeds the base schedule's over the same steps, in every seed.
    if {"base", "x10", "x50"} <= have and len(llc):
        def change(schedule, seed):
            run = llc[(llc["schedule"] == schedule) & (llc["seed"] == seed)].set_index("step")
            before = run.index[run.index < switch_step].max()
            later = run.index[run.index >= switch_step + 100]
            if not len(later) or np.isnan(before):
                return np.nan, None
            after = later.min()
            return abs(run.loc[after, "llc"] - run.loc[before, "llc"]), (before, after)

        marks = []
        for schedule in ("x10", "x50"):
            for seed in sorted(set(llc.loc[llc["schedule"] == schedule, "seed"])):
                size, _ = change(schedule, seed)
                base_size, _ = change("base", seed)
                marks.append(bool(size > base_size))
        out["p5"] = word(bool(marks and all(marks)))
    else:
        out["p5"] = word(None)
    # 6. a turn of PC1 or PC2 within 0.15 decades of the switch (x10, x50) or of the base's 95%
    # validation step, in every seed.
    if len(turns) and {"base", "x10", "x50"} <= have:
        hits = []
        for (schedule, seed), run in turns[turns["component"] <= 1].groupby(["schedule", "seed"]):
            target = switch_step if schedule != "base" else summary.loc[
                (summary["schedule"] == "base") & (summary["seed"] == seed),
                "val_generalised_step"].iloc[0]
            hits.append(bool(np.isfinite(target) and target > 0 and (
                (np.log10(run["step"].clip(lower=1)) - np.log10(target)).abs() <= 0.15).any()))
        runs = summary.groupby(["schedule", "seed"]).ngroups
        out["p6"] = word(bool(len(hits) == runs and all(hits)))
    else:
        out["p6"] = word(None)
    return out


# ------------------------------------------------------------------ the data set, for the notebooks
@dataclass(frozen=True)
class GrokkingData:
    """The grokking study's tables (`data/grokking-<scale>/`, `devrl.studies.grokking`)."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    metrics: pd.DataFrame  # per schedule, seed, logged step: losses and accuracies
    llc: pd.DataFrame  # per schedule, seed, kept step: λ̂ and its diagnostics
    regime_estimates: pd.DataFrame  # the regime study that chose the sampler's settings
    regime_verdicts: pd.DataFrame
    ed_scores: pd.DataFrame  # per schedule, seed, kept step, component: PC scores
    ed_turns: pd.DataFrame  # per schedule, seed: turns against the random-walk null
    ed_explained: pd.DataFrame  # per schedule, seed, component: variance share

    def describe(self) -> str:
        """One sentence on what was loaded, for captions and the notebooks' prose."""
        s = self.manifest["settings"]
        return (f"{plural(len(self.seeds), 'seed')} ({', '.join(map(str, self.seeds))}) per "
                f"schedule at the {self.scale} scale, {s['steps']:,} steps each, p = {s['p']}")


def grokking_data(scale: str = "cpu", seeds: list[int] | None = None,
                  recompute: bool = False) -> GrokkingData:
    """The grokking data set (`seeds`, or every seed it holds); with `recompute`, train every
    schedule × seed and measure it first (`devrl.studies.grokking.study_tables`)."""
    seeds = check_seeds(seeds)

    def build():
        return study_tables(scale, seeds, progress=lambda m: print(m, flush=True))

    picked, manifest, folder, chosen = seeded_table_set(
        "grokking", scale, seeds, recompute, build)
    return GrokkingData(scale=scale, seeds=chosen, path=folder, manifest=manifest, **picked)
