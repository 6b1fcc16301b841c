"""Line charts as inline SVG, drawn here from plain numbers: the report opens without a network
and without a chart library. Pure functions; the SVG they return is escaped and self-contained."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Sequence

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#be185d")
WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 24, 32  # margins around the plot area, in SVG units
MAX_POINTS = 1500  # a longer series is thinned to this many points, keeping each bucket's extremes
DOTS_UP_TO = 60  # a series this short (evaluations) gets a dot, with a tooltip, at each point


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (step, value), in step order
    color: str = PALETTE[0]


@dataclasses.dataclass(frozen=True)
class Band:
    """A shaded span of steps: the part of the run one attempt trained."""

    start: float
    end: float
    label: str
    attempt: int


@dataclasses.dataclass(frozen=True)
class Marker:
    """A vertical line at a step: where an attempt was interrupted (and the next one resumed)."""

    step: float
    label: str


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round numbers (1, 2 or 5 × 10^k apart) that span [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    digits = max(0, -math.floor(math.log10(step)) + 2)
    return [round(k * step, digits) for k in range(first, last + 1)]


def number(value: float) -> str:
    """A short label for a value: 0.25, 1.2e+04, 5e-05."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def thin(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most about `limit` points: per bucket of consecutive points its lowest and highest (spikes stay)."""
    points = list(points)
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / (limit // 2))
    out: list[tuple[float, float]] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        low, high = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        out.extend(sorted({low, high}))
    return out


def line_chart(
    name: str,
    series: Sequence[Series],
    bands: Sequence[Band] = (),
    markers: Sequence[Marker] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """An SVG line chart of `series` over steps, with the attempts' `bands` shaded and the
    interruption `markers` drawn as dashed vertical lines."""
    esc = html.escape
    clean = [dataclasses.replace(s, points=[(x, y) for x, y in s.points if math.isfinite(y)]) for s in series]
    xs = [x for s in clean for x, _ in s.points] + [b.start for b in bands] + [b.end for b in bands]
    xs += [m.step for m in markers]
    ys = [y for s in clean for _, y in s.points]
    svg = [
        f'<svg class="chart" data-chart="{esc(name)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(name)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    if not ys:
        svg.append(
            f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">no data yet</text></svg>'
        )
        return "".join(svg)
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    lo, hi = min(ys), max(ys)
    if hi == lo:  # a flat line: centre it
        pad = abs(lo) / 2 or 1.0
        lo, hi = lo - pad, hi + pad
    y_ticks = nice_ticks(lo, hi)
    y_lo, y_hi = min(y_ticks[0], lo), max(y_ticks[-1], hi)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w, 1)

    def py(y: float) -> float:
        return round(TOP + (y_hi - y) / (y_hi - y_lo) * plot_h, 1)

    for band in bands:
        if band.end > band.start:
            svg.append(
                f'<g class="attempt-band" data-attempt="{band.attempt}"><rect x="{px(band.start)}" y="{TOP}" '
                f'width="{round(px(band.end) - px(band.start), 1)}" height="{plot_h}"/>'
                f'<text x="{px(band.start) + 4}" y="{TOP - 8}">{esc(band.label)}</text></g>'
            )
    for tick in y_ticks:
        if y_lo <= tick <= y_hi:
            svg.append(
                f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{py(tick)}" y2="{py(tick)}"/>'
                f'<text class="tick" x="{LEFT - 6}" y="{py(tick) + 4}" text-anchor="end">{number(tick)}</text>'
            )
    for tick in nice_ticks(x_lo, x_hi, 6):
        if x_lo <= tick <= x_hi:
            svg.append(
                f'<text class="tick" x="{px(tick)}" y="{height - BOTTOM + 16}" text-anchor="middle">'
                f"{number(tick)}</text>"
            )
    svg.append(
        f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>'
        f'<text class="axis-label" x="{width - RIGHT}" y="{height - 4}" text-anchor="end">step</text>'
    )
    for s in clean:
        points = thin(s.points)
        if not points:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{px(x)},{py(y)}" for i, (x, y) in enumerate(points))
        svg.append(f'<path class="series" data-series="{esc(s.name)}" d="{d}" stroke="{esc(s.color)}"/>')
        if len(points) <= DOTS_UP_TO:
            svg.extend(
                f'<circle class="dot" cx="{px(x)}" cy="{py(y)}" r="3" fill="{esc(s.color)}">'
                f"<title>{esc(s.name)} at step {number(x)}: {number(y)}</title></circle>"
                for x, y in points
            )
    for marker in markers:
        x = px(marker.step)
        svg.append(
            f'<g class="interruption" data-step="{number(marker.step)}"><title>{esc(marker.label)}</title>'
            f'<line x1="{x}" x2="{x}" y1="{TOP}" y2="{TOP + plot_h}"/>'
            f'<line class="hit" x1="{x}" x2="{x}" y1="{TOP}" y2="{TOP + plot_h}"/>'  # wide, to hover
            f'<path class="flag" d="M{x - 5},{TOP} L{x + 5},{TOP} L{x},{TOP + 8} Z"/></g>'
        )
    svg.append("</svg>")
    return "".join(svg)
