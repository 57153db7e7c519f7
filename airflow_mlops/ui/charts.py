"""Inline SVG charts, drawn on the server (no JavaScript library to download): bars per model
version with the champion marked, and lines over runs for a drift trend. Each returns an
``<svg>`` element as text, every label escaped."""

from __future__ import annotations

from html import escape
from typing import Callable, Sequence

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 40, 40
CHAMPION, PREVIOUS, OTHER, REJECTED = "#2e7d32", "#8d6e63", "#1976d2", "#c62828"
PALETTE = ("#1976d2", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#455a64")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _scale(values: Sequence[float]) -> tuple[float, float]:
    top = max([0.0, *values])
    low = min([0.0, *values])
    if top == low:
        top = low + 1.0
    return low, top


def bars(title: str, items: Sequence[tuple[str, float | None, str]], unit: str = "") -> str:
    """A bar per ``(label, value, role)``; role ``champion`` / ``previous-champion`` / ``rejected``
    / ``other`` picks the colour, and the champion's bar gets a ★ above it. A missing value draws
    no bar and says "n/a"."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    low, top = _scale([v for _, v, _ in items if v is not None])
    step = plot_w / max(len(items), 1)
    bar_w = min(48.0, step * 0.7)

    def y(v: float) -> float:
        return TOP + plot_h * (top - v) / (top - low)

    parts = _frame(title, y, low, top, WIDTH - RIGHT)
    for tick in (low, (low + top) / 2, top):
        parts.append(f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{WIDTH - RIGHT}" y2="{y(tick):.1f}" '
                     f'stroke="#eee"/>')
    colours = {"champion": CHAMPION, "previous-champion": PREVIOUS, "rejected": REJECTED}
    for i, (label, value, role) in enumerate(items):
        cx = LEFT + step * (i + 0.5)
        parts.append(f'<text x="{cx:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="11" text-anchor="middle">'
                     f'{escape(label)}</text>')
        if value is None:
            parts.append(f'<text x="{cx:.1f}" y="{y(low) - 4:.1f}" font-size="10" text-anchor="middle">n/a</text>')
            continue
        y0, y1 = sorted((y(0.0 if low <= 0 <= top else low), y(value)))
        parts.append(f'<rect class="bar {escape(role)}" x="{cx - bar_w / 2:.1f}" y="{y0:.1f}" width="{bar_w:.1f}" '
                     f'height="{max(y1 - y0, 1):.1f}" fill="{colours.get(role, OTHER)}">'
                     f'<title>{escape(label)}: {escape(_fmt(value))}{escape(unit)}</title></rect>')
        mark = "★ " if role == "champion" else ""
        parts.append(f'<text x="{cx:.1f}" y="{y0 - 4:.1f}" font-size="10" text-anchor="middle">'
                     f'{mark}{escape(_fmt(value))}</text>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="10" fill="#555">'
                 f'<tspan fill="{CHAMPION}">■</tspan> champion  <tspan fill="{PREVIOUS}">■</tspan> previous champion  '
                 f'<tspan fill="{REJECTED}">■</tspan> rejected  <tspan fill="{OTHER}">■</tspan> other</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines(title: str, x_labels: Sequence[str], series: dict[str, Sequence[float | None]],
          threshold: float | None = None) -> str:
    """One line per series over ``x_labels`` (oldest first), a dashed line at ``threshold``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT - 110, HEIGHT - TOP - BOTTOM
    values = [v for s in series.values() for v in s if v is not None] + ([threshold] if threshold is not None else [])
    low, top = _scale(values)
    n = max(len(x_labels), 1)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (top - v) / (top - low)

    parts = _frame(title, y, low, top, LEFT + plot_w)
    for i, label in enumerate(x_labels):
        if n <= 8 or i in (0, n - 1):
            parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" text-anchor="middle">'
                         f'{escape(label)}</text>')
    if threshold is not None:
        parts.append(f'<line class="threshold" x1="{LEFT}" y1="{y(threshold):.1f}" x2="{LEFT + plot_w}" '
                     f'y2="{y(threshold):.1f}" stroke="#c62828" stroke-dasharray="4 3"/>'
                     f'<text x="{LEFT + plot_w}" y="{y(threshold) - 3:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#c62828">threshold {escape(_fmt(threshold))}</text>')
    for k, (name, points) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        xy = [(x(i), y(v)) for i, v in enumerate(points) if v is not None]
        if len(xy) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
            parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for px, py in xy:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{LEFT + plot_w + 10}" y="{TOP + 12 + 14 * k}" font-size="11" fill="{colour}">'
                     f'■ {escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _frame(title: str, y: Callable[[float], float], low: float, top: float, x_end: float) -> list[str]:
    """The opening of a chart: the <svg> element, its title, the x axis (to ``x_end``) and three
    y-axis tick labels (``low``, the middle, ``top``)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>',
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{LEFT}" y1="{y(low):.1f}" x2="{x_end}" y2="{y(low):.1f}" stroke="#999"/>']
    for tick in (low, (low + top) / 2, top):
        parts.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">'
                     f'{escape(_fmt(tick))}</text>')
    return parts
