"""Where training changes the network: reverting layers, and how localised each update is.

* **Layer reversion** (`actor_layers`, `revert`, `layer_subsets`): the actor's parameters at a
  checkpoint with a subset of its layers put back to their values at an earlier checkpoint (the
  method of Zhang, Bengio & Singer 2022, "Are all layers created equal?", applied to RL); which
  layers carry a behaviour is read off how far the reverted policy's behaviour moves.
* **Update localisation** (`update_stats`): between two checkpoints, per weight matrix, the
  fraction of parameters whose change exceeds a tolerance (relative to the matrix's RMS weight at
  the earlier checkpoint), the effective rank of the change, and both for a null update of the
  same Frobenius norm spread evenly (i.i.d. Gaussian). The effective rank is exp of the entropy of
  the normalised singular values (Roy & Vetterli 2007): r for a change of r equal directions.

The exported checkpoints of `data/craftax-<scale>` are float16, whose spacing is about 1e-3 of a
weight's size: changes below that read as 0, so tolerances below `FLOAT16_FLOOR` measure the
rounding, not training (`update_stats` reports each tolerance against it).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from devrl.config import ConfigError

FLOAT16_FLOOR = 2.0 ** -10  # relative spacing of float16 numbers (10 mantissa bits)
TOLERANCES = (1e-3, 1e-2, 1e-1)  # changes counted, relative to the matrix's RMS weight
NULL_SEED = 11


def actor_layers(params: Any) -> list[str]:
    """The actor's layers in order of depth: actor_0, actor_1, ..., actor_out."""
    names = [n for n in params["params"] if n.startswith("actor_")]
    hidden = sorted((n for n in names if n != "actor_out"), key=lambda n: int(n.split("_")[1]))
    return hidden + (["actor_out"] if "actor_out" in names else [])


def layer_subsets(layers: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of `layers`, from the empty one to all of them (by size, then order)."""
    return [subset for size in range(len(layers) + 1)
            for subset in itertools.combinations(layers, size)]


def revert(params: Any, reference: Any, layers: Sequence[str]) -> Any:
    """`params` with each layer in `layers` replaced by `reference`'s (the same arrays, not
    copies); every other layer is `params`' own."""
    unknown = [name for name in layers if name not in params["params"]
               or name not in reference["params"]]
    if unknown:
        raise ConfigError(f"layers={list(layers)!r} is not allowed: {unknown} are not layers of "
                          f"both checkpoints (allowed: {', '.join(actor_layers(params))})")
    return {"params": {name: (reference["params"][name] if name in layers else leaf)
                       for name, leaf in params["params"].items()}}


def effective_rank(matrix: np.ndarray) -> float:
    """exp(entropy of the singular values normalised to sum 1); 0 for a zero matrix."""
    s = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def update_stats(before: Any, after: Any, tolerances: Sequence[float] = TOLERANCES,
                 layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per layer kernel and tolerance: `changed` (fraction of entries with |Δ| > tol · RMS of the
    layer's weights before), `null_changed` (the same for an i.i.d. Gaussian update of the same
    Frobenius norm), `effective_rank` and `null_effective_rank` of the update, the update's
    relative norm |Δ|/|W|, and `below_float16` (the tolerance is under the float16 spacing)."""
    layers = actor_layers(before) if layers is None else list(layers)
    rng = np.random.default_rng(NULL_SEED)
    rows = []
    for name in layers:
        w0 = np.asarray(before["params"][name]["kernel"], np.float64)
        w1 = np.asarray(after["params"][name]["kernel"], np.float64)
        delta = w1 - w0
        rms = float(np.sqrt(np.mean(w0 ** 2)))
        norm = float(np.linalg.norm(delta))
        null = rng.standard_normal(delta.shape)
        null *= norm / max(np.linalg.norm(null), 1e-300)
        rank, null_rank = effective_rank(delta), effective_rank(null)
        for tol in tolerances:
            threshold = tol * rms
            rows.append({"layer": name, "tolerance": tol, "parameters": delta.size,
                         "changed": float((np.abs(delta) > threshold).mean()),
                         "null_changed": float((np.abs(null) > threshold).mean()),
                         "effective_rank": rank, "null_effective_rank": null_rank,
                         "max_rank": min(delta.shape),
                         "relative_norm": norm / max(float(np.linalg.norm(w0)), 1e-300),
                         "below_float16": tol < FLOAT16_FLOOR})
    return pd.DataFrame(rows)
