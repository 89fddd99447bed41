"""Line charts written as SVG text, for the loss curve every training run draws.

A run's one plot used to be drawn with matplotlib, whose import and figure cost 0.6 s of every
`glassgpt train`: a sixth of the time a 20-step run spent outside its training steps. A chart
of a few lines needs only axes, ticks, a grid, polylines and a legend, which SVG states directly;
the file is a few kilobytes of text, opens in any browser and scales without blur. Richer figures
(the report's, the experiments', the attention maps) still use matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

# Colours of matplotlib's default cycle, so the chart reads like the project's other plots.
BLUE, ORANGE, GREEN = "#1f77b4", "#ff7f0e", "#2ca02c"

PANEL_WIDTH, PANEL_HEIGHT = 520, 360
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 34, 50
TITLE_HEIGHT = 32


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (x, y); points with a non-finite value are left out
    color: str = BLUE
    markers: bool = False  # a dot on every point: for sparse series such as evaluations


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    whole_x: bool = False  # x counts something whole (steps): no ticks between two integers


def nice_ticks(low: float, high: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """About `count` round values (steps of 1, 2 or 5 times a power of ten, and at least
    `min_step`: 1 for an axis of whole steps) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"ticks need finite bounds, not {low}, {high}")
    if high < low:
        low, high = high, low
    if high - low <= 1e-9 * max(abs(low), abs(high), 1e-300):  # one value (to rounding): a range around it
        pad = max(min_step, 0.5)
        low, high = low - pad, high + pad
    raw_step = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw_step))
    step = max(min_step, next(m * power for m in (1, 2, 5, 10) if m * power >= raw_step))
    first = math.floor(low / step + 1e-9) * step
    count_needed = math.ceil((high - first) / step - 1e-9)
    return [first + k * step for k in range(max(1, count_needed) + 1)]


def format_tick(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (0.25 steps → 2 decimals)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and abs(round(step, decimals) - step) > 1e-9 * step:
        decimals += 1
    text = f"{value:,.{decimals}f}"
    return "0" if text.lstrip("-").strip("0.,") == "" else text


def _finite(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def _panel_svg(panel: Panel, left: float, top: float) -> list[str]:
    """The elements of one panel whose outer box starts at (left, top)."""
    plot_left, plot_top = left + MARGIN_LEFT, top + MARGIN_TOP
    plot_width = PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    out = [f'<text x="{plot_left + plot_width / 2:.1f}" y="{top + 20:.1f}" text-anchor="middle" '
           f'font-size="14">{escape(panel.title)}</text>']
    series = [(s, _finite(s.points)) for s in panel.series]
    points = [p for _, finite in series for p in finite]
    if not points:
        out.append(f'<rect x="{plot_left}" y="{plot_top}" width="{plot_width}" height="{plot_height}" '
                   'fill="none" stroke="#444"/>')
        out.append(f'<text x="{plot_left + plot_width / 2:.1f}" y="{plot_top + plot_height / 2:.1f}" '
                   'text-anchor="middle" fill="#888">no data yet</text>')
        return out
    x_ticks = nice_ticks(min(x for x, _ in points), max(x for x, _ in points), min_step=1 if panel.whole_x else 0)
    y_ticks = nice_ticks(min(y for _, y in points), max(y for _, y in points))
    x_low, x_high, y_low, y_high = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def to_x(x: float) -> float:
        return plot_left + (x - x_low) / (x_high - x_low) * plot_width

    def to_y(y: float) -> float:  # SVG's y grows downwards
        return plot_top + (y_high - y) / (y_high - y_low) * plot_height

    for tick in x_ticks:
        out.append(f'<line x1="{to_x(tick):.1f}" y1="{plot_top}" x2="{to_x(tick):.1f}" '
                   f'y2="{plot_top + plot_height}" stroke="#ddd"/>')
        out.append(f'<text x="{to_x(tick):.1f}" y="{plot_top + plot_height + 16}" text-anchor="middle" '
                   f'font-size="11">{format_tick(tick, x_ticks[1] - x_ticks[0])}</text>')
    for tick in y_ticks:
        out.append(f'<line x1="{plot_left}" y1="{to_y(tick):.1f}" x2="{plot_left + plot_width}" '
                   f'y2="{to_y(tick):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{plot_left - 6}" y="{to_y(tick) + 4:.1f}" text-anchor="end" '
                   f'font-size="11">{format_tick(tick, y_ticks[1] - y_ticks[0])}</text>')
    out.append(f'<rect x="{plot_left}" y="{plot_top}" width="{plot_width}" height="{plot_height}" '
               'fill="none" stroke="#444"/>')
    out.append(f'<text x="{plot_left + plot_width / 2:.1f}" y="{top + PANEL_HEIGHT - 12}" '
               f'text-anchor="middle" font-size="12">{escape(panel.x_label)}</text>')
    y_middle = plot_top + plot_height / 2
    out.append(f'<text x="{left + 16}" y="{y_middle:.1f}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 {left + 16} {y_middle:.1f})">{escape(panel.y_label)}</text>')
    for item, finite in series:
        if not finite:
            continue
        coordinates = " ".join(f"{to_x(x):.1f},{to_y(y):.1f}" for x, y in finite)
        width = 2 if item.markers else 1.2
        out.append(f'<polyline class="series" data-label={quoteattr(item.label)} fill="none" '
                   f'stroke="{item.color}" stroke-width="{width}" points="{coordinates}"/>')
        if item.markers or len(finite) == 1:  # a one-point polyline draws nothing
            out.extend(f'<circle cx="{to_x(x):.1f}" cy="{to_y(y):.1f}" r="3.5" fill="{item.color}"/>'
                       for x, y in finite)
    labelled = [item for item, finite in series if item.label and finite]
    if len(labelled) > 1:  # a legend, top right, when there is more than one line to tell apart
        for row, item in enumerate(labelled):
            y = plot_top + 16 + 18 * row
            x = plot_left + plot_width - 90
            out.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 22}" y2="{y - 4}" stroke="{item.color}" '
                       'stroke-width="2"/>')
            out.append(f'<text x="{x + 28}" y="{y}" font-size="12">{escape(item.label)}</text>')
    return out


def chart_svg(title: str, panels: list[Panel]) -> str:
    """An SVG document with `panels` side by side under `title`."""
    width, height = PANEL_WIDTH * len(panels), PANEL_HEIGHT + TITLE_HEIGHT
    body = [f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="16">{escape(title)}</text>']
    for index, panel in enumerate(panels):
        body.extend(_panel_svg(panel, index * PANEL_WIDTH, TITLE_HEIGHT))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">\n' + "\n".join(body) + "\n</svg>\n")
