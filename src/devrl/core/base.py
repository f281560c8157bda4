"""What every module may import: the error every check raises, and files written atomically.

A ConfigError names the parameter (or file) and what is allowed; every layer raises it, so it
lives below them all. Writers stage a temporary file beside the target and rename it, so a
reader never sees half a file (`atomic_write_*`), and a folder is replaced by renames only
(`replace_dir`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the parameter and what is allowed."""


# ---------------------------------------------------------------- atomic files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; files follow the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_dir(staging: Path, out: Path) -> Path:
    """Move the finished folder `staging` to `out`, replacing any old `out` by renames only.

    The old folder is renamed aside before the new one moves in, so `out` is always either the
    complete old or the complete new folder (a crash in between leaves the old one at .OUT.old).
    """
    staging, out = Path(staging), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)
    return out


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def npz_bytes(arrays: dict[str, np.ndarray], compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def atomic_write_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    atomic_write_bytes(path, npz_bytes(arrays, compress))


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_bytes(path, parquet_bytes(frame))
