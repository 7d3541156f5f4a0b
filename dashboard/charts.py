"""Server-rendered SVG charts: geometry computed here, drawn by ``dashboard/_chart.html``.

No JavaScript and no inline style (the strict CSP): bars are ``<rect>`` elements coloured
by CSS classes, each with a ``<title>``; every chart has a data table next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rollbacks.models import HealthCheck

WIDTH = 640
LABEL_W = 200
VALUE_W = 90
ROW_H = 24
BAR_H = 16


@dataclass
class Bar:
    label: str
    text: str
    x: int
    y: int
    width: int
    css: str = ""


@dataclass
class BarChart:
    title: str
    bars: list[Bar]
    width: int
    height: int
    label_x: int
    value_x: int

    @property
    def is_empty(self) -> bool:
        return not self.bars


def human_duration(value: timedelta | None) -> str:
    """``1 h 02 min``, ``3 min 20 s``, ``4.2 s``; an em dash for no value."""
    if value is None:
        return "—"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def bar_chart(title: str, rows: list[tuple[str, Any]], *, css: str = "") -> BarChart:
    """Horizontal bars for ``(label, value)`` rows; a value is a number or a timedelta
    (None draws no bar but keeps the row, so the labels match the data table)."""
    plot_w = WIDTH - LABEL_W - VALUE_W
    numbers = [v.total_seconds() if isinstance(v, timedelta) else float(v or 0) for _, v in rows]
    top = max(numbers, default=0) or 1
    bars = []
    for i, ((label, value), number) in enumerate(zip(rows, numbers, strict=True)):
        text = (
            human_duration(value) if isinstance(value, timedelta) or value is None else f"{value:g}"
        )
        bars.append(
            Bar(
                label=label,
                text=text,
                x=LABEL_W,
                y=i * ROW_H + (ROW_H - BAR_H) // 2,
                width=round(plot_w * number / top),
                css=css,
            )
        )
    return BarChart(
        title=title,
        bars=bars,
        width=WIDTH,
        height=max(len(rows), 1) * ROW_H,
        label_x=LABEL_W - 8,
        value_x=WIDTH - VALUE_W + 8,
    )


@dataclass
class Tick:
    x: int
    width: int
    check: HealthCheck


def health_strip(checks: list[HealthCheck], width: int = 600, height: int = 24) -> list[Tick]:
    """One tick per check, oldest left, filling ``width`` (coloured by status in CSS)."""
    if not checks:
        return []
    tick_w = min(max(width // len(checks), 1), 20)  # a few checks stay ticks, not a bar
    ordered = sorted(checks, key=lambda c: c.checked_at)
    return [Tick(x=i * tick_w, width=max(tick_w - 1, 1), check=c) for i, c in enumerate(ordered)]
