"""The book: notebook parameters, `devrl figure` under papermill (smoke scale, recomputing from
scratch), the strict book build, an offline render check in headless Chromium, CITATION.cff,
and the vendored browser scripts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal

from devrl.book.notebooks import check_overrides, matches, notebook_names, read_parameters
from devrl.core.base import ConfigError
from devrl.datasets import check_seeds, craftax_data
from devrl.runs.rundir import verify_manifest

ROOT = Path(__file__).resolve().parents[1]
DEVRL = str(Path(sys.executable).with_name("devrl"))
CRAFTAX_NOTEBOOKS = ["training-curves", "plant-overshoot", "plant-context"]
LLC_NOTEBOOKS = ["llc-validation", "policy-llc", "llc-by-layer", "llc-by-context",
                 "essential-dynamics"]
TOY_NOTEBOOKS = ["toy-plant-overshoot", "toy-plant-fit", "toy-lagoon", "toy-fork"]
REGIME_NOTEBOOKS = ["llc-regime"]
MEMORY_NOTEBOOKS = ["memory-return", "memory-horizon", "memory-ablation", "memory-probes"]
DIVERSITY_NOTEBOOKS = ["reward-variants", "diversity-over-training", "diversity-events",
                       "diversity-model"]
LOCALISATION_NOTEBOOKS = ["layer-reversion", "update-localisation", "credit-by-reward"]
# every notebook, published or not (the regime study reads the policy-LLC data, so it comes after)
NOTEBOOKS = (CRAFTAX_NOTEBOOKS + LLC_NOTEBOOKS + TOY_NOTEBOOKS + REGIME_NOTEBOOKS
             + MEMORY_NOTEBOOKS + DIVERSITY_NOTEBOOKS + LOCALISATION_NOTEBOOKS
             + ["toy-credit-routing", "grokking-lr-switch", "grokking-llc", "output-llc",
                "designed-states", "agent-episodes"])
FIGURES = {name: f"fig-{name}" for name in NOTEBOOKS}
# The data set (data/<name>-<scale>) each notebook reads.
DATA_SETS = {**{n: "craftax" for n in CRAFTAX_NOTEBOOKS}, **{n: "llc" for n in LLC_NOTEBOOKS},
             "llc-validation": "llc-validation", "toy-plant-overshoot": "toy-plant",
             "toy-plant-fit": "toy-plant", "toy-lagoon": "toy-feedback",
             "toy-fork": "toy-feedback", "llc-regime": "llc-regime",
             **{n: "memory" for n in MEMORY_NOTEBOOKS},
             **{n: "diversity" for n in DIVERSITY_NOTEBOOKS},
             **{n: "localisation" for n in LOCALISATION_NOTEBOOKS},
             "toy-credit-routing": "toy-credit", "grokking-lr-switch": "grokking",
             "grokking-llc": "grokking", "output-llc": "output-llc",
             "designed-states": "designed-states", "agent-episodes": "craftax"}
# The book publishes the notebooks its table of contents lists, in that order (a chapter joins
# it once its cpu-scale data is committed; `only_build_toc_files` leaves the others out).
PUBLISHED = re.findall(r"file: notebooks/([\w-]+)", (ROOT / "_toc.yml").read_text())


def test_every_notebook_has_the_shared_parameters_and_the_toc_lists_only_notebooks():
    assert sorted(NOTEBOOKS) == notebook_names()
    assert set(CRAFTAX_NOTEBOOKS) <= set(PUBLISHED) <= set(NOTEBOOKS)
    for name in NOTEBOOKS:
        parameters = read_parameters(ROOT / "notebooks" / f"{name}.md")
        assert parameters["scale"].default == "cpu" and parameters["scale"].annotation == "str"
        assert parameters["seeds"].default == [] and parameters["seeds"].annotation == "list[int]"
        assert parameters["recompute"].default is False
        text = (ROOT / "notebooks" / f"{name}.md").read_text()
        assert f":name: {FIGURES[name]}" in text and f"{{glue:figure}} {FIGURES[name]}" in text


def test_run_details_sit_in_captions_not_in_chart_titles():
    """What a figure shows (seeds, scale, env steps) is passed to `publish(..., runs=...)`, which
    glues it for the caption and subtitles the exports; a chart's title stays short (a long
    title widens the chart), and every glued `-runs` text is in its figure's caption."""
    for name in notebook_names():
        text = (ROOT / "notebooks" / f"{name}.md").read_text()
        for line in text.splitlines():
            if re.search(r"describe\(\)|\{scale\} scale|len\(\w+\.seeds\)\} seed", line):
                assert "runs=" in line or "print(" in line, f"{name}: run details in {line!r}"
        published = re.findall(r'publish\(chart, "(fig-[\w-]+)", runs=', text)
        for figure in published:
            caption = re.search(r"```\{glue:figure\} " + figure + r"\n(.*?)\n```", text, re.S)
            assert caption and f"{{glue:text}}`{figure}-runs`" in caption.group(1), \
                f"{name}: the caption of {figure} does not say what it shows"
        for figure in re.findall(r"\{glue:text\}`(fig-[\w-]+)-runs`", text):
            assert figure in published, f"{name}: {figure}-runs is glued by no publish(runs=)"


def test_no_space_between_a_pasted_value_and_the_punctuation_after_it():
    """`{glue:text}`x` ;` renders as "3 seeds ;": a template slip a reader sees."""
    sources = [*(ROOT / "notebooks").glob("*.md"), *(ROOT / "book").glob("*.md")]
    slips = [f"{path.name}: {match.group(0)}" for path in sources
             for match in re.finditer(r"\{[\w:-]+\}`[^`]+` [;,.:)]", path.read_text())]
    assert not slips, slips


def test_parameter_types_are_checked():
    assert matches([0, 1], "list[int]") and not matches([0, "1"], "list[int]")
    assert matches(None, "int | None") and matches(3, "int | None")
    assert matches(3, "float") and not matches(True, "int") and not matches(1, "bool")
    assert check_overrides("plant-overshoot", [("seeds", "[0]"), ("scale", "smoke"),
                                               ("recompute", "True")]) == {
        "seeds": [0], "scale": "smoke", "recompute": True}
    with pytest.raises(ConfigError, match="recompute='maybe' is not allowed: must be of type bool"):
        check_overrides("plant-overshoot", [("recompute", "maybe")])
    with pytest.raises(ConfigError, match="parameter 'sede' is not allowed"):
        check_overrides("plant-overshoot", [("sede", "[0]")])


def test_figure_numbers_follow_the_rules_of_flags():
    """Every numeric parameter of every notebook takes what a flag takes (devrl.core.config's one
    check): NaN and ±inf are refused, also as 1e999 (which Python reads as inf), and so is a
    fractional value where the default is an int; 3e0 is the int 3. Each error is one line
    naming the parameter and what it must be."""
    tried = set()
    for name in NOTEBOOKS:
        for parameter in read_parameters(ROOT / "notebooks" / f"{name}.md").values():
            kind = parameter.annotation
            if kind == "list[int]":
                for text in ("[1e999]", "[0.5]", "[0, -1e999]"):
                    with pytest.raises(ConfigError, match=rf"^{parameter.name}=\[.* is not "
                                       r"allowed: must be of type list\[int\] \(int: a finite "
                                       r"whole number\)$"):
                        check_overrides(name, [(parameter.name, text)])
            if kind not in ("int", "float"):
                continue
            tried.add(kind)
            for text in ("nan", "inf", "-inf", "1e999", "-1e999",
                         *(["3.5", "2.5e0"] if kind == "int" else [])):
                with pytest.raises(ConfigError, match=rf"^{parameter.name}=\S+ is not allowed: "
                                   rf"must be of type {kind} \(a finite (whole )?number\)$"):
                    check_overrides(name, [(parameter.name, text)])
            if kind == "int":
                assert check_overrides(name, [(parameter.name, "3e0")]) == {parameter.name: 3}
    assert tried == {"int", "float"}
    with pytest.raises(ConfigError) as unknown:
        check_overrides("essential-dynamics", [("walkz", "5")])
    assert "\n" not in str(unknown.value)
    assert str(unknown.value).startswith("parameter 'walkz' is not allowed: notebook "
                                         "'essential-dynamics' has these parameters: scale: str")
    assert "smoothing: float = 0.15; components: int = 3; walks: int = 500" in str(unknown.value)


def test_seeds_and_scale_are_validated():
    assert check_seeds([]) is None and check_seeds([2, 0]) == [0, 2]
    for bad in ([0, 0], [-1], ["0"], 3):
        with pytest.raises(ConfigError, match="seeds=.* is not allowed"):
            check_seeds(bad)
    with pytest.raises(ConfigError, match="scale='big' is not allowed: must be one of smoke"):
        craftax_data("big")


def run_figure(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DEVRL, "figure", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or os.environ.copy(), timeout=1800, check=False)


def test_bad_parameter_fails_before_execution(tmp_path):
    env = {**os.environ, "DEVRL_FIGURES": str(tmp_path / "figures")}
    result = run_figure("plant-overshoot", "-p", "seedz", "[0]", env=env)
    assert result.returncode == 2
    assert "parameter 'seedz' is not allowed: notebook 'plant-overshoot' has these parameters" \
        in result.stderr
    for name in ("scale: str = 'cpu'", "seeds: list[int] = []", "recompute: bool = False"):
        assert name in result.stderr
    assert result.stderr.count("\n") == 1  # one line, the allowed keys named in it
    wrong_type = run_figure("plant-overshoot", "-p", "seeds", "zero", env=env)
    assert wrong_type.returncode == 2 and "must be of type list[int]" in wrong_type.stderr
    infinite = run_figure("essential-dynamics", "-p", "smoothing", "1e999", env=env)
    assert infinite.returncode == 2 and infinite.stderr == (
        "devrl figure: error: smoothing=inf is not allowed: must be of type float (a finite "
        "number)\n")
    fractional = run_figure("training-curves", "-p", "updates_per_bin", "2.5", env=env)
    assert fractional.returncode == 2 and fractional.stderr == (
        "devrl figure: error: updates_per_bin=2.5 is not allowed: must be of type int (a "
        "finite whole number)\n")
    unknown = run_figure("no-such-figure", env=env)
    assert unknown.returncode == 2 and "name='no-such-figure' is not allowed" in unknown.stderr
    assert not (tmp_path / "figures").exists()  # nothing ran
    # Values the notebook itself would refuse are refused before a kernel starts.
    out = tmp_path / "out"
    for args, message in ((["-p", "scale", "huge"], "scale='huge' is not allowed: must be one"),
                          (["-p", "seeds", "[99]"], "seeds=[99] is not allowed: "),
                          (["-p", "scale", "smoke"], "scale='smoke' is not allowed with "
                                                     "recompute=False")):
        result = run_figure("plant-overshoot", *args, "--out", str(out), env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()


def test_figure_output_goes_to_one_folder_per_run_and_one_run_per_notebook(tmp_path,
                                                                           monkeypatch):
    from devrl.book import notebooks

    monkeypatch.setenv("DEVRL_RUNS", str(tmp_path / "runs"))
    assert notebooks.default_output_dir("plant-overshoot", {}) == ROOT / "_build" / "papermill"
    assert notebooks.default_output_dir("plant-overshoot", {"seeds": []}) == \
        ROOT / "_build" / "papermill"  # the defaults, spelled out
    other = notebooks.default_output_dir("plant-overshoot", {"seeds": [0]})
    assert ROOT not in other.parents and other.parent == tmp_path / "figures"
    assert other != notebooks.default_output_dir("plant-overshoot", {"seeds": [1]})
    env = {**os.environ, "DEVRL_RUNS": str(tmp_path / "runs")}
    with notebooks.notebook_lock("plant-overshoot"):
        result = run_figure("plant-overshoot", "-p", "seeds", "[0]", "--out",
                            str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    assert "another devrl figure plant-overshoot is running (pid" in result.stderr


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory) -> dict[str, str]:
    """Data, runs and figures in a temporary folder shared by the notebook tests, so the first
    one trains the smoke agent and the others reuse the complete run."""
    root = tmp_path_factory.mktemp("book-smoke")
    return {**os.environ, "DEVRL_DATA": str(root / "data"), "DEVRL_RUNS": str(root / "runs"),
            "DEVRL_FIGURES": str(root / "figures")}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_recomputes_at_smoke_scale(name, smoke_env):
    """The first notebook of each data set recomputes it from scratch at the smoke scale (training
    included); the others of the same data set rerun under papermill on what it made, so a data
    set is built once per test session."""
    out = Path(smoke_env["DEVRL_FIGURES"]) / name
    made = (Path(smoke_env["DEVRL_DATA"]) / f"{DATA_SETS[name]}-smoke" / "manifest.json").exists()
    result = run_figure(name, "-p", "scale", "smoke", "-p", "recompute", str(not made),
                        "-p", "seeds", "[0]", "--out", str(out), env=smoke_env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = Path(smoke_env["DEVRL_DATA"]) / ("memory-smoke" if name in MEMORY_NOTEBOOKS
                                            else "craftax-smoke")
    assert verify_manifest(data) == []
    manifest = json.loads((data / "manifest.json").read_text())
    assert {run["seed"] for run in manifest["runs"]} == {0}
    assert all(run["complete"] and run["config"]["width"] == 32 for run in manifest["runs"])
    if name in MEMORY_NOTEBOOKS:
        assert sorted(run["memory"] for run in manifest["runs"]) == [0, 4]
        assert set(manifest["tables"]) == {"training", "episodes", "horizon",
                                           "horizon_summary", "probes"}
    if name in DIVERSITY_NOTEBOOKS:
        diversity = Path(smoke_env["DEVRL_DATA"]) / "diversity-smoke"
        assert verify_manifest(diversity) == []
        div_manifest = json.loads((diversity / "manifest.json").read_text())
        assert {run["variant"] for run in div_manifest["runs"]} == {
            "default", "no_plant", "every_plant", "plant_x4"}
        assert all(run["config"].get("reward", "default") == run["variant"]
                   for run in div_manifest["runs"])
    if name in LOCALISATION_NOTEBOOKS:
        where = Path(smoke_env["DEVRL_DATA"]) / "localisation-smoke"
        assert verify_manifest(where) == []
        where_manifest = json.loads((where / "manifest.json").read_text())
        assert [run["seed"] for run in where_manifest["runs"]] == [0]
        assert where_manifest["control"]["data_set"] == "craftax-smoke"
    if name.startswith("grokking"):
        grok = Path(smoke_env["DEVRL_DATA"]) / "grokking-smoke"
        assert verify_manifest(grok) == []
        grok_manifest = json.loads((grok / "manifest.json").read_text())
        assert {(r["schedule"], r["seed"]) for r in grok_manifest["runs"]} == {
            ("base", 0), ("x10", 0), ("x50", 0)}
        assert grok_manifest["sampler"]["nbeta"] == grok_manifest["regime"]["nbeta"]
    if name == "output-llc":
        layer = Path(smoke_env["DEVRL_DATA"]) / "output-llc-smoke"
        assert verify_manifest(layer) == []
        layer_manifest = json.loads((layer / "manifest.json").read_text())
        assert [run["seed"] for run in layer_manifest["runs"]] == [0]
        assert layer_manifest["source"]["src/devrl/measures/output_llc.py"]  # provenance recorded
    if name == "designed-states":
        designed = Path(smoke_env["DEVRL_DATA"]) / "designed-states-smoke"
        assert verify_manifest(designed) == []
        designed_manifest = json.loads((designed / "manifest.json").read_text())
        assert [run["seed"] for run in designed_manifest["runs"]] == [0]
        assert designed_manifest["worlds"] == 4
    if name == "toy-credit-routing":
        assert verify_manifest(Path(smoke_env["DEVRL_DATA"]) / "toy-credit-smoke") == []
    if name in LLC_NOTEBOOKS:
        llc = Path(smoke_env["DEVRL_DATA"]) / "llc-smoke"
        assert verify_manifest(llc) == []
        llc_manifest = json.loads((llc / "manifest.json").read_text())
        assert [run["seed"] for run in llc_manifest["runs"]] == [0]
        assert llc_manifest["step_size"] in llc_manifest["settings"]["calibration_step_sizes"]
    if name in REGIME_NOTEBOOKS:
        regime = Path(smoke_env["DEVRL_DATA"]) / "llc-regime-smoke"
        assert verify_manifest(regime) == []
        assert json.loads((regime / "manifest.json").read_text())["policy_grid"]["num_steps"] == 40
    if name == "llc-validation":
        assert verify_manifest(Path(smoke_env["DEVRL_DATA"]) / "llc-validation-smoke") == []
    if name in TOY_NOTEBOOKS:
        toy = "toy-plant" if name.startswith("toy-plant") else "toy-feedback"
        assert verify_manifest(Path(smoke_env["DEVRL_DATA"]) / f"{toy}-smoke") == []
    svg = out / f"{FIGURES[name]}.svg"  # the exports beside the executed notebook
    assert svg.read_text().lstrip().startswith("<svg")
    assert (svg.with_suffix(".png")).read_bytes()[:4] == b"\x89PNG"
    executed_path = Path(result.stdout.strip().splitlines()[-1])
    assert executed_path == out / f"{name}.ipynb"
    executed = json.loads(executed_path.read_text())
    glued = [output["metadata"]["scrapbook"]["name"] for cell in executed["cells"]
             for output in cell.get("outputs", []) if "scrapbook" in output.get("metadata", {})]
    assert FIGURES[name] in glued
    injected = [c for c in executed["cells"]
                if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and f"recompute = {not made}" in "".join(injected[0]["source"])


@pytest.mark.slow
def test_diversity_study_rebuilds_from_its_digests_without_the_runs(smoke_env, tmp_path,
                                                                    monkeypatch):
    """Each finished reward run is digested into data/reward-runs-<scale>/ (committed), so the
    study is rebuilt from the digests without retraining when the runs folder is lost; a digest
    that does not match its manifest is refused, and one made with other evaluation settings is
    not used (its run would be retrained)."""
    from devrl import datasets
    from devrl.core.config import make_config
    from devrl.studies import diversity

    data = tmp_path / "data"
    if Path(smoke_env["DEVRL_DATA"]).exists():  # the notebooks' data and runs, if they ran
        shutil.copytree(smoke_env["DEVRL_DATA"], data)
    monkeypatch.setenv("DEVRL_DATA", str(data))
    monkeypatch.setenv("DEVRL_RUNS", smoke_env["DEVRL_RUNS"])
    before = diversity.diversity_data("smoke", [0], recompute=True)  # trains only if needed
    digests = data / "reward-runs-smoke"
    assert sorted(p.name for p in digests.iterdir() if p.is_dir()) == [
        "every_plant-seed_0", "no_plant-seed_0", "plant_x4-seed_0"]
    assert all(verify_manifest(p) == [] for p in digests.iterdir() if p.is_dir())
    assert verify_manifest(digests) == []  # the index of the digests
    assert sorted(json.loads((digests / "manifest.json").read_text())["digests"]) == [
        "every_plant-seed_0", "no_plant-seed_0", "plant_x4-seed_0"]

    def no_training(*args, **kwargs):
        raise AssertionError("the study retrained a run that has a digest")

    monkeypatch.setattr(diversity, "run_sweep", no_training)
    monkeypatch.setattr(datasets, "run_sweep", no_training)
    monkeypatch.setenv("DEVRL_RUNS", str(tmp_path / "lost"))  # an empty runs folder
    after = diversity.diversity_data("smoke", [0], recompute=True)
    for name in ("checkpoints", "network", "jsd", "events"):
        assert_frame_equal(before.tables[name], after.tables[name])
    assert {r.get("digest") for r in after.manifest["runs"]} == {
        None, "no_plant-seed_0", "every_plant-seed_0", "plant_x4-seed_0"}
    # Without training, the study holds the runs that have a digest and says which it lacks.
    shutil.move(digests / "plant_x4-seed_0", tmp_path / "plant_x4")
    partial = diversity.diversity_data("smoke", [0], recompute=True, train=False)
    assert sorted(partial.manifest["held"]) == ["every_plant-seed_0", "no_plant-seed_0"]
    assert len(partial.manifest["planned"]) == 3
    assert "plant_x4" not in set(partial.checkpoints["variant"])
    shutil.move(tmp_path / "plant_x4", digests / "plant_x4-seed_0")

    shutil.copytree(digests / "no_plant-seed_0", tmp_path / "kept")
    with open(digests / "no_plant-seed_0" / "episodes.parquet", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ConfigError, match="digest=.*no_plant-seed_0.*does not match"):
        diversity.diversity_data("smoke", [0], recompute=True)
    shutil.rmtree(digests / "no_plant-seed_0")
    shutil.copytree(tmp_path / "kept", digests / "no_plant-seed_0")
    assert diversity.diversity_data("smoke", [0], recompute=True).tables["checkpoints"].equals(
        after.tables["checkpoints"])
    monkeypatch.setitem(datasets.EVAL_SETTINGS, "smoke",
                        {**datasets.EVAL_SETTINGS["smoke"], "episodes": 5})
    with pytest.raises(AssertionError, match="retrained"):
        diversity.diversity_data("smoke", [0], recompute=True)
    assert diversity.read_digest(digests / "every_plant-seed_0",
                                 make_config("smoke", reward="every_plant", seed=0),
                                 datasets.common_probe(data / "craftax-smoke"), "smoke") is None


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """The book built from the committed data, strictly, into a temporary folder."""
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "DEVRL_FIGURES": str(out / "figures")}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "--all",
         "--path-output", str(out), "--warningiserror", "--nitpick", "--keep-going"],
        capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return out / "_build" / "html"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
    return found


def rendered_dom(page: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with all network blocked."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=20000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_book_pages_render_their_charts_offline(built_book):
    pages = {"book/intro.html": [FIGURES[name] for name in CRAFTAX_NOTEBOOKS],
             **{f"notebooks/{name}.html": [FIGURES[name]] for name in PUBLISHED}}
    for page, figures in pages.items():
        html = (built_book / page).read_text()
        assert not re.search(r'<(script|img)[^>]+src="(https?:)?//', html), page
        assert not re.search(r'<link[^>]+href="(https?:)?//[^"]+"[^>]*stylesheet', html), page
        dom = rendered_dom(built_book / page)
        charts = re.findall(r'<div class="devrl-chart[^"]*" id="[^"]+" data-figure="([^"]+)"'
                            r'[^>]*>(.*?)</div>\s*<script', dom, flags=re.DOTALL)
        assert sorted(name for name, _ in charts) == sorted(figures), page
        for name, inner in charts:
            assert "Chart error" not in inner, (page, name, inner[:300])
            assert "<svg" in inner or "<canvas" in inner, (page, name)
    training = rendered_dom(built_book / "notebooks/training-curves.html")
    assert "<mjx-container" in training  # MathJax, served with the book, typeset the equations
    intro = (built_book / "book/intro.html").read_text()
    numbers = [f"Figure {i}" for i in range(1, len(PUBLISHED) + 1)]  # numbered through the book
    for figure, number in zip([FIGURES[name] for name in PUBLISHED], numbers, strict=True):
        page = (built_book / f"notebooks/{figure.removeprefix('fig-')}.html").read_text()
        assert f'id="{figure}"' in page and number in page
        if figure in {FIGURES[name] for name in CRAFTAX_NOTEBOOKS}:
            assert number in intro


PAGE_BYTES = 2_000_000  # a page, its inline images included, stays under ~2 MB
TABLE_WORDS = re.compile(r"\b(the|this|each|its) table\b|\btable (above|below)\b", re.IGNORECASE)


def prose_text(html: str) -> str:
    """The text of a page outside code, scripts, styles and its navigation."""
    html = re.sub(r"<(script|style|pre|code|nav)\b.*?</\1>", " ", html, flags=re.DOTALL)
    html = re.sub(r'<div class="(cell_input|bd-sidebar|bd-header|header-article)[^"]*".*?</div>',
                  " ", html, flags=re.DOTALL)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.slow
def test_prose_points_only_at_tables_on_its_page_and_pages_stay_light(built_book):
    """A page whose prose speaks of "the table" (or one above or below) shows a table; no page
    weighs more than PAGE_BYTES."""
    problems = []
    for page in book_pages(built_book):
        html = page.read_text()
        name = page.relative_to(built_book).as_posix()
        if len(html.encode()) > PAGE_BYTES:
            problems.append(f"{name} weighs {len(html.encode()):,} bytes")
        said = TABLE_WORDS.search(prose_text(html))
        if said and "<table" not in html:
            problems.append(f"{name} says '{said.group(0)}' but shows no table")
    assert not problems, "\n".join(problems)


LAYOUT_CHECK = (Path(__file__).with_name("layout_check.js")).read_text()
WIDTHS = (1400, 400)  # a desktop window and a phone
DESKTOP_SCALE = 0.9  # at 1400 px a chart is drawn at least this large (its text stays readable)


def layout_report(page: Path, width: int) -> dict:
    """What tests/layout_check.js finds on `page` read in a frame `width` px wide (headless
    Chromium cannot make its window narrower than 500 px), with all network blocked."""
    copy = page.with_name(page.stem + ".layout-check.html")
    copy.write_text(page.read_text().replace("</body>", f"<script>{LAYOUT_CHECK}</script></body>"))
    harness = page.with_name(page.stem + f".layout-{width}.html")
    harness.write_text(
        f'<html><body style="margin:0"><iframe src="{copy.name}" '
        f'style="width:{width}px;height:1000px;border:0"></iframe><script>'
        'window.addEventListener("message", function (e) { var p = document.createElement("pre");'
        ' p.id = "devrl-report"; p.textContent = e.data; document.body.appendChild(p); });'
        "</script></body></html>")
    try:
        dom = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={width + 100},1100",
             "--virtual-time-budget=20000", "--dump-dom", harness.as_uri()],
            capture_output=True, text=True, timeout=180, check=False).stdout
    finally:
        copy.unlink()
        harness.unlink()
    found = re.search(r'<pre id="devrl-report"[^>]*>(.*?)</pre>', dom, flags=re.DOTALL)
    assert found, f"{page.name}: the layout check reported nothing at {width} px"
    import html

    return json.loads(html.unescape(found.group(1)))


def book_pages(built: Path) -> list[Path]:
    return sorted(p for p in built.rglob("*.html") if "_static" not in p.parts
                  and p.name not in ("genindex.html", "search.html", "index.html"))


@pytest.mark.slow
def test_every_page_fits_a_desktop_and_a_phone(built_book):
    """No chart overflows its container or the text column, no panel, axis, legend or title is
    cut off, no page scrolls sideways, every chart has a text alternative, at 1400 px no chart
    is shrunk below DESKTOP_SCALE and no display equation needs scrolling."""
    problems, smallest = [], {}
    for page in book_pages(built_book):
        for width in WIDTHS:
            report = layout_report(page, width)
            assert report["width"] == width
            name = page.relative_to(built_book).as_posix()
            problems += [f"{name} at {width} px: {p}" for p in report["problems"]]
            for chart in report["charts"]:
                if "figure" in chart:
                    smallest[(width, chart["figure"])] = chart["scale"]
                    if width == WIDTHS[0] and chart["scale"] < DESKTOP_SCALE:
                        problems.append(f"{name} at {width} px: {chart['figure']} is drawn at "
                                        f"{chart['scale']:.2f} of its size")
                elif width == WIDTHS[0]:
                    problems.append(f"{name} at {width} px: equation {chart['equation']} "
                                    "scrolls")
    assert not problems, "\n".join(problems)
    assert {f for _, f in smallest} >= {FIGURES[n] for n in PUBLISHED}  # every chart measured


def test_layout_check_catches_a_chart_that_overflows(built_book, tmp_path):
    """The check itself: a page whose chart is forced wider than the column fails it."""
    page = built_book / f"notebooks/{PUBLISHED[0]}.html"
    broken = page.with_name("broken-layout.html")
    broken.write_text(page.read_text().replace(
        "</head>", "<style>.devrl-chart svg { max-width: none !important; width: 2000px; }"
        "</style></head>"))
    try:
        problems = layout_report(broken, 1400)["problems"]
    finally:
        broken.unlink()
    assert any("wider than its container" in p for p in problems), problems


def test_every_figure_has_its_cite_box_and_downloads(built_book):
    from devrl.book.cite import figures

    footer = re.compile(r"version [\d.]+ · commit [0-9a-f]{12}(\+changes)? · built \d{4}-\d\d-\d\d")
    for figure in figures():
        page = (built_book / f"{figure.document}.html").read_text()
        box = re.search(rf'<div class="devrl-cite" data-figure="{figure.name}">(.*?)</div>',
                        page, flags=re.DOTALL)
        assert box, figure.name
        assert f"Figure {figure.number} · download" in box.group(1)
        assert f"title = {{Figure {figure.number}: " in box.group(1)
        for kind in ("svg", "png", "csv"):
            assert f'href="../figures/{figure.name}.{kind}"' in box.group(1)
            assert (built_book / "figures" / f"{figure.name}.{kind}").stat().st_size > 0
        svg = (built_book / "figures" / f"{figure.name}.svg").read_text()
        assert f"Figure {figure.number}" in svg, figure.name  # the export names its number
        assert footer.search(page), figure.document
    cite = (built_book / "book/cite.html").read_text()
    assert "@misc" in cite and "devrl-figure-list" in cite
    assert cite.count("<tr>") == len(figures()) + 1


def page_text(page: Path) -> str:
    """A built page's text: tags dropped, entities decoded, whitespace collapsed."""
    import html

    text = re.sub(r"<(script|style)\b.*?</\1>", " ", page.read_text(), flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def verdict_words() -> dict[str, list[str]]:
    """Per published page, the verdict words that the functions judging its predictions return
    on the committed data."""
    from devrl.studies import memory
    from devrl.studies.localisation import toy_credit_data
    from devrl.studies.memory import memory_data
    from devrl.measures.verdicts import status, statuses
    from devrl.toys.credit import ROUTING_KIND, routing_verdicts

    data = memory_data("cpu")
    toy = toy_credit_data("cpu")
    final = memory.final_rows(data.training)
    return {
        "notebooks/memory-return.html": [
            memory.return_verdict(memory.return_gaps(data.training))["word"],
            memory.achievement_verdict(final)["word"]],
        "notebooks/memory-horizon.html": [
            memory.horizon_verdict(data.horizon_summary, data.manifest["kl_floor"])["word"]],
        "notebooks/memory-ablation.html": [memory.ablation_verdict(memory.final_rows(
            memory.ablation_effect(data.episodes)))["word"]],
        "notebooks/memory-probes.html": [memory.probes_verdict(data.probes)["word"]],
        "notebooks/toy-credit-routing.html": list(routing_verdicts(toy.values,
                                                                   toy.runs).values()),
        # the findings page pastes each chapter's status (devrl.measures.verdicts.status)
        "book/findings.html": [
            status(memory.return_verdict(memory.return_gaps(data.training))["verdict"],
                   memory.PREDICTION_KIND["return"]),
            status(memory.achievement_verdict(final)["verdict"],
                   memory.PREDICTION_KIND["achievements"]),
            status(memory.horizon_verdict(data.horizon_summary,
                                          data.manifest["kl_floor"])["verdict"],
                   memory.PREDICTION_KIND["horizon"]),
            status(memory.probes_verdict(data.probes)["verdict"],
                   memory.PREDICTION_KIND["probes"]),
            *statuses(routing_verdicts(toy.values, toy.runs), ROUTING_KIND).values()],
    }


@pytest.mark.slow
def test_the_findings_state_only_statuses_and_paste_every_one(built_book):
    """Every "Status: ..." of the findings page and every line of the intro's summary is one of
    the statuses of devrl.measures.verdicts (a missing glue key fails the build itself)."""
    from devrl.measures.verdicts import STATUSES

    words = "|".join(re.escape(s) for s in STATUSES)
    findings = page_text(built_book / "book/findings.html")
    stated = re.findall(rf"Status: ({words}|\S+)", findings)
    assert len(stated) >= 18 and all(s in STATUSES for s in stated), stated
    intro = page_text(built_book / "book/intro.html")
    start = intro.index("Each line is a claim")
    summary = intro[start:intro.index("Why this matters", start)]
    assert len(re.findall(rf": ({words}) ?\.", summary)) == 5, summary


@pytest.mark.slow
def test_pages_state_the_verdicts_their_functions_return(built_book):
    """Every verdict a page states is what its judging function returns on the committed data
    (the typed-verdict lint of test_verdicts.py keeps every other verdict out of the prose)."""
    for page, words in verdict_words().items():
        text = page_text(built_book / page)
        for word in words:
            assert re.search(rf"\s{re.escape(word)}[\s.,;:)]", text), \
                f"{page} does not state {word!r}"


def test_citation_cff_is_valid():
    import jsonschema
    import yaml

    spec = importlib.util.find_spec("cffconvert")
    assert spec is not None, "make setup installs cffconvert (for its CFF 1.2.0 schema)"
    schema_path = Path(spec.submodule_search_locations[0]) / "schemas" / "1.2.0" / "schema.json"
    schema = json.loads(schema_path.read_text())
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    # Dates stay strings, as the schema expects (YAML would make them datetime.date).
    citation["date-released"] = str(citation["date-released"])
    jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(citation)
    broken = {k: v for k, v in citation.items() if k != "authors"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_vendored_scripts_match_altair_and_refuse_bad_tarballs():
    import altair as alt
    import vl_convert

    from devrl.book.vendor import PACKAGES, check_integrity, versions

    pinned = versions()
    assert pinned["vega-lite"] == alt.VEGALITE_VERSION
    assert pinned["vega"].split(".")[0] == alt.VEGA_VERSION.split(".")[0]
    assert pinned["vega-embed"].split(".")[0] == alt.VEGAEMBED_VERSION.split(".")[0]
    assert pinned["vega"] == vl_convert.get_vega_version()  # SVG exports draw the same way
    with pytest.raises(RuntimeError, match="integrity mismatch"):
        check_integrity(b"not the tarball", PACKAGES[0].integrity)
