"""Shared fixtures: one tiny two-seed training run made through the real CLI launcher."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# One JAX compilation cache for this test session (every trainer, kernel and test shares it):
# the smoke programs compile once instead of in every test. Never the user's own cache.
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="devrl-xla-cache-")
atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


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
