"""Run-directory mechanics: checkpoint schedule, atomic files, manifests."""

import os
import stat
from typing import NamedTuple

import numpy as np
import pytest
from conftest import run_cli

from devrl import runs
from devrl.config import ConfigError, make_config
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


def test_verify_reports_every_problem_per_manifest_and_goes_on(tmp_path):
    bad, good, extra = tmp_path / "a_bad", tmp_path / "b_good", tmp_path / "c_extra"
    for folder in (bad, good, extra):
        atomic_write_npz(folder / "checkpoints" / "params_000001.npz", {"x": np.arange(3)})
        write_manifest(folder, {"purpose": "test"})
    (bad / "manifest.json").write_text("{not json")
    atomic_write_npz(extra / "checkpoints" / "params_000002.npz", {"x": np.arange(4)})
    (extra / ".lock").write_text("")  # dotfiles are not data
    assert [p.kind for p in verify_manifest(bad)] == ["malformed"]
    assert [p.kind for p in verify_manifest(extra)] == ["unlisted"]
    result = run_cli("verify", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("FAIL") and "a_bad" in lines[0] and "malformed" in lines[1]
    assert any(line.startswith("ok") and "b_good" in line for line in lines)
    assert any("unlisted" in line and "params_000002.npz" in line for line in lines)
    nested = tmp_path / "b_good" / "behaviour"  # a folder with a manifest of its own
    atomic_write_npz(nested / "t.npz", {"x": np.arange(2)})
    write_manifest(nested, {})
    assert verify_manifest(good) == []


def test_pending_checksums_make_an_interruption_not_a_corruption(tmp_path):
    atomic_write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    write_manifest(tmp_path, {})
    new = runs.npz_bytes({"x": np.arange(5)})
    runs.mark_pending(tmp_path, {"a.npz": new, "b.npz": new})
    assert verify_manifest(tmp_path)[0].kind == "interrupted"  # nothing written yet
    runs.atomic_write_bytes(tmp_path / "a.npz", new)
    runs.atomic_write_bytes(tmp_path / "b.npz", new)
    assert [p.kind for p in verify_manifest(tmp_path)] == ["interrupted"]
    with pytest.raises(ConfigError, match="interrupted while writing a checkpoint"):
        runs.check_verified(tmp_path)
    (tmp_path / "a.npz").write_bytes(b"damaged")  # neither the old nor the pending bytes
    assert [p.kind for p in verify_manifest(tmp_path)] == ["changed"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_npz(tmp_path / "x.npz", {"x": np.arange(3)})
        runs.atomic_write_json(tmp_path / "x.json", {})
    finally:
        os.umask(previous)
    for name in ("x.npz", "x.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


class Saved(NamedTuple):
    actor: np.ndarray
    critic: np.ndarray


class Reordered(NamedTuple):  # the same leaves in another order, as a code change might make
    critic: np.ndarray
    actor: np.ndarray


def test_resume_loads_the_state_by_tree_path(tmp_path):
    path = tmp_path / "latest.npz"
    runs.save_runner(path, Saved(actor=np.ones((2, 2), np.float32),
                                 critic=np.zeros((2, 2), np.float32)))
    template = Reordered(critic=np.full((2, 2), 7, np.float32),
                         actor=np.full((2, 2), 7, np.float32))
    loaded = runs.load_runner(path, template)
    np.testing.assert_array_equal(loaded.actor, np.ones((2, 2)))
    np.testing.assert_array_equal(loaded.critic, np.zeros((2, 2)))

    class Renamed(NamedTuple):
        policy: np.ndarray
        critic: np.ndarray

    with pytest.raises(ConfigError, match=r"not saved: \.policy"):
        runs.load_runner(path, Renamed(np.zeros((2, 2), np.float32),
                                       np.zeros((2, 2), np.float32)))
