"""The credit-routing toy: its update is REINFORCE split by source, and its two limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from devrl.core.base import ConfigError
from devrl.toys import credit as cr

TASK = cr.CreditTask()


def test_shared_credit_is_plain_reinforce_and_routing_masks_regions():
    key = jax.random.PRNGKey(0)
    params = cr.init_params(TASK, key)
    x, present = cr.contexts(TASK, jax.random.PRNGKey(1), 64)
    actions = jax.random.categorical(jax.random.PRNGKey(2), cr.logits(params, x))
    paid = cr.source_rewards(TASK, present, actions)

    def logp(p):
        return jax.nn.log_softmax(cr.logits(p, x))[jnp.arange(64), actions]

    plain = jax.grad(lambda p: jnp.mean(logp(p) * paid.sum(1)))(params)
    shared = cr.routed_update(TASK, params, x, actions, paid, routing=0.0)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(shared)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Fully routed: region j's parameters move by source j's gradient only.
    routed = cr.routed_update(TASK, params, x, actions, paid, routing=1.0)
    grads = cr.source_gradients(TASK, params, x, actions, paid)
    region = cr.region_of(TASK)
    for j in range(TASK.sources):
        units = region == j
        np.testing.assert_allclose(routed["w1"][:, units], grads[j]["w1"][:, units], atol=1e-7)
        np.testing.assert_allclose(routed["w2"][units], grads[j]["w2"][units], atol=1e-7)


def values(routing, seeds=4):
    out = []
    for seed in range(seeds):
        trained = cr.train(TASK, routing, jax.random.PRNGKey(seed))
        out.append(cr.value_matrix(TASK, trained["final"], trained["init"]))
    return np.array(out)


def test_fully_routed_regions_value_only_their_own_source():
    v = values(1.0)
    own = np.einsum("sjj->sj", v)
    off = v[:, ~np.eye(TASK.sources, dtype=bool)]
    assert (own > 0.2).all()  # each region alone goes for its own source
    assert (off < 0.02).all()  # and for no other more than it did untrained
    assert all(cr.specialisation(m) == pytest.approx(1.0) for m in v)


def test_fully_shared_regions_have_no_value_of_their_own():
    v = values(0.0)
    off = v[:, ~np.eye(TASK.sources, dtype=bool)]
    assert (off > 0.05).all() and off.mean() > 0.3  # every region alone goes for every source
    assert abs(np.mean([cr.specialisation(m) for m in v])) < 0.15


def test_bad_routing_is_a_clear_error():
    with pytest.raises(ConfigError, match="routing=1.5"):
        cr.check_routing(1.5)
    with pytest.raises(ConfigError, match="how='both'"):
        cr.value_matrix(TASK, cr.init_params(TASK, jax.random.PRNGKey(0)), how="both")


def test_routing_verdicts_judge_the_limits_on_constructed_values():
    """Constructed value matrices: routed regions that value only their own source pass the
    routed rule, and one region that also values another source fails it; shared regions that
    value every source alike pass the shared rule, and a region that prefers its own fails it."""
    import pandas as pd

    def table(routing, matrix):
        return pd.DataFrame([{"routing": routing, "seed": 0, "region": j, "source": k,
                              "value": matrix[j][k]} for j in range(3) for k in range(3)])

    routed, shared = np.eye(3) * 0.5, np.full((3, 3), 0.3)
    runs = pd.DataFrame({"routing": [0.0, 1.0], "seed": [0, 0], "specialisation": [0.0, 1.0],
                         "predicted": [0.0, 1.0]})
    good = pd.concat([table(1.0, routed), table(0.0, shared)])
    assert cr.routing_verdicts(good, runs) == {"routed": "held", "shared": "held"}
    leaky, partial = routed.copy(), shared.copy()
    leaky[0, 1], partial[2, 2] = 0.1, 0.6
    bad = pd.concat([table(1.0, leaky), table(0.0, partial)])
    assert cr.routing_verdicts(bad, runs) == {"routed": "did not hold", "shared": "did not hold"}
    assert cr.routing_verdicts(table(1.0, routed), runs)["shared"] == "untested"
    summary = cr.routing_summary(runs)
    assert list(summary["routing"]) == [0.0, 1.0] and list(summary["seeds"]) == [1, 1]
