"""The package's layers (README, Layout): each module imports only its own layer and the layers
below it, no study imports another study, toys never import studies, and no import circle runs
through the package. Every import counts, those inside functions too: an import moved into a
function to dodge a circle is still an arrow."""

import ast
import importlib
import re
from pathlib import Path

import pytest

import devrl

PACKAGE = Path(devrl.__file__).resolve().parent

# Bottom to top. A module may import modules of its own layer and of the layers below it.
LAYERS = (
    ("base", ("devrl", "devrl.core.base")),
    ("core", ("devrl.core",)),
    ("runs", ("devrl.runs",)),
    ("measures", ("devrl.measures",)),
    ("datasets", ("devrl.datasets",)),
    ("toys", ("devrl.toys",)),
    ("studies", ("devrl.studies",)),
    ("book", ("devrl.book",)),
    ("cli", ("devrl.cli",)),
)
INDEPENDENT = ("devrl.studies",)  # the modules under each of these never import one another


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer_of(name: str) -> int:
    """The index in LAYERS of the most specific prefix naming `name` (a package or a module)."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None or (rank == 0 and name != "devrl" and name != "devrl.core.base"):
        raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in {__file__}")
    return rank


def imports(name: str, path: Path, known: dict[str, Path], text: str | None = None
            ) -> list[tuple[str, int]]:
    """(imported devrl module, line) for every import in the module (or in `text`, the code of
    `path`), at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from devrl.measures import chao` imports the module devrl.measures.chao
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "devrl" or target.startswith("devrl."):
                while target not in known:  # `import devrl.x.y` of an attribute: its module
                    target = target.rpartition(".")[0]
                if target != name:
                    found.append((target, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_import_goes_down_the_layers_or_stays_in_its_own():
    wrong = []
    for name, targets in graph().items():
        for target, line in targets:
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]}), line {line}")
    assert not wrong, "imports up the layers:\n" + "\n".join(wrong)


def test_the_base_imports_nothing_of_the_package():
    assert [t for t, _ in graph()["devrl.core.base"]] == []


def test_no_study_imports_another_study():
    wrong = []
    for name, targets in graph().items():
        for group in INDEPENDENT:
            if not name.startswith(group + "."):
                continue
            for target, line in targets:
                if target.startswith(group + ".") and target != name:
                    wrong.append(f"{name} imports {target}, line {line}")
    assert not wrong, "studies import each other (move what they share down):\n" + \
        "\n".join(wrong)


def test_no_import_circle():
    edges = {name: sorted({t for t, _ in targets}) for name, targets in graph().items()}
    state: dict[str, str] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in edges.get(node, []):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_layers_name_every_module():
    for name in modules():
        layer_of(name)  # raises for a module outside every layer


# ------------------------------------------------------------------ names that outlive a move
ROOT = PACKAGE.parents[1]
DOTTED = re.compile(r"\bdevrl(?:\.[A-Za-z_]\w*)+")
CELL = re.compile(r"```\{code-cell\}[^\n]*\n(.*?)```", re.DOTALL)


# ------------------------------------------------------------------ what a notebook may import
# A figure's notebook imports its part's study (devrl.studies.<part>, which hands it the shared
# helpers it needs) and the plot module; a measure or a toy model only where the figure is about
# that instrument or toy itself (the issue-30 rule). Each allowance names what the figure shows.
ABOUT = {
    "llc-validation": {"devrl.measures.known"},  # the estimator against known answers
    "policy-llc": {"devrl.measures.policy_llc"},  # the policy estimator's own settings
    "essential-dynamics": {"devrl.measures.dynamics"},  # essential dynamics, the method
    "llc-regime": {"devrl.measures.regime"},  # the regime rule and its grid
    "output-llc": {"devrl.measures.output_llc"},  # the output layer's estimator and closed form
    "designed-states": {"devrl.measures.designed_states"},  # the designed stimulus states
    "agent-episodes": {"devrl.measures.episode_film"},  # the films of episodes
    "toy-credit-routing": {"devrl.toys.credit"},  # the credit toy
    "toy-plant-overshoot": {"devrl.toys.plant"},  # the plant toy
}
PLOTS = "devrl.book.plots"


def notebook_imports() -> dict[str, set[str]]:
    """{notebook: the devrl modules its code cells import, at any depth}."""
    known = modules()
    out = {}
    for path in sorted((ROOT / "notebooks").glob("*.md")):
        code = "\n".join(line for cell in CELL.findall(path.read_text())
                         for line in cell.splitlines() if not line.startswith(":"))
        out[path.stem] = {target for target, _ in imports(f"notebooks.{path.stem}", path, known,
                                                          text=code)}
    return out


def test_a_notebook_imports_its_study_the_plot_module_and_only_the_instrument_it_shows():
    found = notebook_imports()
    assert found, "no notebooks found"
    wrong = []
    for name, targets in found.items():
        studies = sorted(t for t in targets if t.startswith("devrl.studies."))
        if len(studies) != 1:
            wrong.append(f"{name}: imports {len(studies)} studies ({', '.join(studies) or 'none'})"
                         f"; a notebook imports exactly its part's study")
        rest = targets - set(studies) - {PLOTS} - ABOUT.get(name, set())
        if rest:
            wrong.append(f"{name}: imports {', '.join(sorted(rest))} (take it from its study)")
    stale = [f"{name}: allowed {sorted(allowed - found.get(name, set()))} but does not import it"
             for name, allowed in ABOUT.items() if allowed - found.get(name, set())]
    assert not wrong + stale, "\n".join(wrong + stale)


def resolves(dotted: str) -> bool:
    """Whether `devrl.a.b.c` names a module, or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attribute in parts[k:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def referenced_names() -> list[tuple[str, str]]:
    """(where, dotted name) for every name of the package imported by the notebooks' cells,
    the tests and the package, and every `devrl.x.y` written in the prose, the README, the
    Makefile and the package's strings (`python -m devrl.book.vendor`, error messages)."""
    found = []
    sources = [(p, p.read_text()) for p in sorted((ROOT / "tests").glob("*.py"))]
    sources += [(p, p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]
    sources += [(p, "\n".join(line for cell in CELL.findall(p.read_text())
                              for line in cell.splitlines() if not line.startswith(":")))
                for p in sorted((ROOT / "notebooks").glob("*.md"))]
    for path, text in sources:
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and \
                    (node.module or "").startswith("devrl"):
                found += [(path.name, f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(path.name, a.name) for a in node.names if a.name.startswith("devrl")]
    prose = [*ROOT.glob("*.md"), *(ROOT / "book").glob("*.md"), *(ROOT / "notebooks").glob("*.md"),
             ROOT / "Makefile", *PACKAGE.rglob("*.py")]
    for path in prose:
        found += [(path.name, m.group(0)) for m in DOTTED.finditer(path.read_text())]
    return found


def test_every_name_of_the_package_that_code_notebooks_or_prose_refer_to_exists():
    missing = sorted({f"{where}: {name}" for where, name in referenced_names()
                      if not resolves(name)})
    assert not missing, "names that no longer exist (moved?):\n" + "\n".join(missing)


def test_git_ignores_no_source_file_of_the_package():
    """A `.gitignore` pattern that matches a package folder (`runs/` once hid devrl/runs/) leaves
    its modules out of every commit while the tests still pass on the machine that has them."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--others", "--ignored", "--exclude-standard",
         "--", "src", "notebooks", "book", "tests"],
        capture_output=True, text=True, check=True).stdout.split()
    sources = [p for p in ignored if p.endswith((".py", ".md", ".yaml", ".js", ".css", ".bib"))
               and "__pycache__" not in p and "/_static/vendor/" not in p]
    assert not sources, "source files git ignores:\n" + "\n".join(sources)
