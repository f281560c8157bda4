"""What the book says about itself: the number of each published figure (from `_toc.yml`), the
build's version, commit and date, and how to cite the book or one figure (from CITATION.cff).

Used by `devrl.book.plots` (exported figures carry their number) and by the book's Sphinx extension
(`book/_ext/devrl_book.py`: the cite box under every figure, the footer, the "How to cite" page).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devrl.datasets import repo_root

FIGURE_NAME = re.compile(r"^:name:\s*(fig-[\w-]+)\s*$", re.MULTILINE)
CAPTION_LEAD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)
DOWNLOADS = ("svg", "png", "csv")  # the files each published figure offers (devrl.book.plots)


def toc_files(root: Path | None = None) -> list[str]:
    """The documents of `_toc.yml` in reading order (root first), without their suffix."""
    import yaml

    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return files


@dataclass(frozen=True)
class PublishedFigure:
    number: int
    name: str  # the figure's label and anchor, e.g. fig-plant-overshoot
    document: str  # the toc document that holds it, e.g. notebooks/plant-overshoot
    title: str  # the caption's bold lead, without its final full stop


def figures(root: Path | None = None) -> list[PublishedFigure]:
    """Every figure the book publishes, numbered as Sphinx numbers them (`numfig` with
    `numfig_secnum_depth: 0`): through the book in the order of the table of contents, so a
    figure's number is its place among the `:name: fig-...` lines of the documents the toc
    lists. The title is the caption's bold lead (`**Plant placing over training.**`)."""
    root = root or repo_root()
    found: list[PublishedFigure] = []
    for document in toc_files(root):
        path = root / f"{document}.md"
        if not path.exists():
            continue
        text = path.read_text()
        for match in FIGURE_NAME.finditer(text):
            lead = CAPTION_LEAD.search(text, match.end())
            title = " ".join(lead.group(1).split()).rstrip(".") if lead else match.group(1)
            found.append(PublishedFigure(len(found) + 1, match.group(1), document, title))
    names = [f.name for f in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"figure names used twice in the book: {', '.join(duplicated)}")
    return found


def figure_numbers(root: Path | None = None) -> dict[str, int]:
    """{figure name: its number} (see `figures`)."""
    return {f.name: f.number for f in figures(root)}


def figure_number(name: str, root: Path | None = None) -> int | None:
    """The published number of figure `name`, or None while its chapter is not in the toc."""
    return figure_numbers(root).get(name)


@dataclass(frozen=True)
class BuildInfo:
    title: str
    authors: str
    version: str
    commit: str  # short hash, "+changes" when the work tree differs from it; "unknown" outside git
    date: str  # ISO date of the build (SOURCE_DATE_EPOCH when set, for reproducible builds)

    @property
    def year(self) -> str:
        return self.date[:4]

    def footer(self) -> str:
        return f"{self.title} · version {self.version} · commit {self.commit} · built {self.date}"


def citation(root: Path | None = None) -> dict[str, Any]:
    """CITATION.cff, parsed (dates kept as strings)."""
    import yaml

    root = root or repo_root()
    data = yaml.safe_load((root / "CITATION.cff").read_text())
    for key in ("date-released",):
        if key in data:
            data[key] = str(data[key])
    return data


def author_names(cff: dict[str, Any]) -> list[str]:
    names = []
    for author in cff.get("authors", []):
        if "name" in author:
            names.append(author["name"])
        else:
            names.append(" ".join(p for p in (author.get("given-names"),
                                              author.get("family-names")) if p))
    return names


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+changes" if changed else commit


def build_info(root: Path | None = None) -> BuildInfo:
    root = root or repo_root()
    cff = citation(root)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return BuildInfo(title=cff["title"], authors=" and ".join(author_names(cff)),
                     version=str(cff["version"]), commit=git_commit(root),
                     date=when.date().isoformat())


def _bibtex_escape(text: str) -> str:
    return re.sub(r"([&%$#_])", r"\\\1", text)


def book_bibtex(info: BuildInfo, url: str = "") -> str:
    fields = [("title", info.title), ("author", f"{{{info.authors}}}"),
              ("year", info.year), ("version", info.version),
              ("note", f"Jupyter Book, commit {info.commit}, built {info.date}")]
    if url:
        fields.append(("url", url))
    return _entry("misc", "devrl-companion", fields)


def figure_bibtex(info: BuildInfo, number: int, name: str, title: str, url: str) -> str:
    """A BibTeX entry for one figure: its number and title, the book's version, commit and
    build date, and its permalink."""
    fields = [("title", f"Figure {number}: {title}"), ("author", f"{{{info.authors}}}"),
              ("booktitle", info.title), ("year", info.year), ("version", info.version),
              ("note", f"Figure {number} ({name}); commit {info.commit}, built {info.date}"),
              ("url", url)]
    return _entry("misc", f"devrl-{name}", fields)


def _entry(kind: str, key: str, fields: list[tuple[str, str]]) -> str:
    lines = [f"@{kind}{{{key},"]
    for field, value in fields:
        value = value if field in ("url",) else _bibtex_escape(value)
        lines.append(f"  {field} = {{{value}}},")
    lines.append("}")
    return "\n".join(lines)
