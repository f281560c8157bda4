"""What makes a figure citable and readable outside the book: numbers from the toc, BibTeX,
build info, the exported files (titled, with the plotted data) and the charts' text
alternatives. Fast: no notebook runs here (the built book is checked in test_book)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import altair as alt
import pandas as pd
import pytest

from devrl.book import cite
from devrl.book.plots import TITLE_WIDTH, Figure, describe_chart, mean_band, wrap_titles

ROOT = Path(__file__).resolve().parents[1]


def write_book(root: Path, toc: str, pages: dict[str, str]) -> Path:
    (root / "_toc.yml").write_text(toc)
    for name, text in pages.items():
        (root / f"{name}.md").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.md").write_text(text)
    return root


def figure_page(*names: str) -> str:
    return "\n".join(f"```{{glue:figure}} {n}\n:name: {n}\n\n**Title of {n}.** More text.\n```\n"
                     for n in names)


TOC = """format: jb-book
root: intro
parts:
  - caption: One
    chapters:
      - file: a
        sections:
          - file: b
  - caption: Two
    chapters:
      - file: c
"""


def test_figures_are_numbered_in_toc_order_with_their_caption_titles(tmp_path):
    root = write_book(tmp_path, TOC, {"intro": "# Intro\n", "a": figure_page("fig-a1", "fig-a2"),
                                      "b": figure_page("fig-b"), "c": figure_page("fig-c"),
                                      "orphan": figure_page("fig-orphan")})
    assert cite.toc_files(root) == ["intro", "a", "b", "c"]
    assert cite.figure_numbers(root) == {"fig-a1": 1, "fig-a2": 2, "fig-b": 3, "fig-c": 4}
    assert [f.title for f in cite.figures(root)][:2] == ["Title of fig-a1", "Title of fig-a2"]
    assert cite.figures(root)[2].document == "b"
    assert cite.figure_number("fig-orphan", root) is None  # not in the toc: unpublished
    # a part appended later leaves every published number where it was
    write_book(root, TOC + "  - caption: Three\n    chapters:\n      - file: orphan\n", {})
    assert cite.figure_numbers(root) == {"fig-a1": 1, "fig-a2": 2, "fig-b": 3, "fig-c": 4,
                                         "fig-orphan": 5}
    (root / "c.md").write_text(figure_page("fig-c", "fig-b"))
    with pytest.raises(ValueError, match="fig-b"):
        cite.figure_numbers(root)


def test_the_books_figures_are_the_published_notebooks_in_order():
    published = re.findall(r"file: notebooks/([\w-]+)", (ROOT / "_toc.yml").read_text())
    assert list(cite.figure_numbers()) == [f"fig-{name}" for name in published]


def test_bibtex_names_number_version_commit_date_and_permalink():
    info = cite.BuildInfo(title="A book", authors="The authors", version="1.2.3",
                          commit="abc123def456", date="2026-12-04")
    entry = cite.figure_bibtex(info, 7, "fig-x", "Fifty_percent & more", "p.html#fig-x")
    assert entry.startswith("@misc{devrl-fig-x,")
    for text in ("Figure 7: Fifty\\_percent \\& more", "version = {1.2.3}", "abc123def456",
                 "2026-12-04", "url = {p.html#fig-x}", "year = {2026}", "{{The authors}}"):
        assert text in entry, text
    assert entry.count("{") == entry.count("}")
    # a standard parser (pybtex, which the book's bibliography already uses) reads it back
    from pybtex.database import parse_string

    parsed = parse_string(entry, "bibtex").entries["devrl-fig-x"]
    assert parsed.type == "misc" and parsed.fields["version"] == "1.2.3"
    assert parsed.fields["url"] == "p.html#fig-x"
    assert parsed.fields["title"] == "Figure 7: Fifty\\_percent \\& more"
    assert [str(p) for p in parsed.persons["author"]] == ["{The authors}"]
    book_entry = parse_string(cite.book_bibtex(info, "https://example.org/"), "bibtex")
    assert book_entry.entries["devrl-companion"].fields["version"] == "1.2.3"
    assert "1.2.3" in info.footer() and "abc123def456" in info.footer()


def test_build_info_reads_citation_cff_and_honours_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    info = cite.build_info()
    cff = cite.citation()
    assert info.title == cff["title"] and info.version == str(cff["version"])
    assert info.date == "1970-01-01"
    assert re.fullmatch(r"[0-9a-f]{12}(\+changes)?|unknown", info.commit)


def band_chart() -> alt.LayerChart:
    frame = pd.DataFrame({"step": [1, 2, 3] * 2, "mean": [0.1, 0.2, 0.3, 0.3, 0.2, 0.1],
                          "low": 0.0, "high": 0.5, "seeds": 3, "kind": ["a"] * 3 + ["b"] * 3})
    return mean_band(frame, x="step", x_title="env steps", y_title="share", color="kind",
                     color_title="variant").properties(title="A band chart")


def test_every_chart_gets_a_text_alternative_from_its_titles():
    spec = band_chart().to_dict()
    text = describe_chart(spec)
    assert text == "A band chart. Plots share against env steps. Series by variant."
    assert Figure(band_chart(), "fig-x").spec["description"] == text
    own = band_chart().properties(description="Written by hand.")
    assert Figure(own, "fig-x").spec["description"] == "Written by hand."


def test_long_titles_are_wrapped_so_they_do_not_widen_the_chart():
    long = "word " * 40
    spec = wrap_titles({"title": long, "vconcat": [{"title": {"text": long, "subtitle": "s"}}],
                        "datasets": {"d": [{"title": long}]}})
    assert all(len(line) <= TITLE_WIDTH for line in spec["title"])
    assert isinstance(spec["vconcat"][0]["title"]["text"], list)
    assert spec["vconcat"][0]["title"]["subtitle"] == "s"
    assert spec["datasets"]["d"][0]["title"] == long  # data is never touched
    assert isinstance(Figure(band_chart().properties(title=long), "fig-x").spec["title"], list)


def test_exports_carry_the_number_and_title_and_the_plotted_data(tmp_path):
    figure = Figure(band_chart(), "fig-x")
    paths = figure.save(tmp_path, number=12)
    assert sorted(p.suffix for p in paths) == [".csv", ".png", ".svg"]
    svg = (tmp_path / "fig-x.svg").read_text()
    assert "Figure 12: A band chart" in svg
    data = pd.read_csv(tmp_path / "fig-x.csv")
    assert len(data) == 6 and {"step", "mean", "low", "high", "kind"} <= set(data.columns)
    assert "Figure" not in str(figure.spec.get("title"))  # the page's chart: the caption numbers it
    unnumbered = Figure(band_chart(), "fig-y")
    unnumbered.save(tmp_path)
    assert "Figure" not in (tmp_path / "fig-y.svg").read_text()


def test_the_runs_a_figure_shows_subtitle_its_exports_but_not_its_chart(tmp_path):
    runs = "3 seeds (0, 1, 2) at the cpu scale, 8,000,000 env steps each"
    figure = Figure(band_chart(), "fig-x")
    figure.save(tmp_path, number=12, runs=runs)
    svg = (tmp_path / "fig-x.svg").read_text()
    assert "Figure 12: A band chart" in svg and f"Data: {runs}" in svg
    assert runs not in json.dumps(figure.spec)  # on the page, the caption carries it
    figure.save(tmp_path, runs=runs)  # unnumbered: still subtitled
    assert f"Data: {runs}" in (tmp_path / "fig-x.svg").read_text()


def test_charts_with_several_tables_export_them_stacked():
    a = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    b = alt.Chart(pd.DataFrame({"x": [5], "z": [6]})).mark_point().encode(x="x", y="z")
    data = Figure(alt.layer(a, b), "fig-z").data()
    assert sorted(data["part"].unique()) == [1, 2] and len(data) == 3


def test_reader_tables_show_integers_as_integers_and_no_index():
    import pandas as pd

    from devrl.book.plots import reader_table

    frame = pd.DataFrame({"seed": [0, 1], "env steps": [81920.0, 163840.0],
                          "p": [0.123456, 0.5], "small": [1e-5, 2e-4], "name": ["a", "b"],
                          "gap": [1.5, float("nan")]})
    html = reader_table(frame, digits={"p": 2}).to_html()
    cells = re.findall(r'<td id="[^"]+" class="data row(\d) col(\d)( devrl-num)?" >([^<]*)</td>',
                       html)
    rows = [[c[3] for c in cells if c[0] == r] for r in "01"]
    assert rows[0] == ["0", "81,920", "0.12", "1.00e-05", "a", "1.500"]
    assert rows[1] == ["1", "163,840", "0.50", "2.00e-04", "b", "–"]
    assert "row_heading" not in html  # no index column
    numeric = [bool(c[2]) for c in cells if c[0] == "0"]  # right-aligned by the book's CSS
    assert numeric == [True, True, True, True, False, True]


def test_png_data_urls_decode_to_the_image():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from devrl.book.plots import png_data_url

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    url = png_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert np.array_equal(decoded, image)


def test_steps_labels_read_like_the_axes():
    from devrl.book.plots import steps_label

    assert [steps_label(s) for s in (0, 512, 16384, 114688, 1048576, 7995392)] == [
        "0", "512", "16.4k", "115k", "1.05M", "8M"]
