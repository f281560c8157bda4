"""The built book: the strict build from the committed data, read in headless Chromium with the
network blocked (charts render offline, every page fits a desktop and a phone, prose points only
at tables on its page, pages stay light), cite boxes and downloads, and the verdicts and
statuses the pages state. Its own file, so that pytest-xdist (`make test`, `--dist loadfile`)
builds the book on one worker while the other recomputes the smoke notebooks of test_book.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_book import CRAFTAX_NOTEBOOKS, FIGURES, PUBLISHED, ROOT


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
