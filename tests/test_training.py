"""End-to-end training at smoke scale: several seeds, a kill between a checkpoint and its
manifest, recurrent PPO, behaviour evaluation, export, and consumers that verify their inputs.
Each test trains a real (tiny) agent; tests/test_sweep.py kills sweeps in every other way.

Runs compared bitwise use the same XLA thread setting (`--threads-per-run 1`): XLA's CPU
reductions are deterministic for a fixed thread count, not across thread counts."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import assert_same_run, run_cli, smoke_run

from devrl.core.config import make_config
from devrl.core.envs import ACTION_NAMES, CONTEXTS, EPISODE_FIELDS
from devrl.runs import training
from devrl.runs.rundir import list_checkpoints, load_params, read_progress, verify_manifest
from devrl.runs.training import train

pytestmark = pytest.mark.slow


def test_multi_seed_run_completes(smoke_runs):
    for seed in (0, 1):
        run_dir = smoke_run(smoke_runs, seed)
        assert read_progress(run_dir)["status"] == "complete"
        assert verify_manifest(run_dir) == []
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["complete"] and manifest["seed"] == seed
        assert {"jax", "flax", "craftax", "devrl"} <= set(manifest["versions"])
        metrics = pd.read_parquet(run_dir / "metrics.parquet")
        assert len(metrics) == make_config("smoke").num_updates
        assert set(EPISODE_FIELDS) <= set(metrics.columns)
    with pytest.raises(AssertionError):
        assert_same_run(smoke_run(smoke_runs, 0), smoke_run(smoke_runs, 1))  # seeds differ


def interrupt_at(monkeypatch, update: int):
    """Make training stop as a kill would, after the state of `update` is saved and before its
    manifest is written (the heartbeat comes between the two)."""
    real = training.heartbeat

    def heartbeat(run_dir, status, config, **info):
        if status == "training" and info.get("update") == update:
            raise SystemExit("killed")
        return real(run_dir, status, config, **info)

    monkeypatch.setattr(training, "heartbeat", heartbeat)


def test_a_kill_between_checkpoint_and_manifest_is_an_interruption_that_resumes(
        tmp_path, monkeypatch):
    config = make_config("smoke")
    reference = train(config, tmp_path / "reference")
    last = config.num_updates
    for update in (3, last):  # mid-run, and after the last checkpoint's state was saved
        run_dir = tmp_path / f"killed_at_{update}"
        with monkeypatch.context() as patch:
            interrupt_at(patch, update)
            with pytest.raises(SystemExit):
                train(config, run_dir)
        problems = verify_manifest(run_dir)
        assert [p.kind for p in problems] == ["interrupted"], problems
        result = run_cli("verify", str(run_dir))
        assert result.returncode == 1 and "interrupted" in result.stdout
        assert "rerun to resume" in result.stdout and "checksum differs" not in result.stdout
        train(config, run_dir)
        assert verify_manifest(run_dir) == []
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["complete"] and manifest["updates_done"] == last
        assert "pending" not in manifest
        assert_same_run(reference, run_dir)


def test_consumers_refuse_a_run_that_does_not_match_its_manifest(smoke_runs, tmp_path):
    result = run_cli("eval", str(smoke_runs), "--episodes", "4", "--max-steps", "50",
                     "--probe-per-context", "8", "--quiet")
    assert result.returncode == 0, result.stderr
    for target in ("metrics.parquet", "behaviour/episodes.parquet"):
        copy = tmp_path / target.split("/")[0].replace(".", "_") / "seed_0"
        shutil.copytree(smoke_run(smoke_runs, 0), copy)
        table = pd.read_parquet(copy / target)
        column = table.select_dtypes("float").columns[0]
        table.loc[0, column] += 1  # still a valid table, another number
        table.to_parquet(copy / target, index=False)
        commands = [["export", str(copy), "--out", str(tmp_path / "data")],
                    ["llc", str(copy), "--scale", "smoke", "--out", str(tmp_path / "llc")]]
        if target == "metrics.parquet":  # eval rewrites behaviour/, so it checks the run only
            commands.append(["eval", str(copy), "--episodes", "4", "--max-steps", "50",
                             "--probe-per-context", "8", "--quiet"])
        for command in commands:
            result = run_cli(*command)
            assert result.returncode == 2, (command, result.stderr[-2000:])
            assert "does not match its manifest" in result.stderr
            assert f"{target}: checksum differs" in result.stderr
        assert not (tmp_path / "data").exists() and not (tmp_path / "llc").exists()


def test_recurrent_ppo_trains(tmp_path):
    config = make_config("smoke", memory=4, num_minibatches=2)
    run_dir = train(config, tmp_path / "rnn")
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert np.isfinite(metrics[["actor_loss", "value_loss", "entropy"]].to_numpy()).all()
    first, last = list_checkpoints(run_dir)[0][1], list_checkpoints(run_dir)[-1][1]
    p0, p1 = load_params(first), load_params(last)
    assert p0["params"]["memory"]["GRUCell_0"]["hr"]["kernel"].shape == (4, 4)
    assert not np.array_equal(p0["params"]["memory"]["GRUCell_0"]["hr"]["kernel"],
                              p1["params"]["memory"]["GRUCell_0"]["hr"]["kernel"])


def test_eval_writes_behaviour_tables(smoke_runs):
    result = run_cli("eval", str(smoke_runs), "--episodes", "4", "--max-steps", "50",
                     "--probe-per-context", "8", "--quiet")
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        out = smoke_run(smoke_runs, seed) / "behaviour"
        checkpoints = [u for u, _ in list_checkpoints(smoke_run(smoke_runs, seed))]
        episodes = pd.read_parquet(out / "episodes.parquet")
        assert len(episodes) == 4 * len(checkpoints)
        assert set(episodes["update"]) == set(checkpoints)
        assert (episodes["episode_length"] <= 50).all()
        assert (episodes["plants_placed"] <= episodes["place_attempts"]).all()
        assert episodes.loc[episodes["truncated"], "episode_length"].eq(50).all()
        policy = pd.read_parquet(out / "probe_policy.parquet")
        assert len(policy) == len(CONTEXTS) * len(checkpoints)
        assert set(policy["context"]) == set(CONTEXTS)
        probs = policy[[f"p_{a}" for a in ACTION_NAMES]].dropna()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert verify_manifest(out) == []
    again = run_cli("eval", str(smoke_runs), "--episodes", "5", "--quiet")
    assert again.returncode == 2 and "evaluated with other settings" in again.stderr


def test_export_makes_a_compact_verified_data_folder(smoke_runs, tmp_path):
    # Same settings as the eval test, so finished parts are reused when it ran first.
    result = run_cli("eval", str(smoke_runs), "--episodes", "4", "--max-steps", "50",
                     "--probe-per-context", "8", "--quiet")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data" / "craftax-smoke"
    result = run_cli("export", str(smoke_runs), "--out", str(out), "--checkpoints", "3")
    assert result.returncode == 0, result.stderr
    assert verify_manifest(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["seed"] for r in manifest["runs"]] == [0, 1]
    assert all(r["complete"] for r in manifest["runs"])
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert manifest["rows"]["metrics"] == len(metrics) == 2 * make_config("smoke").num_updates
    for run in manifest["runs"]:
        kept = run["exported_checkpoints"]
        assert len(kept) == 3 and kept[0] == 0 and kept[-1] == make_config("smoke").num_updates
        for update in kept:
            with np.load(out / "checkpoints" / f"seed_{run['seed']}" /
                         f"params_{update:06d}.npz") as data:
                assert data.files and all(data[k].dtype == np.float16 for k in data.files)
                assert all(k.startswith("params/actor") for k in data.files)
    (out / "metrics.parquet").write_bytes(b"tampered")
    assert run_cli("verify", str(out)).returncode == 1
