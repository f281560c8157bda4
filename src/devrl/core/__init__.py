"""What trains an agent: the base every module imports (errors, atomic writes), the run config,
the environments, the networks, PPO and the cue-memory task."""
