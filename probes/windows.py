"""The windows of an experiment: before the fault, during it, recovery, and after.

An SLI over the whole run hides what matters: a 30 s outage diluted in ten minutes of calm
load still reads 95%. Judging each window alone says whether the system held *during* the
fault and came back *after* it. A request belongs to the window that contains its `sent_at`:
that is when the user asked, whatever the fault did to the reply.

The four phase windows are half-open [start, end) and partition the load's span exactly; the
span's end is nudged one float step past the last send so the last request is inside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

PHASES = ("before", "during", "recovery", "after")
WINDOW_NAMES = (*PHASES, "all")
DEFAULT_RECOVERY_SECONDS = 10.0


@dataclass(frozen=True)
class Window:
    """A named, half-open span of Unix time."""

    name: str
    start: float
    end: float

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end

    @property
    def duration(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_windows(
    faults: Iterable[Mapping[str, Any]],
    load_start: float,
    load_end: float,
    recovery_seconds: float = DEFAULT_RECOVERY_SECONDS,
) -> dict[str, Window]:
    """Name the spans of a run from its fault records and its first and last send times.

    before: load start to first injection; during: first injection to last removal (to the
    load's end while any fault is still active); recovery: the next `recovery_seconds`;
    after: the rest; all: the whole load. Faults never injected are ignored; with none, the
    whole load is "before" and the other phases are empty.
    """
    if load_end < load_start:
        raise ValueError("load_end is before load_start")
    if recovery_seconds < 0:
        raise ValueError("recovery_seconds must be >= 0")
    span_end = math.nextafter(load_end, math.inf)

    def clip(t: float) -> float:
        return min(max(t, load_start), span_end)

    injected = [f for f in faults if f.get("injected_at") is not None]
    if injected:
        first_injection = min(float(f["injected_at"]) for f in injected)
        removals = [f.get("removed_at") for f in injected]
        last_removal = (
            math.inf if any(r is None for r in removals) else max(float(r) for r in removals)
        )
        b1 = clip(first_injection)
        b2 = max(b1, clip(last_removal))
        b3 = max(b2, clip(last_removal + recovery_seconds))
    else:
        b1 = b2 = b3 = span_end
    bounds = (load_start, b1, b2, b3, span_end)
    windows = {name: Window(name, bounds[i], bounds[i + 1]) for i, name in enumerate(PHASES)}
    windows["all"] = Window("all", load_start, span_end)
    return windows


def load_span(records: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
    """First and last `sent_at` of the records."""
    times = [float(r["sent_at"]) for r in records]
    if not times:
        raise ValueError("no records")
    return min(times), max(times)


def in_window(records: Iterable[Mapping[str, Any]], window: Window) -> list[Mapping[str, Any]]:
    """The records sent within the window."""
    return [r for r in records if window.contains(float(r["sent_at"]))]


def window_of(sent_at: float, windows: Mapping[str, Window]) -> str | None:
    """Name of the phase window holding this send time, or None outside the load's span."""
    for name in PHASES:
        if windows[name].contains(sent_at):
            return name
    return None
