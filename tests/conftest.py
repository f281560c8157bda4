"""Shared fixtures: one tiny two-seed training run made through the real CLI launcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devrl.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def smoke_run(out: Path, seed: int) -> Path:
    """The run directory of smoke seed `seed` in the sweep directory `out`."""
    from devrl.config import make_config
    from devrl.sweep import run_dir_for

    return run_dir_for(out, make_config("smoke", seed=seed))


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """`devrl train --scale smoke --seeds 0 1`: two seeds, a sweep on a local Ray instance."""
    out = tmp_path_factory.mktemp("smoke") / "runs"
    result = run_cli("train", "--scale", "smoke", "--seeds", "0", "1", "--quiet", "--out",
                     str(out))
    assert result.returncode == 0, result.stderr
    return out
