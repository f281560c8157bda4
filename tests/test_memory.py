"""Recurrent PPO you can trust, and the memory measures on a task whose answers are known.

The cue-memory task (devrl.core.memory_task): a cue shown at t = 0 decides which action pays at
t = DELAY. A recurrent agent can earn 1 per episode, any memoryless agent 0.5; the memory horizon
of a solver is DELAY steps; the cue is decodable from a solver's hidden state and not from the
current observation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import assert_same_run

from devrl.core import ppo
from devrl.core.config import CUE_ENV, make_config
from devrl.core.memory_task import DELAY, CueMemoryVecEnv
from devrl.runs.training import train
from devrl.studies import memory

pytestmark = pytest.mark.slow


def cue_config(memory_width: int, updates: int = 100, **overrides):
    """A small agent on the cue task: 64 envs, 32-step rollouts (episodes of DELAY + 1 = 9 steps
    end in the middle of every rollout)."""
    values = {"env_name": CUE_ENV, "num_envs": 64, "num_steps": 32, "width": 32, "depth": 2,
              "memory": memory_width, "num_minibatches": 4, "total_env_steps": 64 * 32 * updates,
              "lr": 1e-3, "log_checkpoints": 4, "checkpoint_every_updates": 1000}
    return make_config("smoke", **{**values, **overrides})


# ---------------------------------------------------------------- the replay equals the rollout
def replay_log_ratios(updates: int = 4) -> np.ndarray:
    """`replay_log_ratio_max` of each update: the largest |log pi_replay - log pi_rollout| over
    the first minibatch of the first epoch, before any gradient step of that update. The actor's
    output layer is scaled up so that the policy depends strongly on the hidden state."""
    config = cue_config(16, updates=updates)
    trainer = ppo.make_train(config, max_chunk=updates)
    runner = trainer.init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 300.0 if "actor_out" in jax.tree_util.keystr(path) else x * 2.0,
        runner.train_state.params)
    runner = runner.replace(train_state=runner.train_state.replace(params=params))
    _, metrics = trainer.run_updates(runner, updates)
    return np.asarray(metrics["replay_log_ratio_max"])


def ignore_resets(real):
    return lambda network, params, hidden0, batch: real(
        network, params, hidden0, batch._replace(reset=jnp.zeros_like(batch.reset)))


def zero_hidden(real):
    return lambda network, params, hidden0, batch: real(
        network, params, jnp.zeros_like(hidden0), batch)


def unpermuted_hidden(real):
    def split(key, hidden0, data, num_minibatches, memory):
        out = real(key, hidden0, data, num_minibatches, memory)
        return (hidden0.reshape(num_minibatches, -1, memory),) + out[1:]

    return split


def test_replay_reproduces_the_rollout_before_the_first_gradient_step():
    ratios = replay_log_ratios()
    assert ratios.max() < 1e-4, ratios


@pytest.mark.parametrize("target, fault", [
    ("replay", ignore_resets),  # episode starts ignored when the rollout is replayed
    ("replay", zero_hidden),  # the replay feeds the GRU a zero state, not the rollout's
    ("split_minibatches", unpermuted_hidden),  # hidden states not permuted with their envs
])
def test_the_replay_check_catches_each_fault(monkeypatch, target, fault):
    monkeypatch.setattr(ppo, target, fault(getattr(ppo, target)))
    ratios = replay_log_ratios()
    assert ratios.max() > 1e-2, ratios


# ---------------------------------------------------------------- PPO learns; resume is bitwise
def test_ppo_learns_a_contextual_bandit():
    """With DELAY 0 the cue and the go bit come together: a feedforward agent can solve it."""
    config = cue_config(0, updates=40)
    trainer = ppo.make_train(config, max_chunk=40, env=CueMemoryVecEnv(config.num_envs, delay=0))
    _, metrics = trainer.run_updates(trainer.init(jax.random.PRNGKey(0)), 40)
    returns = np.asarray(metrics["episode_return"])
    assert returns[:3].mean() < 0.65 and returns[-5:].mean() > 0.95, returns


def test_recurrent_resume_is_bitwise(tmp_path):
    config = make_config("smoke", memory=4)
    reference = train(config, tmp_path / "reference")
    stopped = train(config, tmp_path / "resumed", stop_after_updates=3)
    train(config, stopped)
    assert_same_run(reference, stopped)


# ---------------------------------------------------------------- the memory task
@pytest.fixture(scope="module")
def cue_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cue")
    return {m: train(cue_config(m), root / f"memory_{m}") for m in (16, 0)}


SETTINGS = {"episodes": 64, "max_steps": 12, "checkpoints": 3, "horizon_samples": 8}


def training_return(run_dir, last: int = 10) -> float:
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    return float(metrics["episode_return"].tail(last).mean())


def test_recurrent_ppo_solves_the_memory_task_and_feedforward_stays_at_chance(cue_runs):
    assert training_return(cue_runs[16]) > 0.95
    assert abs(training_return(cue_runs[0]) - 0.5) < 0.05


def test_memory_measures_find_the_known_answers(cue_runs):
    solver = memory.measure_run(cue_runs[16], SETTINGS)
    last = solver["horizon"]["update"].max()
    horizon = solver["horizon"].groupby("update")["horizon"].first()
    assert horizon[0] == 0  # the untrained policy does not use its memory
    assert horizon[last] == DELAY  # the cue is DELAY steps back at the decision
    final = solver["horizon"][solver["horizon"]["update"] == last].set_index("k")["kl"]
    assert final[DELAY] == 0.0 and (final[final.index < DELAY] > 0.5).all()

    episodes = solver["episodes"][solver["episodes"]["update"] == last]
    returns = episodes.groupby("condition")["episode_return"].mean()
    assert returns["intact"] > 0.95 and returns["ablated"] < 0.7

    probes = memory.selectivity(solver["probes"], by=("update",)).set_index("update")
    assert probes.loc[last, "hidden"] > 0.8
    assert probes.loc[last, "observation"] < 0.05 and probes.loc[last, "untrained"] < 0.3
    assert probes.loc[last, "selectivity"] > 0.5

    control = memory.measure_run(cue_runs[0], SETTINGS)
    assert (control["horizon"]["kl"] == 0).all() and (control["horizon"]["horizon"] == 0).all()
    assert set(control["probes"]["features"]) == {"observation"}
    again = memory.measure_run(cue_runs[16], SETTINGS)  # cached per checkpoint
    pd.testing.assert_frame_equal(again["probes"], solver["probes"])


def test_horizon_of_reads_the_first_k_below_the_fraction():
    curve = pd.DataFrame({"k": [0, 1, 2, 4, 8], "kl": [1.0, 0.9, 0.5, 0.05, 0.0]})
    assert memory.horizon_of(curve) == 4
    assert memory.horizon_of(curve.assign(kl=curve["kl"] * 1e-4)) == 0  # below the floor
    assert memory.horizon_of(curve.assign(kl=[1.0, 1, 1, 1, 1])) == 9  # beyond the grid


def test_recurrent_probe_states_carry_the_history_the_policy_acted_with(tmp_path):
    """Each probe state's window is its episode's history in the rollout that reached it, so the
    checkpoint that ran the rollout, evaluated on the windows, gives back the probabilities it
    acted with; a window cut short (as a zero hidden state a few steps back would be) does not."""
    from devrl.measures.behaviour import collect_probe, make_probe_policy
    from devrl.runs.rundir import list_checkpoints, load_params

    config = make_config("smoke", memory=4)
    run_dir = train(config, tmp_path / "rnn")
    # A barely trained smoke policy is near uniform; scaled up, it depends on its memory.
    params = [jax.tree_util.tree_map_with_path(
        lambda path, x: x * 300.0 if "actor_out" in jax.tree_util.keystr(path) else x * 2.0,
        load_params(path)) for _, path in list_checkpoints(run_dir)[-2:]]
    probe = collect_probe(config, params, per_context=8)
    policy = make_probe_policy(config)
    lengths = probe["first"].shape[1] - np.argmax(probe["first"][:, ::-1], axis=1)
    assert lengths.max() > 8  # some history is longer than the cut below
    cut = 8
    for source, source_params in enumerate(params):
        mask = probe["source"] == source
        assert mask.any()
        probs = np.asarray(policy(source_params, probe["obs"][mask], probe["first"][mask]))
        np.testing.assert_allclose(probs, probe["source_probs"][mask], atol=2e-5)
        short_first = probe["first"][mask][:, -cut:].copy()
        short_first[:, 0] = True
        short = np.asarray(policy(source_params, probe["obs"][mask][:, -cut:], short_first))
        assert np.abs(short - probe["source_probs"][mask]).max() > 1e-3


def test_craftax_variables_remember_a_landmark_out_of_view():
    """Known answer: water two cells below the player is in view (not a probe target); after the
    player moves 10 cells away it is out of view, and the remembered offset is exact."""
    from craftax.craftax_classic.constants import BlockType

    from devrl.core.envs import BehaviourWrapper

    env = BehaviourWrapper()
    _, state = env.reset(jax.random.PRNGKey(0), env.default_params)
    world = state.env_state
    grass = jnp.full_like(world.map, BlockType.GRASS.value)
    player = jnp.array([32, 32], jnp.int32)
    world = world.replace(map=grass.at[34, 32].set(BlockType.WATER.value), player_position=player)
    batch = jax.tree.map(lambda x: x[None], world)
    names = memory.CRAFTAX_VARIABLES
    values, valid, track = memory.craftax_variables(batch, jnp.array([True]), None)
    values, valid, track = memory.craftax_variables(batch, jnp.array([True]), track)
    assert not valid[0, names.index("water_dx")]  # in view now: not a memory target
    moved = jax.tree.map(lambda x: x[None], world.replace(player_position=player + jnp.array([0, 10])))
    values, valid, track = memory.craftax_variables(moved, jnp.array([False]), track)
    got = dict(zip(names, np.asarray(values[0])))
    assert valid[0, names.index("water_dx")] and valid[0, names.index("water_steps")]
    assert (got["water_dx"], got["water_dy"], got["water_steps"]) == (2.0, -10.0, 1.0)
    assert not valid[0, names.index("tree_dx")]  # never seen


# ------------------------------------------------------------------ verdicts of the predictions
def _final(drink: dict[int, list[float]]) -> pd.DataFrame:
    rows = [{"memory": m, "seed": s, "env_steps": 10, "achievement_collect_drink": v,
             "achievement_make_wood_pickaxe": 0.2}
            for m, values in drink.items() for s, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_achievement_verdict_fails_only_where_the_seed_ranges_separate():
    from devrl.studies.memory import achievement_verdict

    overlapping = achievement_verdict(_final({0: [0.25, 0.28, 0.31], 64: [0.30, 0.40, 0.45]}))
    assert overlapping["holds"] and overlapping["word"] == "held"
    apart = achievement_verdict(_final({0: [0.25, 0.28, 0.31], 64: [0.32, 0.40, 0.45]}))
    assert not apart["holds"] and apart["word"] == "did not hold"
    assert apart["exceptions"] == "collect drink at memory 64 (above every control seed)"
    below = achievement_verdict(_final({0: [0.25, 0.28, 0.31], 16: [0.1, 0.2, 0.24]}))
    assert "below every control seed" in below["exceptions"]


def _probes(r2: dict[tuple[str, str], float]) -> pd.DataFrame:
    rows = [{"memory": 16, "seed": s, "update": 5, "env_steps": 10, "variable": v,
             "features": f, "r2": value, "samples": 100, "episodes": 4}
            for (v, f), value in r2.items() for s in (0, 1)]
    return pd.DataFrame(rows)


def test_probes_verdict_is_untestable_where_nothing_decodes():
    from devrl.studies.memory import probes_verdict

    nothing = {(v, f): 0.02 for v in ("water_dx", "steps_since_drink")
               for f in ("hidden", "untrained", "observation")}
    verdict = probes_verdict(_probes(nothing))
    assert verdict["parts"] == {"landmark": "untestable", "drink": "untestable"}
    assert verdict["word"].startswith("cannot be judged")
    decodable = {**nothing, ("water_dx", "untrained"): 0.5, ("water_dx", "hidden"): 0.55}
    verdict = probes_verdict(_probes(decodable))
    assert verdict["parts"] == {"landmark": "held", "drink": "untestable"}
    assert verdict["word"].startswith("held where it could be judged")
    selective = {**decodable, ("water_dx", "hidden"): 0.8}
    assert probes_verdict(_probes(selective))["word"] == "did not hold"
    drink = {**decodable, ("steps_since_drink", "observation"): 0.4,
             ("steps_since_drink", "hidden"): 0.42}
    assert probes_verdict(_probes(drink))["word"] == "held"
