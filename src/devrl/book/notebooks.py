"""Rerun a figure notebook with papermill: `devrl figure NAME -p key value ...`.

The notebooks are jupytext MyST files in `notebooks/`. Each has one cell tagged `parameters` whose
lines are annotated assignments (`seeds: list[int] | None = None`); the annotations are what
`-p` values are checked against, before anything runs, by the rules flags and config files follow
(devrl.core.config.check_kind: a float is finite, an int whole).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devrl.core.base import ConfigError
from devrl.core.config import NUMBER_RULES, SCALES, check_kind
from devrl.datasets import data_root, repo_root, runs_root
from devrl.runs.rundir import held_lock

KERNEL_NAME = "devrl"
SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: str  # e.g. "list[int] | None"
    default: Any
    comment: str

    def describe(self) -> str:
        text = f"{self.name}: {self.annotation} = {self.default!r}"
        return f"{text}  # {self.comment}" if self.comment else text


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def notebook_names() -> list[str]:
    return sorted(p.stem for p in notebooks_dir().glob("*.md"))


def notebook_path(name: str) -> Path:
    names = notebook_names()
    if name not in names:
        raise ConfigError(f"name={name!r} is not allowed: must be one of {', '.join(names)}")
    return notebooks_dir() / f"{name}.md"


def read_parameters(path: Path) -> dict[str, Parameter]:
    """The parameters of the notebook at `path`, from its one cell tagged `parameters`."""
    import jupytext

    notebook = jupytext.read(path)
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    source = cells[0].source
    lines = source.splitlines()
    parameters = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.value is not None):
            raise ValueError(f"{path}: the parameters cell must hold only annotated assignments "
                             f"like `seeds: list[int] | None = None` (line {node.lineno})")
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        parameters[node.target.id] = Parameter(
            name=node.target.id, annotation=ast.unparse(node.annotation),
            default=ast.literal_eval(node.value), comment=comment)
    for parameter in parameters.values():
        if not matches(parameter.default, parameter.annotation):
            raise ValueError(f"{path}: default of {parameter.describe()} does not match its type")
    return parameters


def matches(value: Any, annotation: str) -> bool:
    """Whether `value` has the type written in `annotation` (see `check_value`)."""
    try:
        check_value("value", value, annotation)
    except ConfigError:
        return False
    return True


def check_value(name: str, value: Any, annotation: str) -> Any:
    """`value` as the type written in `annotation` (int, float, bool, str, None, list[...], and
    unions with `|`), each int, float, bool and str checked as flags and config files are
    (`devrl.core.config.check_kind`: NaN and ±inf are refused, 3e0 is the int 3, 3.5 is no int);
    else a ConfigError naming parameter `name` and the type."""
    try:
        return _checked(value, ast.parse(annotation, mode="eval").body)
    except ConfigError:
        rules = {kind.__name__: rule for kind, rule in NUMBER_RULES.items()
                 if re.search(rf"\b{kind.__name__}\b", annotation)}
        note = rules[annotation] if annotation in rules else "; ".join(
            f"{kind}: {rule}" for kind, rule in rules.items())
        allowed = f"of type {annotation}" + (f" ({note})" if note else "")
        raise ConfigError(f"{name}={value!r} is not allowed: must be {allowed}") from None


def _checked(value: Any, node: ast.expr) -> Any:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        try:
            return _checked(value, node.left)
        except ConfigError:
            return _checked(value, node.right)
    if isinstance(node, ast.Constant) and node.value is None:
        if value is None:
            return None
        raise ConfigError(f"value={value!r} is not allowed: must be None")
    if isinstance(node, ast.Name) and node.id in SIMPLE_TYPES:
        return check_kind("value", value, SIMPLE_TYPES[node.id])
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
            and node.value.id == "list"):
        if not isinstance(value, list):
            raise ConfigError(f"value={value!r} is not allowed: must be a list")
        return [_checked(v, node.slice) for v in value]
    raise ValueError(f"unsupported parameter annotation {ast.unparse(node)!r}")


def parse_value(text: str) -> Any:
    """A `-p` value as a Python literal (`3`, `True`, `[0, 1]`, `None`), else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_overrides(name: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Parse and type-check `-p key value` pairs against the notebook's parameters: an unknown
    key, or a value not of its parameter's type, is a one-line ConfigError naming it."""
    parameters = read_parameters(notebook_path(name))
    values: dict[str, Any] = {}
    for key, text in pairs:
        if key not in parameters:
            listing = "; ".join(f"{p.name}: {p.annotation} = {p.default!r}"
                                for p in parameters.values())
            raise ConfigError(f"parameter {key!r} is not allowed: notebook {name!r} has these "
                              f"parameters: {listing} (devrl figure {name} --list describes "
                              "them)")
        values[key] = check_value(key, parse_value(text), parameters[key].annotation)
    check_against_data(name, parameters, values)
    return values


def data_sets_read(parameters: dict[str, Parameter], scale: str) -> list[str]:
    """The data folders the notebook reads at `scale`, from its `scale` parameter's comment
    (`reads data/llc-<scale> and data/craftax-<scale>`), the one place each notebook states it."""
    comment = parameters["scale"].comment if "scale" in parameters else ""
    return [f"{stem}-{scale}" for stem in re.findall(r"data/([A-Za-z0-9_-]+?)-<scale>", comment)]


def check_against_data(name: str, parameters: dict[str, Parameter],
                       values: dict[str, Any]) -> None:
    """Check `scale` and `seeds` against the scales and the data the notebook reads, before a
    kernel starts: a value the notebook would refuse is refused here (exit status 2)."""
    merged = {key: p.default for key, p in parameters.items()} | values
    scale = merged.get("scale")
    if "scale" in merged and scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: must be one of {', '.join(SCALES)}")
    if merged.get("recompute") or "scale" not in merged:
        return
    folders = [data_root() / stem for stem in data_sets_read(parameters, scale)]
    for folder in folders:
        if not (folder / "manifest.json").exists():
            present = sorted(s for s in SCALES if all(
                (data_root() / stem).exists() for stem in data_sets_read(parameters, s)))
            raise ConfigError(f"scale={scale!r} is not allowed with recompute=False: {folder} "
                              f"holds no data set; allowed: {', '.join(present) or 'none'}, or "
                              "-p recompute True to make it")
    seeds = merged.get("seeds")
    if seeds and folders and "unused" not in parameters["seeds"].comment:
        runs = json.loads((folders[0] / "manifest.json").read_text()).get("runs", [])
        available = sorted({r["seed"] for r in runs})
        if runs and not set(seeds) <= set(available):
            raise ConfigError(f"seeds={seeds} is not allowed: {folders[0]} holds seeds "
                              f"{available}")


def is_default(name: str, values: dict[str, Any]) -> bool:
    parameters = read_parameters(notebook_path(name))
    return all(parameters[key].default == value for key, value in values.items())


def default_output_dir(name: str, values: dict[str, Any]) -> Path:
    """The book's build for the default parameters; otherwise a folder of this notebook and
    these values outside it, so a rerun never replaces the book's figures."""
    if is_default(name, values):
        return repo_root() / "_build" / "papermill"
    key = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
    return runs_root().parent / "figures" / f"{name}-{key}"


def notebook_lock(name: str):
    """One `devrl figure NAME` at a time (its recompute writes data/ and a shared cache)."""
    folder = runs_root() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return held_lock(folder / f"figure-{name}.lock", 0.0, lambda holder: (
        f"name={name!r} is not allowed now: another devrl figure {name} is running ({holder}); "
        "wait for it"))


def ensure_kernel() -> str:
    """Register this Python as the Jupyter kernel `devrl` (in its own prefix) if it is missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name="devrl", prefix=sys.prefix)
    return KERNEL_NAME


def run_figure(name: str, parameters: dict[str, Any], timeout: float = 3600.0,
               output_dir: Path | None = None) -> Path:
    """Execute notebook `name` with papermill and `parameters` into one output folder (the
    executed notebook and, unless it is the book's build, the figure's exports); return the
    executed notebook. `output_dir` defaults to `default_output_dir`."""
    import jupytext
    import papermill

    path = notebook_path(name)
    book = output_dir is None and is_default(name, parameters)
    output_dir = Path(output_dir) if output_dir else default_output_dir(name, parameters)
    with notebook_lock(name):
        output_dir.mkdir(parents=True, exist_ok=True)
        source = output_dir / f".{name}.source.ipynb"
        jupytext.write(jupytext.read(path), source)
        executed = output_dir / f"{name}.ipynb"
        previous = os.environ.get("DEVRL_FIGURES")
        if not book:  # the kernel inherits this: exports go beside the executed notebook
            os.environ["DEVRL_FIGURES"] = str(output_dir)
        try:
            papermill.execute_notebook(
                str(source), str(executed), parameters=parameters,
                kernel_name=ensure_kernel(), cwd=str(path.parent), execution_timeout=timeout,
                progress_bar=False)
        finally:
            if previous is None:
                os.environ.pop("DEVRL_FIGURES", None)
            else:
                os.environ["DEVRL_FIGURES"] = previous
            source.unlink(missing_ok=True)
    return executed
