"""Run directories: atomic writes, manifests with checksums, checkpoints, resume.

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
between verifies as "interrupted: rerun to resume", never as corrupt.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from devrl.config import ConfigError, TrainConfig, config_from_dict, loads_strict

# Files of a run directory that change after training or only serve resume: not checksummed.
RUN_SCRATCH = ("state/", "progress.json", "task.json", "train.log", "behaviour/", "llc/",
               "memory/")
PACKAGES = ("devrl", "jax", "jaxlib", "flax", "optax", "craftax", "numpy", "pandas")


# ---------------------------------------------------------------- atomic files and checksums
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


class DivergedError(ConfigError):
    """Training produced a non-finite loss or parameters. A ConfigError: resuming from the last
    finite checkpoint would diverge again, so a sweep does not retry it."""


# The per-update losses whose non-finite value marks a diverged run.
LOSS_COLUMNS = ("actor_loss", "value_loss", "entropy", "approx_kl")


def divergence(chunk: pd.DataFrame, params: Any) -> str | None:
    """None while every loss of `chunk` (one row per update, column `update`) and every
    parameter is finite; else "diverged at update N: what" for the first offending update
    (parameters are checked at the chunk's end, so there N is its last update)."""
    import jax

    present = [c for c in LOSS_COLUMNS if c in chunk.columns]
    values = chunk[present].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(rows):
        row = chunk.iloc[rows[0]]
        which = [c for c in present if not np.isfinite(row[c])]
        return (f"diverged at update {int(row['update'])}: non-finite "
                f"{', '.join(which)} ({', '.join(f'{c}={row[c]}' for c in which)})")
    bad = [".".join(map(str, path)) for path, leaf in
           jax.tree_util.tree_flatten_with_path(params)[0]
           if not np.isfinite(np.asarray(leaf)).all()]
    if bad:
        return (f"diverged at update {int(chunk['update'].iloc[-1])}: non-finite parameters "
                f"in {len(bad)} arrays (first {bad[0]})")
    return None


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
    (devrl.runs calls it when it is imported): a long-running trainer keeps recording the commit
    it started from, not whatever the work tree has moved to since (a commit made while a run
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
def checkpoint_schedule(config: TrainConfig) -> list[int]:
    """Updates after which parameters are saved: 0, log-spaced from 1, every k, and the last."""
    last = config.num_updates
    marks = {0, last}
    if config.log_checkpoints:
        marks.update(round(u) for u in np.geomspace(1, last, config.log_checkpoints))
    marks.update(range(config.checkpoint_every_updates, last + 1,
                       config.checkpoint_every_updates))
    return sorted(m for m in marks if 0 <= m <= last)


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


def tree_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The leaves of `tree` keyed by their path (`.train_state.params['params']['actor_0']...`)."""
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def save_runner(path: Path, runner: Any) -> None:
    atomic_write_npz(path, tree_arrays(runner))


def load_runner(path: Path, template: Any) -> Any:
    """The state saved at `path`, put into `template`'s tree by path, never by leaf position:
    two leaves of equal shape (the actor's and the critic's hidden layers) cannot swap."""
    import jax

    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    try:
        with np.load(path) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        # a damaged file stays damaged: a ConfigError is permanent, so no retry repeats it
        raise ConfigError(f"{path}: the saved training state is unreadable ({type(error).__name__}"
                          f": {error}); delete it to restart this run from update 0, or restore "
                          "it from a copy") from None
    wanted = {jax.tree_util.keystr(p): leaf for p, leaf in flat}
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    mismatched = [k for k in wanted if k in stored and (
        stored[k].shape != wanted[k].shape or stored[k].dtype != wanted[k].dtype)]
    if missing or extra or mismatched:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("not saved", missing), ("not in this state",
                                               extra), ("other shape or dtype", mismatched))
                           if keys)
        raise ConfigError(f"{path}: saved training state does not match this config and code "
                          f"({detail}); resume needs the config and code it was made with")
    return jax.tree_util.tree_unflatten(
        treedef, [jax.numpy.asarray(stored[jax.tree_util.keystr(p)]) for p, _ in flat])


# ---------------------------------------------------------------- training driver
ProgressFn = Callable[[dict[str, Any]], None]


def lock_wait() -> float:
    """Seconds a trainer waits for a run directory held by another process (DEVRL_LOCK_WAIT)."""
    text = os.environ.get("DEVRL_LOCK_WAIT", "30")
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ConfigError(f"DEVRL_LOCK_WAIT={text!r} is not allowed: must be a number of "
                          "seconds") from None


def train(config: TrainConfig, run_dir: Path, progress: ProgressFn | None = None,
          stop_after_updates: int | None = None) -> Path:
    """Train (or resume) one seed in `run_dir`. `stop_after_updates` ends early (for tests)."""
    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    with exclusive_lock(run_dir, wait=lock_wait()):
        return _train_locked(config, run_dir, progress, stop_after_updates)


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


def exclusive_lock(run_dir: Path, wait: float = 30.0):
    """Hold the lock of `run_dir` so two processes never train into it at once."""
    return held_lock(Path(run_dir) / ".lock", wait, lambda holder: (
        f"out={str(run_dir)!r} is not allowed: another live process is training into it "
        f"({holder}); wait for it, or stop it first"))


def _train_locked(config: TrainConfig, run_dir: Path, progress: ProgressFn | None,
                  stop_after_updates: int | None) -> Path:
    import jax
    import jax.numpy as jnp

    from devrl.ppo import make_train

    schedule = checkpoint_schedule(config)
    max_chunk = max(b - a for a, b in itertools.pairwise(schedule))
    heartbeat(run_dir, status="compiling", update=None, config=config)

    trainer = make_train(config, max_chunk)
    state_path = run_dir / "state" / "latest.npz"
    t0 = time.perf_counter()
    runner = trainer.init(jax.random.PRNGKey(config.seed))
    if state_path.exists():
        runner = load_runner(state_path, runner)
    compiled = trainer.run_updates.lower(runner, jnp.int32(1)).compile()
    compile_seconds = time.perf_counter() - t0
    done = int(runner.update)
    metrics = pd.read_parquet(run_dir / "metrics.parquet") if done else None
    if metrics is not None:
        metrics = metrics[metrics["update"] <= done]
    extra = {"config": config.to_dict(), "config_hash": config.config_hash(),
             "seed": config.seed, "schedule": schedule, "compile_seconds": compile_seconds,
             # Results are bitwise reproducible for equal code, config and XLA threads (the
             # CPUs the trainer may run on: XLA sizes its thread pool by them).
             "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_count": os.cpu_count(),
             "threads": len(os.sched_getaffinity(0)), "backend": jax.default_backend()}

    def manifest(updates: int) -> None:
        write_manifest(run_dir, {**extra, "complete": updates == config.num_updates,
                                 "updates_done": updates}, exclude=RUN_SCRATCH)

    if done == 0:
        atomic_write_npz(run_dir / "checkpoints" / "params_000000.npz",
                         params_to_flat(runner.train_state.params))
        manifest(0)

    for target in schedule:
        if target <= done:
            continue
        if stop_after_updates is not None and target > stop_after_updates:
            break
        start = time.perf_counter()
        runner, buffer = compiled(runner, jnp.int32(target - done))
        buffer = jax.device_get(buffer)  # blocks until the chunk is finished
        seconds = time.perf_counter() - start
        n = target - done
        chunk = pd.DataFrame({k: np.asarray(v[:n]) for k, v in buffer.items()})
        chunk.insert(0, "update", np.arange(done + 1, target + 1))
        chunk.insert(1, "env_steps", chunk["update"] * config.steps_per_update)
        chunk["sps"] = n * config.steps_per_update / seconds
        diverged = divergence(chunk, runner.train_state.params)
        if diverged:  # keep the last finite checkpoint and state, and mark the run
            extra["diverged"] = {"message": diverged, "last_finite_update": done}
            manifest(done)
            heartbeat(run_dir, status="diverged", update=done, config=config)
            raise DivergedError(f"out={str(run_dir)!r}: {diverged}; the run keeps its last "
                                f"finite checkpoint (update {done}): lower lr or check the "
                                "config")
        metrics = chunk if metrics is None else pd.concat([metrics, chunk], ignore_index=True)
        done = target
        files = {f"checkpoints/params_{done:06d}.npz":
                 npz_bytes(params_to_flat(runner.train_state.params)),
                 "metrics.parquet": parquet_bytes(metrics)}
        mark_pending(run_dir, files)
        for rel, data in files.items():
            atomic_write_bytes(run_dir / rel, data)
        save_runner(state_path, runner)
        last = chunk.iloc[-1]
        info = {"update": done, "num_updates": config.num_updates,
                "env_steps": done * config.steps_per_update, "sps": float(last["sps"]),
                "return": float(last["episode_return"]),
                **{key: float(last[column]) for key, column in PROGRESS_EXTRAS.items()
                   if column in last.index}}
        heartbeat(run_dir, status="training", config=config, **info)
        manifest(done)
        if progress:
            progress(info)
    if done == config.num_updates:
        # A kill after the last state was saved but before its manifest: the loop above had
        # nothing left to do, so the final manifest is written here.
        stored = json.loads((run_dir / "manifest.json").read_text())
        if not stored.get("complete") or stored.get("pending"):
            manifest(done)
        heartbeat(run_dir, status="complete", update=done, config=config)
    return run_dir


# Craftax fields the progress heartbeat also reports (absent for the cue-memory task).
PROGRESS_EXTRAS = {"plants_placed": "plants_placed", "place_attempts": "place_attempts",
                   "place_plant_success": "achievement_place_plant"}


def heartbeat(run_dir: Path, status: str, config: TrainConfig, **info: Any) -> None:
    atomic_write_json(Path(run_dir) / "progress.json",
                      {"status": status, "time": time.time(), "pid": os.getpid(),
                       "num_updates": config.num_updates, **info})


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / "progress.json").read_text())
    except (OSError, ValueError):
        return None


# The code this process runs is the code it imported: take its provenance now (see
# process_provenance), before a long run outlives a commit of the work tree.
process_provenance()
