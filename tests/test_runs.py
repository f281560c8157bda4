"""Run-directory mechanics: checkpoint schedule, atomic files, manifests."""

import numpy as np
import pytest

from devrl import runs
from devrl.config import make_config
from devrl.runs import (
    atomic_write_npz,
    checkpoint_schedule,
    verify_manifest,
    write_manifest,
)


def test_schedule_is_dense_early_and_ends_at_the_last_update():
    config = make_config("cpu")
    schedule = checkpoint_schedule(config)
    assert schedule[0] == 0 and schedule[-1] == config.num_updates
    assert schedule == sorted(set(schedule))
    assert {1, 2, 3} <= set(schedule)  # the plant motif appears within the first updates
    gaps = np.diff(schedule)
    assert gaps.max() <= config.checkpoint_every_updates


def test_manifest_detects_a_modified_file(tmp_path):
    atomic_write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    (tmp_path / "b.txt").write_text("hello")
    manifest = write_manifest(tmp_path, {"purpose": "test"})
    assert set(manifest["files"]) == {"a.npz", "b.txt"}
    assert verify_manifest(tmp_path) == []
    (tmp_path / "b.txt").write_text("hellO")
    problems = verify_manifest(tmp_path)
    assert len(problems) == 1 and "b.txt: checksum differs" in problems[0]
    (tmp_path / "a.npz").unlink()
    assert any("a.npz: missing" in p for p in verify_manifest(tmp_path))


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.npz"
    atomic_write_npz(target, {"x": np.arange(3)})
    before = target.read_bytes()

    def disk_full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_npz(target, {"x": np.arange(1000)})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]
