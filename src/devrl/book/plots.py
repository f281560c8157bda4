"""One Altair theme, a mean-and-band chart helper, and publishing a figure: glued for the book,
rendered offline in the browser from the vendored Vega bundle, and exported as SVG and PNG."""

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
            "axis": {"labelFontSize": 12, "titleFontSize": 13, "grid": True,
                     "gridColor": "#e6e6e6", "titleFontWeight": "normal"},
            "legend": {"labelFontSize": 12, "titleFontSize": 12, "orient": "bottom",
                       "direction": "horizontal"},
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


class Figure:
    """A chart with a stable name. It renders as HTML that calls the page's vendored `vegaEmbed`
    (no network). In a Jupyter front end, display `figure.chart` instead (Altair's renderer)."""

    def __init__(self, chart: alt.TopLevelMixin, name: str):
        self.chart = chart
        self.name = name
        self.spec = chart.to_dict()

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

    def save(self, folder: Path | None = None) -> list[Path]:
        """Write `<name>.svg` and `<name>.png` (2x) into `folder` (default `figures_root()`)."""
        import vl_convert as vlc


        folder = Path(folder) if folder else figures_root()
        folder.mkdir(parents=True, exist_ok=True)
        svg = folder / f"{self.name}.svg"
        png = folder / f"{self.name}.png"
        atomic_write_bytes(svg, vlc.vegalite_to_svg(self.spec).encode())
        atomic_write_bytes(png, vlc.vegalite_to_png(self.spec, scale=2))
        return [svg, png]


def publish(chart: alt.TopLevelMixin, name: str) -> Figure:
    """Export `chart` as SVG and PNG and glue it under `name` for a `{glue:figure}` directive."""
    from myst_nb import glue

    figure = Figure(chart, name)
    figure.save()
    glue(name, figure, display=False)
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
