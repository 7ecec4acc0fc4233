"""Small SVG charts for the weekly report, written here rather than drawn by a library.

Why not a library: leather (used before) leaves a single-point series blank, has five
colours, and gives the same endpoint different colours in neighbouring charts. Each of
these charts is a frame, a few grid lines, a polyline and markers per series. Every value
gets a marker, so a series of one point is a visible dot. Colours come from `colours(names)`:
one name, one colour and marker shape, in every chart of a report. Series have no limit;
past eight, the shape tells apart what the colour repeats. The output is inline SVG with no
scripts or external references.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html import escape

from jobs.review.page import PALETTE

SHAPES = ("circle", "square", "triangle", "diamond")
WIDTH, HEIGHT = 640, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 12, 28, 56


@dataclass(frozen=True)
class Style:
    colour: str
    shape: str


def colours(names: Iterable[str]) -> dict[str, Style]:
    """A style per name, by the sorted names: the same set of names styles alike in every chart."""
    return {name: Style(PALETTE[i % len(PALETTE)], SHAPES[(i // len(PALETTE)) % len(SHAPES)])
            for i, name in enumerate(sorted(set(names)))}  # fmt: skip


def nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round axis ticks covering [low, high]: steps of 1, 2 or 5 times a power of ten, at most `most` of them. Pure.

    `nice_ticks(0, 76.97)` is 0, 20, 40, 60, 80: an axis reads "20 ms", never "25.6575 ms".
    """
    if high <= low:
        high = low + 1
    raw = (high - low) / max(most - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step + 1e-9) * step
    ticks = [start]
    while ticks[-1] < high - 1e-9 * step:
        ticks.append(start + step * len(ticks))
    return [round(t, 10) for t in ticks]


def tick_text(value: float) -> str:
    """A tick's number without float noise: 0.2, 20, 1,000."""
    return f"{value:,.10g}" if abs(value) < 1e15 else f"{value:.3g}"


def _marker(x: float, y: float, style: Style, tip: str) -> str:
    title = f"<title>{escape(tip)}</title>"
    fill = f'fill="{style.colour}"'
    if style.shape == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" {fill}>{title}</rect>'
    corners = {"triangle": [(0, -4), (-4, 3), (4, 3)], "diamond": [(0, -4), (-4, 0), (0, 4), (4, 0)]}
    if style.shape in corners:
        points = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in corners[style.shape])
        return f'<polygon points="{points}" {fill}>{title}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" {fill}>{title}</circle>'


def time_chart(title: str, series: Mapping[str, Sequence[tuple[datetime, float]]], styles: Mapping[str, Style],
               days: Sequence[date], *, low: float, high: float, unit: str = "",
               lines: bool = True) -> str:  # fmt: skip
    """Values over the report's days, one colour and shape per series; points outside the days are dropped. The
    value axis runs over round ticks (`nice_ticks`) that cover [low, high]."""
    start = datetime.combine(days[0], datetime.min.time())
    span = timedelta(days=len(days)).total_seconds()
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    ticks = nice_ticks(low, high)
    low, high = ticks[0], ticks[-1]

    def x(at: datetime) -> float:
        return _LEFT + (at.replace(tzinfo=None) - start).total_seconds() / span * plot_w

    def y(value: float) -> float:
        return _TOP + plot_h - (value - low) / (high - low) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" font-family="sans-serif" '
             'font-size="11">',
             f'<text x="{_LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']  # fmt: skip
    for value in ticks:  # horizontal grid and its labels
        parts.append(f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'stroke="#d0d7de"/><text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f"{tick_text(value)}{escape(unit)}</text>")  # fmt: skip
    for i, day in enumerate(days):  # a label under each day's middle
        mid = _LEFT + (i + 0.5) * plot_w / len(days)
        parts.append(f'<text x="{mid:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle">{day:%a %d}</text>')

    def shown(at: datetime) -> bool:
        return 0 <= (at.replace(tzinfo=None) - start).total_seconds() <= span

    inside = {name: [(x(at), y(v), at, v) for at, v in points if shown(at)] for name, points in series.items()}
    for name, points in inside.items():
        style = styles[name]
        if lines and len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            parts.append(f'<polyline fill="none" stroke="{style.colour}" stroke-width="1.6" points="{path}"/>')
        parts += [_marker(px, py, style, f"{name}: {v:,.4g}{unit} ({at:%a %d %H:%M})") for px, py, at, v in points]
    legend_y, cursor, height = HEIGHT - 18, float(_LEFT), HEIGHT
    for name in inside:  # the legend wraps onto more rows, and the chart grows to hold them
        needed = 24 + 6.5 * len(name)
        if cursor + needed > WIDTH and cursor > _LEFT:
            legend_y, cursor, height = legend_y + 16, float(_LEFT), height + 16
        parts.append(_marker(cursor + 4, legend_y - 4, styles[name], name))
        parts.append(f'<text x="{cursor + 12:.1f}" y="{legend_y}">{escape(name)}</text>')
        cursor += needed
    parts[0] = parts[0].replace(f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"',
                                f'height="{height}" viewBox="0 0 {WIDTH} {height}"')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)
