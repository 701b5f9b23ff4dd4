"""Small line charts drawn as inline SVG in a ``gr.HTML``: the live charts of a run's numbers.

Gradio 6.31's page sets every component any event has updated to a fresh copy of its value on each message of any
event, so a ``gr.LinePlot`` re-renders its whole Vega view many times a run. An HTML value is a string: set again
unchanged, nothing is redrawn, and a new one is a few hundred bytes the browser lays out at once.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

WIDTH, HEIGHT = 360, 170  # the SVG's own units; it scales to the column's width
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 8, 24  # room for the axes' labels


def line_chart_html(title: str, series: Mapping[str, Sequence[tuple[float, float]]], colors: Mapping[str, str],
                    x_title: str = "step", empty: str = "no steps yet") -> str:
    """A titled chart of ``series`` (name -> (x, y) points, in order), each line in ``colors[name]``, with its legend.
    Points whose y is not finite are left out; a chart without points says ``empty``. The y axis starts at 0 where
    every value is positive (a margin below would read as negative values)."""
    points = {name: [(float(x), float(y)) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
              for name, pts in series.items()}
    points = {name: pts for name, pts in points.items() if pts}
    legend = "".join(f'<span class="wb-chart-key"><i style="background:{colors[name]}"></i>{html.escape(name)}</span>'
                     for name in points)
    head = f'<div class="wb-chart-title">{html.escape(title)}</div><div class="wb-chart-legend">{legend}</div>'
    if not points:
        return f'<div class="wb-chart">{head}<div class="wb-chart-empty">{html.escape(empty)}</div></div>'
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    x0, x1 = (min(xs), max(xs)) if max(xs) > min(xs) else _span(min(xs), max(xs))  # steps end to end
    y0, y1 = _span(min(ys), max(ys))
    y0 = max(y0, 0.0) if min(ys) >= 0 else y0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> str:
        return f"{LEFT + (x - x0) / (x1 - x0) * plot_w:.1f},{TOP + (y1 - y) / (y1 - y0) * plot_h:.1f}"

    lines = "".join(
        f'<polyline class="wb-chart-line" data-series="{html.escape(name)}" fill="none" stroke="{colors[name]}" '
        f'stroke-width="2" vector-effect="non-scaling-stroke" points="{" ".join(at(x, y) for x, y in pts)}"/>'
        for name, pts in points.items())
    bottom = TOP + plot_h
    axes = (f'<path class="wb-chart-axis" d="M{LEFT},{TOP} V{bottom} H{LEFT + plot_w}" fill="none"/>'
            + "".join(f'<text x="{LEFT - 4}" y="{TOP + (y1 - y) / (y1 - y0) * plot_h + 4:.1f}" '
                      f'text-anchor="end">{_tick(y)}</text>' for y in (y0, (y0 + y1) / 2, y1))
            + f'<text x="{LEFT}" y="{HEIGHT - 6}" text-anchor="start">{_tick(x0)}</text>'
            + f'<text x="{LEFT + plot_w}" y="{HEIGHT - 6}" text-anchor="end">{_tick(x1)}</text>'
            + f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{html.escape(x_title)}</text>')
    label = html.escape(f"{title}: " + "; ".join(f"{name}, {len(pts)} points" for name, pts in points.items()))
    return (f'<div class="wb-chart">{head}<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}" '
            f'preserveAspectRatio="xMidYMid meet">{axes}{lines}</svg></div>')


def _span(low: float, high: float) -> tuple[float, float]:
    """The axis range for values from ``low`` to ``high``: a little room around them, never empty."""
    if high == low:
        pad = abs(low) * 0.05 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.04
    return low - pad, high + pad


def _tick(value: float) -> str:
    return f"{value:.3g}"
