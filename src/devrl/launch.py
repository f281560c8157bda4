"""Run several seeds, one process per seed, under a watchdog.

Why processes: vmapping the whole training over seeds deadlocked intermittently on this CPU
(jax 0.10.2), while single-seed processes never did; separate processes also keep one seed's
failure from taking the others down. The watchdog reads each run's `progress.json` heartbeat
(written after compilation and after every checkpoint chunk); a process that exits with an error,
or whose heartbeat is older than `stall_timeout` seconds, is killed and restarted, which resumes
from its last complete checkpoint. After `max_restarts` restarts of one seed the launcher gives up
and says so (exit status 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devrl.config import TrainConfig
from devrl.runs import prepare_run_dir, read_progress


def run_dir_for(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


@dataclass
class Job:
    config: TrainConfig
    run_dir: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    finished: bool = False
    log: list[str] = field(default_factory=list)


def _child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen=false "
                            f"intra_op_parallelism_threads={threads}").strip()
    return env


def _start(job: Job, threads: int | None) -> None:
    command = [sys.executable, "-m", "devrl.cli", "train-one", "--out", str(job.run_dir),
               "--config-json", json.dumps(job.config.to_dict())]
    with open(job.run_dir / "train.log", "ab") as log:
        job.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=_child_env(threads), start_new_session=True)
    job.started = time.time()


def _kill(job: Job) -> None:
    if job.process and job.process.poll() is None:
        try:
            os.killpg(job.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        job.process.wait()


def train_seeds(configs: list[TrainConfig], out: Path, jobs: int = 1,
                stall_timeout: float = 900.0, max_restarts: int = 3,
                threads_per_run: int | None = None, show_progress: bool = True,
                poll_seconds: float = 2.0) -> int:
    """Train every config (one seed each) under `out/seed_N`; 0 when all completed, else 1."""
    pending = []
    for config in configs:
        run_dir = run_dir_for(out, config.seed)
        prepare_run_dir(config, run_dir)  # bad configs fail here, before anything runs
        pending.append(Job(config, run_dir))
    bars = {}
    if show_progress:
        from tqdm import tqdm

        for i, job in enumerate(pending):
            bars[job.config.seed] = tqdm(total=job.config.num_updates, position=i,
                                         desc=f"seed {job.config.seed}", unit="upd",
                                         dynamic_ncols=True, leave=True)
    running: list[Job] = []
    done: list[Job] = []
    failed: list[Job] = []

    def say(message: str) -> None:
        if show_progress:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)  # run the cleanup below: no orphaned trainers

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                status = read_progress(job.run_dir)
                if status and status.get("status") == "complete":
                    done.append(job)
                    continue
                _start(job, threads_per_run)
                running.append(job)
            time.sleep(poll_seconds)
            for job in list(running):
                progress = read_progress(job.run_dir) or {}
                beat = max(progress.get("time", 0.0), job.started)
                code = job.process.poll()
                bar = bars.get(job.config.seed)
                if bar is not None and progress.get("update") is not None:
                    bar.n = progress["update"]
                    bar.set_postfix(env_steps=progress.get("env_steps"),
                                    sps=round(progress.get("sps", 0.0)),
                                    ret=round(progress.get("return", 0.0), 2),
                                    plants=round(progress.get("plants_placed", 0.0), 2))
                if code == 0 and progress.get("status") == "complete":
                    running.remove(job)
                    done.append(job)
                    continue
                if code is None and time.time() - beat < stall_timeout:
                    continue
                reason = (f"exited with status {code}" if code is not None else
                          f"made no progress for {stall_timeout:.0f} s (stalled)")
                _kill(job)
                running.remove(job)
                if job.restarts >= max_restarts:
                    say(f"seed {job.config.seed}: {reason}; gave up after {job.restarts} "
                        f"restarts (see {job.run_dir / 'train.log'})")
                    failed.append(job)
                    continue
                job.restarts += 1
                say(f"seed {job.config.seed}: {reason}; restarting from the last checkpoint "
                    f"(restart {job.restarts} of {max_restarts})")
                pending.insert(0, job)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for job in running:
            _kill(job)
        for bar in bars.values():
            bar.close()
    return 1 if failed else 0
