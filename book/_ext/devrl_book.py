"""The book's own Sphinx extension: what makes a figure citable from its page.

* Under every numbered figure, a cite box: its number, links to its SVG, PNG and the data it
  plots (CSV), and a BibTeX entry with the book's version, commit and build date and the
  figure's permalink (filled in by `devrl.js` from the address the page is read at).
* On every page, a footer with the book's version, commit and build date, linking the
  "How to cite" page.
* The `{devrl-citation}` directive: the book's citation, generated from CITATION.cff; the
  `{devrl-figure-list}` directive: every figure with its page and downloads.
* After the build, the figures' files are copied from `devrl.book.plots.figures_root()` (where
  the notebooks exported them) into `figures/` of the site; a missing one fails the build.

The logic (numbers, BibTeX, build info) lives in `devrl.book.cite`, which the tests cover.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

from devrl.book import cite
from devrl.book.plots import figures_root

LOGGER = logging.getLogger(__name__)
CITE_PAGE = "book/cite"


def cite_box(app: Sphinx, docname: str, name: str, number: int, title: str) -> str:
    info = app.env.devrl_build_info
    up = "../" * docname.count("/")
    links = ", ".join(
        f'<a href="{up}figures/{name}.{kind}" download>{label}</a>'
        for kind, label in (("svg", "SVG"), ("png", "PNG"), ("csv", "data (CSV)")))
    relative = f"{app.builder.get_target_uri(docname)}#{name}"
    entry = cite.figure_bibtex(info, number, name, title, relative)
    return (f'<div class="devrl-cite" data-figure="{name}">'
            f'<p>Figure {number} · download {links}</p>'
            f'<details><summary>Cite Figure {number} (BibTeX)</summary>'
            f'<pre class="devrl-bibtex" data-anchor="{name}">{html.escape(entry)}</pre>'
            "</details></div>")


def add_cite_boxes(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    numbers = app.env.toc_fignumbers.get(docname, {}).get("figure", {})
    expected = {f.name: f for f in app.env.devrl_figures}
    for figure in list(doctree.findall(nodes.figure)):
        names = [i for i in figure["ids"] if i.startswith("fig-")]
        if not names or names[0] not in numbers:
            continue
        name, number = names[0], numbers[names[0]][0]
        known = expected.get(name)
        if known is None or known.number != number:  # the exported images carry this number
            raise ExtensionError(f"{name}: Sphinx numbers it {number}, devrl.book.cite.figures says "
                                 f"{known.number if known else 'nothing'}")
        box = nodes.raw("", cite_box(app, docname, name, number, known.title), format="html")
        figure.parent.insert(figure.parent.index(figure) + 1, box)


def page_footer(app: Sphinx, pagename: str, templatename: str, context: dict,
                doctree) -> None:
    info = app.env.devrl_build_info
    cite = context["pathto"](CITE_PAGE) if CITE_PAGE in app.env.found_docs else ""
    link = f' · <a href="{cite}">How to cite</a>' if cite else ""
    context["theme_extra_footer"] = f"<p>{html.escape(info.footer())}{link}</p>"


class CitationDirective(Directive):
    """The book's citation from CITATION.cff: a sentence and a BibTeX entry."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        info = env.devrl_build_info
        cff = cite.citation()
        sentence = (f"{info.authors} ({info.year}). {cff['title']}, version {info.version} "
                    f"(commit {info.commit}, built {info.date}).")
        return [nodes.paragraph(text=sentence),
                nodes.literal_block(cite.book_bibtex(info), cite.book_bibtex(info),
                                    language="bibtex"),
                nodes.paragraph(text=str(cff.get("message", "")).strip())]


class FigureListDirective(Directive):
    """Every published figure: number, title, its page, and its three downloads."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        here = env.docname
        up = "../" * here.count("/")
        rows = []
        for f in env.devrl_figures:
            page = env.app.builder.get_relative_uri(here, f.document)
            files = " ".join(f'<a href="{up}figures/{f.name}.{kind}" download>{kind.upper()}</a>'
                             for kind in cite.DOWNLOADS)
            rows.append(f'<tr><td>{f.number}</td><td><a href="{page}#{f.name}">'
                        f"{html.escape(f.title)}</a></td><td>{files}</td></tr>")
        table = ('<table class="table devrl-figure-list"><thead><tr><th>Figure</th>'
                 "<th>Title</th><th>Downloads</th></tr></thead><tbody>"
                 + "".join(rows) + "</tbody></table>")
        return [nodes.raw("", table, format="html")]


def builder_inited(app: Sphinx) -> None:
    app.env.devrl_build_info = cite.build_info()
    app.env.devrl_figures = cite.figures()


def copy_figures(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = figures_root(), Path(app.outdir) / "figures"
    target.mkdir(parents=True, exist_ok=True)
    missing = []
    published = {name for numbers in app.env.toc_fignumbers.values()
                 for name in numbers.get("figure", {}) if name.startswith("fig-")}
    for name in sorted(published):
        for kind in cite.DOWNLOADS:
            path = source / f"{name}.{kind}"
            if path.exists():
                shutil.copy2(path, target / path.name)
            else:
                missing.append(path.name)
    if missing:
        raise ExtensionError(f"figure files missing in {source} (rerun their notebooks): "
                             f"{', '.join(missing)}")


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", builder_inited)
    app.connect("doctree-resolved", add_cite_boxes)
    app.connect("html-page-context", page_footer)
    app.connect("build-finished", copy_figures)
    app.add_directive("devrl-citation", CitationDirective)
    app.add_directive("devrl-figure-list", FigureListDirective)
    app.add_js_file("devrl.js")
    return {"parallel_read_safe": False, "parallel_write_safe": True}
