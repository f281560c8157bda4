"""The policy's learning coefficient in its regime: the output layer, with the features frozen.

With every hidden weight held at its checkpoint value, the self-distillation loss of
`devrl.measures.policy_llc` depends on the output layer's weights W [(F + 1), A] (kernel rows, then
the bias as a last row) only through the logits z_s = f̃_sᵀ W, f̃_s being state s's last hidden
features with a 1 appended for the bias:

    L_n(W) = −(1/n) Σ_s Σ_a p_s(a) log softmax(f̃_sᵀ W)_a,   p_s = softmax(f̃_sᵀ W*).

Its Hessian at W* is the quadratic form

    H = (1/n) Σ_s (f̃_s f̃_sᵀ) ⊗ (diag p_s − p_s p_sᵀ)

(index (i, a) ↦ i·A + a, W's row-major order), and L_n(W* + Δ) − L_n(W*) = ½ vec(Δ)ᵀ H vec(Δ)
+ O(‖Δ‖³). H is exactly zero along the softmax shift (Δ = u 1ᵀ, any u: every logit of a state
moves together) and along the features' null space (Δ = v cᵀ with f̃_sᵀ v = 0 for every s). To
second order the loss is a regular model in the remaining rank(H) directions, so its learning
coefficient is rank(H)/2.

The localised, tempered posterior exp(−nβ L_n(W) − γ/2 ‖W − W*‖²) of the quadratic is Gaussian
with precision nβ h_i + γ along H's eigenvector i, so

    E[nβ (L_n(W) − L_n(W*))] = ½ Σ_i nβ h_i / (nβ h_i + γ)       (`expected_llc`)

exactly: the value λ̂ must reach at (nβ, γ) if the estimator works and the quadratic holds at the
distances the chains reach. It tends to rank(H)/2 when every nonzero nβh_i ≫ γ, and counts only
the directions resolved at the scale γ/nβ otherwise. `quadratic_check` measures how far the full
loss departs from the quadratic at draws of that Gaussian.

Features are taken from the network itself (the input of its output layer, intercepted), so the
output-layer loss here equals the policy loss with every other weight frozen; `output_features`
checks that f̃ W* reproduces the network's logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError
from devrl.core.config import TrainConfig, config_from_dict
from devrl.core.envs import ACTION_NAMES
from devrl.core.ppo import make_network
from devrl.measures.llc import estimate_llc
from devrl.measures.policy_llc import log_spaced, policy_logits
from devrl.measures.regime import quadratic_sensitivity
from devrl.runs.rundir import load_params, sha256_file

OUTPUT_LAYER = "actor_out"


def output_features(config: TrainConfig, actor: Any, probe: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(f̃ [n, F + 1] float64: the output layer's input at each probe state with a 1 appended,
    W* [F + 1, A] float64: its kernel with the bias as the last row). Raises RuntimeError if
    f̃ W* does not reproduce the network's logits (a wrong layer or a changed architecture)."""
    network = make_network(config, len(ACTION_NAMES))

    def run(actor, obs, first):
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.module.name == OUTPUT_LAYER and context.method_name == "__call__":
                captured["inputs"] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            logits = policy_logits(network, actor, obs, first)
        return captured["inputs"][-1], logits  # the window's last step, as policy_logits

    inputs, logits = jax.jit(run)(actor, jnp.asarray(probe["obs"]), jnp.asarray(probe["first"]))
    layer = actor["params"][OUTPUT_LAYER]
    features = np.concatenate([np.asarray(inputs, np.float64),
                               np.ones((inputs.shape[0], 1))], axis=1)
    weights = np.concatenate([np.asarray(layer["kernel"], np.float64),
                              np.asarray(layer["bias"], np.float64)[None]], axis=0)
    logits = np.asarray(logits, np.float64)
    reproduced = features @ weights
    error = (np.max(np.abs(reproduced - logits)) if reproduced.shape == logits.shape
             else np.inf)
    if not error <= 1e-4 * (1.0 + np.max(np.abs(logits))):
        raise RuntimeError(f"the intercepted features do not reproduce the logits (max error "
                           f"{error:.3g}): is {OUTPUT_LAYER!r} still the policy's output layer?")
    return features, weights


def output_loss(weights: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """L(W) on a batch {"features": f̃ [B, F + 1], "target": p [B, A]}: the mean cross-entropy
    of softmax(f̃ W) against the targets (the policy loss with the hidden layers frozen)."""
    logits = batch["features"] @ weights
    return -jnp.mean(jnp.sum(batch["target"] * jax.nn.log_softmax(logits), axis=-1))


def softmax64(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def hessian(features: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """H = (1/n) Σ_s (f̃_s f̃_sᵀ) ⊗ (diag p_s − p_s p_sᵀ), [(F + 1)·A]², index i·A + a."""
    features = np.asarray(features, np.float64)
    probs = np.asarray(probs, np.float64)
    n, f = features.shape
    if probs.shape[0] != n or probs.ndim != 2:
        raise ConfigError(f"probs of shape {probs.shape} is not allowed: need [n={n}, A]")
    a = probs.shape[1]
    out = np.zeros((f, a, f, a))
    for i in range(a):
        for j in range(i, a):
            weight = probs[:, i] * ((i == j) - probs[:, j])  # (diag p − p pᵀ)_ij per state
            block = (features * weight[:, None]).T @ features / n
            out[:, i, :, j] = block
            if j != i:
                out[:, j, :, i] = block
    return out.reshape(f * a, f * a)


def expected_llc(eigenvalues: Any, nbeta: float, localization: float) -> float:
    """½ Σ_i nβh_i / (nβh_i + γ): E[nβ (L − L*)] under exp(−nβ L − γ/2 ‖w − w*‖²) for the
    quadratic L − L* = ½ wᵀHw with eigenvalues h_i (negative round-off counts as 0)."""
    return quadratic_sensitivity(np.clip(np.asarray(eigenvalues, np.float64), 0, None), nbeta,
                                 localization)


# A direction counts in rank(H) when its curvature exceeds this fraction of the largest one.
# Float64 round-off in H (sums of n products of numbers of order one) is near 1e-16 of the
# largest eigenvalue; the softmax-shift directions come out at that level, the features' near
# null space spreads between. The rank is reported at this tolerance and at 1e-6 (see RANK_TOLS).
RANK_TOLS = (1e-10, 1e-6)


def numerical_rank(eigenvalues: Any, relative_tol: float) -> int:
    h = np.asarray(eigenvalues, np.float64)
    return int(np.sum(h > relative_tol * h.max()))


def posterior_distance(eigenvalues: Any, nbeta: float, localization: float) -> float:
    """E‖w − w*‖² ^ ½ under the quadratic's localised posterior: (Σ 1/(nβh_i + γ))^½ over all
    directions (flat ones at precision γ)."""
    h = np.clip(np.asarray(eigenvalues, np.float64), 0, None)
    return float(np.sqrt(np.sum(1.0 / (nbeta * h + localization))))


def quadratic_check(features: np.ndarray, weights: np.ndarray, hessian_matrix: np.ndarray,
                    nbeta: float, localization: float, key: int, draws: int = 64
                    ) -> dict[str, float]:
    """The full loss against its quadratic at draws of the quadratic's localised posterior
    N(0, (nβH + γI)⁻¹) (sampled through a Cholesky factor, no eigenvectors needed): `ratio` =
    mean (L(W* + Δ) − L*) / mean ½ ΔᵀHΔ over `draws` draws Δ (1 where the quadratic holds at
    these distances), and the draws' rms distance."""
    import scipy.linalg

    d = hessian_matrix.shape[0]
    precision = nbeta * hessian_matrix + localization * np.eye(d)
    factor = np.linalg.cholesky(precision)  # precision = L Lᵀ
    rng = np.random.default_rng(key)
    # Δ = L⁻ᵀ z has covariance (L Lᵀ)⁻¹
    deltas = scipy.linalg.solve_triangular(factor, rng.standard_normal((d, draws)),
                                           lower=True, trans="T").T  # [draws, d]
    quadratic = 0.5 * np.einsum("ki,ij,kj->k", deltas, hessian_matrix, deltas)
    probs = softmax64(features @ weights)
    base = -np.mean(np.sum(probs * np.log(probs), axis=1))
    full = []
    for delta in deltas:
        logits = features @ (weights + delta.reshape(weights.shape))
        logits = logits - logits.max(axis=1, keepdims=True)
        log_q = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        full.append(-np.mean(np.sum(probs * log_q, axis=1)) - base)
    return {"ratio": float(np.mean(full) / np.mean(quadratic)),
            "rms_distance": float(np.sqrt(np.mean(np.sum(deltas ** 2, axis=1))))}


def exact_rank(features: np.ndarray, probs: np.ndarray) -> int:
    """rank(H) = rank(F̃)·(A − 1) when every action probability is positive (each state's
    diag p − ppᵀ then has rank A − 1, null only along 1, and H ⪰ c (F̃ᵀF̃) ⊗ (I − 11ᵀ/A) with
    c > 0); raises ConfigError where some probability is exactly zero."""
    if not np.all(probs > 0):
        raise ConfigError("probs with zeros is not allowed: the exact rank needs every action "
                          "probability positive; use numerical_rank on H's eigenvalues")
    return int(np.linalg.matrix_rank(features)) * (probs.shape[1] - 1)


@dataclass(frozen=True)
class OutputLLCSettings:
    """Sampler settings of the output-layer estimates at one scale. Gradients are full-batch and
    each draw's loss is L_n itself (the loss on frozen features is cheap), so λ̂ has no minibatch
    noise. The step size and chain length follow from H's spectrum by the rule in `chain_for`."""

    nbeta_factors: tuple[float, ...]  # nβ = factor · n / log n; the first is the base cell
    localization: float  # γ
    num_chains: int
    keys: tuple[int, ...]  # chain keys of the base cell at every checkpoint
    other_cells_at: int  # checkpoints per seed (log-spaced, trained) with the other nβ cells
    quadratic_draws: int
    curve_factors: tuple[float, ...]  # nβ factors of the closed-form curves


# ε·(nβ h_max + γ) = STEP_FRACTION: the stiffest direction moves a tenth of its posterior width
# per step, so the unadjusted Langevin chain inflates its variance by 1/(1 − ε q/4) ≤ 2.6% there
# (a Gaussian of precision q) and less in every other direction. Burn-in and draws each last
# RELAX_TIMES relaxation times 1/(εγ) of the slowest direction.
STEP_FRACTION = 0.1
CHAIN_SEED = 7_919  # a checkpoint's chains: CHAIN_SEED + 1000·seed + update
RELAX_TIMES = 5
# The rules, written before any output-layer estimate was computed: λ̂ of every chain key at every
# checkpoint within VALIDATION_TOLERANCE of the closed form at its (nβ, γ); the full loss within
# QUADRATIC_TOLERANCE of the quadratic (ratio of mean excess losses) at the quadratic posterior's
# draws, so that the closed form is the right answer at the distances the chains reach.
VALIDATION_TOLERANCE = 0.10
QUADRATIC_TOLERANCE = 0.10

SETTINGS: dict[str, OutputLLCSettings] = {
    "smoke": OutputLLCSettings(nbeta_factors=(1.0, 4.0), localization=100.0, num_chains=2,
                               keys=(0, 1), other_cells_at=1, quadratic_draws=8,
                               curve_factors=tuple(4.0 ** k for k in range(-1, 7))),
    "cpu": OutputLLCSettings(nbeta_factors=(1.0, 4.0), localization=100.0, num_chains=4,
                             keys=(0, 1, 2), other_cells_at=3, quadratic_draws=64,
                             curve_factors=tuple(4.0 ** k for k in range(-2, 9))),
}


def chain_for(eigenvalues: np.ndarray, nbeta: float, localization: float) -> dict[str, Any]:
    """ε, steps and burn-in of the rule (STEP_FRACTION, RELAX_TIMES) for this spectrum."""
    stiffest = nbeta * float(np.max(eigenvalues)) + localization
    step_size = STEP_FRACTION / stiffest
    burnin = math.ceil(RELAX_TIMES / (step_size * localization))
    return {"step_size": step_size, "num_burnin": burnin, "num_steps": 2 * burnin}


def settings_record(scale: str) -> dict[str, Any]:
    s = SETTINGS[scale]
    return {"nbeta_factors": list(s.nbeta_factors), "localization": s.localization,
            "num_chains": s.num_chains, "keys": list(s.keys), "other_cells_at": s.other_cells_at,
            "quadratic_draws": s.quadratic_draws, "step_fraction": STEP_FRACTION,
            "relax_times": RELAX_TIMES, "validation_tolerance": VALIDATION_TOLERANCE,
            "quadratic_tolerance": QUADRATIC_TOLERANCE, "rank_tolerances": list(RANK_TOLS),
            "sampler": "sgld", "batch": "full", "draw_loss": "full"}


def checkpoint_tables(features: np.ndarray, weights: np.ndarray, settings: OutputLLCSettings,
                      chain_seed: int, detailed: bool,
                      progress: Callable[[str], None] = lambda m: None) -> tuple[dict[str, Any], list[dict[str, Any]], pd.DataFrame,
                                 np.ndarray]:
    """Everything about one checkpoint: (facts, estimate rows, closed-form curve, spectrum).

    The estimates are `devrl.measures.llc.estimate_llc` of `output_loss` at W*, at the base cell
    with every key and, if `detailed`, at the other cells with the first key; chain keys are
    fold_in(fold_in(PRNGKey(chain_seed), cell), key)."""
    n = features.shape[0]
    probs = softmax64(features @ weights)
    curvature = hessian(features, probs)
    eigenvalues = np.linalg.eigvalsh(curvature)
    nbeta0 = n / math.log(n)
    base_nbeta = settings.nbeta_factors[0] * nbeta0
    gamma = settings.localization
    check = quadratic_check(features, weights, curvature, base_nbeta, gamma,
                            key=chain_seed, draws=settings.quadratic_draws)
    del curvature
    facts = {"num_data": n, "num_weights": int(weights.size),
             "entropy": float(-np.mean(np.sum(probs * np.log(probs), axis=1))),
             "h_max": float(eigenvalues.max()),
             **{f"rank_{tol:g}": numerical_rank(eigenvalues, tol) for tol in RANK_TOLS},
             "rank_exact": exact_rank(features, probs),
             "nbeta0": nbeta0, "quadratic_ratio": check["ratio"],
             "quadratic_distance": check["rms_distance"],
             "rms_weight": float(np.sqrt(np.mean(weights ** 2)))}
    facts["half_rank"] = facts["rank_exact"] / 2
    data = {"features": jnp.asarray(features, jnp.float32),
            "target": jnp.asarray(probs, jnp.float32)}
    start = jnp.asarray(weights, jnp.float32)
    rows = []
    for cell, factor in enumerate(settings.nbeta_factors):
        if cell and not detailed:
            continue
        nbeta = factor * nbeta0
        chain = chain_for(eigenvalues, nbeta, gamma)
        for key in (settings.keys if cell == 0 else settings.keys[:1]):
            progress(f"  nβ×{factor:g} key {key}: {chain['num_steps']} steps at "
                     f"ε={chain['step_size']:.3g}")
            result = estimate_llc(
                output_loss, start, data,
                jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(chain_seed),
                                                      cell), key),
                nbeta=nbeta, localization=gamma, num_chains=settings.num_chains,
                batch_size=n, draw_loss="full", **chain)
            expected = expected_llc(eigenvalues, nbeta, gamma)
            rows.append({"nbeta_factor": factor, "nbeta": nbeta, "localization": gamma,
                         "key": key, **chain, "num_chains": settings.num_chains,
                         "llc": result.mean, "llc_std": result.std,
                         "chain_llcs": result.chain_llcs.tolist(), "expected": expected,
                         "relative_error": (result.mean - expected) / expected,
                         "mala_acceptance": result.mala_acceptance,
                         "mean_distance": result.mean_distance,
                         "expected_distance": posterior_distance(eigenvalues, nbeta, gamma),
                         "frac_below_init": result.frac_below_init})
    curve = pd.DataFrame([{"nbeta_factor": f, "nbeta": f * nbeta0, "localization": g,
                           "expected": expected_llc(eigenvalues, f * nbeta0, g)}
                          for g in (gamma, 1.0) for f in settings.curve_factors])
    return facts, rows, curve, eigenvalues


def study_tables(scale: str, craftax: Path, seeds: list[int] | None = None,
                 progress: Callable[[str], None] = lambda m: None
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The output-layer data set from the exported checkpoints of a Craftax data set: per
    (seed, checkpoint) the facts of H, the estimates, the closed-form curves and H's spectrum."""
    import json
    

    if scale not in SETTINGS:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SETTINGS)}")
    settings = SETTINGS[scale]
    folder = Path(craftax)
    manifest = json.loads((folder / "manifest.json").read_text())
    runs = sorted((r for r in manifest["runs"] if seeds is None or r["seed"] in seeds),
                  key=lambda r: r["seed"])
    facts, estimates, curves, spectra = [], [], [], []
    for run in runs:
        seed, config = run["seed"], config_from_dict(run["config"])
        with np.load(folder / "probes" / f"seed_{seed}.npz") as probe_file:
            probe = {k: probe_file[k] for k in probe_file.files}
        updates = list(run["exported_checkpoints"])
        detailed = set(log_spaced([u for u in updates if u > 0], settings.other_cells_at))
        per_update = config.num_envs * config.num_steps
        for update in updates:
            progress(f"seed {seed} update {update}")
            actor = load_params(folder / "checkpoints" / f"seed_{seed}"
                                / f"params_{update:06d}.npz")
            features, weights = output_features(config, actor, probe)
            fact, rows, curve, eigenvalues = checkpoint_tables(
                features, weights, settings, CHAIN_SEED + 1000 * seed + update,
                update in detailed, progress)
            where = {"seed": seed, "update": update, "env_steps": update * per_update}
            facts.append({**where, **fact, "detailed": update in detailed})
            estimates += [{**where, **row} for row in rows]
            curves.append(curve.assign(**where))
            spectra.append(pd.DataFrame({**where, "index": np.arange(eigenvalues.size),
                                         "eigenvalue": eigenvalues.astype(np.float32)}))
    tables = {"checkpoints": pd.DataFrame(facts), "estimates": pd.DataFrame(estimates),
              "curves": pd.concat(curves, ignore_index=True),
              "spectra": pd.concat(spectra, ignore_index=True)}
    extra = {"settings": settings_record(scale),
             "runs": [{"seed": r["seed"], "config_hash": r.get("config_hash"),
                       "exported_checkpoints": r["exported_checkpoints"]} for r in runs],
             "craftax_manifest_sha256": sha256_file(folder / "manifest.json")}
    return tables, extra


# ------------------------------------------------------------------------------ verdicts
# Both rules (validation and the quadratic check) were committed before any output-layer
# estimate was computed (devrl.measures.verdicts).
RULE_KIND = "test"


def validation_verdict(estimates: pd.DataFrame) -> dict[str, Any]:
    """Whether every estimate lies within VALIDATION_TOLERANCE of its closed form."""
    worst = float(estimates["relative_error"].abs().max())
    return {"holds": bool(worst <= VALIDATION_TOLERANCE), "worst": worst,
            "estimates": len(estimates),
            "checkpoints": int(estimates[["seed", "update"]].drop_duplicates().shape[0]),
            "word": "agrees with" if worst <= VALIDATION_TOLERANCE else "does not agree with"}


def quadratic_verdict(checkpoints: pd.DataFrame) -> dict[str, Any]:
    """Whether the full loss stays within QUADRATIC_TOLERANCE of the quadratic at every
    checkpoint (at the base cell's posterior draws)."""
    deviation = (checkpoints["quadratic_ratio"] - 1).abs()
    holds = bool(deviation.max() <= QUADRATIC_TOLERANCE)
    return {"holds": holds, "worst": float(deviation.max()),
            "low": float(checkpoints["quadratic_ratio"].min()),
            "high": float(checkpoints["quadratic_ratio"].max()),
            "word": "stays" if holds else "does not stay"}


def rule_statuses(validation: dict[str, Any], quadratic: dict[str, Any]) -> dict[str, str]:
    """The findings-page status of each rule (`validation_verdict`, `quadratic_verdict`), both of
    RULE_KIND (devrl.measures.verdicts.status)."""
    from devrl.measures.verdicts import status, word

    return {"validation": status(word(validation["holds"]), RULE_KIND),
            "quadratic": status(word(quadratic["holds"]), RULE_KIND)}


def resolution_words(fraction_of_half_rank: float) -> str:
    """How much of rank(H)/2 the closed form reaches at the settings, in words for the prose."""
    if fraction_of_half_rank >= 0.9:
        return "nearly every direction is resolved at γ/nβ"
    if fraction_of_half_rank >= 0.5:
        return "most directions are resolved at γ/nβ, but not all"
    return "most directions are not resolved at γ/nβ"
