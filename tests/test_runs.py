"""Run-directory mechanics: checkpoint schedule, atomic files, manifests."""

import os
import stat
from typing import NamedTuple

import numpy as np
import pytest
from conftest import run_cli

from devrl.core import base
from devrl.core.base import ConfigError, atomic_write_npz
from devrl.core.config import make_config
from devrl.runs import rundir, training
from devrl.runs.rundir import verify_manifest, write_manifest
from devrl.runs.training import checkpoint_schedule


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

    monkeypatch.setattr(base.os, "fsync", disk_full)
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
    new = base.npz_bytes({"x": np.arange(5)})
    rundir.mark_pending(tmp_path, {"a.npz": new, "b.npz": new})
    assert verify_manifest(tmp_path)[0].kind == "interrupted"  # nothing written yet
    base.atomic_write_bytes(tmp_path / "a.npz", new)
    base.atomic_write_bytes(tmp_path / "b.npz", new)
    assert [p.kind for p in verify_manifest(tmp_path)] == ["interrupted"]
    with pytest.raises(ConfigError, match="interrupted while writing a checkpoint"):
        rundir.check_verified(tmp_path)
    (tmp_path / "a.npz").write_bytes(b"damaged")  # neither the old nor the pending bytes
    assert [p.kind for p in verify_manifest(tmp_path)] == ["changed"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_npz(tmp_path / "x.npz", {"x": np.arange(3)})
        base.atomic_write_json(tmp_path / "x.json", {})
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
    training.save_runner(path, Saved(actor=np.ones((2, 2), np.float32),
                                 critic=np.zeros((2, 2), np.float32)))
    template = Reordered(critic=np.full((2, 2), 7, np.float32),
                         actor=np.full((2, 2), 7, np.float32))
    loaded = training.load_runner(path, template)
    np.testing.assert_array_equal(loaded.actor, np.ones((2, 2)))
    np.testing.assert_array_equal(loaded.critic, np.zeros((2, 2)))

    class Renamed(NamedTuple):
        policy: np.ndarray
        critic: np.ndarray

    with pytest.raises(ConfigError, match=r"not saved: \.policy"):
        training.load_runner(path, Renamed(np.zeros((2, 2), np.float32),
                                       np.zeros((2, 2), np.float32)))


# ---------------------------------------------------------------- provenance
def _git(cwd, *args):
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def clone(tmp_path):
    """A clone of this repository at its HEAD, with a clean work tree."""
    top = rundir.repository_of()
    if top is None:
        pytest.skip("the package does not run from a git work tree")
    target = tmp_path / "clone"
    _git(tmp_path, "clone", "--quiet", "--local", str(top), str(target))
    return target


def test_git_commit_marks_a_modified_tracked_file_as_dirty(clone):
    package = clone / "src" / "devrl"
    head = _git(clone, "rev-parse", "HEAD")
    assert rundir.git_commit(package) == head
    (clone / "data" / "note.txt").write_text("data are not code")  # outside the source paths
    assert rundir.git_commit(package) == head
    module = package / "core" / "config.py"
    module.write_text(module.read_text() + "\n# a local change\n")
    assert rundir.git_commit(package) == head + "+dirty"
    _git(clone, "checkout", "--", "src/devrl/core/config.py")
    (package / "new_module.py").write_text("X = 1\n")  # untracked code counts too
    assert rundir.git_commit(package) == head + "+dirty"


def _manifest_at(folder, commit, source=None):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"files": {}, "git_commit": commit, **({"source": source} if source else {})}
    (folder / "manifest.json").write_text(__import__("json").dumps(manifest))
    return folder


def test_provenance_names_a_dirty_tree_and_modules_the_commit_lacks_or_holds_otherwise(clone):
    head = _git(clone, "rev-parse", "HEAD")
    config_blob = _git(clone, "rev-parse", "HEAD:src/devrl/core/config.py")
    clean = _manifest_at(clone / "out" / "clean", head, {"src/devrl/core/config.py": config_blob})
    assert rundir.provenance_problems(clean, clone) == []
    dirty = _manifest_at(clone / "out" / "dirty", head + "+dirty",
                         {"src/devrl/core/config.py": config_blob})
    assert [p.kind for p in rundir.provenance_problems(dirty, clone)] == ["dirty"]
    lacking = _manifest_at(clone / "out" / "lacking", head,
                           {"src/devrl/core/config.py": config_blob,
                            "src/devrl/absent.py": "0" * 40})
    problems = rundir.provenance_problems(lacking, clone)
    assert [p.kind for p in problems] == ["lacks-module"] and "absent.py" in problems[0]
    other = _manifest_at(clone / "out" / "other", head, {"src/devrl/core/config.py": "1" * 40})
    assert [p.kind for p in rundir.provenance_problems(other, clone)] == ["module-differs"]
    unknown = _manifest_at(clone / "out" / "unknown", "f" * 40, {})
    assert [p.kind for p in rundir.provenance_problems(unknown, clone)] == ["unknown-commit"]


def test_an_older_manifest_that_landed_with_new_code_is_in_doubt(clone):
    """A manifest without source records, committed together with a module its commit lacks
    and a change to another: the signature of data made from uncommitted code."""
    before = _git(clone, "rev-parse", "HEAD")
    (clone / "src" / "devrl" / "study_x.py").write_text("def build():\n    return 1\n")
    config = clone / "src" / "devrl" / "core" / "config.py"
    config.write_text(config.read_text() + "\n# changed with the data\n")
    folder = _manifest_at(clone / "data" / "x-cpu", before)
    _git(clone, "add", "-A")
    _git(clone, "commit", "--quiet", "-m", "data and code together")
    kinds = {p.kind: str(p) for p in rundir.provenance_problems(folder, clone)}
    assert set(kinds) == {"lacks-module", "landed-with-code"}
    assert "src/devrl/study_x.py" in kinds["lacks-module"]
    assert "src/devrl/core/config.py" in kinds["landed-with-code"]
    honest = _manifest_at(clone / "data" / "y-cpu", _git(clone, "rev-parse", "HEAD"))
    _git(clone, "add", "-A")
    _git(clone, "commit", "--quiet", "-m", "data alone")
    assert [p.kind for p in rundir.provenance_problems(honest, clone)] == ["unrecorded"]


def test_written_manifests_record_the_modules_that_made_them(tmp_path):
    manifest = write_manifest(tmp_path, {})
    if rundir.repository_of() is None:
        pytest.skip("the package does not run from a git work tree")
    assert "src/devrl/runs/rundir.py" in manifest["source"]
    top = rundir.repository_of()
    assert manifest["source"]["src/devrl/runs/rundir.py"] == _git(top, "hash-object",
                                                                  "src/devrl/runs/rundir.py")


# ---------------------------------------------------------------- manifests that cannot lie
@pytest.mark.parametrize(("text", "problem"), [
    ('{"files": {"a.txt": "%s", "a.txt": "%s"}}', "appears twice"),
    ('{"files": {"/etc/hostname": "%s"}}', "not a plain relative path"),
    ('{"files": {"./a.txt": "%s"}}', "not a plain relative path"),
    ('{"files": {"sub/../a.txt": "%s"}}', "not a plain relative path"),
    ('{"files": {"a.txt": "%s"}, "written": NaN}', "not a JSON number"),
])
def test_a_manifest_that_could_lie_is_malformed(tmp_path, text, problem):
    """The same file twice with two hashes, a path outside the folder or a second name for one
    file, and non-JSON numbers: refused on reading, whatever the checksums say."""
    (tmp_path / "a.txt").write_text("hello")
    good = rundir.sha256_file(tmp_path / "a.txt")
    (tmp_path / "manifest.json").write_text(text.replace("%s", good, 1).replace("%s", "0" * 64))
    if text.count("%s") == 2:  # the right hash last: plain JSON would keep it and pass
        (tmp_path / "manifest.json").write_text(text % ("0" * 64, good))
    problems = verify_manifest(tmp_path)
    assert [p.kind for p in problems] == ["malformed"] and problem in problems[0]
    assert run_cli("verify", str(tmp_path)).returncode == 1


def test_config_files_refuse_repeated_keys_and_non_finite_tokens(tmp_path):
    from devrl.core.config import loads_strict

    with pytest.raises(ConfigError, match="^config='x' is not allowed: the key 'lr' appears"):
        loads_strict('{"lr": 1e-3, "lr": 2e-3}', "config='x'")
    for token in ("Infinity", "-Infinity", "NaN"):
        with pytest.raises(ConfigError, match=f"{token} is not a JSON number"):
            loads_strict(f'{{"lr": {token}}}', "config='x'")
    path = tmp_path / "c.json"
    path.write_text('{"lr": Infinity}')
    result = run_cli("train", "--scale", "smoke", "--config", str(path), "--out",
                     str(tmp_path / "out"))
    assert result.returncode == 2 and "Infinity is not a JSON number" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- a run that diverges
def test_divergence_names_the_first_non_finite_update_or_parameter():
    import pandas as pd

    chunk = pd.DataFrame({"update": [4, 5, 6], "actor_loss": [0.1, np.nan, np.inf],
                          "value_loss": [1.0, 2.0, 3.0], "entropy": [2.8, 2.8, 2.8],
                          "approx_kl": [0.0, 0.0, 0.0]})
    params = {"w": np.ones(3)}
    assert training.divergence(chunk, params).startswith(
        "diverged at update 5: non-finite actor_loss")
    finite = chunk.assign(actor_loss=0.1)
    assert training.divergence(finite, params) is None
    message = training.divergence(finite, {"w": np.array([1.0, np.nan])})
    assert message.startswith("diverged at update 6: non-finite parameters in 1 arrays")


def test_a_run_that_diverges_stops_keeps_its_last_finite_checkpoint_and_is_refused(tmp_path):
    """A learning rate no network survives: training stops with the named error at the first
    non-finite update, the run keeps its last finite checkpoint and state, and verify and every
    consumer refuse it."""
    from devrl.runs.rundir import check_verified, list_checkpoints, load_params
    from devrl.runs.training import DivergedError, train

    config = make_config("smoke", lr=1e30)
    run_dir = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"diverged at update \d+: non-finite"):
        train(config, run_dir)
    manifest = rundir.read_manifest(run_dir)
    last = manifest["diverged"]["last_finite_update"]
    assert manifest["updates_done"] == last and not manifest["complete"]
    for update, path in list_checkpoints(run_dir):
        assert update <= last
        assert all(np.isfinite(v).all() for v in load_params(path)["params"]
                   ["actor_0"].values())
    assert [p.kind for p in verify_manifest(run_dir)] == ["diverged"]
    with pytest.raises(ConfigError, match="is not allowed: .*training diverged at update"):
        check_verified(run_dir)
    assert run_cli("verify", str(run_dir)).returncode == 1


# ---------------------------------------------------------------- verify while a writer writes
def _checkpoint(directory, step: int) -> None:
    """What the trainer does at a checkpoint: pending checksums, new files, a new manifest."""
    files = {"metrics.txt": f"rows up to {step}".encode(), f"params_{step}.bin": bytes([step])}
    rundir.mark_pending(directory, files)
    for rel, data in files.items():
        base.atomic_write_bytes(directory / rel, data)
    write_manifest(directory, {"updates_done": step})


def test_verify_is_never_fooled_by_a_checkpoint_written_during_the_check(tmp_path, monkeypatch):
    """A checkpoint lands while verify hashes the files (the race that made verify report a
    healthy training run as changed and unlisted): the check is repeated on the new snapshot."""
    write_manifest(tmp_path, {"updates_done": 0})
    _checkpoint(tmp_path, 1)
    real = rundir.sha256_file
    calls = {"n": 0}

    def hashing_while_training(path):
        calls["n"] += 1
        if calls["n"] == 1:  # the trainer writes checkpoint 2 in the middle of the check
            monkeypatch.setattr(rundir, "sha256_file", real)
            _checkpoint(tmp_path, 2)
            monkeypatch.setattr(rundir, "sha256_file", hashing_while_training)
        return real(path)

    monkeypatch.setattr(rundir, "sha256_file", hashing_while_training)
    assert verify_manifest(tmp_path) == []
    assert calls["n"] > 3  # it checked again

    writing = {"now": False}

    def always_training(path):
        if not writing["now"]:  # the writer's own hashing must not start another checkpoint
            writing["now"] = True
            _checkpoint(tmp_path, 3 + calls["n"] % 200)
            writing["now"] = False
        calls["n"] += 1
        return real(path)

    monkeypatch.setattr(rundir, "sha256_file", always_training)
    monkeypatch.setattr(rundir.time, "sleep", lambda s: None)
    assert [p.kind for p in verify_manifest(tmp_path)] == ["in-progress"]


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a zip at all", None])
def test_a_corrupt_resume_state_is_named_by_its_file_and_is_permanent(tmp_path, damage):
    """Truncated, garbage, or a zip whose member is cut: a ConfigError (not retried by a sweep)
    that names the state file, not a zip member."""

    path = tmp_path / "latest.npz"
    atomic_write_npz(path, {"['a']": np.arange(1000.0)})
    if damage is None:  # cut the member's data in the middle, keep the zip directory
        data = path.read_bytes()
        path.write_bytes(data[:40] + b"\0" * 200 + data[240:])
    else:
        path.write_bytes(damage)
    with pytest.raises(ConfigError, match=f"^{path}: the saved training state is unreadable"):
        training.load_runner(path, {"a": np.zeros(1000)})


def test_a_manifest_names_the_commit_its_process_started_from(clone):
    """A trainer that outlives a commit keeps naming the code it imported, not the new HEAD."""
    import shutil
    import subprocess
    import sys

    # the clone runs this checkout's code, committed there as the code the process starts from
    shutil.copytree(rundir.repository_of() / "src" / "devrl", clone / "src" / "devrl",
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    _git(clone, "add", "-A")
    _git(clone, "commit", "--quiet", "--allow-empty", "-m", "the code under test")
    code = ("import sys, pathlib\n"
            "from devrl.runs import rundir\n"  # imported here: its provenance is taken now
            "print(rundir.git_commit(), flush=True)\n"
            "sys.stdin.readline()\n"  # meanwhile the work tree gets a new commit
            "print(rundir.write_manifest(pathlib.Path(sys.argv[1]), {})['git_commit'])\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(clone / "out")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**__import__("os").environ,
                                    "PYTHONPATH": str(clone / "src")})
    (clone / "out").mkdir()
    started = process.stdout.readline().strip()
    assert started == _git(clone, "rev-parse", "HEAD")
    (clone / "src" / "devrl" / "core" / "config.py").write_text(
        (clone / "src" / "devrl" / "core" / "config.py").read_text() + "\n# later\n")
    _git(clone, "commit", "--quiet", "-am", "a commit while the process runs")
    written, _ = process.communicate("go\n", timeout=120)
    assert written.strip() == started != _git(clone, "rev-parse", "HEAD")
