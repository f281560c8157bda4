"""The local learning coefficient of a PPO policy over training, and its outputs for essential dynamics.

The loss at a checkpoint w* is self-distillation on the run's fixed probe set of n states
(book/theory-slt.md): L_n(w) = mean_i CE(π_w*(·|s_i), π_w(·|s_i)), minimised exactly at w*. Only
the actor (and the memory core, if any) is sampled; the critic does not enter the loss.

For a set of runs, `devrl llc` does four things, each resumable (finished parts are kept):

1. **Calibration** on the first run: a sweep over step sizes ε and nβ (as multiples of the default
   n / log n) at a few checkpoints, with every other setting fixed. `choose_step_size` applies the
   rule documented there and fixes ε for every checkpoint of every run.
2. A **convergence check** on the first run (`convergence_check`): at the calibration checkpoints,
   the whole actor again at the next smaller step size with chains `CHECK_STEPS_FACTOR` times
   longer, to compare with the chosen step's estimates.
3. **Estimates** at a log-spaced subset of each run's checkpoints after the initial one
   (`llc_checkpoints`, the first and last of them included): the LLC of the whole actor ("all");
   at a smaller subset of those (`detail_checkpoints`) also each layer alone (weight-restricted)
   and each plant context alone (data-restricted). Parts go to RUN/llc/<settings hash>/, so
   estimates made with other settings are never mixed in.
4. The **probe outputs** of every checkpoint (action log-probabilities on the probe set; all
   checkpoints, as they are cheap), the input of essential dynamics (`devrl.measures.dynamics`).

`export_llc` gathers them into `data/llc-<scale>/`: calibration.parquet, check.parquet,
llc.parquet, logprobs/seed_N.npz and a manifest that records the sampler settings, the
calibration and the check.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import (
    ConfigError,
    atomic_write_json,
    atomic_write_npz,
    atomic_write_parquet,
    replace_dir,
)
from devrl.core.config import SCALES, TrainConfig
from devrl.core.envs import ACTION_NAMES, CONTEXTS
from devrl.core.networks import initial_hidden, with_zeros_for_missing
from devrl.core.ppo import make_network
from devrl.measures.llc import (
    LLCDivergenceError,
    LLCResult,
    estimate_llc,
    loss_free_distance,
    restrict_data,
)
from devrl.runs.rundir import (
    check_evaluated,
    list_checkpoints,
    load_config,
    load_params,
    run_dirs_under,
    write_manifest,
)

LLC_SEED = 4_099  # the chains' PRNG key is fold_in(LLC_SEED, update, variant)
SAMPLED_PREFIXES = ("actor", "memory")  # the policy's parameters; the critic is not sampled


@dataclass(frozen=True)
class PolicyLLCSettings:
    """The sampler settings of one scale, except the step size, which calibration chooses.

    `nbeta_factor` multiplies the default nβ = n / log n; data-restricted estimates use their own
    n (the states of one context), so their nβ is that n / log n times the same factor.
    """

    num_chains: int
    num_steps: int
    num_burnin: int
    batch_size: int
    localization: float
    nbeta_factor: float
    sampler: str
    draw_loss: str
    llc_checkpoints: int  # checkpoints per run (log-spaced) with a whole-actor LLC
    detail_checkpoints: int  # of those, how many also get per-layer and per-context LLCs
    # calibration: the grid, and the checkpoints (log-spaced, first and last included) it uses
    calibration_step_sizes: tuple[float, ...]
    calibration_nbeta_factors: tuple[float, ...]
    calibration_checkpoints: int

    def sampler_kwargs(self, step_size: float, num_data: int, nbeta_factor: float | None = None
                       ) -> dict[str, Any]:
        factor = self.nbeta_factor if nbeta_factor is None else nbeta_factor
        return {"step_size": step_size, "nbeta": factor * num_data / math.log(num_data),
                "localization": self.localization, "num_steps": self.num_steps,
                "num_burnin": self.num_burnin, "num_chains": self.num_chains,
                "batch_size": self.batch_size, "sampler": self.sampler,
                "draw_loss": self.draw_loss}


# γ = 100 (Lau et al. 2023) rather than the γ = 1 of the known-answer tests: a policy has ~10^6
# weights, many of them (inputs never active on the probe set) unconstrained by the loss, and a
# weak γ lets chains wander there without bound. Paired draw losses cut the variance of λ̂.
# Cost at the cpu scale: one SGLD step of one chain of the width-512 actor (1.2M weights) takes
# ~15-30 ms here, so an estimate (4 chains x 500 steps) is ~30-60 s, and every checkpoint of every
# seed (53 x 3) with all variants would take ~10 h: hence the log-spaced subsets (12 checkpoints
# per seed, 4 of them with every variant: ~20 min per seed).
LLC_SETTINGS: dict[str, PolicyLLCSettings] = {
    "smoke": PolicyLLCSettings(
        num_chains=2, num_steps=100, num_burnin=50, batch_size=8, localization=100.0,
        nbeta_factor=1.0, sampler="sgld", draw_loss="paired", llc_checkpoints=2,
        detail_checkpoints=1, calibration_step_sizes=(1e-4, 1e-3),
        calibration_nbeta_factors=(1.0, 2.0), calibration_checkpoints=2),
    "cpu": PolicyLLCSettings(
        num_chains=4, num_steps=500, num_burnin=250, batch_size=64, localization=100.0,
        nbeta_factor=1.0, sampler="sgld", draw_loss="paired", llc_checkpoints=12,
        detail_checkpoints=4, calibration_step_sizes=(1e-5, 3e-5, 1e-4),
        calibration_nbeta_factors=(0.5, 1.0, 2.0), calibration_checkpoints=3),
    "paper": PolicyLLCSettings(
        num_chains=8, num_steps=4000, num_burnin=2000, batch_size=256, localization=100.0,
        nbeta_factor=1.0, sampler="sgld", draw_loss="paired", llc_checkpoints=53,
        detail_checkpoints=16, calibration_step_sizes=(3e-6, 1e-5, 3e-5, 1e-4),
        calibration_nbeta_factors=(0.5, 1.0, 2.0), calibration_checkpoints=5),
}

# The calibration rule's limits (see choose_step_size). MIN_ACCEPTANCE: in high dimension an
# optimally tuned MALA accepts 57.4% of its proposals (Roberts & Rosenthal 1998), so an
# acceptance of at least one half means the step is no larger than such a sampler would take.
# (A first version asked for 0.9 with chains of 300 steps; on a checkpoint of seed 0 no step
# size met it while also levelling off: 1e-5 accepted 0.87 but still climbed, drift 0.33;
# 1e-4 levelled off, drift 0.11, but accepted 0.51.)
MIN_ACCEPTANCE = 0.5
MAX_DRIFT = 0.1
MAX_FRAC_BELOW = 0.05

# The convergence check after calibration: at the calibration checkpoints, the whole actor again
# at the next smaller step size of the grid (the chosen one if none is smaller), with chains this
# many times longer (burn-in scaled alike). The smaller step moves ~1/3 as far per step, so 4x the
# steps is more than the distance the chosen step covers: if λ̂ is a property of the checkpoint
# rather than of a chain that has not settled, the two should agree.
CHECK_STEPS_FACTOR = 4


# ------------------------------------------------------------------------------ the policy loss
@functools.cache
def policy_loss(width: int, depth: int, activation: str, memory: int, num_actions: int
                ) -> Callable[[Any, dict], jax.Array]:
    """loss(actor_params, batch) = mean over states of CE(batch["target"], π(·|state)).

    `batch` holds "obs" [B, W, D] and "first" [B, W] (observation windows ending at the probe
    state: W = 1 for a feedforward policy; for a recurrent one each state's history from the
    start of its episode, left-padded, so that π_w conditions on the stored history through its
    own memory: `devrl.measures.behaviour.collect_probe`) and "target" [B, A] (π_w*'s
    probabilities). Cached per architecture, so every checkpoint of a run reuses one compiled
    sampler.
    """
    config = TrainConfig(width=width, depth=depth, activation=activation, memory=memory)
    network = make_network(config, num_actions)

    def loss(actor: Any, batch: dict) -> jax.Array:
        logits = policy_logits(network, actor, batch["obs"], batch["first"])
        return -jnp.mean(jnp.sum(batch["target"] * jax.nn.log_softmax(logits), axis=-1))

    return loss


def policy_logits(network: Any, actor: Any, obs: jax.Array, first: jax.Array) -> jax.Array:
    """Logits [B, A] at the last step of each observation window, from the actor's parameters.

    The network also computes values; the critic's parameters are zeros here, and since nothing
    uses the values, XLA removes that branch.
    """
    hidden = initial_hidden(obs.shape[0], network.memory)
    obs_t, first_t = jnp.swapaxes(obs, 0, 1), jnp.swapaxes(first, 0, 1)
    params = with_zeros_for_missing(network, actor, hidden, obs_t, first_t)
    _, logits, _ = network.apply(params, hidden, obs_t, first_t)
    return logits[-1]


def actor_params(params: Any) -> Any:
    """The sampled part of a checkpoint: its actor (and memory core) parameters."""
    return {"params": {name: leaf for name, leaf in params["params"].items()
                       if name.startswith(SAMPLED_PREFIXES)}}


def loss_for(config: TrainConfig) -> Callable[[Any, dict], jax.Array]:
    return policy_loss(config.width, config.depth, config.activation, config.memory,
                       len(ACTION_NAMES))


def distillation_data(config: TrainConfig, actor: Any, probe: dict) -> dict[str, jax.Array]:
    """The probe set with the checkpoint's own action probabilities as targets."""
    network = make_network(config, len(ACTION_NAMES))
    obs, first = jnp.asarray(probe["obs"]), jnp.asarray(probe["first"])
    logits = jax.jit(policy_logits, static_argnums=0)(network, actor, obs, first)
    return {"obs": obs, "first": first, "target": jax.nn.softmax(logits)}


def log_probs(config: TrainConfig, actor: Any, probe: dict) -> np.ndarray:
    """Action log-probabilities [S, A] of a checkpoint on the probe states."""
    network = make_network(config, len(ACTION_NAMES))
    logits = jax.jit(policy_logits, static_argnums=0)(
        network, actor, jnp.asarray(probe["obs"]), jnp.asarray(probe["first"]))
    return np.asarray(jax.nn.log_softmax(logits))


# ------------------------------------------------------------------------------- the variants
def variants(actor: Any) -> list[tuple[str, str]]:
    """(kind, target) of every estimate at a detail checkpoint: all, each layer, each context."""
    layers = [("layer", name) for name in actor["params"]]
    return [("all", "all"), *layers, *(("context", name) for name in CONTEXTS)]


def estimate_variant(config: TrainConfig, actor: Any, data: dict, contexts: np.ndarray,
                     kind: str, target: str, step_size: float, settings: PolicyLLCSettings,
                     key: jax.Array, nbeta_factor: float | None = None) -> LLCResult:
    """One LLC estimate of the checkpoint `actor` (variant `kind`/`target`, see `variants`)."""
    restrict_to = None
    if kind == "layer":
        if target not in actor["params"]:
            raise ConfigError(f"target={target!r} is not allowed: layers are "
                              f"{', '.join(actor['params'])}")
        restrict_to = functools.partial(_in_layer, target)
    elif kind == "context":
        if target not in CONTEXTS:
            raise ConfigError(f"target={target!r} is not allowed: contexts are "
                              f"{', '.join(CONTEXTS)}")
        data = restrict_data(data, contexts == CONTEXTS.index(target))
    elif kind != "all":
        raise ConfigError(f"kind={kind!r} is not allowed: must be one of all, layer, context")
    n = int(data["obs"].shape[0])
    return estimate_llc(loss_for(config), actor, data, key, restrict_to=restrict_to,
                        **settings.sampler_kwargs(step_size, n, nbeta_factor))


def _in_layer(layer: str, path: tuple[str, ...]) -> bool:
    return layer in path


def trace_drift(result: LLCResult) -> float:
    """(excess loss over the second half of the draws − over the first half) / overall excess.

    Near 0 when the chains have settled by the end of burn-in; positive while they still climb.
    """
    excess = result.loss_trace.astype(np.float64) - result.init_loss
    half = excess.shape[1] // 2
    overall = excess.mean()
    if half == 0 or overall == 0:
        return math.nan
    return float((excess[:, half:].mean() - excess[:, :half].mean()) / abs(overall))


def result_row(result: LLCResult) -> dict[str, Any]:
    s = result.settings
    return {"llc": result.mean, "llc_std": result.std,
            "chain_llcs": [float(v) for v in result.chain_llcs], "init_loss": result.init_loss,
            "num_data": s.num_data, "nbeta": s.nbeta, "step_size": s.step_size,
            "num_sampled": result.num_sampled, "mala_acceptance": result.mala_acceptance,
            "frac_below_init": result.frac_below_init, "mean_distance": result.mean_distance,
            "drift": trace_drift(result), "diverged": False}


def _diverged_row(step_size: float, nbeta: float, num_data: int) -> dict[str, Any]:
    return {"llc": math.nan, "llc_std": math.nan, "chain_llcs": [], "init_loss": math.nan,
            "num_data": num_data, "nbeta": nbeta, "step_size": step_size, "num_sampled": 0,
            "mala_acceptance": math.nan, "frac_below_init": math.nan,
            "mean_distance": math.nan, "drift": math.nan, "diverged": True}


# -------------------------------------------------------------------------------- calibration
def choose_step_size(sweep: pd.DataFrame, nbeta_factor: float
                     ) -> tuple[float, bool, pd.DataFrame]:
    """The calibration rule: the largest ε at which, at the default nβ, every checkpoint is stable.

    Stable at a checkpoint means: no chain diverged; the approximate MALA acceptance is at least
    MIN_ACCEPTANCE (the discretisation error of a step is small); every chain's λ̂ is positive and
    at most MAX_FRAC_BELOW of the draws lie below L_n(w*) (the chain stays around the minimum it
    should be local to); and |drift| ≤ MAX_DRIFT (the loss trace has levelled off after burn-in).
    Among the stable step sizes the largest mixes fastest for the same number of steps. Returns
    ε, whether it passed, and the sweep rows at the default nβ with a `stable` column. If no step
    size of the grid is stable, the smallest is returned with passed=False: the manifest records
    it and the figures say so (the grid or the chain length must then change).
    """
    rows = sweep[np.isclose(sweep["nbeta_factor"], nbeta_factor)].copy()
    positive = rows["chain_llcs"].apply(lambda v: len(v) > 0 and min(v) > 0)
    rows["stable"] = (~rows["diverged"] & (rows["mala_acceptance"] >= MIN_ACCEPTANCE)
                      & positive & (rows["frac_below_init"] <= MAX_FRAC_BELOW)
                      & (rows["drift"].abs() <= MAX_DRIFT))
    by_step = rows.groupby("step_size")["stable"].all()
    stable = sorted(by_step[by_step].index)
    if not stable:
        return float(min(by_step.index)), False, rows
    return float(stable[-1]), True, rows


def settings_hash(settings: PolicyLLCSettings, step_size: float) -> str:
    blob = json.dumps({**dataclasses.asdict(settings), "step_size": step_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ running
def _load_probe(run_dir: Path) -> dict[str, np.ndarray]:
    path = Path(run_dir) / "behaviour" / "probe.npz"
    if not path.exists():
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: it has no probe set; evaluate "
                          "it first (devrl eval)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _key(update: int, index: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(LLC_SEED), update), index)


def log_spaced(updates: list[int], count: int) -> list[int]:
    """`count` of the (positive) `updates`, spread log-evenly, first and last included."""
    if count >= len(updates):
        return list(updates)
    positive = np.asarray(updates, float)
    chosen: list[int] = []
    for target in np.geomspace(positive[0], positive[-1], count):
        free = [u for u in updates if u not in chosen]
        chosen.append(min(free, key=lambda u: abs(math.log(u) - math.log(target))))
    return sorted(chosen)


def trained_updates(checkpoints: list[tuple[int, Path]]) -> list[int]:
    """The checkpoints after at least one update: the ones LLCs are estimated (and calibrated) at.

    The initial policy is left out: it is near-uniform by construction (a small output layer),
    so its self-distillation loss is nearly flat, and no figure shows it (log axes).
    """
    updates = [u for u, _ in checkpoints if u > 0]
    if not updates:
        raise ConfigError("checkpoints=[0] is not allowed: the run needs a checkpoint after its "
                          "first update")
    return updates


def _whole_actor_part(part: Path, checkpoint: Callable[[], tuple[Any, dict]],
                      config: TrainConfig, contexts: np.ndarray, step_size: float,
                      settings: PolicyLLCSettings, key: jax.Array,
                      nbeta_factor: float | None = None) -> dict[str, Any]:
    """The row of a whole-actor estimate kept in the JSON file `part`, estimated first if the
    file is missing (a diverging chain gives a row marked `diverged`). `checkpoint()` returns
    (actor, distillation data); it is called only when an estimate is needed."""
    if not part.exists():
        actor, data = checkpoint()
        n = int(data["obs"].shape[0])
        factor = settings.nbeta_factor if nbeta_factor is None else nbeta_factor
        try:
            row = result_row(estimate_variant(config, actor, data, contexts, "all", "all",
                                              step_size, settings, key, nbeta_factor=factor))
        except LLCDivergenceError:
            row = _diverged_row(step_size, factor * n / math.log(n), n)
        atomic_write_json(part, row)
    return json.loads(part.read_text())


def _checkpoint_loader(config: TrainConfig, path: Path, probe: dict
                       ) -> Callable[[], tuple[Any, dict]]:
    """(actor, distillation data) of the checkpoint at `path`, loaded once on first call."""
    @functools.cache
    def load() -> tuple[Any, dict]:
        actor = actor_params(load_params(path))
        return actor, distillation_data(config, actor, probe)
    return load


def calibrate(run_dir: Path, settings: PolicyLLCSettings, progress: Callable[[str], None] = print
              ) -> pd.DataFrame:
    """The sweep table of `run_dir` (one row per checkpoint, nβ factor and ε); resumable."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    probe = _load_probe(run_dir)
    checkpoints = list_checkpoints(run_dir)
    paths = dict(checkpoints)
    chosen = log_spaced(trained_updates(checkpoints), settings.calibration_checkpoints)
    folder = run_dir / "llc" / "calibration"
    rows = []
    for update in chosen:
        checkpoint = _checkpoint_loader(config, paths[update], probe)
        for factor in settings.calibration_nbeta_factors:
            for index, step_size in enumerate(settings.calibration_step_sizes):
                name = f"cal_{update:06d}_{factor:g}_{step_size:g}_{settings_hash(settings, 0)}"
                part = folder / f"{name}.json"
                if not part.exists():
                    progress(f"calibration {run_dir.name} update {update} nβ×{factor:g} "
                             f"ε={step_size:g}")
                row = _whole_actor_part(part, checkpoint, config, probe["context"], step_size,
                                        settings, _key(update, index), nbeta_factor=factor)
                rows.append({"seed": config.seed, "update": update,
                             "env_steps": update * config.steps_per_update,
                             "nbeta_factor": factor, **row, "step_size": step_size})
    return pd.DataFrame(rows)


def check_step_size(settings: PolicyLLCSettings, step_size: float) -> float:
    """The step size of the convergence check: the grid's next smaller one, else `step_size`."""
    smaller = [e for e in settings.calibration_step_sizes if e < step_size]
    return max(smaller) if smaller else step_size


def convergence_check(run_dir: Path, settings: PolicyLLCSettings, step_size: float,
                      progress: Callable[[str], None] = print) -> pd.DataFrame:
    """Whole-actor λ̂ at the calibration checkpoints with the check's smaller step and longer
    chains (one row per checkpoint); resumable parts under RUN/llc/check/."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    probe = _load_probe(run_dir)
    checkpoints = list_checkpoints(run_dir)
    paths = dict(checkpoints)
    check = check_step_size(settings, step_size)
    long = dataclasses.replace(settings, num_steps=settings.num_steps * CHECK_STEPS_FACTOR,
                               num_burnin=settings.num_burnin * CHECK_STEPS_FACTOR)
    rows = []
    for update in log_spaced(trained_updates(checkpoints), settings.calibration_checkpoints):
        part = (run_dir / "llc" / "check"
                / f"check_{update:06d}_{check:g}_{settings_hash(long, check)}.json")
        if not part.exists():
            progress(f"check {run_dir.name} update {update} ε={check:g} "
                     f"{long.num_steps} steps")
        row = _whole_actor_part(part, _checkpoint_loader(config, paths[update], probe), config,
                                probe["context"], check, long, _key(update, 0))
        rows.append({"seed": config.seed, "update": update,
                     "env_steps": update * config.steps_per_update,
                     "num_steps": long.num_steps, **row})
    return pd.DataFrame(rows)


def estimate_run(run_dir: Path, settings: PolicyLLCSettings, step_size: float,
                 progress: Callable[[str], None] = print) -> tuple[pd.DataFrame, dict]:
    """Every checkpoint's LLC estimates and probe log-probabilities; finished parts are reused."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    probe = _load_probe(run_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: it has no checkpoints yet")
    estimated = log_spaced(trained_updates(checkpoints), settings.llc_checkpoints)
    detail = set(log_spaced(estimated, settings.detail_checkpoints))
    folder = run_dir / "llc" / settings_hash(settings, step_size)
    tables, logprobs = [], []
    for update, path in checkpoints:
        part = folder / f"llc_{update:06d}.parquet"
        outputs = folder / f"logprobs_{update:06d}.npz"
        actor = actor_params(load_params(path))
        if update in detail:
            todo = variants(actor)
        elif update in estimated:
            todo = [("all", "all")]
        else:
            todo = []
        # A finished part counts only if it holds exactly the estimates wanted here.
        done = (part.exists() and outputs.exists()
                and list(pd.read_parquet(part, columns=["kind", "target"]).itertuples(
                    index=False, name=None)) == todo)
        if not done:
            progress(f"llc {run_dir.name} update {update}")
            atomic_write_npz(outputs, {"logprobs": log_probs(config, actor, probe)
                                       .astype(np.float16)})
            data = distillation_data(config, actor, probe) if todo else None
            rows = []
            for index, (kind, target) in enumerate(todo):
                try:
                    row = result_row(estimate_variant(config, actor, data, probe["context"],
                                                      kind, target, step_size, settings,
                                                      _key(update, index)))
                except LLCDivergenceError:
                    n = len(probe["context"]) if kind != "context" else int(
                        (probe["context"] == CONTEXTS.index(target)).sum())
                    row = _diverged_row(step_size, settings.nbeta_factor * n / math.log(n), n)
                rows.append({"kind": kind, "target": target, **row})
            table = pd.DataFrame(rows, columns=["kind", "target", *_diverged_row(0, 0, 0)])
            table.insert(0, "seed", config.seed)
            table.insert(1, "update", update)
            table.insert(2, "env_steps", update * config.steps_per_update)
            table.insert(3, "detail", update in detail)
            atomic_write_parquet(part, table)
        table = pd.read_parquet(part)
        if len(table):
            tables.append(table)
        with np.load(outputs) as data_file:
            logprobs.append(data_file["logprobs"])
    updates = np.array([u for u, _ in checkpoints], np.int64)
    return pd.concat(tables, ignore_index=True), {
        "updates": updates, "env_steps": updates * config.steps_per_update,
        "logprobs": np.stack(logprobs), "context": probe["context"]}


def export_llc(sources: list[Path], out: Path, scale: str,
               progress: Callable[[str], None] = print) -> Path:
    """Calibrate on the first run, estimate every run, and write `out` (replaced atomically)."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    settings = LLC_SETTINGS[scale]
    run_dirs = [run_dir for source in sources for run_dir in run_dirs_under(source)]  # verified
    for run_dir in run_dirs:
        check_evaluated(run_dir)  # the probe set comes from the behaviour tables
    seeds = [load_config(run_dir).seed for run_dir in run_dirs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"run={[str(r) for r in run_dirs]} is not allowed: each seed may "
                          f"appear once (seeds {seeds})")
    run_dirs = [run_dirs[i] for i in np.argsort(seeds)]
    sweep = calibrate(run_dirs[0], settings, progress)
    step_size, passed, judged = choose_step_size(sweep, settings.nbeta_factor)
    if not passed:
        progress(f"calibration: no step size of {settings.calibration_step_sizes} met the rule; "
                 f"using the smallest, {step_size:g} (recorded in the manifest)")
    sweep = sweep.merge(judged[["update", "nbeta_factor", "step_size", "stable"]],
                        on=["update", "nbeta_factor", "step_size"], how="left")
    check = convergence_check(run_dirs[0], settings, step_size, progress)
    out = Path(out)
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    tables, runs = [], []
    for run_dir in run_dirs:
        config = load_config(run_dir)
        table, outputs = estimate_run(run_dir, settings, step_size, progress)
        tables.append(table)
        atomic_write_npz(staging / "logprobs" / f"seed_{config.seed}.npz", outputs,
                         compress=True)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        runs.append({"seed": config.seed, "config_hash": config.config_hash(),
                     "git_commit": manifest["git_commit"], "complete": manifest["complete"],
                     "updates_done": manifest["updates_done"]})
    atomic_write_parquet(staging / "calibration.parquet", sweep)
    atomic_write_parquet(staging / "check.parquet", check)
    atomic_write_parquet(staging / "llc.parquet", pd.concat(tables, ignore_index=True))
    write_manifest(staging, {
        "what": f"{scale}-scale policy LLC (self-distillation on the probe set) at every "
                "checkpoint, per layer and per context at detail checkpoints; the calibration "
                "sweep and its convergence check (longer chains at a smaller step); each "
                "checkpoint's action log-probabilities on the probe set (float16)",
        "made_by": f"devrl llc --scale {scale}",
        "scale": scale, "settings": dataclasses.asdict(settings), "step_size": step_size,
        "calibrated_on_seed": int(sweep["seed"].iloc[0]), "calibration_passed": passed,
        "calibration_rule": {"min_acceptance": MIN_ACCEPTANCE, "max_drift": MAX_DRIFT,
                             "max_frac_below_init": MAX_FRAC_BELOW},
        "convergence_check": {"step_size": check_step_size(settings, step_size),
                              "steps_factor": CHECK_STEPS_FACTOR},
        "llc_seed": LLC_SEED, "actions": list(ACTION_NAMES), "contexts": list(CONTEXTS),
        "runs": runs})
    return replace_dir(staging, out)


# ------------------------------------------------------------------ what the chains measure
def confinement(llc: pd.DataFrame, settings: dict[str, Any]) -> pd.DataFrame:
    """Per estimate (rows of an llc table; `settings` the data set's sampler settings): the
    chains' observed mean distance from w*, the distance the same sampler reaches with no loss
    term (`devrl.measures.llc.loss_free_distance`, same d, ε, γ and steps), and their ratio, the
    confinement ratio: near 1 where the loss does not hold the chains at all, so that λ̂ is
    nβ times the mean KL of the policy under weight noise of that size (a perturbation
    sensitivity), small where the loss confines them."""
    free = [loss_free_distance(int(row.num_sampled), float(row.step_size),
                               float(settings["localization"]), int(settings["num_burnin"]),
                               int(settings["num_steps"])) for row in llc.itertuples()]
    out = llc[["seed", "env_steps", "kind", "target", "num_sampled", "mean_distance"]].copy()
    out["loss_free_distance"] = free
    out["confinement_ratio"] = out["mean_distance"] / out["loss_free_distance"]
    return out.reset_index(drop=True)


def confinement_numbers(llc: pd.DataFrame, settings: dict[str, Any]) -> dict[str, float]:
    """The numbers a chapter quotes about what the chains sample (keys policy-llc-*): observed
    and loss-free mean distances, the confinement ratio's range, and the noise per weight (the
    loss-free distance over √d)."""
    table = confinement(llc, settings)
    per_weight = table["loss_free_distance"] / np.sqrt(table["num_sampled"])
    return {"policy-llc-distance-min": table["mean_distance"].min(),
            "policy-llc-distance-max": table["mean_distance"].max(),
            "policy-llc-free-min": table["loss_free_distance"].min(),
            "policy-llc-free-max": table["loss_free_distance"].max(),
            "policy-llc-confinement-min": table["confinement_ratio"].min(),
            "policy-llc-confinement-max": table["confinement_ratio"].max(),
            "policy-llc-noise-rms": float(per_weight.mean())}
