"""Sparklines for the suite page: one small trend per key figure, drawn as plain SVG geometry.

The suite page shows dozens of these (every experiment times its figures), so they are a few
hundred bytes each, computed here as coordinates and laid out by the template: no plotting
library, no fonts to embed, nothing outside the page. A sparkline holds the earlier nights as a
line, the baseline (median of the last 7) dashed, and tonight as a bigger dot, red when the
figure regressed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 152.0, 46.0
PAD_X, PAD_TOP, PAD_BOTTOM = 6.0, 15.0, 5.0  # the top keeps room for the label


@dataclass(frozen=True)
class Sparkline:
    """Coordinates in a WIDTH x HEIGHT box (y grows downwards, as in SVG)."""

    width: float
    height: float
    line: str  # the `points` of the polyline through every night, tonight last
    earlier: list[tuple[float, float]]  # one dot per earlier night
    current: tuple[float, float] | None
    baseline_y: float | None
    band: tuple[float, float] | None  # y of the tolerance band's top and bottom edges
    regressed: bool
    label: str  # visible text in the chart
    title: str  # the accessible name and tooltip: every value in words


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


def sparkline(
    earlier: Sequence[Any],
    current: Any,
    baseline: Any = None,
    limit: Any = None,
    regressed: bool = False,
    label: str = "",
    title: str = "",
    width: float = WIDTH,
    height: float = HEIGHT,
) -> Sparkline:
    """Scale the earlier nights, tonight, the baseline and the tolerance band (from the baseline
    to `limit`, the worst value that does not regress yet) into one box; booleans as 0 and 1."""
    olds = [v for v in (_numeric(x) for x in earlier) if v is not None]
    now, base, worst = _numeric(current), _numeric(baseline), _numeric(limit)
    if base is None:
        worst = None
    values = [*olds, *(v for v in (now, base, worst) if v is not None)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = hi - lo
    if span <= max(abs(hi), abs(lo), 1.0) * 1e-9:  # a flat line sits in the middle
        span = max(abs(hi) * 0.2, 1e-6)
        lo -= span / 2
    top, bottom = PAD_TOP, height - PAD_BOTTOM
    count = len(olds) + (1 if now is not None else 0)
    step = (width - 2 * PAD_X) / (count - 1) if count > 1 else 0.0
    start_x = PAD_X if count > 1 else width - PAD_X  # a single night sits at the right end

    def y_of(v: float) -> float:
        return round(bottom - (v - lo) / span * (bottom - top), 2)

    dots = [(round(start_x + i * step, 2), y_of(v)) for i, v in enumerate(olds)]
    current_dot = (round(start_x + len(olds) * step, 2), y_of(now)) if now is not None else None
    every = [*dots, *([current_dot] if current_dot else [])]
    return Sparkline(
        width=width,
        height=height,
        line=" ".join(f"{x},{y}" for x, y in every),
        earlier=dots,
        current=current_dot,
        baseline_y=y_of(base) if base is not None else None,
        band=(min(y_of(base), y_of(worst)), max(y_of(base), y_of(worst)))
        if base is not None and worst is not None
        else None,
        regressed=regressed,
        label=label,
        title=title,
    )
