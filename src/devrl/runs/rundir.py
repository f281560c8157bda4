"""Run directories: manifests with checksums, provenance, checkpoints, locks.

A run directory (one seed) holds::

    config.json      the TrainConfig (a rerun with another config is refused)
    manifest.json    config hash, versions, git commit, seed, sha256 of every file below
    metrics.parquet  one row per PPO update
    checkpoints/params_UUUUUU.npz   network parameters after UUUUUU updates (float32)
    progress.json    heartbeat for the watchdog (not checksummed)
    task.json        where the sweep runs it: host, Ray node, worker and trainer pids (not
                     checksummed)
    state/latest.npz the complete training state of the last checkpoint, by tree path, for resume

Each checkpoint first records the checksums of the files it is about to write under the
manifest's `pending` key, then writes them, then rewrites the manifest without it: a run killed in
between verifies as "interrupted: rerun to resume", never as corrupt. Training into a run
directory is `devrl.runs.training`'s; the atomic writes are `devrl.core.base`'s.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from devrl.core.base import ConfigError, atomic_write_json
from devrl.core.config import TrainConfig, config_from_dict, loads_strict

# Files of a run directory that change after training or only serve resume: not checksummed.
RUN_SCRATCH = ("state/", "progress.json", "task.json", "train.log", "behaviour/", "llc/",
               "memory/")
PACKAGES = ("devrl", "jax", "jaxlib", "flax", "optax", "craftax", "numpy", "pandas")


# ---------------------------------------------------------------- manifests and checksums
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_manifest(directory: Path, extra: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict:
    """Checksum every file under `directory` (except manifest.json, dotfiles and `exclude`
    prefixes, which the manifest records as `unchecked`)."""
    directory = Path(directory)
    files = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if (path.is_file() and rel != "manifest.json" and not path.name.startswith(".")
                and not rel.startswith(exclude)):
            files[rel] = sha256_file(path)
    started = process_provenance()
    source = {**started["source"], **{k: v for k, v in loaded_sources().items()
                                      if k not in started["source"]}}
    manifest = {**extra, "versions": package_versions(), "git_commit": started["git_commit"],
                "source": source, "written": now(), "unchecked": list(exclude), "files": files}
    atomic_write_json(directory / "manifest.json", manifest)
    return manifest


def mark_pending(directory: Path, files: dict[str, bytes]) -> None:
    """Record in the manifest the checksums of `files` (relative path -> bytes) about to be
    written, so that a kill before the manifest is rewritten reads as an interruption."""
    path = Path(directory) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["pending"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    atomic_write_json(path, manifest)


class Problem(str):
    """One finding of `verify_manifest`: a message, and its `kind`: malformed, missing,
    changed, unlisted, interrupted or diverged (a run whose training produced non-finite values:
    refused by every consumer)."""

    kind: str

    def __new__(cls, kind: str, message: str) -> Problem:
        problem = super().__new__(cls, message)
        problem.kind = kind
        return problem


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of `directory`; ConfigError if it is missing or malformed."""
    path = Path(directory) / "manifest.json"
    if not path.exists():
        raise ConfigError(f"{path}: no manifest.json")
    try:
        manifest = loads_strict(path.read_text(), f"manifest {str(path)!r}")
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: malformed manifest ({error})") from None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
            and all(isinstance(v, str) for v in manifest["files"].values())):
        raise ConfigError(f"{path}: malformed manifest (no 'files' mapping of paths to sha256)")
    for section in ("files", "pending"):
        for rel in (manifest.get(section) or {}):
            if not is_confined_path(rel):
                raise ConfigError(f"{path}: malformed manifest (the entry {rel!r} is not a plain "
                                  "relative path inside its folder: absolute paths, '..', '.' "
                                  "and repeated or trailing slashes are refused)")
    unchecked = manifest.get("unchecked", [])
    if not (isinstance(unchecked, list) and all(isinstance(u, str) for u in unchecked)):
        raise ConfigError(f"{path}: malformed manifest ('unchecked' must be a list of prefixes)")
    return manifest


def is_confined_path(rel: str) -> bool:
    """Whether `rel` names a file inside its folder in exactly one way: relative, in POSIX form,
    with no '.', '..' or empty parts (so './a' and 'a' cannot both be listed for one file)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


SNAPSHOT_TRIES = 5  # checks of a folder whose manifest keeps changing before "in progress"


def verify_manifest(directory: Path) -> list[Problem]:
    """Problems found when checking `directory` against its manifest (empty = all good).

    Files listed but absent are `missing`; listed files whose checksum differs are `changed`;
    files present but not listed (outside the manifest's `unchecked` prefixes, dotfiles and
    subfolders with a manifest of their own) are `unlisted`. Differences explained by the
    manifest's `pending` checksums are one `interrupted` problem: a run killed mid-checkpoint.

    The check is of one snapshot: a writer changes the manifest before and after it replaces
    files (`mark_pending`, then the new manifest), so a check during which the manifest stayed
    the same saw files that agree with it or with its pending checksums. A check during which it
    changed is repeated; if it keeps changing, the folder is `in-progress`, never corrupt.
    """
    directory = Path(directory)
    for _ in range(SNAPSHOT_TRIES):
        before = _manifest_bytes(directory)
        problems = _verify_once(directory)
        if _manifest_bytes(directory) == before:
            return problems
        time.sleep(0.2)
    return [Problem("in-progress", f"{directory}: being written (its manifest changed during "
                                   f"each of {SNAPSHOT_TRIES} checks); verify it when idle")]


def _manifest_bytes(directory: Path) -> bytes | None:
    try:
        return (Path(directory) / "manifest.json").read_bytes()
    except OSError:
        return None


def _verify_once(directory: Path) -> list[Problem]:
    try:
        manifest = read_manifest(directory)
    except ConfigError as error:
        return [Problem("missing" if "no manifest" in str(error) else "malformed", str(error))]
    listed = manifest["files"]
    pending = manifest.get("pending") or {}
    if isinstance(manifest.get("diverged"), dict):
        return [Problem("diverged", f"{directory}: training "
                                    f"{manifest['diverged'].get('message', 'diverged')}")]
    unchecked = tuple(manifest.get("unchecked", ()))
    problems: list[Problem] = []
    interrupted = bool(pending)
    for rel, expected in listed.items():
        target = directory / rel
        if not target.is_file():
            if rel not in pending:
                problems.append(Problem("missing", f"{target}: missing"))
            continue
        actual = sha256_file(target)
        if actual != expected and pending.get(rel) != actual:
            problems.append(Problem("changed", f"{target}: checksum differs from manifest"))
    nested = [p.parent for p in directory.rglob("manifest.json") if p.parent != directory]
    for target in sorted(directory.rglob("*")):
        rel = target.relative_to(directory).as_posix()
        if (not target.is_file() or rel == "manifest.json" or rel in listed
                or any(part.startswith(".") for part in target.relative_to(directory).parts)
                or rel.startswith(unchecked) or any(n in target.parents for n in nested)):
            continue
        if rel in pending and sha256_file(target) == pending[rel]:
            continue
        problems.append(Problem("unlisted", f"{target}: present but not in the manifest"))
    if interrupted and not problems:
        return [Problem("interrupted", f"{directory}: interrupted while writing a checkpoint: "
                                       "rerun to resume")]
    return problems


def check_verified(directory: Path, name: str = "run") -> dict[str, Any]:
    """The manifest of `directory` after verifying it; a ConfigError naming `name` otherwise.
    Every consumer of a run directory or data set calls this before reading it."""
    problems = verify_manifest(directory)
    diverged = [p for p in problems if p.kind == "diverged"]
    if diverged:
        raise ConfigError(f"{name}={str(directory)!r} is not allowed: {diverged[0]}")
    if problems:
        if all(p.kind == "in-progress" for p in problems):
            raise ConfigError(f"{name}={str(directory)!r} is not allowed yet: a live process is "
                              "writing it; wait for it to finish")
        if all(p.kind == "interrupted" for p in problems):
            raise ConfigError(f"{name}={str(directory)!r} is not allowed yet: it was "
                              "interrupted while writing a checkpoint; rerun its training to "
                              "resume it first")
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more"
                                            if len(problems) > 3 else "")
        raise ConfigError(f"{name}={str(directory)!r} is not allowed: it does not match its "
                          f"manifest ({shown})")
    return read_manifest(directory)


# ---------------------------------------------------------------- provenance
# The paths whose local changes make a manifest's tree "dirty": the code that trains, measures
# and builds data sets (src/), the notebooks that call it, and the package definition.
SOURCE_PATHS = ("src", "notebooks", "pyproject.toml")


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                          check=True).stdout


def repository_of(package_dir: Path | None = None) -> Path | None:
    """The top of the git work tree holding `package_dir` (default: this package), or None."""
    here = Path(package_dir or Path(__file__).resolve().parent)
    try:
        return Path(_git(["rev-parse", "--show-toplevel"], here).strip())
    except (OSError, subprocess.SubprocessError):
        return None


_PROCESS_PROVENANCE: dict[str, Any] = {}


def process_provenance() -> dict[str, Any]:
    """{"git_commit", "source"} of the code this process loaded, taken once, at the first call
    (devrl.runs.rundir calls it when it is imported): a long-running trainer keeps recording the
    commit it started from, not whatever the work tree has moved to since (a commit made while a run
    trains would otherwise be named as the run's code)."""
    if not _PROCESS_PROVENANCE:
        _PROCESS_PROVENANCE.update(git_commit=git_commit(), source=loaded_sources())
    return _PROCESS_PROVENANCE


def git_commit(package_dir: Path | None = None) -> str:
    """The commit of the source tree this package runs from (default: this package's own), with
    '+dirty' when a tracked file under SOURCE_PATHS differs from it or an untracked, unignored
    file lies there; 'unknown' outside a git work tree."""
    top = repository_of(package_dir)
    if top is None:
        return "unknown"
    try:
        commit = _git(["rev-parse", "HEAD"], top).strip()
        dirty = _git(["status", "--porcelain", "--", *SOURCE_PATHS], top).strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def git_blob_hash(path: Path) -> str:
    """The object name git gives the file's content (`git hash-object`), without git."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def loaded_sources(package_dir: Path | None = None) -> dict[str, str]:
    """{path relative to the repository: git blob hash} of every devrl module loaded in this
    process: the code that made what a manifest describes. Empty outside a git work tree."""
    import sys

    top = repository_of(package_dir)
    if top is None:
        return {}
    out = {}
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if not (name == "devrl" or name.startswith("devrl.")) or not source:
            continue
        path = Path(source).resolve()
        with contextlib.suppress(ValueError, OSError):
            out[path.relative_to(top).as_posix()] = git_blob_hash(path)
    return dict(sorted(out.items()))


def provenance_problems(directory: Path, repository: Path | None = None) -> list[Problem]:
    """Why the code named by `directory`'s manifest may not be the code that made it (empty =
    none found): a dirty tree, a commit unknown to the repository, a loaded module the commit
    lacks or holds in another version (manifests with `source`), and, for older manifests
    without `source`, modules that the commit which landed the manifest in git added or changed
    after the recorded commit (the signature of data made from uncommitted code; only src/
    counts as changed code there, notebooks being presentation)."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except ConfigError:
        return []  # verify_manifest reports it
    top = repository or repository_of()
    recorded = str(manifest.get("git_commit") or "unknown")
    commit = recorded.removesuffix("+dirty")
    problems: list[Problem] = []
    if recorded.endswith("+dirty"):
        problems.append(Problem("dirty", f"{directory}: made from a tree with uncommitted "
                                         f"changes to the code (commit {commit[:12]}+dirty)"))
    if commit == "unknown" or top is None:
        return problems + [Problem("unrecorded", f"{directory}: no commit to check against")]
    try:
        _git(["cat-file", "-e", f"{commit}^{{commit}}"], top)
    except (OSError, subprocess.SubprocessError):
        return problems + [Problem("unknown-commit",
                                   f"{directory}: commit {commit[:12]} is not in {top}")]

    def blobs(rev: str) -> dict[str, str]:
        listing = _git(["ls-tree", "-r", rev, "--", *SOURCE_PATHS], top)
        return {line.split("\t", 1)[1]: line.split()[2] for line in listing.splitlines()}

    at_commit = blobs(commit)
    source = manifest.get("source")
    if isinstance(source, dict):
        for path, blob in sorted(source.items()):
            if path not in at_commit:
                problems.append(Problem("lacks-module", f"{directory}: commit {commit[:12]} "
                                                        f"does not contain {path}"))
            elif at_commit[path] != blob and not recorded.endswith("+dirty"):
                problems.append(Problem("module-differs", f"{directory}: {path} differs from "
                                                          f"its version at {commit[:12]}"))
        return problems
    # An older manifest: judge it by the commit that brought it into the repository.
    rel = (directory.resolve().relative_to(top.resolve()) / "manifest.json").as_posix() \
        if directory.resolve().is_relative_to(top.resolve()) else None
    landed = _git(["log", "-1", "--format=%H", "--", rel], top).strip() if rel else ""
    note = "manifest records no source modules"
    if not landed or landed == commit:
        return problems + [Problem("unrecorded", f"{directory}: {note}")]
    at_landing = blobs(landed)
    added = sorted(set(at_landing) - set(at_commit))
    touched = set(_git(["show", "--name-only", "--format=", landed, "--", "src"], top).split())
    changed = sorted(p for p in touched & set(at_commit) if at_commit[p] != at_landing.get(p))
    if added:
        problems.append(Problem("lacks-module", f"{directory}: commit {commit[:12]} does not "
                                                f"contain {', '.join(added)}, which landed with "
                                                f"the data set in {landed[:12]}"))
    if changed:
        problems.append(Problem("landed-with-code", f"{directory}: the data set landed in "
                                                    f"{landed[:12]} together with changes to "
                                                    f"{', '.join(changed)} made after the recorded"
                                                    f" commit {commit[:12]}; it may come from "
                                                    "that uncommitted code"))
    return problems or [Problem("unrecorded", f"{directory}: {note}")]


# ---------------------------------------------------------------- run directory
def ensure_writable(directory: Path) -> None:
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test."):
            pass
    except OSError as error:
        raise ConfigError(f"out={str(directory)!r} is not allowed: the output directory must be "
                          f"writable ({error.strerror})") from None


def prepare_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """Create `run_dir` for `config`, or check that an existing one was made with the same config."""
    run_dir = Path(run_dir)
    stored_path = run_dir / "config.json"
    if stored_path.exists():
        stored = config_from_dict(loads_strict(stored_path.read_text(),
                                               f"config {str(stored_path)!r}"))
        if stored != config:
            diffs = [f"{k}={v!r} (stored) vs {getattr(config, k)!r} (given)"
                     for k, v in stored.to_dict().items() if getattr(config, k) != v]
            raise ConfigError(
                f"cannot resume {str(run_dir)!r} with a different config: {'; '.join(diffs)}. "
                "Allowed: the stored values, or a new output directory.")
        return
    ensure_writable(run_dir)
    atomic_write_json(stored_path, config.to_dict())


def params_to_flat(params: Any, dtype=None) -> dict[str, np.ndarray]:
    from flax.traverse_util import flatten_dict

    flat = flatten_dict(params, sep="/")
    return {k: np.asarray(v if dtype is None else np.asarray(v).astype(dtype))
            for k, v in flat.items()}


def flat_to_params(flat: dict[str, np.ndarray]) -> Any:
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()}, sep="/")


def load_params(path: Path) -> Any:
    with np.load(path) as data:
        return flat_to_params({k: data[k] for k in data.files})


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(Path(run_dir, "checkpoints").glob("params_*.npz")):
        found.append((int(path.stem.split("_")[1]), path))
    return found


@contextlib.contextmanager
def held_lock(path: Path, wait: float, busy: Callable[[str], str]):
    """Hold an exclusive flock on the file `path`, waiting up to `wait` seconds for it.

    The kernel releases an flock when its holder dies however it dies, so a lock still held
    after `wait` belongs to a live process: ConfigError(busy(holder)), where `holder` is the pid
    and host the holder wrote into the file."""
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise ConfigError(busy(handle.read().strip() or "unknown")) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {platform.node()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def load_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: not a run directory "
                          "(no config.json)")
    return config_from_dict(loads_strict(path.read_text(), f"config {str(path)!r}"))


def run_dirs_under(path: Path) -> list[Path]:
    """`path` itself if it is a run directory, else the run directories below it (a sweep's
    `<config hash>/seed_N`, or a folder of seed_N), each checked against its manifest."""
    path = Path(path)
    if (path / "config.json").exists():
        found = [path]
    else:
        found = sorted({p.parent for pattern in ("seed_*/config.json", "*/seed_*/config.json")
                        for p in path.glob(pattern)})
    if not found:
        raise ConfigError(f"run={str(path)!r} is not allowed: must be a run directory or a "
                          "sweep directory holding run directories")
    for run_dir in found:
        check_verified(run_dir, "run")
    return found


def check_evaluated(run_dir: Path) -> dict[str, Any]:
    """The manifest of `run_dir`'s behaviour tables, verified (ConfigError if absent or bad)."""
    behaviour = Path(run_dir) / "behaviour"
    if not (behaviour / "manifest.json").exists():
        raise ConfigError(f"run={str(run_dir)!r} is not allowed: evaluate it first (devrl eval)")
    return check_verified(behaviour, "run")


# The code this process runs is the code it imported: take its provenance now (see
# process_provenance), before a long run outlives a commit of the work tree.
process_provenance()
