"""Bad input: a message naming the parameter and the allowed values, exit status 2, nothing
written or damaged."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import run_cli

from devrl.core.base import ConfigError
from devrl.core.config import TrainConfig, config_from_dict, make_config
from devrl.runs.rundir import prepare_run_dir
from devrl.runs.sweep import child_env, claim_cpus, make_spec, run_dir_for, run_name, task_options

BAD = [
    (["--env-name", "Craftax-Nope-v0"],
     "env_name='Craftax-Nope-v0' is not allowed: must be one of Craftax-Classic-Symbolic-v1"),
    (["--memory", "-1"], "memory=-1 is not allowed: must be >= 0"),
    (["--reset-ratio", "3"],
     "reset_ratio=3 is not allowed: must divide num_envs=8 (divisors: 1, 2, 4, 8)"),
    (["--total-env-steps", "100"],
     ("total_env_steps=100 is not allowed: must be at least one update: "
      "num_envs * num_steps = 128")),
    (["--activation", "gelu"], "activation='gelu' is not allowed: must be one of tanh, relu"),
    (["--width", "wide"], "width='wide' is not allowed: must be of type int"),
    (["--scale", "huge"], "scale='huge' is not allowed: must be one of smoke, cpu, paper"),
    (["--num-minibatches", "3"], "num_minibatches=3 is not allowed: must divide"),
]


@pytest.mark.parametrize("flags,message", BAD)
def test_bad_values_name_the_parameter(tmp_path, flags, message):
    out = tmp_path / "out"
    args = ["train", "--out", str(out), "--quiet"]
    args += flags if "--scale" in flags else ["--scale", "smoke", *flags]
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; see the next test")
def test_unwritable_output_directory_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("train", "--scale", "smoke", "--out", str(locked / "x"), "--quiet")
    assert result.returncode == 2 and "out=" in result.stderr


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("train", "--scale", "smoke", "--out", str(blocker / "runs"), "--quiet")
    assert result.returncode == 2
    assert "is not allowed: the output directory must be writable" in result.stderr
    assert blocker.read_text() == "not a directory"


def test_resume_with_a_different_config_is_refused(tmp_path):
    # Run directories are named by their config's hash, so only a config.json changed under
    # the same name (by hand, or by code that changed a default) can disagree.
    config = make_config("smoke", lr=0.001)
    run_dir = run_dir_for(tmp_path / "runs", config)
    prepare_run_dir(make_config("smoke"), run_dir)
    before = (run_dir / "config.json").read_text()
    result = run_cli("train", "--scale", "smoke", "--out", str(tmp_path / "runs"), "--lr",
                     "0.001", "--quiet")
    assert result.returncode == 2
    assert "cannot resume" in result.stderr and "lr=0.0002 (stored) vs 0.001 (given)" in \
        result.stderr
    assert (run_dir / "config.json").read_text() == before
    assert not (tmp_path / "runs" / "sweep.json").exists()  # refused before anything ran


@pytest.mark.parametrize("values,message", [
    ({"anneal_lr": "no"}, "anneal_lr='no' is not allowed: must be true or false"),
    ({"num_envs": "eight"}, "num_envs='eight' is not allowed: must be of type int"),
    ({"num_envs": 8.5}, "num_envs=8.5 is not allowed: must be of type int"),
    ({"num_envs": [8]}, "num_envs=[8] is not allowed: must be of type int"),
    ({"lr": None}, "lr=None is not allowed: must be of type float"),
    ([{"width": 8}], "must hold a JSON object"),
])
def test_config_files_are_type_checked_like_flags(tmp_path, values, message):
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps(values))
    out = tmp_path / "out"
    result = run_cli("train", "--scale", "smoke", "--config", str(config_file), "--out",
                     str(out), "--quiet", timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_config_values_are_converted_to_their_types():
    assert make_config("smoke", total_env_steps=1.536e3).total_env_steps == 1536
    assert isinstance(make_config("smoke", lr=1).lr, float)
    with pytest.raises(ConfigError, match="anneal_lr=1 is not allowed: must be true or false"):
        config_from_dict({**make_config("smoke").to_dict(), "anneal_lr": 1})


@pytest.mark.parametrize("spec,message", [
    ("scale: smoke\ngrid: {memory: [0, '16']}\n", "memory='16' is not allowed"),
    ("scale: smoke\ngrid: {anneal_lr: [true, 'no']}\n", "anneal_lr='no' is not allowed"),
    ("scale: smoke\nseeds: [0, 0]\n", "seeds=[0, 0] is not allowed"),
    ("scale: smoke\ngrid: {widht: [8]}\n", "unknown parameter 'widht'"),
    ("scale: smoke\ngrids: {}\n", "spec key(s) grids not allowed"),
    ("scale: huge\n", "scale='huge' is not allowed"),
    ("scale: smoke\ngrid: {reset_ratio: [1, 3]}\n", "reset_ratio=3 is not allowed: must divide"),
    ("scale: [smoke\n", "is not valid YAML"),
])
def test_sweep_files_are_validated_before_anything_runs(tmp_path, spec, message):
    path = tmp_path / "grid.yaml"
    path.write_text(spec)
    out = tmp_path / "out"
    result = run_cli("sweep", str(path), "--out", str(out), "--quiet", timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_sweep_grid_is_the_product_of_its_axes(tmp_path):
    spec = make_spec("smoke", {"memory": [0, 8], "lr": [1e-3, 2e-4, 3e-4]}, [0, 1])
    configs = [c for _, c in spec.configs()]
    assert len(configs) == 12 and len({c.config_hash() for c in configs}) == 12
    names = {run_name(c) for c in configs}
    assert len(names) == 12 and len({n.split("/")[0] for n in names}) == 6  # 6 points, 2 seeds
    flags = make_spec("smoke", {"memory": [0, 8]}, None)
    assert flags.seeds == (0,)  # the scale's seeds
    # Cores: one slot per core; a held slot is not handed out twice, and frees on close.
    first, held = claim_cpus(1)
    second, other = claim_cpus(1, poll=0.05) if os.cpu_count() > 1 else (None, None)
    if other is not None:
        assert first != second
        other.close()
    held.close()


def test_threads_per_run_pins_the_trainer_and_gpus_are_shared_on_request():
    code = ("from devrl.runs.sweep import become_trainer; import os; become_trainer(None, '0'); "
            "print(sorted(os.sched_getaffinity(0)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "[0]"
    bad = subprocess.run([sys.executable, "-m", "devrl.cli", "train-one", "--out", "x",
                          "--config-json", "{}", "--cpus", "99999"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "cpus='99999' is not allowed" in bad.stderr
    options, threads, fraction = task_options({"CPU": 16.0}, 2, None)
    assert options["num_cpus"] == 2 and threads == 2 and fraction is None
    options, threads, fraction = task_options({"CPU": 16.0, "GPU": 2.0}, 1, None)
    assert options["num_gpus"] == 1.0 and threads is None and fraction == 1.0
    options, threads, fraction = task_options({"CPU": 16.0, "GPU": 2.0}, 1, 4)
    assert options["num_gpus"] == 0.25 and threads is None
    env = child_env(fraction)
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.225)
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in child_env(1.0) or \
        os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
    assert "intra_op_parallelism_threads" not in child_env(None).get("XLA_FLAGS", "")


def test_gpus_asked_for_where_ray_sees_none_are_refused_before_anything_queues(tmp_path):
    """`--runs-per-gpu K` is a request for GPUs: where Ray sees none it is refused by name (it
    used to be ignored, the runs trained on the CPUs); left out, runs use the CPUs."""
    for resources in ({"CPU": 2.0}, {"CPU": 2.0, "GPU": 0.0}):
        for runs_per_gpu in (1, 4):
            with pytest.raises(ConfigError, match=(
                    rf"^runs_per_gpu={runs_per_gpu} is not allowed: Ray sees no GPU here "
                    r"\(2 CPUs, 0 GPUs\), so there is none to share; leave it out")):
                task_options(resources, 1, runs_per_gpu)
    assert task_options({"CPU": 2.0}, 1, None)[2] is None
    result = run_cli("train", "--scale", "smoke", "--runs-per-gpu", "0", "--quiet", "--out",
                     str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and "runs_per_gpu=0 is not allowed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_local_ray_instance_is_a_private_one(monkeypatch):
    """Without --address the sweep starts its own Ray instance (address "local"): it never joins
    a cluster named by RAY_ADDRESS or by `ray start` (Ray's default for address=None), and the
    SIGTERM handler ray.init installs (exit status 15) is replaced by the one it found."""
    import signal

    import ray

    from devrl.runs.sweep import start_ray

    seen = {}

    def init(**kwargs):
        seen.update(kwargs)
        signal.signal(signal.SIGTERM, lambda *_: None)  # as ray.init does

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setattr(ray, "init", init)
    mine = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        start_ray(None, 2)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, mine)
    assert seen["address"] == "local" and seen["num_cpus"] == 2
    start_ray("10.0.0.1:6379", None)
    assert seen["address"] == "10.0.0.1:6379"


def test_unknown_parameter_and_config_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter 'widht'"):
        make_config("smoke", widht=3)
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"width": 16, "depth": 1}))
    result = run_cli("train", "--scale", "smoke", "--config", str(config_file), "--out",
                     str(tmp_path / "o"), "--memory", "-2", "--quiet")
    assert result.returncode == 2 and "memory=-2" in result.stderr


def test_config_hash_is_stable_and_sensitive():
    a, b = TrainConfig(), TrainConfig()
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != make_config("cpu", seed=1).config_hash()


def test_help_explains_every_hyperparameter():
    result = subprocess.run([sys.executable, "-m", "devrl.cli", "train", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    for name in TrainConfig().to_dict():
        if name != "seed":
            assert f"--{name.replace('_', '-')}" in result.stdout


def test_a_trainer_dies_with_the_process_that_started_it():
    """The kernel kills a `devrl train-one` process when its parent (the Ray task) dies, even in
    a session of its own, where no process-group kill would reach it."""
    child = ("import os, sys, time; from devrl.runs.sweep import become_trainer; "
             "become_trainer(int(sys.argv[1]), None); print(os.getpid(), flush=True); "
             "time.sleep(120)")
    parent = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              f"{child!r}, str(os.getpid())], start_new_session=True); time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    pid = int(process.stdout.readline())
    process.kill()
    process.wait()
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("the child outlived its parent")
    orphan = subprocess.run([sys.executable, "-c", "from devrl.runs.sweep import become_trainer; "
                             "become_trainer(1, None)"], capture_output=True, text=True,
                            timeout=60)  # its parent (not pid 1) died before it started
    assert orphan.returncode == 1 and "parent 1 is gone; not training" in orphan.stderr


# ------------------------------------------------------------------ numbers that mean a number
NUMERIC = {name: kind for name, kind in __import__("devrl.core.config", fromlist=["x"])
           .field_types().items() if kind in (int, float)}


@pytest.mark.parametrize("name", sorted(NUMERIC))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 8.5])
def test_every_numeric_field_refuses_non_finite_and_fractional_values(name, value):
    """From a config or sweep file (check_type) and from a flag (coerce): a float field takes
    any finite number, an int field a finite whole number; everything else is named."""
    from devrl.core.config import check_type, coerce

    if NUMERIC[name] is float and value == 8.5:
        assert check_type(name, value) == 8.5 and coerce(name, "8.5") == 8.5
        return
    with pytest.raises(ConfigError, match=f"^{name}=.* is not allowed"):
        check_type(name, value)
    with pytest.raises(ConfigError, match=f"^{name}=.* is not allowed"):
        coerce(name, repr(value) if value == 8.5 else str(value))
    if NUMERIC[name] is int:
        with pytest.raises(ConfigError, match=f"^{name}=8.5 is not allowed"):
            coerce(name, "8.5e0")
        assert coerce(name, "8e0") == 8


def test_an_integer_too_large_for_a_float_is_named_not_a_traceback():
    """A JSON file or a flag may hold an integer of 400 digits: a float field refuses it as
    infinite, an int field takes it (validate then judges its size); no OverflowError."""
    from devrl.core.config import check_type, coerce

    huge = 10 ** 400
    with pytest.raises(ConfigError, match=r"^lr=1000.* is not allowed: must be of type float"):
        check_type("lr", huge)
    assert check_type("num_envs", huge) == huge and coerce("num_envs", str(huge)) == huge


def test_a_config_that_reaches_validate_with_a_non_finite_float_is_refused():
    import dataclasses

    from devrl.core.config import make_config

    for name in ("lr", "ent_coef", "vf_coef", "gamma"):
        for value in (float("nan"), float("inf")):
            config = dataclasses.replace(make_config("smoke"), **{name: value})
            with pytest.raises(ConfigError, match=f"^{name}=.* is not allowed"):
                config.validate()


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "inf"], "lr=inf is not allowed"),
    (["--ent-coef", "nan"], "ent_coef=nan is not allowed"),
    (["--num-envs", "8.5e0"], "num_envs=8.5 is not allowed"),
    (["--stall-timeout", "nan"], "stall_timeout=nan is not allowed"),
    (["--threads-per-run", "64"], "threads_per_run=64 is not allowed"),
])
def test_bad_numbers_and_impossible_requests_exit_2_before_anything_runs(tmp_path, flags,
                                                                          message):
    result = run_cli("train", "--scale", "smoke", *flags, "--quiet", "--out",
                     str(tmp_path / "out"), timeout=120)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-500:]
    assert not (tmp_path / "out").exists()


def test_a_config_file_cannot_set_the_seed_silently(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"lr": 0.001, "seed": 5}')
    result = run_cli("train", "--scale", "smoke", "--config", str(path), "--out",
                     str(tmp_path / "out"))
    assert result.returncode == 2 and "it sets 'seed'" in result.stderr


def test_a_full_disk_is_one_line_naming_the_path_and_no_traceback(monkeypatch, capsys):
    import errno

    from devrl import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/sweep/state.json")

    monkeypatch.setitem(cli.COMMANDS, "verify", full)
    assert cli.main(["verify", "."]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("devrl verify: error: /runs/sweep/state.json: No space left on device")
    assert "free some space" in err


def test_sigterm_exits_143_with_devrl_s_own_message():
    code = ("import sys, time\nfrom devrl import cli\n"
            "cli.COMMANDS['verify'] = lambda args: time.sleep(60)\n"
            "print('ready', flush=True)\nsys.exit(cli.main(['verify', '.']))\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    process.terminate()
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143
    assert err.strip() == ("devrl verify: stopped by SIGTERM; rerun the same command to "
                           "resume")


def test_figure_timeout_defaults_follow_what_the_run_does():
    from devrl.cli import FIGURE_TIMEOUT, RECOMPUTE_TIMEOUT, figure_timeout

    assert figure_timeout(None, {"scale": "cpu"}) == FIGURE_TIMEOUT
    assert figure_timeout(None, {"recompute": True}) == RECOMPUTE_TIMEOUT > 3 * 3600
    assert figure_timeout(120.0, {"recompute": True}) == 120.0
    with pytest.raises(ConfigError, match="timeout=0"):
        figure_timeout(0, {})


def test_a_cell_that_times_out_is_reported_as_a_timeout_not_a_disk_error(tmp_path, monkeypatch):
    from nbclient.exceptions import CellTimeoutError

    from devrl import cli
    from devrl.book import notebooks

    def slow(*args, **kwargs):
        raise CellTimeoutError("A cell timed out while it was being executed, after 5 seconds.")

    monkeypatch.setattr(notebooks, "run_figure", slow)
    args = cli.build_parser().parse_args(["figure", "plant-overshoot", "--timeout", "5"])
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.cmd_figure(args)
    assert code == 1
    assert "--timeout=5 seconds" in err.getvalue() and "disk" not in err.getvalue()
