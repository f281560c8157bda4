"""The agent shown: designed stimulus states and the predictions judged on them."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from devrl.core.base import ConfigError
from devrl.core.envs import ACTION_NAMES, PLACE_PLANT, facing_block, plant_context
from devrl.measures import designed_states as ds
from devrl.studies import agent


@pytest.fixture(scope="module")
def batch():
    worlds = ds.base_worlds(3)
    states, index = ds.designed_batch(worlds)
    return worlds, states, index


def test_each_designed_state_isolates_its_plant_context(batch):
    _, states, index = batch
    contexts = np.asarray(jax.vmap(plant_context)(states))
    facing = np.asarray(jax.vmap(facing_block)(states))
    saplings = np.asarray(states.inventory.sapling)
    for d in ds.DESIGNED_STATES:
        rows = (index["state"] == d.name).to_numpy()
        assert (facing[rows] == d.facing).all() and (saplings[rows] == d.saplings).all()
        # plant context 0 (sapling facing grass) is exactly where planting works
        assert ((contexts[rows] == 0) == d.works).all()
    assert not np.asarray(states.zombies.mask).any() and not np.asarray(states.cows.mask).any()


def test_designed_states_of_one_world_differ_only_in_the_context(batch):
    worlds, states, index = batch
    obs = ds.observations(states)
    count = int(worlds.map.shape[0])
    for world in range(count):
        rows = obs[(index["world"] == world).to_numpy()]
        differs = np.flatnonzero((rows != rows[0]).any(axis=0))
        # the faced cell's block one-hot (two entries per changed block) and the sapling count
        assert 0 < len(differs) <= 2 * 3 + 1
    # different worlds differ in far more than that
    assert (obs[0] != obs[1]).sum() > 10


def test_worlds_are_the_same_on_every_call():
    a, b = ds.base_worlds(2), ds.base_worlds(2)
    assert np.array_equal(np.asarray(a.map), np.asarray(b.map))


def test_bad_arguments_are_refused_with_the_allowed_values():
    with pytest.raises(ConfigError, match="count=0"):
        ds.base_worlds(0)
    with pytest.raises(ConfigError, match="block_pixel_size=8 .* 7, 16, 64"):
        ds.render(None, 8)
    with pytest.raises(ConfigError, match="scale='huge'"):
        agent.study_tables("huge", None)


def test_policy_table_reads_place_plant_and_the_top_action():
    index = pd.DataFrame({"state": ["sapling_grass", "no_sapling_grass"], "world": [0, 0]})
    probs = np.full((2, len(ACTION_NAMES)), 0.01)
    probs[0, PLACE_PLANT] = 0.84
    probs[1, 3] = 0.84
    table = ds.policy_table(probs, index)
    assert table["p_place_plant"].tolist() == pytest.approx([0.84, 0.01])
    assert table["top_action"].tolist() == ["place_plant", ACTION_NAMES[3]]
    with pytest.raises(ValueError, match="shape"):
        ds.policy_table(probs[:1], index)


def constructed(grass_last: float, failing_peak: float, failing_last: float,
                seeds=(0, 1)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Policy tables with a known verdict: two worlds, checkpoints 0, 10 (peak) and 20 (last)."""
    rows = []
    for seed in seeds:
        for update in (0, 10, 20):
            for name in ds.NAMES:
                if name == "sapling_grass":
                    p = grass_last if update == 20 else 0.3
                elif name in agent.FAILING:
                    p = {10: failing_peak, 20: failing_last}.get(update, 0.06)
                else:
                    p = 0.05
                for world in (0, 1):
                    rows.append({"seed": seed, "update": update, "env_steps": 100 * update,
                                 "state": name, "world": world,
                                 "p_place_plant": p + (0.01 if world else -0.01)})
    refs = pd.DataFrame([{"seed": s, "reference": r, "update": u} for s in seeds
                         for r, u in (("init", 0), ("peak", 10), ("last", 20))])
    return pd.DataFrame(rows), refs


def test_verdicts_on_constructed_policies_with_known_answers():
    assert agent.verdicts(*constructed(0.5, 0.2, 0.1)) == {"p1": "held", "p2": "held"}
    # the grass state only 1.5 times the largest other (0.2 > 0.1 of the failing ones? no: the
    # failing states are at 0.1 at the last checkpoint, so 0.15 / 0.1 = 1.5 < 2)
    assert agent.verdicts(*constructed(0.15, 0.2, 0.1))["p1"] == "did not hold"
    # no excess at the peak: the failing states' P rises instead of falling
    assert agent.verdicts(*constructed(0.5, 0.1, 0.2))["p2"] == "did not hold"


def test_one_seed_failing_fails_the_prediction():
    policy, refs = constructed(0.5, 0.2, 0.1)
    bad = (policy["seed"] == 1) & (policy["update"] == 20) & policy["state"].isin(agent.FAILING)
    policy.loc[bad, "p_place_plant"] = 0.3  # seed 1: failing states above the peak and near grass
    said = agent.verdicts(policy, refs)
    assert said == {"p1": "did not hold", "p2": "did not hold"}


def test_missing_data_leaves_the_predictions_untested():
    policy, refs = constructed(0.5, 0.2, 0.1)
    no_peak = refs[refs["reference"] != "peak"]
    assert agent.verdicts(policy, no_peak) == {"p1": "held", "p2": "untested"}
    no_state = policy[policy["state"] != "sapling_water"]
    assert agent.verdicts(no_state, refs) == {"p1": "untested", "p2": "untested"}


def film_table(actions: list[str], planted: list[bool] | None = None) -> pd.DataFrame:
    planted = planted or [False] * len(actions)
    return pd.DataFrame({"t": range(len(actions)), "action": actions, "planted": planted})


def test_key_frames_show_the_first_attempts_then_evenly_spaced_steps():
    from devrl.measures.episode_film import key_frames

    actions = ["noop"] * 20
    for t in (3, 5, 9, 11):
        actions[t] = "place_plant"
    assert key_frames(film_table(actions), 3) == [3, 5, 9]
    # two attempts, topped up with the evenly spaced steps 0, 19 (and not 3 or 5 twice)
    assert key_frames(film_table(actions[:10]), 4) == [0, 3, 5, 9]
    assert key_frames(film_table(["noop"] * 5), 3) == [0, 2, 4]
    assert key_frames(film_table(["noop"] * 2), 6) == [0, 1]  # a short episode: all its steps
    with pytest.raises(ConfigError, match="count=0"):
        key_frames(film_table(actions), 0)


def test_captions_say_whether_a_sapling_was_planted():
    from devrl.measures.episode_film import caption

    table = film_table(["place_plant", "place_plant", "do"], [True, False, False])
    assert [caption(r) for _, r in table.iterrows()] == [
        "t = 0: place_plant (planted)", "t = 1: place_plant (nothing)", "t = 2: do"]


def test_a_recorded_episode_is_deterministic_and_its_table_matches_its_states():
    from PIL import Image

    from devrl.core.config import make_config
    from devrl.core.networks import initial_hidden
    from devrl.core.ppo import make_network
    from devrl.measures import episode_film as ef

    config = make_config("smoke")
    network = make_network(config, len(ACTION_NAMES))
    obs = np.zeros((1, 1, 1345), np.float32)
    params = network.init(jax.random.PRNGKey(0), initial_hidden(1, 0), obs,
                          np.ones((1, 1), bool))
    states, table = ef.record_episode(config, params, 25)
    again_states, again = ef.record_episode(config, params, 25)
    pd.testing.assert_frame_equal(table, again)
    assert np.array_equal(np.asarray(states.map), np.asarray(again_states.map))
    assert len(table) == states.map.shape[0] <= 25 and list(table["t"]) == list(range(len(table)))
    assert not table.loc[table["action"] != "place_plant", "planted"].any()
    # the table's context is the context of the state the action was taken in
    contexts = np.asarray(jax.vmap(plant_context)(states))
    assert list(table["context"]) == [("sapling_facing_grass", "sapling_elsewhere",
                                       "no_sapling")[c] for c in contexts]
    frames = ef.annotated_frames(states, table, [0, len(table) - 1], block_pixel_size=7)
    assert len(frames) == 2 and frames[0].dtype == np.uint8 and frames[0].shape[1] == 63
    webp = ef.animation(frames)
    import io
    assert Image.open(io.BytesIO(webp)).n_frames == 2
    with pytest.raises(ConfigError, match="max_steps=0"):
        ef.record_episode(config, params, 0)
