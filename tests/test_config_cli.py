"""Bad input: a message naming the parameter and the allowed values, exit status 2, nothing
written or damaged."""

import json
import os
import subprocess
import sys

import pytest
from conftest import run_cli

from devrl.config import ConfigError, TrainConfig, make_config
from devrl.runs import prepare_run_dir

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
    run_dir = tmp_path / "runs" / "seed_0"
    prepare_run_dir(make_config("smoke"), run_dir)
    before = (run_dir / "config.json").read_text()
    result = run_cli("train", "--scale", "smoke", "--out", str(tmp_path / "runs"), "--lr",
                     "0.001", "--quiet")
    assert result.returncode == 2
    assert "cannot resume" in result.stderr and "lr=0.0002 (stored) vs 0.001 (given)" in \
        result.stderr
    assert (run_dir / "config.json").read_text() == before


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
