"""Reward structure and behavioural diversity (book/diversity.md): the study that trains the reward
sweep, digests each finished run once, measures the control, and judges the stated predictions.

The measures (Hill numbers with their intervals, JSD, participation ratio, discoveries and
event-triggered averages) are `devrl.measures.diversity`'s; the replicator-mutator model is
`devrl.toys.evolution`. This module holds the study: each run's digest (`make_digest`, committed
under `data/reward-runs-<scale>/`), the study's tables (`study_tables`), the loader for the
notebooks (`diversity_data`), and the summaries and verdicts the chapter's prose uses.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from devrl.core.base import ConfigError, atomic_write_npz, atomic_write_parquet, replace_dir
from devrl.core.config import SCALES, TrainConfig, config_from_dict
from devrl.core.envs import ACTION_NAMES
from devrl.datasets import (
    EVAL_SETTINGS,
    bin_updates,
    check_seeds,
    common_probe,
    control_checkpoints,
    craftax_data,
    data_root,
    runs_root,
    seeded_table_set,
    with_rates,
)
from devrl.measures.behaviour import evaluate_run, probe_table
from devrl.measures.diversity import (
    BOOTSTRAP,
    DISCOVERY_ALPHA,
    EVENT_WINDOW,
    NULL_DRAWS,
    actor_activations,
    discoveries,
    event_triggered,
    hill_numbers,
    jensen_shannon,
    mean_pairwise_jsd,
    participation_ratio,
    strategy_labels,
    strategy_table,
)
from devrl.measures.verdicts import word
from devrl.runs.rundir import (
    check_verified,
    list_checkpoints,
    load_config,
    load_params,
    sha256_file,
    write_manifest,
)
from devrl.runs.sweep import (
    SWEEPS,
    SweepSpec,
    load_spec,
    run_dir_for,
    run_finished,
    run_name,
    run_sweep,
)
from devrl.toys import evolution as ev
from devrl.toys.evolution import Curve, fit_curves, jump_sweep

# What this part's notebooks take from the layers below: a notebook imports only its study
# and devrl.book.plots (tests/test_layers.py), so the study hands these on.
from devrl.datasets import over_seeds, rank_correlation  # noqa: F401
from devrl.measures.verdicts import statuses  # noqa: F401

DISCOVERY_ALPHAS = (0.05, 0.01, 0.001)  # the rule's level and two others, side by side


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
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    return load_spec(SWEEPS / f"reward-{scale}.yaml")


def network_measures(config: TrainConfig, checkpoints, probe: dict[str, np.ndarray],
                     cache=None) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Per checkpoint (update, params): participation ratio of each actor layer on the common
    probe states, and the action probabilities there ([states, actions], float16). With `cache`
    (a folder inside a run directory), each checkpoint's result is kept as `network_UUUUUU.npz`
    and reused; the folder has a manifest of its own, so the run's manifest does not cover it."""
    def manifest() -> None:
        write_manifest(cache, {"what": "devrl.studies.diversity.network_measures per checkpoint",
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


def _eval_settings(scale: str) -> dict[str, int]:
    return EVAL_SETTINGS[scale]


def probe_sha256(probe: dict[str, np.ndarray]) -> str:
    """A checksum of the common probe states: a digest is tied to the states it was measured on."""
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
    rows = []
    for update, p in policies.items():
        table = probe_table(np.asarray(p, np.float32), probe["context"])
        table.insert(0, "update", update)
        table.insert(0, "seed", seed)
        table.insert(0, "variant", variant)
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def digest_root(scale: str):
    return data_root() / f"reward-runs-{scale}"


def digest_name(config: TrainConfig) -> str:
    return f"{config.reward}-seed_{config.seed}"


def make_digest(run_dir, config: TrainConfig, probe: dict[str, np.ndarray], scale: str,
                out) -> dict[str, Any]:
    """Evaluate and measure the finished run `run_dir` of `config` (cached in the run) and write
    its digest to the folder `out` (staged, then moved in by renames). Returns the digest."""
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
                                     "(devrl.studies.diversity.make_digest)",
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
    root = Path(root)
    names = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists())
    write_manifest(root, {"what": "digests of finished reward-sweep runs "
                                  "(devrl.studies.diversity.make_digest), one folder each",
                          "digests": {n: sha256_file(root / n / "manifest.json") for n in names}},
                   exclude=tuple(f"{n}/" for n in names))


def digest_finished(scale: str, runs_dir, control, progress=print) -> dict[str, str]:
    """Digest every finished run of the reward sweep in `runs_dir` that has no up-to-date digest
    in `digest_root(scale)`; leave unfinished runs alone. Returns {digest name: status}, status
    one of digested, up to date, not finished."""
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
    control is the data set `control` (datasets.CraftaxData of the same scale), measured here."""
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
        "what": "reward structures (devrl.core.envs.REWARD_SPECS) and behavioural diversity "
                "(devrl.measures.diversity): strategy Hill numbers, pairwise JSD, participation "
                "ratio, discoveries and event-triggered averages, and the replicator-mutator model",
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
    for key, verdict in said.items():
        kind = "a test" if PREDICTION_KIND[key] == "test" else "exploratory"
        out[key] = f"{verdict} ({'it would be ' + kind if verdict == 'untested' else kind})"
    return out


def verdicts(checkpoints: pd.DataFrame, jsd: pd.DataFrame, events: pd.DataFrame,
             network: pd.DataFrame, fit: pd.DataFrame | None) -> dict[str, str]:
    """The stated predictions of book/diversity.md, each judged by a fixed rule on the data:
    "held", "did not hold", or "untested" (the data to judge it is missing)."""
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


# ------------------------------------------------------------------ the data set, for the notebooks
@dataclass(frozen=True)
class DiversityData:
    """The reward-structure and diversity study's tables (`data/diversity-<scale>/`)."""

    scale: str
    seeds: list[int]
    path: Path
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]

    def __getattr__(self, name: str) -> pd.DataFrame:
        tables = object.__getattribute__(self, "tables")
        if name in tables:
            return tables[name]
        raise AttributeError(name)

    @property
    def env_steps_per_update(self) -> int:
        """Env steps of one PPO update (every run of the study has the same batch)."""
        sizes = {r["config"]["num_envs"] * r["config"]["num_steps"] for r in self.manifest["runs"]}
        if len(sizes) != 1:
            raise ValueError(f"the runs of {self.path} differ in env steps per update: {sizes}")
        return sizes.pop()

    def describe(self) -> str:
        runs = [r for r in self.manifest["runs"] if r["seed"] in self.seeds]
        variants = sorted({r["variant"] for r in runs})
        per_variant = {v: sum(r["variant"] == v for r in runs) for v in variants}
        most = max(per_variant.values(), default=0)
        fewer = [f"{v}: {n}" for v, n in per_variant.items() if n < most]
        seeds = f"{most} seeds" + (f" ({', '.join(fewer)})" if fewer else "")
        steps = sorted({r["env_steps_done"] for r in runs})
        return (f"{len(variants)} reward structures ({', '.join(variants)}) × {seeds} "
                f"at the {self.scale} scale, {'/'.join(f'{s:,}' for s in steps)} env steps each")


def diversity_data(scale: str = "cpu", seeds: list[int] | None = None,
                   recompute: bool = False, train: bool = True) -> DiversityData:
    """The diversity study's data set (`seeds`, or every seed it holds); with `recompute`, train
    its sweep (`src/devrl/sweeps/reward-<scale>.yaml`, `seeds` or the sweep's own) into
    `DEVRL_RUNS/reward-<scale>/` (finished runs are skipped, interrupted ones resume), evaluate
    and measure every run (cached in the run), measure the control (`data/craftax-<scale>`,
    recomputed first if absent) and replace the data set. With `recompute` and not `train`,
    build it from the runs already digested (`data/reward-runs-<scale>`), training nothing."""
    seeds = check_seeds(seeds)

    def build():
        craftax = data_root() / f"craftax-{scale}"
        if recompute and not (craftax / "manifest.json").exists():
            craftax_data(scale, seeds, recompute=True)
        control = craftax_data(scale, seeds)
        return study_tables(scale, runs_root() / f"reward-{scale}", control, seeds,
                                      progress=lambda message: print(message, flush=True),
                                      train=train)

    picked, manifest, folder, chosen = seeded_table_set(
        "diversity", scale, seeds, recompute, build)
    return DiversityData(scale=scale, seeds=chosen, path=folder, manifest=manifest,
                         tables=picked)
