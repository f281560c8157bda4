"""PPO in the purejaxrl style: `make_train(config)` closes over the static config and returns pure
functions. A Python driver (`devrl.runs.training`) calls `run_updates` in chunks between
checkpoints; per-update metrics come back as arrays at the end of each chunk (no host callback per
update)."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from devrl.core.config import CUE_ENV, TrainConfig
from devrl.core.envs import BehaviourWrapper, PoolResetVecEnv
from devrl.core.memory_task import CueMemoryVecEnv
from devrl.core.networks import ActorCritic, initial_hidden


class Transition(NamedTuple):
    obs: jax.Array
    reset: jax.Array  # obs is the first of an episode
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array  # the episode ended after this step
    episode: jax.Array  # env.episode_fields of the episode that ended here (valid where done)


@flax.struct.dataclass
class Runner:
    """Everything a run needs to continue: saving this is a complete checkpoint."""

    train_state: TrainState
    env_state: Any
    obs: jax.Array
    reset: jax.Array
    hidden: jax.Array
    rng: jax.Array
    update: jax.Array  # int32: updates completed


def compute_gae(rewards, values, dones, last_value, gamma: float, gae_lambda: float):
    """Generalised advantage estimates over time-major arrays; `dones[t]` ends the episode after t."""
    def step(carry, x):
        gae, next_value = carry
        reward, value, done = x
        not_done = 1.0 - done
        delta = reward + gamma * next_value * not_done - value
        gae = delta + gamma * gae_lambda * not_done * gae
        return (gae, value), gae

    _, advantages = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value),
                                 (rewards, values, dones.astype(jnp.float32)), reverse=True)
    return advantages, advantages + values


def make_network(config: TrainConfig, num_actions: int) -> ActorCritic:
    return ActorCritic(action_dim=num_actions, width=config.width, depth=config.depth,
                       activation=config.activation, memory=config.memory)


def make_env(config: TrainConfig):
    """The vectorised environment of `config` (Craftax, or the cue-memory task)."""
    if config.env_name == CUE_ENV:
        return CueMemoryVecEnv(config.num_envs)
    return PoolResetVecEnv(BehaviourWrapper(config.env_name, config.reward), config.num_envs,
                           config.reset_pool_size)


def replay(network: ActorCritic, params, hidden0: jax.Array, batch: Transition):
    """Logits and values of a stored rollout (sequences [T, b]) under `params`, starting from the
    hidden state the rollout started from and resetting where its episodes started."""
    _, logits, values = network.apply(params, hidden0, batch.obs, batch.reset)
    return logits, values


def split_minibatches(key: jax.Array, hidden0: jax.Array, data: tuple, num_minibatches: int,
                      memory: int):
    """Split a rollout (time-major arrays [T, num_envs, ...]) into minibatches of sequences
    [n, T', b, ...]: feedforward nets shuffle single steps (T' = 1); recurrent nets shuffle whole
    environments (T' = T), each with the hidden state it started the rollout with."""
    n = num_minibatches
    if memory:
        num_envs = hidden0.shape[0]
        perm = jax.random.permutation(key, num_envs)
        hidden0 = hidden0[perm].reshape(n, -1, memory)
        rest = jax.tree.map(
            lambda x: jnp.swapaxes(jnp.take(x, perm, axis=1).reshape(
                (x.shape[0], n, -1) + x.shape[2:]), 0, 1), data)
        return (hidden0,) + rest
    size = data[0].obs.shape[0] * data[0].obs.shape[1]
    perm = jax.random.permutation(key, size)
    rest = jax.tree.map(
        lambda x: x.reshape((size,) + x.shape[2:])[perm].reshape((n, 1, -1) + x.shape[2:]), data)
    return (jnp.zeros((n, size // n, 0), jnp.float32),) + rest


class Trainer(NamedTuple):
    init: Any  # key -> Runner
    run_updates: Any  # (Runner, n) -> (Runner, metrics with leading axis max_chunk)
    network: ActorCritic
    env: PoolResetVecEnv
    metric_names: tuple[str, ...]


def make_train(config: TrainConfig, max_chunk: int, env: PoolResetVecEnv | None = None) -> Trainer:
    """Pure, jitted PPO functions for `config`; `run_updates` runs up to `max_chunk` updates.
    `env` replaces the configured environment (benchmarks use it to time the wrappers)."""
    env = make_env(config) if env is None else env
    env_params = env.default_params
    network = make_network(config, env.num_actions)
    obs_size = env.observation_size()
    num_updates = config.num_updates
    minibatch_updates = config.num_minibatches * config.update_epochs

    def learning_rate(count):
        if not config.anneal_lr:
            return config.lr
        return config.lr * (1.0 - (count // minibatch_updates) / num_updates)

    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                     optax.adam(learning_rate, eps=1e-5))

    def init(key: jax.Array) -> Runner:
        k_net, k_env, k_run = jax.random.split(key, 3)
        hidden = initial_hidden(config.num_envs, config.memory)
        params = network.init(k_net, hidden, jnp.zeros((1, config.num_envs, obs_size)),
                              jnp.zeros((1, config.num_envs), bool))
        train_state = TrainState.create(apply_fn=network.apply, params=params, tx=tx)
        obs, env_state = env.reset(k_env, env_params)
        return Runner(train_state, env_state, obs, jnp.ones((config.num_envs,), bool), hidden,
                      k_run, jnp.zeros((), jnp.int32))

    def rollout(runner: Runner):
        def env_step(carry, _):
            env_state, obs, reset, hidden, rng = carry
            rng, k_action, k_env = jax.random.split(rng, 3)
            hidden, logits, value = network.apply(
                runner.train_state.params, hidden, obs[None], reset[None])
            logits, value = logits[0], value[0]
            action = jax.random.categorical(k_action, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
            next_obs, env_state, reward, done, info = env.step(k_env, env_state, action,
                                                               env_params)
            episode = env.episode_vectors(info)
            transition = Transition(obs, reset, action, log_prob, value, reward, done, episode)
            return (env_state, next_obs, done, hidden, rng), transition

        carry = (runner.env_state, runner.obs, runner.reset, runner.hidden, runner.rng)
        carry, traj = jax.lax.scan(env_step, carry, None, config.num_steps)
        return carry, traj

    def loss_fn(params, hidden0, batch: Transition, advantages, targets):
        logits, values = replay(network, params, hidden0, batch)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, batch.action[..., None], -1)[..., 0]
        ratio = jnp.exp(log_prob - batch.log_prob)
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        actor_loss = -jnp.minimum(
            ratio * adv, jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * adv).mean()
        values_clipped = batch.value + jnp.clip(values - batch.value, -config.clip_eps,
                                                config.clip_eps)
        value_loss = 0.5 * jnp.maximum(jnp.square(values - targets),
                                       jnp.square(values_clipped - targets)).mean()
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
        total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        approx_kl = ((ratio - 1) - jnp.log(ratio)).mean()
        clip_frac = (jnp.abs(ratio - 1) > config.clip_eps).mean()
        log_ratio_max = jax.lax.stop_gradient(jnp.abs(log_prob - batch.log_prob).max())
        return total, (actor_loss, value_loss, entropy, approx_kl, clip_frac, log_ratio_max)

    def update(runner: Runner) -> tuple[Runner, dict]:
        hidden0 = runner.hidden
        (env_state, obs, reset, hidden, rng), traj = rollout(runner)
        _, _, last_value = network.apply(runner.train_state.params, hidden, obs[None], reset[None])
        advantages, targets = compute_gae(traj.reward, traj.value, traj.done, last_value[0],
                                          config.gamma, config.gae_lambda)

        def epoch(carry, _):
            train_state, rng = carry
            rng, key = jax.random.split(rng)
            batches = split_minibatches(key, hidden0, (traj, advantages, targets),
                                        config.num_minibatches, config.memory)

            def minibatch_step(train_state, batch):
                grads, aux = jax.grad(loss_fn, has_aux=True)(train_state.params, *batch)
                return train_state.apply_gradients(grads=grads), aux

            train_state, aux = jax.lax.scan(minibatch_step, train_state, batches)
            return (train_state, rng), aux

        (train_state, rng), aux = jax.lax.scan(epoch, (runner.train_state, rng), None,
                                               config.update_epochs)
        done = traj.done.astype(jnp.float32)
        episodes = done.sum()
        episode_means = (traj.episode * done[..., None]).sum((0, 1)) / jnp.maximum(episodes, 1.0)
        metrics = {
            "actor_loss": aux[0].mean(), "value_loss": aux[1].mean(), "entropy": aux[2].mean(),
            "approx_kl": aux[3].mean(), "clip_frac": aux[4].mean(),
            # Before the first gradient step the replay must reproduce the rollout exactly:
            # the largest |log ratio| over the first minibatch of the first epoch.
            "replay_log_ratio_max": aux[5][0, 0],
            "episodes": episodes, "reward_per_step": traj.reward.mean(),
            **env.state_metrics(env_state),
        }
        metrics.update({name: episode_means[i] for i, name in enumerate(env.episode_fields)})
        new_runner = Runner(train_state, env_state, obs, reset, hidden, rng, runner.update + 1)
        return new_runner, metrics

    metric_shapes = jax.eval_shape(update, jax.eval_shape(init, jax.random.PRNGKey(0)))[1]
    metric_names = tuple(metric_shapes)

    @jax.jit
    def run_updates(runner: Runner, n: jax.Array):
        buffer = {k: jnp.zeros((max_chunk,), jnp.float32) for k in metric_names}

        def body(carry):
            runner, buffer, i = carry
            runner, metrics = update(runner)
            buffer = {k: buffer[k].at[i].set(metrics[k].astype(jnp.float32)) for k in buffer}
            return runner, buffer, i + 1

        runner, buffer, _ = jax.lax.while_loop(lambda c: c[2] < n, body, (runner, buffer, 0))
        return runner, buffer

    return Trainer(jax.jit(init), run_updates, network, env, metric_names)
