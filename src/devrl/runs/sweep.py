"""Sweeps: a grid of configs x seeds, each (config, seed) one ordinary run directory, trained as
Ray tasks on one machine or a cluster. This is the one mechanism for several runs: `devrl train
--seeds 0 1 2` is a sweep over seeds.

Layout of a sweep directory::

    sweep.json                  the sweep manifest: every run ever submitted here (name, config,
                                grid values, seed) and each submission's grid
    state.json                  the driver's view: pid and host, each run's status and restarts
    <point hash>/seed_<N>/      one run directory per (config, seed) (see devrl.runs.rundir)

Ray and JAX. The driver never imports JAX, and each Ray task runs its training as a child process
(`devrl train-one`), not inside the Ray worker. Reasons: XLA fixes its thread pool and flags when
JAX first initialises, so a reused worker could not train runs with other settings; a hung XLA
computation (a deadlock seen on this CPU) can only be ended by killing a process, which the task's
watchdog does without losing its worker; and the trainer stays an ordinary process that can be
rerun by hand. The trainer asks the kernel to kill it when its task's worker dies (Linux
PR_SET_PDEATHSIG), so no trainer outlives its launcher: killing the driver stops a local Ray
instance and with it the workers, and on a cluster Ray kills the workers of a driver that died.

Failures. A task whose worker dies (SIGKILL, OOM killer, lost node), whose trainer exits with an
error, or whose trainer's heartbeat (`progress.json`) stops for `stall_timeout` seconds is
resubmitted and resumes from its last checkpoint, up to `max_restarts` times; then the sweep gives
up on it loudly (exit status 1). A permanent error (exit status 2: a config or data problem, a
run directory held by another live process) is reported at once and not retried.

Threads and accelerators. Where Ray sees no GPU each run reserves `threads_per_run` CPUs and its
trainer is pinned to that many cores of its node (XLA sizes its CPU thread pool by the CPUs a
process may run on; results are bitwise reproducible for a fixed count). Where Ray sees GPUs each
run reserves 1/`runs_per_gpu` (default 1) of one; with several runs per GPU, JAX's preallocation
is turned off and each gets that fraction of the GPU's memory. A request that Ray could never
place is refused before anything queues: more threads per run than the local instance's CPUs
(checked by the command line before Ray starts), `runs_per_gpu` where Ray sees no GPU.

Signals. SIGTERM and SIGHUP of the driver are noted and acted on between Ray calls, within
`poll_seconds` (raised inside `ray.wait`, which checks signals, any exception but
KeyboardInterrupt becomes a SystemError: exit status 1 and a traceback). The driver then raises
what the caller's own handler raises (the command line's SIGTERM: exit 143 with its message), else
SystemExit(128 + the signal), and so leaves through its `finally`: Ray shuts down and its local
instance's processes end.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devrl.core.base import ConfigError, atomic_write_json
from devrl.core.config import SCALE_COST, SCALE_SEEDS, SCALES, TrainConfig, check_type, make_config
from devrl.runs.rundir import (
    check_verified,
    now,
    package_versions,
    prepare_run_dir,
    read_progress,
    verify_manifest,
)

SPEC_KEYS = ("scale", "seeds", "grid")
EXIT_PERMANENT = 2  # the trainer's status for a ConfigError: retrying cannot help
# The sweep files shipped with the package (src/devrl/sweeps/): each study's, per scale.
SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


# ---------------------------------------------------------------- the grid
@dataclass(frozen=True)
class SweepSpec:
    """A scale, overrides of which each may be a list (the grid's axes), and seeds."""

    scale: str
    grid: dict[str, tuple] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()

    def points(self) -> list[dict[str, Any]]:
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*self.grid.values())]

    def configs(self) -> list[tuple[dict[str, Any], TrainConfig]]:
        """(grid values, config) of every run, seed by seed (every point of the first seed, then
        of the next): runs start in this order, so a sweep stopped early holds whole seeds."""
        return [(point, make_config(self.scale, **point, seed=seed))
                for seed in self.seeds for point in self.points()]

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "grid": {k: list(v) for k, v in self.grid.items()},
                "seeds": list(self.seeds)}


def make_spec(scale: Any, grid: Any = None, seeds: Any = None) -> SweepSpec:
    """A validated SweepSpec; every value is type-checked as a flag is (ConfigError otherwise)."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    grid = {} if grid is None else grid
    if not isinstance(grid, dict):
        raise ConfigError(f"grid={grid!r} is not allowed: must be a mapping of parameter names "
                          "to a value or a list of values")
    axes = {}
    for name, values in grid.items():
        if name == "seed":
            raise ConfigError("grid parameter 'seed' is not allowed: give seeds as `seeds`")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"{name}=[] is not allowed: give at least one value")
        typed_values = tuple(check_type(name, v) for v in values)
        if len(set(typed_values)) != len(typed_values):
            raise ConfigError(f"{name}={values} is not allowed: values must be distinct")
        axes[name] = typed_values
    seeds = list(SCALE_SEEDS[scale]) if seeds is None else seeds
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"seeds={seeds!r} is not allowed: must be a non-empty list of distinct "
                          "integers >= 0")
    spec = SweepSpec(scale, axes, tuple(seeds))
    spec.configs()  # every point must make a valid config, before anything runs
    return spec


def load_spec(path: Path) -> SweepSpec:
    """A sweep file: YAML (.yaml, .yml) or JSON (.json) with keys scale, grid, seeds."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec={str(path)!r} is not allowed: must be an existing YAML or JSON "
                          "file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"spec={str(path)!r} is not allowed: the file must end in .yaml, "
                              ".yml or .json")
    except ConfigError:
        raise
    except Exception as error:  # yaml.YAMLError or json.JSONDecodeError
        raise ConfigError(f"spec={str(path)!r} is not valid {path.suffix[1:].upper()}: "
                          f"{error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"spec={str(path)!r} is not allowed: must hold a mapping with keys "
                          f"{', '.join(SPEC_KEYS)}")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"spec key(s) {', '.join(unknown)} not allowed: allowed are "
                          f"{', '.join(SPEC_KEYS)}")
    return make_spec(data.get("scale", "cpu"), data.get("grid"), data.get("seeds"))


def run_name(config: TrainConfig) -> str:
    """The run directory of `config` inside a sweep: `<point hash>/seed_<N>`."""
    return f"{config.point_hash()}/seed_{config.seed}"


def run_dir_for(sweep_dir: Path, config: TrainConfig) -> Path:
    return Path(sweep_dir) / run_name(config)


# ---------------------------------------------------------------- sweep manifest and state
def register(spec: SweepSpec, sweep_dir: Path) -> list[dict[str, Any]]:
    """Create every run directory of `spec` (checking existing ones) and add the runs to the
    sweep manifest. Returns the runs of this submission."""
    sweep_dir = Path(sweep_dir)
    runs = []
    for point, config in spec.configs():
        prepare_run_dir(config, run_dir_for(sweep_dir, config))  # bad configs fail here
        runs.append({"name": run_name(config), "seed": config.seed, "grid": point,
                     "config_hash": config.config_hash(), "config": config.to_dict()})
    manifest = read_sweep(sweep_dir) if (sweep_dir / "sweep.json").exists() else {
        "what": "devrl sweep: one run directory per (config, seed)", "created": now(),
        "runs": [], "submissions": []}
    known = {r["name"] for r in manifest["runs"]}
    manifest["runs"] += [r for r in runs if r["name"] not in known]
    manifest["submissions"].append({**spec.to_dict(), "submitted": now(),
                                    "versions": package_versions()})
    atomic_write_json(sweep_dir / "sweep.json", manifest)
    return runs


def read_sweep(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "sweep.json"
    if not path.exists():
        raise ConfigError(f"sweep={str(sweep_dir)!r} is not allowed: no sweep.json there (not a "
                          "sweep directory)")
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest["runs"], list) and isinstance(manifest["submissions"], list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ConfigError(f"{path}: malformed sweep manifest") from None
    return manifest


def run_finished(run_dir: Path) -> bool:
    """Whether the run verifies against a complete manifest (a corrupt one raises)."""
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return False
    problems = verify_manifest(run_dir)
    if any(p.kind != "interrupted" for p in problems):
        check_verified(run_dir, "run")  # raises, naming the files that do not match
    return not problems and bool(json.loads(path.read_text()).get("complete"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_status(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each run's status: done, running, queued (waiting for a free CPU or GPU), failed,
    interrupted (rerun to resume) or pending (not started)."""
    sweep_dir = Path(sweep_dir)
    manifest = read_sweep(sweep_dir)
    try:
        state = json.loads((sweep_dir / "state.json").read_text())
    except (OSError, ValueError):
        state = {"driver": {}, "runs": {}}
    driver = state.get("driver", {})
    live = (driver.get("host") == platform.node() and pid_alive(driver.get("pid", -1))
            and time.time() - driver.get("updated", 0) < 120)
    rows = []
    for run in manifest["runs"]:
        run_dir = sweep_dir / run["name"]
        config = TrainConfig(**run["config"])
        progress = read_progress(run_dir) or {}
        try:
            stored = json.loads((run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            stored = {}
        updates = max(int(stored.get("updates_done") or 0), int(progress.get("update") or 0))
        known = state.get("runs", {}).get(run["name"], {})
        if stored.get("complete") and not stored.get("pending"):
            status = "done"
        elif known.get("status") in ("failed", "gave up"):
            status = "failed"
        elif live and known.get("status") in ("running", "queued"):
            status = known["status"]
        elif updates:
            status = "interrupted"
        else:
            status = "pending"
        rows.append({"run": run["name"], "grid": run["grid"], "seed": run["seed"],
                     "status": status, "updates": updates, "num_updates": config.num_updates,
                     "env_steps": updates * config.steps_per_update,
                     "total_env_steps": config.num_updates * config.steps_per_update,
                     "sps": progress.get("sps"), "restarts": known.get("restarts", 0),
                     "node": known.get("node", ""), "reason": known.get("reason", "")})
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    counts = {s: sum(r["status"] == s for r in rows)
              for s in ("done", "running", "queued", "interrupted", "pending", "failed")}
    steps = sum(r["env_steps"] for r in rows)
    total = sum(r["total_env_steps"] for r in rows)
    lines = [f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
             f"; env steps {steps:,} of {total:,}"]
    for r in rows:
        grid = " ".join(f"{k}={v}" for k, v in r["grid"].items()) or "-"
        note = {"interrupted": "rerun the sweep to resume", "failed": r["reason"]}.get(
            r["status"], "")
        lines.append(f"  {r['run']:<24} {grid:<28} {r['status']:<11} "
                     f"update {r['updates']}/{r['num_updates']}"
                     + (f"  restarts {r['restarts']}" if r["restarts"] else "")
                     + (f"  on {r['node']}" if r["node"] else "") + (f"  {note}" if note else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------- the Ray task
def cpu_slot_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"devrl-cpu-slots-{os.getuid()}"


def claim_cpus(threads: int, poll: float = 1.0):
    """Claim `threads` cores of this node for one trainer: (cores, held lock file).

    Slots are flock'ed files in the node's temp folder, so the kernel frees a slot when its task
    dies; a task that finds every slot taken (another sweep on the node) waits for one."""
    allowed = sorted(os.sched_getaffinity(0))
    slots = max(1, len(allowed) // threads)
    folder = cpu_slot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(slots):
            handle = open(folder / f"slot_{k}_of_{slots}x{threads}", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return allowed[k * threads:(k + 1) * threads] or allowed, handle
        time.sleep(poll)


def become_trainer(parent_pid: int | None, cpus: str | None) -> None:
    """Set up a `devrl train-one` process before JAX initialises: die with the task that started
    it (Linux PR_SET_PDEATHSIG), and run on the cores it was given."""
    if parent_pid is not None:
        if sys.platform.startswith("linux"):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent_pid:  # the parent died before the line above took effect
            raise SystemExit(f"train-one: parent {parent_pid} is gone; not training")
    if cpus:
        try:
            chosen = {int(c) for c in cpus.split(",")}
            os.sched_setaffinity(0, chosen)
        except (ValueError, OSError) as error:
            raise ConfigError(f"cpus={cpus!r} is not allowed: must be a comma-separated list of "
                              f"this machine's CPUs {sorted(os.sched_getaffinity(0))} "
                              f"({error})") from None


def xla_cache_dir() -> Path:
    return Path.home() / ".cache" / "devrl" / "xla-cache"


def child_env(gpu_fraction: float | None) -> dict[str, str]:
    """The trainer's environment: JAX's persistent compilation cache (every seed of a config,
    and every resume, runs the same program: compiled once per node; the executables are the
    same, so results are too), and on a shared GPU no preallocation and its share of memory."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(xla_cache_dir()))
    if gpu_fraction is not None and gpu_fraction < 1:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpu_fraction:.3f}"
    return env


def last_error(log_path: Path, limit: int = 4000) -> str:
    """The trainer's last words: its final non-empty line of `train.log` (the error message)."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit))
            lines = [x.strip() for x in handle.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [x for x in lines if x]
    return lines[-1] if lines else ""


def train_task(config: dict[str, Any], run_dir: str, threads: int | None,
               gpu_fraction: float | None, stall_timeout: float, poll: float = 1.0
               ) -> dict[str, Any]:
    """One attempt at one run, inside a Ray worker: train it in a child process under a watchdog.

    Returns {"status": complete | stalled | failed, ...}; the driver decides about retries."""
    run_dir_path = Path(run_dir)
    node = platform.node()
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests call this directly)
        node_id = ""
    slot = None
    cpus = None
    if threads:
        cpus, slot = claim_cpus(threads)
    command = [sys.executable, "-m", "devrl.cli", "train-one", "--out", run_dir,
               "--config-json", json.dumps(config), "--parent-pid", str(os.getpid())]
    if cpus is not None:
        command += ["--cpus", ",".join(map(str, cpus))]
    started = time.time()
    try:
        with open(run_dir_path / "train.log", "ab") as log:
            log.write(f"--- {now()} attempt on {node} (pid {os.getpid()})\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=child_env(gpu_fraction))
        atomic_write_json(run_dir_path / "task.json",
                          {"host": node, "node_id": node_id, "worker_pid": os.getpid(),
                           "trainer_pid": process.pid, "cpus": cpus, "started": started})
        info = {"node": node, "node_id": node_id}
        while True:
            try:
                code = process.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            progress = read_progress(run_dir_path) or {}
            beat = progress.get("time", 0.0) if progress.get("pid") == process.pid else 0.0
            if time.time() - max(beat, started) > stall_timeout:
                process.kill()
                process.wait()
                return {**info, "status": "stalled",
                        "reason": f"made no progress for {stall_timeout:.0f} s (stalled)"}
        progress = read_progress(run_dir_path) or {}
        if code == 0 and progress.get("status") == "complete":
            return {**info, "status": "complete"}
        said = last_error(run_dir_path / "train.log")
        return {**info, "status": "failed", "code": code,
                "reason": f"trainer exited with status {code}: {said}"}
    finally:
        if slot is not None:
            slot.close()


# ---------------------------------------------------------------- the driver
@dataclass
class RunState:
    name: str
    config: TrainConfig
    run_dir: Path
    status: str = "pending"
    restarts: int = 0
    reason: str = ""
    node: str = ""
    submitted: float = 0.0

    def shown(self) -> str:
        """`running` once this attempt's task has started (its task.json), else `queued`."""
        if self.status != "running":
            return self.status
        try:
            started = json.loads((self.run_dir / "task.json").read_text())["started"]
        except (OSError, ValueError, KeyError):
            return "queued"
        return "running" if started >= self.submitted else "queued"


def task_options(resources: dict[str, float], threads_per_run: int, runs_per_gpu: int | None
                 ) -> tuple[dict[str, Any], int | None, float | None]:
    """Ray options of each run's task, the CPUs to pin its trainer to, its GPU fraction.
    `runs_per_gpu` asks for GPUs (None: use them where Ray sees some, else the CPUs)."""
    gpus = resources.get("GPU", 0)
    if runs_per_gpu is not None and gpus < 1:
        raise ConfigError(f"runs_per_gpu={runs_per_gpu} is not allowed: Ray sees no GPU here "
                          f"({resources.get('CPU', 0):g} CPUs, {gpus:g} GPUs), so there is none "
                          "to share; leave it out to train on the CPUs")
    if gpus >= 1:
        fraction = 1.0 / (runs_per_gpu or 1)
        return {"num_cpus": 1, "num_gpus": fraction, "max_retries": 0}, None, fraction
    return {"num_cpus": threads_per_run, "max_retries": 0}, threads_per_run, None


def start_ray(address: str | None, num_cpus: int | None):
    """Join the cluster at `address`, or start a local Ray instance sized to this machine: a
    private one (address "local"), never a cluster that RAY_ADDRESS or `ray start` names."""
    import logging

    import ray

    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
        # `ray start --head` makes a token-authenticated cluster; a driver finds the token in
        # ~/.ray/auth_token (copied there on every node) or RAY_AUTH_TOKEN once token mode is on.
        if os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus or len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as error:
        if not address:
            raise
        raise ConfigError(f"address={address!r} is not allowed: no Ray cluster this driver may "
                          f"join answers there ({type(error).__name__}: {str(error)[:300]}); "
                          "start one with `ray start --head`, and with token authentication "
                          "set RAY_AUTH_MODE=token and copy ~/.ray/auth_token from the head"
                          ) from None
    finally:
        signal.signal(signal.SIGTERM, handler)  # ray.init puts its own in place (exit status 15)
    return ray, time.perf_counter() - t0


def run_sweep(spec: SweepSpec, sweep_dir: Path, address: str | None = None,
              threads_per_run: int = 1, runs_per_gpu: int | None = None,
              num_cpus: int | None = None,
              stall_timeout: float = 900.0, max_restarts: int = 3, show_progress: bool = True,
              poll_seconds: float = 2.0, only: set[str] | None = None) -> int:
    """Train every run of `spec` under `sweep_dir` (with `only`, the runs of those names,
    `run_name`): 0 when all of them are complete, else 1."""
    sweep_dir = Path(sweep_dir)
    names = {run_name(config) for _, config in spec.configs()}
    if only is not None and not set(only) <= names:
        raise ConfigError(f"only={sorted(set(only) - names)} is not allowed: not runs of this "
                          "sweep")
    runs = register(spec, sweep_dir)
    states = {r["name"]: RunState(r["name"], make_config(spec.scale, **r["grid"], seed=r["seed"]),
                                  sweep_dir / r["name"]) for r in runs
              if only is None or r["name"] in only}
    for state in states.values():
        if run_finished(state.run_dir):
            state.status = "done"
    todo = [s for s in states.values() if s.status != "done"]

    def say(message: str) -> None:
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    bar = None
    if not todo:
        print(f"devrl sweep: all {len(states)} runs in {sweep_dir} are finished; nothing to run",
              file=sys.stderr)
        return 0

    signalled: list[int] = []

    def stop(signum, _frame):  # noted only: raised inside ray.wait it would be a SystemError
        signalled.append(signum)

    def stop_if_signalled() -> None:  # leave through the finally below: Ray shuts down
        if signalled:
            signum = signalled[0]
            if callable(previous[signum]):  # the caller's own (the command line: its message)
                previous[signum](signum, None)
            raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    ray = None
    pending_refs: dict[Any, RunState] = {}
    try:
        ray, seconds = start_ray(address, num_cpus)
        stop_if_signalled()
        resources = ray.cluster_resources()
        options, threads, gpu_fraction = task_options(resources, threads_per_run, runs_per_gpu)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        remote = ray.remote(train_task)
        say(f"devrl sweep: {len(todo)} of {len(states)} runs to train on Ray "
            f"({nodes} node{'s' * (nodes != 1)}, {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs; started in {seconds:.1f} s); expected cost of "
            f"a {spec.scale} run: {SCALE_COST[spec.scale]}")

        def submit(state: RunState) -> None:
            ref = remote.options(**options).remote(
                state.config.to_dict(), str(state.run_dir), threads, gpu_fraction,
                stall_timeout)
            state.status = "running"
            state.submitted = time.time()
            pending_refs[ref] = state

        def save_state() -> None:
            atomic_write_json(sweep_dir / "state.json", {
                "driver": {"pid": os.getpid(), "host": platform.node(), "updated": time.time(),
                           "address": address or "local"},
                "runs": {s.name: {"status": s.shown(), "restarts": s.restarts,
                                  "reason": s.reason, "node": s.node}
                         for s in states.values()}})

        for state in todo:
            submit(state)
        save_state()
        total = sum(s.config.num_updates * s.config.steps_per_update for s in states.values())
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=_steps_done(states), desc="sweep", unit="step",
                       unit_scale=True, dynamic_ncols=True, file=sys.stderr)
        while pending_refs:
            ready, _ = ray.wait(list(pending_refs), num_returns=1, timeout=poll_seconds)
            stop_if_signalled()
            for ref in ready:
                state = pending_refs.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as error:  # the task itself raised
                    result = {"status": "failed",
                              "reason": f"its task failed ({str(error.cause)[:300]})"}
                except ray.exceptions.RayError as error:  # worker or node lost
                    kind = type(error).__name__
                    result = {"status": "failed", "reason": f"its Ray worker died ({kind})"}
                state.node = result.get("node", state.node)
                if result["status"] == "complete":
                    state.status = "done"
                    continue
                state.reason = result["reason"]
                if result.get("code") == EXIT_PERMANENT:
                    state.status = "failed"
                    say(f"run {state.name}: {state.reason}; a permanent error, not retried")
                elif state.restarts >= max_restarts:
                    state.status = "gave up"
                    say(f"run {state.name}: {state.reason}; gave up after {state.restarts} "
                        f"restarts (see {state.run_dir / 'train.log'})")
                else:
                    state.restarts += 1
                    say(f"run {state.name}: {state.reason}; restarting from the last "
                        f"checkpoint (restart {state.restarts} of {max_restarts})")
                    submit(state)
            save_state()
            if bar is not None:
                counts = {k: sum(s.shown() == k for s in states.values())
                          for k in ("done", "running", "queued", "failed", "gave up")}
                bar.n = _steps_done(states)
                bar.set_postfix_str(f"runs done {counts['done']} running {counts['running']} "
                                    f"queued {counts['queued']} "
                                    f"failed {counts['failed'] + counts['gave up']}",
                                    refresh=False)
                bar.refresh()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if bar is not None:
            bar.close()
        if ray is not None:
            for ref in pending_refs:
                ray.cancel(ref, force=True)  # on a cluster: stop this sweep's workers too
            local = [] if address else descendants(os.getpid())
            ray.shutdown()
            # Ray 2.60 leaves a local instance's dashboard and runtime-env agents running
            # after shutdown (their raylet is gone); they are this driver's, so end them.
            for pid in local:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    failed = [s for s in states.values() if s.status != "done"]
    if failed:
        print(f"devrl sweep: {len(failed)} of {len(states)} runs did not complete: "
              + ", ".join(s.name for s in failed) + f" (devrl sweep status {sweep_dir})",
              file=sys.stderr)
    return 1 if failed else 0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _steps_done(states: dict[str, RunState]) -> int:
    steps = 0
    for state in states.values():
        progress = read_progress(state.run_dir) or {}
        update = progress.get("update") or 0
        if state.status == "done":
            update = state.config.num_updates
        steps += int(update) * state.config.steps_per_update
    return steps
