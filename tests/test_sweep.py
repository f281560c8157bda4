"""Sweeps on Ray: a grid of 2 configs x 2 seeds on a two-node Ray cluster started on 127.0.0.1 (as
the README's cluster recipe starts one), a Ray worker killed mid-run, the launcher killed
(SIGKILL, SIGHUP) and rerun, the stall watchdog, giving up loudly, permanent errors not retried.
Every finished run is compared bitwise with an uninterrupted sweep of the same grid.

Runs compared bitwise use the same number of cores per trainer (`--threads-per-run 1`): XLA's
CPU reductions are deterministic for a fixed thread count, not across thread counts."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import assert_same_run, run_cli

from devrl.core.config import make_config
from devrl.runs.rundir import read_progress, verify_manifest
from devrl.runs.sweep import make_spec, run_dir_for, sweep_status

pytestmark = pytest.mark.slow

# Long enough (120 updates) that a run can be caught between its first and its last checkpoint.
# The two configs differ in their checkpoint schedules, not in the compiled program, so the
# session's compilation cache compiles it once for every run here.
BASE = {"total_env_steps": 8 * 16 * 120, "checkpoint_every_updates": 10}
SPEC = make_spec("smoke", {"log_checkpoints": [3, 5], **{k: [v] for k, v in BASE.items()}},
                 [0, 1])
TRAIN_FLAGS = ["--scale", "smoke", "--log-checkpoints", "5", "--total-env-steps",
               str(BASE["total_env_steps"]), "--checkpoint-every-updates",
               str(BASE["checkpoint_every_updates"]), "--threads-per-run", "1", "--quiet"]
DEVRL = [sys.executable, "-m", "devrl.cli"]


def write_spec(folder: Path) -> Path:
    path = folder / "grid.yaml"
    path.write_text("scale: smoke\nseeds: [0, 1]\ngrid:\n  log_checkpoints: [3, 5]\n"
                    f"  total_env_steps: {BASE['total_env_steps']}\n"
                    f"  checkpoint_every_updates: {BASE['checkpoint_every_updates']}\n")
    return path


def wait_for(predicate, timeout: float = 900, what: str = "a condition"):
    deadline = time.time() + timeout  # compiling is slow on a loaded machine
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def training_run(sweep_dir: Path):
    """A run of `sweep_dir` past its first checkpoint and not finished: (run dir, task.json)."""
    for run_dir in sorted(sweep_dir.glob("*/seed_*")):
        progress = read_progress(run_dir) or {}
        task = run_dir / "task.json"
        if (progress.get("status") == "training" and 1 <= progress.get("update", 0)
                < progress["num_updates"] and task.exists()):
            info = json.loads(task.read_text())
            if info["trainer_pid"] == progress["pid"]:
                return run_dir, info
    return None


def gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie has exited; only its parent has not collected it yet
            if Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The grid trained once without interruption, on a local Ray instance."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    spec = write_spec(out.parent)
    result = run_cli("sweep", str(spec), "--out", str(out), "--quiet", timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


RAY = str(Path(sys.executable).with_name("ray"))
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def start_head(workers: int = 0) -> tuple[int, Path]:
    """A Ray head with one CPU on 127.0.0.1 (and `workers` more one-CPU nodes joined to it),
    started with `ray start` as the cluster recipe does: (port, temp dir)."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = ["--num-cpus=1", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1",
                           f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                           *common], env=RAY_ENV, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr[-2000:]
    for _ in range(workers):
        worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common],
                                env=RAY_ENV, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
    return port, temp


def cluster_pids(port: int, temp: Path) -> set[int]:
    """Every process of the Ray cluster started by `start_head` on `port` with session files in
    `temp`: those that name either on their command line (GCS, raylets, monitors, drivers; the
    raylets name the GCS by the machine's address, not 127.0.0.1) and all their descendants
    (workers and agents, which rename themselves)."""
    mark = (f":{port} ", f"--gcs_server_port={port} ", f"{temp}/", f"--temp-dir={temp} ")
    children: dict[int, list[int]] = {}
    roots = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="ignore") + " "
            parent = int((entry / "stat").read_text().split(")")[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
        if any(m in command for m in mark):
            roots.add(int(entry.name))
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def stop_cluster(port: int, temp: Path) -> None:
    """Stop the cluster on `port` only. (`ray stop --force` would stop every Ray instance on the
    machine, including sweeps that have nothing to do with the tests.)"""
    pids = cluster_pids(port, temp)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if all(gone(pid, timeout=10) for pid in pids):
            break
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node with one CPU each on 127.0.0.1; afterwards every process of
    this cluster, and of no other, is stopped."""
    port, temp = start_head(workers=1)
    try:
        yield f"127.0.0.1:{port}", RAY_ENV
    finally:
        stop_cluster(port, temp)


def test_stopping_a_test_cluster_spares_other_ray_instances():
    bystander, bystander_temp = start_head()
    mine, temp = start_head()
    try:
        theirs = cluster_pids(bystander, bystander_temp)
        ours = cluster_pids(mine, temp)
        raylets = [pid for pid in ours if "raylet/raylet" in Path(f"/proc/{pid}/cmdline")
                   .read_bytes().decode(errors="ignore")]
        assert theirs and raylets and not theirs & ours
        stop_cluster(mine, temp)
        assert all(gone(pid, timeout=1) for pid in ours)
        assert not cluster_pids(mine, temp)
        assert all(not gone(pid, timeout=0.5) for pid in theirs)
    finally:
        stop_cluster(bystander, bystander_temp)


def test_cluster_sweep_survives_a_killed_worker_and_resubmits_to_nothing(
        ray_cluster, reference, tmp_path):
    address, env = ray_cluster
    out = tmp_path / "sweep"
    command = [*DEVRL, "sweep", str(write_spec(tmp_path)), "--out", str(out), "--address",
               address, "--quiet"]
    launcher = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    run_dir, task = wait_for(lambda: training_run(out), what="a run past its first checkpoint")
    os.kill(task["worker_pid"], signal.SIGKILL)  # the Ray worker, mid-run
    assert gone(task["trainer_pid"]), "the trainer outlived its Ray worker"
    _, stderr = launcher.communicate(timeout=1500)
    assert launcher.returncode == 0, stderr[-3000:]
    assert f"run {run_dir.parent.name}/{run_dir.name}: its Ray worker died" in stderr
    assert "restarting from the last checkpoint (restart 1 of 3)" in stderr
    for _, config in SPEC.configs():
        assert_same_run(run_dir_for(reference, config), run_dir_for(out, config))
        manifest = json.loads((run_dir_for(out, config) / "manifest.json").read_text())
        assert manifest["complete"] and manifest["threads"] == 1  # pinned to one core
    nodes = {json.loads((r / "task.json").read_text())["node_id"] for r in out.glob("*/seed_*")}
    assert len(nodes) == 2, "the sweep did not spread over both nodes"
    rows = sweep_status(out)
    assert [r["status"] for r in rows] == ["done"] * 4
    status = run_cli("sweep", "status", str(out))
    assert status.returncode == 0 and "4 runs: 4 done" in status.stdout

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "all 4 runs" in again.stderr and "nothing to run" in again.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    changed = [p for p in after if before.get(p) != after[p] and p.name != "sweep.json"]
    assert changed == []


def test_killed_launcher_leaves_no_trainer_and_the_rerun_finishes_bitwise(reference, tmp_path):
    """SIGHUP (a closed terminal) and SIGKILL (the OOM killer) of `devrl train` itself, not of
    its process group: its trainers must stop with it, and the rerun resumes them."""
    out = tmp_path / "runs"
    command = [*DEVRL, "train", *TRAIN_FLAGS, "--seeds", "0", "--out", str(out)]
    config = make_config("smoke", log_checkpoints=5, seed=0, **BASE)
    for sig in (signal.SIGHUP, signal.SIGKILL):
        launcher = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        _, task = wait_for(lambda: training_run(out), what="a run past its first checkpoint")
        launcher.send_signal(sig)
        launcher.wait(timeout=120)
        assert gone(task["trainer_pid"]), f"the trainer outlived its launcher ({sig.name})"
        progress = read_progress(run_dir_for(out, config))
        assert progress["update"] < config.num_updates
        problems = verify_manifest(run_dir_for(out, config))
        assert all(p.kind == "interrupted" for p in problems), problems
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(run_dir_for(reference, config), run_dir_for(out, config))
    assert verify_manifest(run_dir_for(out, config)) == []


def test_watchdog_restarts_a_stalled_run(reference, tmp_path):
    out = tmp_path / "runs"
    launcher = subprocess.Popen(
        [*DEVRL, "train", *TRAIN_FLAGS, "--seeds", "1", "--out", str(out), "--stall-timeout",
         "30"], stderr=subprocess.PIPE, text=True)  # the reference compiled it: a cache hit
    _, task = wait_for(lambda: training_run(out), what="a run past its first checkpoint")
    os.kill(task["trainer_pid"], signal.SIGSTOP)  # frozen like a futex deadlock: alive, silent
    _, stderr = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "made no progress for 30 s (stalled); restarting from the last checkpoint" in stderr
    config = make_config("smoke", log_checkpoints=5, seed=1, **BASE)
    assert_same_run(run_dir_for(reference, config), run_dir_for(out, config))


def test_a_failing_run_is_given_up_loudly(tmp_path):
    """A trainer that cannot get through compiling within the stall timeout: killed as stalled,
    restarted once, then given up, loudly."""
    out = tmp_path / "runs"
    result = run_cli("train", "--scale", "smoke", "--seeds", "0", "--out", str(out), "--quiet",
                     "--max-restarts", "1", "--stall-timeout", "1")
    assert result.returncode == 1
    assert "(stalled)" in result.stderr
    assert "gave up after 1 restarts" in result.stderr
    status = run_cli("sweep", "status", str(out))
    assert "1 failed" in status.stdout


def test_a_corrupt_resume_state_is_not_retried(tmp_path):
    """Retrying cannot mend a damaged state file: one attempt, and the file named."""
    out = tmp_path / "runs"
    run_dir = run_dir_for(out, make_config("smoke"))
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(make_config("smoke").to_dict()))
    (run_dir / "state").mkdir()
    (run_dir / "state" / "latest.npz").write_bytes(b"corrupt")
    result = run_cli("train", "--scale", "smoke", "--seeds", "0", "--out", str(out), "--quiet",
                     "--max-restarts", "3")
    assert result.returncode == 1
    assert "latest.npz: the saved training state is unreadable" in result.stderr
    assert "a permanent error, not retried" in result.stderr
    assert (run_dir / "train.log").read_text().count("--- ") == 1  # one attempt


def test_a_permanent_error_is_not_retried(tmp_path):
    """A run directory held by a live process: the trainer says who holds it, once."""
    out = tmp_path / "runs"
    run_dir = run_dir_for(out, make_config("smoke"))
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(make_config("smoke").to_dict()))
    with open(run_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(f"pid {os.getpid()} on host test\n")
        handle.flush()
        result = subprocess.run([*DEVRL, "train", "--scale", "smoke", "--seeds", "0", "--out",
                                 str(out), "--quiet"], capture_output=True, text=True,
                                timeout=600, env={**os.environ, "DEVRL_LOCK_WAIT": "1"})
    assert result.returncode == 1
    assert f"another live process is training into it (pid {os.getpid()} on host test)" in \
        result.stderr
    assert "a permanent error, not retried" in result.stderr
    assert (run_dir / "train.log").read_text().count("--- ") == 1  # one attempt


def test_only_trains_the_named_runs_and_refuses_names_not_in_the_sweep(tmp_path):
    """`only` picks runs of the sweep by name; a finished one among them means nothing to run
    (no Ray instance starts), and a name outside the sweep is an error naming it."""
    from devrl.core.base import ConfigError
    from devrl.runs.sweep import run_name, run_sweep

    spec = make_spec("smoke", {"reward": ["no_plant", "plant_x4"]}, [0])
    with pytest.raises(ConfigError, match=r"only=\['nope/seed_0'\] is not allowed"):
        run_sweep(spec, tmp_path / "sweep", only={"nope/seed_0"})
    assert not (tmp_path / "sweep").exists()  # refused before anything is written
    config = spec.configs()[0][1]
    result = run_cli("train", "--scale", "smoke", "--reward", "no_plant", "--seeds", "0",
                     "--out", str(tmp_path / "one"), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    shutil.copytree(tmp_path / "one" / run_name(config), run_dir_for(tmp_path / "sweep", config))
    assert run_sweep(spec, tmp_path / "sweep", only={run_name(config)}, show_progress=False) == 0
    assert not (run_dir_for(tmp_path / "sweep", spec.configs()[1][1]) / "metrics.parquet").exists()


def private_env(**extra: str) -> dict[str, str]:
    """This environment without RAY_ADDRESS: the sweep's own local Ray instance, which starts
    with address "local" anyway (never a cluster of another sweep on this machine)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


def test_sigterm_of_the_driver_while_ray_runs_exits_143_with_devrl_s_message(tmp_path):
    """ray.init installs a SIGTERM handler of its own (exit status 15, no devrl message); the
    driver's stays in force, so SIGTERM while a run's task is running ends Ray and its trainer
    and exits 143 with devrl's one line."""
    out = tmp_path / "runs"
    launcher = subprocess.Popen([*DEVRL, "train", *TRAIN_FLAGS, "--seeds", "0", "--out",
                                 str(out)], stderr=subprocess.PIPE, text=True, env=private_env())
    try:
        task = wait_for(lambda: next((json.loads(p.read_text())
                                      for p in out.glob("*/seed_*/task.json")), None),
                        what="the run's task to start its trainer")
        launcher.terminate()
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("devrl train: stopped by SIGTERM; rerun the same "
                                               "command to resume")
    assert "Traceback" not in stderr
    assert gone(task["trainer_pid"]), "the trainer outlived its driver"


def test_gpus_asked_for_where_ray_sees_none_exit_2_before_anything_queues(tmp_path):
    """`--runs-per-gpu 2` on a Ray instance without GPUs (CUDA_VISIBLE_DEVICES empty) is refused
    by name once Ray has said what it has, before any task is submitted (it used to be ignored
    and the runs trained on the CPUs)."""
    out = tmp_path / "runs"
    result = subprocess.run([*DEVRL, "train", "--scale", "smoke", "--seeds", "0", "--runs-per-gpu",
                             "2", "--quiet", "--out", str(out)], capture_output=True, text=True,
                            timeout=600, env=private_env(CUDA_VISIBLE_DEVICES=""), check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "devrl train: error: runs_per_gpu=2 is not allowed: Ray sees no GPU here (")
    assert "Traceback" not in result.stderr
    assert not list(out.glob("*/seed_*/task.json")) and not list(out.glob("*/seed_*/train.log"))
