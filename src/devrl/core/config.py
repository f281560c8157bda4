"""Run configuration: one frozen dataclass, three scale profiles, validation, a stable hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from devrl.core.base import ConfigError

CRAFTAX_ENV = "Craftax-Classic-Symbolic-v1"
CUE_ENV = "Cue-Memory-v0"  # the known-answer memory task of devrl.core.memory_task
ENV_NAMES = (CRAFTAX_ENV, CUE_ENV)
ACTIVATIONS = ("tanh", "relu")
# Reward structures of Craftax-Classic (devrl.core.envs.REWARD_SPECS says what each pays): the
# game's own, the plant's first placement unrewarded, every successful placement rewarded, and the
# first placement worth 4 achievements.
REWARDS = ("default", "no_plant", "every_plant", "plant_x4")
SCALES = ("smoke", "cpu", "paper")


def loads_strict(text: str, what: str) -> Any:
    """JSON as devrl writes it, and nothing looser: a key repeated in one object (which plain
    JSON keeps silently, the last one winning) and the non-JSON tokens NaN, Infinity and
    -Infinity are refused with a ConfigError naming `what` (a file or a parameter)."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise ConfigError(f"{what} is not allowed: the key {key!r} appears twice in one "
                                  "object")
            seen[key] = value
        return seen

    def constant(token: str) -> Any:
        raise ConfigError(f"{what} is not allowed: {token} is not a JSON number (finite "
                          "numbers only)")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{what} is not valid JSON: {error}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of one PPO run (one seed). Defaults are the cpu scale."""

    env_name: str = CRAFTAX_ENV
    seed: int = 0
    # Environment batch and resets.
    num_envs: int = 256  # parallel environments
    reset_ratio: int = 4  # fresh-world pool holds num_envs // reset_ratio worlds
    total_env_steps: int = 8_000_000
    # Network (separate actor and critic MLPs; optional GRU memory core).
    width: int = 512
    depth: int = 3
    activation: str = "tanh"
    memory: int = 0  # GRU width; 0 = feedforward
    # Reward structure (Craftax only): one of REWARDS.
    reward: str = "default"
    # PPO (Craftax baseline defaults).
    num_steps: int = 64  # rollout length per update
    update_epochs: int = 4
    num_minibatches: int = 8
    lr: float = 2e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.8
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    # Checkpoints: log-spaced from the first update, plus one every `checkpoint_every_updates`.
    log_checkpoints: int = 24
    checkpoint_every_updates: int = 16

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_env_steps // self.steps_per_update

    @property
    def reset_pool_size(self) -> int:
        return self.num_envs // self.reset_ratio

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Stable short hash of every field (key order independent). A field added after runs
        were made (LATER_FIELDS) enters the hash only when it is not at its default, so those
        runs keep their hash and their folder."""
        values = {k: v for k, v in self.to_dict().items()
                  if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def point_hash(self) -> str:
        """Hash of every field but the seed: the grid point a run belongs to (its folder name)."""
        return dataclasses.replace(self, seed=0).config_hash()[:12]

    def validate(self) -> TrainConfig:
        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed: {allowed}")

        if self.env_name not in ENV_NAMES:
            bad("env_name", f"must be one of {', '.join(ENV_NAMES)}")
        if self.reward not in REWARDS:
            bad("reward", f"must be one of {', '.join(REWARDS)}")
        if self.reward != "default" and self.env_name != CRAFTAX_ENV:
            bad("reward", f"must be 'default' for env_name={self.env_name!r} (reward variants "
                f"are defined for {CRAFTAX_ENV})")
        if self.activation not in ACTIVATIONS:
            bad("activation", f"must be one of {', '.join(ACTIVATIONS)}")
        for name in ("num_envs", "reset_ratio", "width", "depth", "num_steps", "update_epochs",
                     "num_minibatches", "total_env_steps", "checkpoint_every_updates"):
            if getattr(self, name) < 1:
                bad(name, "must be a positive integer (>= 1)")
        if self.memory < 0:
            bad("memory", "must be >= 0 (0 = feedforward, otherwise the GRU width)")
        if self.log_checkpoints < 0:
            bad("log_checkpoints", "must be >= 0")
        if self.seed < 0:
            bad("seed", "must be >= 0")
        if self.num_envs % self.reset_ratio:
            bad("reset_ratio", f"must divide num_envs={self.num_envs} "
                f"(divisors: {', '.join(str(d) for d in _divisors(self.num_envs))})")
        if self.total_env_steps < self.steps_per_update:
            bad("total_env_steps", f"must be at least one update: num_envs * num_steps = "
                f"{self.steps_per_update}")
        batch = self.num_envs if self.memory else self.steps_per_update
        unit = "num_envs (recurrent minibatches split environments)" if self.memory else \
            "num_envs * num_steps"
        if batch % self.num_minibatches:
            bad("num_minibatches", f"must divide {unit} = {batch}")
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(field.name, "must be a finite number")
        for name in ("lr", "gamma", "gae_lambda", "clip_eps", "max_grad_norm"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        for name in ("gamma", "gae_lambda"):
            if getattr(self, name) > 1:
                bad(name, "must be in (0, 1]")
        for name in ("ent_coef", "vf_coef"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        return self


# Fields added after committed runs existed, with the default those runs implicitly had.
LATER_FIELDS: dict[str, Any] = {"reward": "default"}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# Scale profiles: overrides of the defaults. cpu = the defaults (the committed data).
SCALE_OVERRIDES: dict[str, dict[str, Any]] = {
    "smoke": {"num_envs": 8, "width": 32, "depth": 2, "num_steps": 16, "num_minibatches": 4,
              "total_env_steps": 8 * 16 * 6, "log_checkpoints": 3,
              "checkpoint_every_updates": 3},
    "cpu": {},
    "paper": {"num_envs": 1024, "total_env_steps": 1_000_000_000, "log_checkpoints": 40,
              "checkpoint_every_updates": 256},
}
# Seeds run at each scale (the cpu data in data/ holds these).
SCALE_SEEDS = {"smoke": (0,), "cpu": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}
# What a run of each scale is expected to cost (measured where a figure is given; see
# benchmarks/results/). `devrl sweep` prints it before it starts.
SCALE_COST = {
    "smoke": "seconds per run (about a minute of compiling on one core the first time)",
    "cpu": "about 80 min per seed on 2 CPU cores (1.6-1.7k env steps/s, "
           "benchmarks/results/throughput-cpu.json)",
    "paper": "1e9 env steps per seed with a 4x wider batch: about a week per seed on 2 CPU "
             "cores; meant for one GPU per run, where its rate has not yet been measured in "
             "this project",
}


FIELD_HELP = {
    "env_name": "environment id",
    "seed": "PRNG seed of the run (network init, worlds, actions)",
    "num_envs": "parallel environments",
    "reset_ratio": "fresh-world pool size is num_envs // reset_ratio (must divide num_envs)",
    "total_env_steps": "environment steps to train for (rounded down to whole updates)",
    "width": "hidden units per MLP layer",
    "depth": "hidden layers of the actor and of the critic MLP",
    "activation": "hidden activation: " + " | ".join(ACTIVATIONS),
    "memory": "GRU memory width; 0 = feedforward",
    "reward": "reward structure (Craftax): " + " | ".join(REWARDS),
    "num_steps": "rollout length per PPO update",
    "update_epochs": "PPO epochs per update",
    "num_minibatches": "minibatches per epoch",
    "lr": "Adam learning rate",
    "anneal_lr": "anneal the learning rate linearly to 0",
    "gamma": "discount factor",
    "gae_lambda": "GAE lambda",
    "clip_eps": "PPO clip range (policy and value)",
    "ent_coef": "entropy bonus coefficient",
    "vf_coef": "value loss coefficient",
    "max_grad_norm": "global gradient-norm clip",
    "log_checkpoints": "number of log-spaced checkpoints from the first update",
    "checkpoint_every_updates": "also checkpoint every this many updates",
}


def field_types() -> dict[str, type]:
    return {f.name: type(f.default) for f in fields(TrainConfig)}


def make_config(scale: str = "cpu", **overrides: Any) -> TrainConfig:
    """The config of `scale`, with `overrides` applied, validated."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    values = {**SCALE_OVERRIDES[scale], **typed(overrides)}
    return TrainConfig(**values).validate()


def check_type(name: str, value: Any) -> Any:
    """`value` as field `name`'s type, or a ConfigError naming the parameter and the type.

    Values from JSON or YAML files pass through here as flags do: a bool must be a bool (not the
    string "no"), an int an integer (8e6 is taken, 8.5 is not), a float any number."""
    types = field_types()
    if name not in types:
        raise ConfigError(f"unknown parameter {name!r}: allowed are {', '.join(types)}")
    return check_kind(name, value, types[name])


# What a number of each type must be, wherever one is given (flags, config and sweep files,
# figure parameters).
NUMBER_RULES: dict[type, str] = {int: "a finite whole number", float: "a finite number"}


def check_kind(name: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (bool, int, float or str), or a ConfigError naming parameter `name`:
    the one check of a value's type for every parameter devrl takes. A float is any finite
    number; an int a whole one (8e6 is 8000000, 8.5 is refused); a bool only a bool."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and number and (isinstance(value, int)
                                   or (math.isfinite(value) and value.is_integer())):
        return int(value)
    if kind is float and number and math.isfinite(_as_float(value)):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    allowed = "true or false" if kind is bool else f"of type {kind.__name__}" + (
        f" ({NUMBER_RULES[kind]})" if kind in NUMBER_RULES else "")
    raise ConfigError(f"{name}={value!r} is not allowed: must be {allowed}")


def _as_float(value: float) -> float:
    """`value` as a float; an integer too large for one is infinite (not an OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def typed(values: dict[str, Any]) -> dict[str, Any]:
    return {name: check_type(name, value) for name, value in values.items()}


def coerce(name: str, text: str) -> Any:
    """Parse a command-line value for field `name` into the field's type, with a clear error."""
    types = field_types()
    if name not in types:
        raise ConfigError(f"unknown parameter {name!r}: allowed are {', '.join(types)}")
    kind = types[name]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            value = float(text) if any(c in text.lower() for c in "e.") else int(text)
            return check_type(name, value)
        if kind is float:
            return check_type(name, float(text))
        return kind(text)
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{name}={text!r} is not allowed: must be of type {kind.__name__}") \
            from None


def config_from_dict(data: Any) -> TrainConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"config={data!r} is not allowed: must be a mapping of parameter names "
                          "to values")
    known = field_types()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}: allowed are "
                          f"{', '.join(known)}")
    return TrainConfig(**typed(data)).validate()
