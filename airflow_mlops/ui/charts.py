"""Inline SVG charts, drawn on the server (no JavaScript library to download): bars per model
version with the champion marked and the gate's lines drawn, and lines over runs for a drift
trend. Each returns an ``<svg>`` element as text, every label escaped.

Colours of text, axes and grid come from the page (``currentColor`` and the ``--mlops-*`` CSS
variables of ``ui.pages``), so a chart follows Airflow's light or dark theme. A value axis starts
where the values do, not at 0, when 0 would flatten the differences that decide a gate (0.9952
against 0.9954); the chart then says where its axis starts.
"""

from __future__ import annotations

import math
from html import escape
from typing import Callable, Sequence

WIDTH, HEIGHT = 560, 250
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 46, 58
CHAMPION, PREVIOUS, OTHER, REJECTED = "#2e7d32", "#8d6e63", "#1976d2", "#c62828"
PALETTE = ("#1976d2", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#455a64")
GRID, AXIS = "var(--mlops-grid, #e0e0e0)", "var(--mlops-axis, #999)"
LOG_FLOOR = 1e-4  # a log axis shows values below this at the floor


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def value_range(values: Sequence[float], from_zero: bool = False) -> tuple[float, float]:
    """The value axis ``(low, top)`` for ``values``: from 0 when ``from_zero`` or when the values'
    spread is more than half their size (0 then hides nothing); else from a little below the
    smallest value, so close values stay apart."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if from_zero or (lo >= 0 and (hi - lo) > 0.5 * hi) or (hi <= 0 and (hi - lo) > 0.5 * -lo):
        low, top = min(0.0, lo), max(0.0, hi)
        return (low, top + 1.0) if top == low else (low, top + (top - low) * 0.08)
    pad = (hi - lo) * 0.25 or abs(hi) * 0.01 or 1.0
    return lo - pad, hi + pad


def bars(title: str, items: Sequence[tuple[str, float | None, str]], unit: str = "",  # noqa: C901
         lines: Sequence[tuple[str, float]] = (), from_zero: bool = False,
         fmt: Callable[[float], str] | None = None) -> str:
    """A bar per ``(label, value, role)``; role ``champion`` / ``previous-champion`` / ``rejected``
    / ``other`` picks the colour, and the champion's bar gets a ★ above it. A missing value draws
    no bar and says "n/a". ``lines``: ``(label, value)`` horizontal reference lines (the champion's
    value, a threshold), dashed and labelled. ``fmt`` formats every figure (default: 4 significant
    digits)."""
    fmt = fmt or _fmt
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for _, v, _ in items if v is not None]
    low, top = value_range(values, from_zero)
    # A line far off the bars (a threshold of 0.95 under values of 0.995) would flatten them
    # again: such a line is named at the edge it lies beyond instead.
    span = (top - low) * 3
    near = [(label, v) for label, v in lines if low - span <= v <= top + span]
    if near:
        low, top = value_range(values + [v for _, v in near], from_zero)
    far = [(label, v) for label, v in lines if not low <= v <= top]
    lines = [(label, v) for label, v in lines if low <= v <= top]
    step = plot_w / max(len(items), 1)
    bar_w = min(48.0, step * 0.7)

    def y(v: float) -> float:
        return TOP + plot_h * (top - v) / (top - low)

    parts = _frame(title, y, low, top, WIDTH - RIGHT, [low, (low + top) / 2, top], fmt)
    if low != 0 and not (low < 0 < top):
        parts.append(f'<text class="axis-start" x="{WIDTH - RIGHT}" y="30" font-size="10" text-anchor="end" '
                     f'fill="currentColor" opacity="0.75">axis starts at {escape(fmt(low))}, not 0</text>')
    colours = {"champion": CHAMPION, "previous-champion": PREVIOUS, "rejected": REJECTED}
    base = y(0.0 if low <= 0 <= top else low)
    labels_every = max(1, math.ceil(len(items) / 20))
    for i, (label, value, role) in enumerate(items):
        cx = LEFT + step * (i + 0.5)
        if i % labels_every == 0 or i == len(items) - 1:
            parts.append(f'<text x="{cx:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="11" text-anchor="middle" '
                         f'fill="currentColor">{escape(label)}</text>')
        if value is None:
            parts.append(f'<text x="{cx:.1f}" y="{base - 4:.1f}" font-size="10" text-anchor="middle" '
                         f'fill="currentColor">n/a</text>')
            continue
        y0, y1 = sorted((base, y(value)))
        parts.append(f'<rect class="bar {escape(role)}" x="{cx - bar_w / 2:.1f}" y="{y0:.1f}" width="{bar_w:.1f}" '
                     f'height="{max(y1 - y0, 1):.1f}" fill="{colours.get(role, OTHER)}">'
                     f'<title>{escape(label)}: {escape(fmt(value))}{escape(unit)}</title></rect>')
        if len(items) <= 20:
            mark = "★ " if role == "champion" else ""
            parts.append(f'<text x="{cx:.1f}" y="{y0 - 4:.1f}" font-size="10" text-anchor="middle" '
                         f'fill="currentColor">{mark}{escape(fmt(value))}</text>')
    legend = []
    for label, value in lines:
        colour = CHAMPION if label.startswith("champion") else REJECTED
        parts.append(f'<line class="ref-line" x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" '
                     f'y2="{y(value):.1f}" stroke="{colour}" stroke-dasharray="5 3">'
                     f'<title>{escape(label)} {escape(fmt(value))}</title></line>')
        legend.append(f'<tspan fill="{colour}">- -</tspan> {escape(label)} {escape(fmt(value))}')
    for label, value in far:
        legend.append(f'<tspan class="far" fill="{REJECTED}">{escape(label)} {escape(fmt(value))} '
                      f'{"↓ below" if value < low else "↑ above"} the axis</tspan>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 22}" font-size="10" fill="currentColor" opacity="0.8">'
                 f'<tspan fill="{CHAMPION}">■</tspan> champion  <tspan fill="{PREVIOUS}">■</tspan> previous champion  '
                 f'<tspan fill="{REJECTED}">■</tspan> rejected  <tspan fill="{OTHER}">■</tspan> other</text>')
    if legend:
        parts.append(f'<text class="ref-legend" x="{LEFT}" y="{HEIGHT - 6}" font-size="10" fill="currentColor">'
                     + "   ".join(legend) + "</text>")
    parts.append("</svg>")
    return "".join(parts)


def lines(title: str, x_labels: Sequence[tuple[str, str | None]], series: dict[str, Sequence[float | None]],  # noqa: C901
          threshold: float | None = None, log: bool = False) -> str:
    """One line per series over ``x_labels`` (``(text, ISO time or None)``, oldest first), a
    dashed line at ``threshold``. ``log``: a logarithmic value axis (values under
    ``LOG_FLOOR`` drawn at it), so one large value does not flatten the small ones."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT - 110, HEIGHT - TOP - BOTTOM
    values = [v for s in series.values() for v in s if v is not None] + ([threshold] if threshold is not None else [])

    def t(v: float) -> float:
        return math.log10(max(v, LOG_FLOOR)) if log else v

    if log:
        low = math.floor(t(min(values, default=LOG_FLOOR)))
        top = max(math.ceil(t(max(values, default=1.0))), low + 1)
        ticks = [10.0 ** e for e in range(int(low), int(top) + 1)]
    else:
        low, top = value_range(values, from_zero=True)
        ticks = [low, (low + top) / 2, top]
    n = max(len(x_labels), 1)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (top - t(v)) / (top - low)

    parts = _frame(title + (" (log scale)" if log else ""), y, 10.0 ** low if log else low, 10.0 ** top if log
                   else top, LEFT + plot_w, ticks)
    for i, (label, iso) in enumerate(x_labels):
        if n <= 4 or i in (0, n - 1):
            anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
            stamp = f' data-datetime="{escape(iso)}"' if iso else ""
            parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="10" text-anchor="{anchor}" '
                         f'fill="currentColor"{stamp}>{escape(label)}</text>')
    if threshold is not None:
        parts.append(f'<line class="threshold" x1="{LEFT}" y1="{y(threshold):.1f}" x2="{LEFT + plot_w}" '
                     f'y2="{y(threshold):.1f}" stroke="{REJECTED}" stroke-dasharray="4 3"/>'
                     f'<text x="{LEFT + plot_w}" y="{y(threshold) - 3:.1f}" font-size="10" text-anchor="end" '
                     f'fill="{REJECTED}">threshold {escape(_fmt(threshold))}</text>')
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


def _frame(title: str, y: Callable[[float], float], low: float, top: float, x_end: float,
           ticks: Sequence[float], fmt: Callable[[float], str] = _fmt) -> list[str]:
    """The opening of a chart: the <svg> element, its title, the x axis (to ``x_end``), and a
    labelled grid line at each of ``ticks``."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" aria-label="{escape(title)}">',
             f'<title>{escape(title)}</title>',
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold" fill="currentColor">{escape(title)}</text>']
    for tick in ticks:
        parts.append(f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{x_end}" y2="{y(tick):.1f}" stroke="{GRID}"/>'
                     f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end" '
                     f'fill="currentColor">{escape(fmt(tick))}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{y(low):.1f}" x2="{x_end}" y2="{y(low):.1f}" stroke="{AXIS}"/>')
    return parts
