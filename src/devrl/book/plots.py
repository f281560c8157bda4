"""One Altair theme, a mean-and-band chart helper, and publishing a figure: glued for the book,
rendered offline in the browser from the vendored Vega bundle, and exported as SVG and PNG
(titled with the figure's number) and as CSV (the data it plots)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from devrl.core.base import atomic_write_bytes
from devrl.datasets import repo_root

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
# Okabe-Ito, readable for the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def figures_root() -> Path:
    """Where figures are exported as SVG and PNG: DEVRL_FIGURES, default `_build/figures/`."""
    return Path(os.environ.get("DEVRL_FIGURES") or repo_root() / "_build" / "figures")


@alt.theme.register("devrl", enable=True)
def devrl_theme() -> alt.theme.ThemeConfig:
    return {
        "config": {
            "font": FONT,
            "view": {"continuousWidth": 520, "continuousHeight": 260, "stroke": None},
            # labelSeparation: tick labels closer than 6 px are thinned out (Vega's default 0
            # lets log-axis labels touch, e.g. "200k300k").
            "axis": {"labelFontSize": 12, "titleFontSize": 13, "grid": True,
                     "gridColor": "#e6e6e6", "titleFontWeight": "normal",
                     "labelSeparation": 6},
            # Swatches are opaque even where the series is drawn as a pale band, so lines that
            # differ in colour can be told apart in the legend.
            "legend": {"labelFontSize": 12, "titleFontSize": 12, "orient": "bottom",
                       "direction": "horizontal", "symbolOpacity": 1, "symbolStrokeWidth": 3},
            "header": {"labelFontSize": 12, "titleFontSize": 13},
            "title": {"fontSize": 14, "anchor": "start", "fontWeight": "normal"},
            "range": {"category": PALETTE},
        }
    }


def round_floats(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Round floats to `digits` significant figures: the spec embedded in the page stays small."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].map(lambda v: float(f"{v:.{digits}g}"))
    return out


def mean_band(frame: pd.DataFrame, x: str, x_title: str, y_title: str,
              color: str | None = None, color_title: str | None = None,
              log_x: bool = False, y_format: str | None = None,
              width: int = 520, height: int = 200,
              color_domain: list[str] | None = None) -> alt.LayerChart:
    """Line of the mean over seeds and a band over their range (`mean`, `low`, `high` columns).
    `color_domain` fixes the order and colour of each series (the same series get the same
    colour in every chart drawn with the same domain)."""
    scale = alt.Scale(type="log") if log_x else alt.Undefined
    x_enc = alt.X(f"{x}:Q", title=x_title, scale=scale, axis=alt.Axis(format="~s"))
    axis = alt.Axis(format=y_format) if y_format else alt.Undefined
    if color and color_domain:
        color_enc = alt.Color(f"{color}:N", title=color_title, sort=color_domain,
                              scale=alt.Scale(domain=color_domain,
                                              range=PALETTE[:len(color_domain)]))
    elif color:
        color_enc = alt.Color(f"{color}:N", title=color_title)
    else:
        color_enc = alt.Undefined
    tooltip = [alt.Tooltip(f"{x}:Q", format=",", title=x_title),
               alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
               alt.Tooltip("high:Q", format=".3f"), alt.Tooltip("seeds:Q")]
    if color:
        tooltip.insert(0, alt.Tooltip(f"{color}:N"))
    base = alt.Chart(round_floats(frame)).encode(x=x_enc)
    band = base.mark_area(opacity=0.22).encode(
        y=alt.Y("low:Q", title=y_title, axis=axis), y2="high:Q", color=color_enc)
    line = base.mark_line(strokeWidth=2).encode(y="mean:Q", color=color_enc, tooltip=tooltip)
    return alt.layer(band, line).properties(width=width, height=height)


def _title_text(title: Any) -> str:
    if isinstance(title, dict):
        title = title.get("text", "")
    if isinstance(title, list):
        title = " ".join(str(t) for t in title)
    return str(title or "")


def describe_chart(spec: dict[str, Any]) -> str:
    """A text alternative for a chart: its title, then what each panel plots against what and
    how series are told apart, from the spec's encodings (axis titles, else field names)."""
    pairs: list[str] = []
    untitled: list[str] = []  # pairs named by field only (e.g. a band's line layer)
    series: list[str] = []

    def channel(encoding: dict[str, Any], name: str) -> tuple[str, bool]:
        enc = encoding.get(name)
        if not isinstance(enc, dict):
            return "", False
        title = _title_text(enc.get("title"))
        return (title, True) if title else (str(enc.get("field", "") or ""), False)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            encoding = node.get("encoding")
            if isinstance(encoding, dict):
                (x, x_titled), (y, y_titled) = channel(encoding, "x"), channel(encoding, "y")
                if x and y:
                    target = pairs if x_titled and y_titled else untitled
                    if f"{y} against {x}" not in target:
                        target.append(f"{y} against {x}")
                for name in ("color", "strokeDash", "shape"):
                    label, _ = channel(encoding, name)
                    if label and label not in series:
                        series.append(label)
            for key, value in node.items():
                if key not in ("data", "datasets", "config"):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(spec)
    pairs = pairs or untitled
    text = _title_text(spec.get("title")) or "Chart"
    if pairs:
        text += ". Plots " + "; ".join(pairs)
    if series:
        text += ". Series by " + ", ".join(series)
    return text + "."


TITLE_WIDTH = 72  # characters per line of a chart's title (Vega does not wrap titles)


def wrap_titles(node: Any) -> Any:
    """Break every title and subtitle of a spec into lines of at most `TITLE_WIDTH` characters:
    an unwrapped title widens the whole drawing to its own length."""
    import textwrap

    def lines(text: Any) -> Any:
        if isinstance(text, str) and len(text) > TITLE_WIDTH:
            return textwrap.wrap(text, TITLE_WIDTH)
        return text

    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                out[key] = lines(value)
            elif key == "title" and isinstance(value, dict):
                out[key] = {**value, **{k: lines(value[k]) for k in ("text", "subtitle")
                                        if k in value}}
            elif key in ("data", "datasets"):
                out[key] = value
            else:
                out[key] = wrap_titles(value)
        return out
    if isinstance(node, list):
        return [wrap_titles(item) for item in node]
    return node


class Figure:
    """A chart with a stable name. It renders as HTML that calls the page's vendored `vegaEmbed`
    (no network). In a Jupyter front end, display `figure.chart` instead (Altair's renderer).
    The spec carries a `description` (a text alternative; Vega writes it as the SVG's
    aria-label) unless the chart has one."""

    def __init__(self, chart: alt.TopLevelMixin, name: str):
        self.chart = chart
        self.name = name
        self.spec = chart.to_dict()
        self.spec.setdefault("description", describe_chart(self.spec))
        self.spec = wrap_titles(self.spec)

    def html(self) -> str:
        element = f"{self.name}-chart"  # one chart per figure on a page
        spec = json.dumps(self.spec, separators=(",", ":")).replace("</", "<\\/")
        return (
            f'<div class="devrl-chart" id="{element}" data-figure="{self.name}"></div>\n'
            "<script>(function () {\n"
            f'  var el = document.getElementById("{element}");\n'
            '  function fail(e) { el.textContent = "Chart error: " + e; }\n'
            '  try {\n'
            '    if (typeof vegaEmbed === "undefined") throw "the Vega scripts did not load";\n'
            f'    vegaEmbed(el, {spec}, {{"renderer": "svg", "actions": false}}).catch(fail);\n'
            '  } catch (e) { fail(e); }\n'
            "})();</script>")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        # Only HTML: in the book, glued outputs render every mime type they carry.
        return {"text/html": self.html(), "text/plain": f"<Figure {self.name}>"}

    def data(self) -> pd.DataFrame:
        """The data the chart plots: its one table, or its tables stacked with a `part` column
        (1, 2, ... in the spec's order) when layers or panels plot different tables."""
        tables = [pd.DataFrame(rows) for rows in self.spec.get("datasets", {}).values()]
        inline = self.spec.get("data", {})
        if isinstance(inline, dict) and "values" in inline:
            tables.append(pd.DataFrame(inline["values"]))
        if not tables:
            return pd.DataFrame()
        if len(tables) == 1:
            return tables[0]
        return pd.concat([t.assign(part=i) for i, t in enumerate(tables, start=1)],
                         ignore_index=True)

    def export_spec(self, number: int | None, runs: str | None = None) -> dict[str, Any]:
        """The spec of the exported SVG and PNG: titled with the figure's number when it has
        one, and subtitled with the runs it shows (outside the book a chart has no caption to
        carry either)."""
        spec = json.loads(json.dumps(self.spec))
        if number is not None or runs:
            title = _title_text(spec.get("title"))
            if number is not None:
                title = f"Figure {number}" + (f": {title}" if title else "")
            spec["title"] = wrap_titles({"title": {
                "text": title, "anchor": "start",
                **({"subtitle": f"Data: {runs}"} if runs else {})}})["title"]
        return spec

    def save(self, folder: Path | None = None, number: int | None = None,
             runs: str | None = None) -> list[Path]:
        """Write `<name>.svg`, `<name>.png` (2x) and `<name>.csv` into `folder` (default
        `figures_root()`); the images are titled "Figure `number`: ..." when it is given, and
        subtitled "Data: `runs`" when that is."""
        import vl_convert as vlc

        folder = Path(folder) if folder else figures_root()
        folder.mkdir(parents=True, exist_ok=True)
        svg, png, csv = (folder / f"{self.name}.{kind}" for kind in ("svg", "png", "csv"))
        spec = self.export_spec(number, runs)
        atomic_write_bytes(svg, vlc.vegalite_to_svg(spec).encode())
        atomic_write_bytes(png, vlc.vegalite_to_png(spec, scale=2))
        atomic_write_bytes(csv, self.data().to_csv(index=False).encode())
        return [svg, png, csv]


def publish(chart: alt.TopLevelMixin, name: str, runs: str | None = None) -> Figure:
    """Export `chart` as SVG, PNG and CSV (the images titled with the figure's published number)
    and glue it under `name` for a `{glue:figure}` directive. `runs` says what the figure shows
    (e.g. `data.describe()`: seeds, scale, env steps): it stays out of the chart's title, is glued
    as `<name>-runs` for the caption, and subtitles the exported images."""
    from myst_nb import glue

    from devrl.book.cite import figure_number

    figure = Figure(chart, name)
    figure.save(number=figure_number(name), runs=runs)
    glue(name, figure, display=False)
    if runs:
        glue(f"{name}-runs", str(runs), display=False)
    return figure


def glue_numbers(values: dict[str, float]) -> None:
    """Glue each number under its key for `{glue:text}` in the prose (as a plain float, which
    the `:.2f`-style format specs of MyST-NB need)."""
    from myst_nb import glue

    for key, value in values.items():
        glue(key, float(value), display=False)


def glue_words(values: dict[str, str]) -> None:
    """Glue each string under its key for `{glue:text}` (e.g. whether a prediction held, decided
    by the data in the notebook, never typed into the prose)."""
    from myst_nb import glue

    for key, value in values.items():
        glue(key, str(value), display=False)


def reader_table(frame: pd.DataFrame, digits: dict[str, int] | None = None,
                 default_digits: int = 3):
    """`frame` as a table for readers (a pandas Styler): no index; integer columns as integers
    with thousands separators; floats to `digits[column]` (else `default_digits`) decimals, in
    scientific notation when a column's magnitudes span more than what fixed decimals show
    (nonzero values below 10^-digits or at least 10^6); missing values as an en dash. The book's
    CSS scrolls a wide table inside its own box."""
    digits = digits or {}
    formats = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            continue
        finite = values.dropna()
        if pd.api.types.is_integer_dtype(values) or (
                len(finite) and (finite == finite.round()).all() and finite.abs().max() < 2**53
                and column not in digits):
            formats[column] = "{:,.0f}"
            continue
        d = digits.get(column, default_digits)
        nonzero = finite[finite != 0].abs()
        tiny = len(nonzero) and nonzero.min() < 0.5 * 10 ** -d  # would show as 0
        huge = len(nonzero) and nonzero.max() >= 1e6
        formats[column] = f"{{:.{max(d - 1, 1)}e}}" if tiny or huge else f"{{:,.{d}f}}"
    styler = frame.style.hide(axis="index").format(formats, na_rep="–")
    numeric = [c for c in frame.columns if c in formats]
    if numeric:  # right-aligned by the book's CSS, so digits line up
        styler = styler.set_td_classes(pd.DataFrame(
            [["devrl-num" if c in formats else "" for c in frame.columns]] * len(frame),
            index=frame.index, columns=frame.columns))
        styler = styler.set_table_styles(
            {c: [{"selector": "th", "props": [("text-align", "right")]}] for c in numeric},
            overwrite=False)
    return styler


def steps_label(steps: float) -> str:
    """Env steps as a short label, three significant digits with k or M as an axis of the book
    writes them (d3's "~s"): 16384 -> "16.4k", 1048576 -> "1.05M", 0 -> "0"."""
    steps = float(steps)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(steps) >= scale:
            return f"{steps / scale:.3g}{suffix}"
    return f"{steps:.3g}"


def png_data_url(image) -> str:
    """An RGB image (uint8 array [H, W, 3]) as a PNG data URL, for a chart's image marks (the
    page loads nothing from elsewhere)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
