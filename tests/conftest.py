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

# One JAX compilation cache for this test session (every trainer, kernel and test shares it,
# and so do pytest-xdist's workers, which inherit the variable from the process that made it):
# the smoke programs compile once instead of in every test. Never the user's own cache.
if not os.environ.get("DEVRL_TEST_XLA_CACHE"):
    os.environ["DEVRL_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="devrl-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["DEVRL_TEST_XLA_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["DEVRL_TEST_XLA_CACHE"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devrl.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def smoke_run(out: Path, seed: int) -> Path:
    """The run directory of smoke seed `seed` in the sweep directory `out`."""
    from devrl.core.config import make_config
    from devrl.runs.sweep import run_dir_for

    return run_dir_for(out, make_config("smoke", seed=seed))


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """`devrl train --scale smoke --seeds 0 1`: two seeds, a sweep on a local Ray instance."""
    out = tmp_path_factory.mktemp("smoke") / "runs"
    result = run_cli("train", "--scale", "smoke", "--seeds", "0", "1", "--quiet", "--out",
                     str(out))
    assert result.returncode == 0, result.stderr
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-equal checkpoints and metrics (except the wall-clock column)."""
    import jax
    import numpy as np
    import pandas as pd

    from devrl.runs.rundir import list_checkpoints, load_params

    ckpt_a, ckpt_b = list_checkpoints(a), list_checkpoints(b)
    assert [u for u, _ in ckpt_a] == [u for u, _ in ckpt_b]
    for (_, pa), (_, pb) in zip(ckpt_a, ckpt_b):
        for x, y in zip(jax.tree.leaves(load_params(pa)), jax.tree.leaves(load_params(pb))):
            np.testing.assert_array_equal(x, y)
    ma = pd.read_parquet(a / "metrics.parquet").drop(columns="sps")
    mb = pd.read_parquet(b / "metrics.parquet").drop(columns="sps")
    pd.testing.assert_frame_equal(ma, mb)
