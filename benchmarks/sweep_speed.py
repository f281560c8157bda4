"""Four shortened cpu-scale runs as one sweep (Ray, one core per run) against the same four runs
one after another, and Ray's own start-up time and memory. Run on an otherwise idle machine:

    python benchmarks/sweep_speed.py [--updates 4] [--json benchmarks/results/sweep-cpu.json]

Three ways to train the same four configs (seeds 0-3, cpu scale, `--updates` PPO updates each):
- `sweep`: `devrl sweep --threads-per-run 1`, runs at once = the machine's cores;
- `sequential_1core`: the same trainer command (`devrl train-one`) for each seed in turn, pinned to
  one core: bitwise the same runs as the sweep's;
- `sequential_all_cores`: each seed in turn with every core (the fastest one-at-a-time way; XLA
  reductions then differ in the last bits).
Aggregate env steps/s = all env steps / wall time from the first start to the last finish
(compilation included; each way starts with an empty XLA compilation cache of its own).
Ray's start-up is the median of `--ray-starts` `ray.init()` calls, and
its memory the resident set of every process of an idle local instance.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from devrl.core.config import make_config
from devrl.runs.sweep import run_dir_for


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env)
    return time.perf_counter() - start


def fresh_cache(root: Path, name: str) -> dict[str, str]:
    """Each way starts with an empty XLA compilation cache of its own: each compiles the program
    once per process that misses it, as a first sweep on a new machine does."""
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / f"xla-cache-{name}")}


def trainer(config, out: Path, cpus: str | None) -> list[str]:
    command = [sys.executable, "-m", "devrl.cli", "train-one", "--out", str(out),
               "--config-json", json.dumps(config.to_dict())]
    return command + (["--cpus", cpus] if cpus else [])


def training_sps(run_dirs: list[Path]) -> float:
    """Median over runs of each run's env steps / training seconds (compilation excluded)."""
    rates = []
    for run_dir in run_dirs:
        sps = pd.read_parquet(run_dir / "metrics.parquet")["sps"]
        rates.append(float(len(sps) / (1.0 / sps).sum()))  # steps / seconds, every update equal
    return statistics.median(rates)


def ray_footprint(starts: int) -> dict:

    code = ("import time, ray; t = time.perf_counter(); ray.init(include_dashboard=False, "
            "num_cpus=2); print(time.perf_counter() - t, flush=True); time.sleep(8); "
            "import psutil, os; procs = psutil.Process().children(recursive=True); "
            "print(sum(p.memory_info().rss for p in procs) + psutil.Process().memory_info().rss,"
            " len(procs))")
    seconds, memory, count = [], [], 0
    for _ in range(starts):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        seconds.append(float(out[0]))
        memory.append(int(out[1]))
        count = int(out[2])
    return {"ray_init_seconds_median": statistics.median(seconds),
            "ray_init_seconds": seconds, "ray_idle_rss_mib_median":
            statistics.median(memory) / 2**20, "ray_processes": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--ray-starts", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    base = make_config("cpu")
    steps = base.steps_per_update * args.updates
    seeds = [0, 1, 2, 3]
    configs = [make_config("cpu", total_env_steps=steps, seed=s) for s in seeds]
    total = steps * len(seeds)
    result = {"updates_per_run": args.updates, "env_steps_per_run": steps, "runs": len(seeds),
              "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wall = timed([sys.executable, "-m", "devrl.cli", "sweep", "--scale", "cpu",
                      "--total-env-steps", str(steps), "--seeds", *map(str, seeds),
                      "--threads-per-run", "1", "--quiet", "--out", str(root / "sweep")],
                     fresh_cache(root, "sweep"))
        sweep_dirs = [run_dir_for(root / "sweep", c) for c in configs]
        result["sweep"] = {"wall_seconds": wall, "aggregate_sps": total / wall,
                           "per_run_training_sps_median": training_sps(sweep_dirs)}
        for name, cpus in (("sequential_1core", "0"), ("sequential_all_cores", None)):
            start = time.perf_counter()
            dirs = []
            env = fresh_cache(root, name)
            for config in configs:
                out = root / name / f"seed_{config.seed}"
                subprocess.run(trainer(config, out, cpus), check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                dirs.append(out)
            wall = time.perf_counter() - start
            result[name] = {"wall_seconds": wall, "aggregate_sps": total / wall,
                            "per_run_training_sps_median": training_sps(dirs)}
    for name in ("sequential_1core", "sequential_all_cores"):
        result[f"ratio_sweep_vs_{name}"] = (result["sweep"]["aggregate_sps"]
                                            / result[name]["aggregate_sps"])
    result.update(ray_footprint(args.ray_starts))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
