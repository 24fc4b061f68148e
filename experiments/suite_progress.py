"""What a person watching the nightly run sees: which experiment, which phase, how long it has
run and how long is left, and each verdict as it lands.

In a terminal one status line with a bar is redrawn in place (once a second, by a small ticker
thread) and finished experiments scroll above it; in a CI log, where `\\r` makes a mess, every
change is a plain line of its own. Plain code: a bar and a line are a few lines of formatting,
not worth a dependency the project does not have.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, TextIO

VERDICT_MARK = {
    "passed": "PASS",
    "deviated": "DEVIATED",
    "failed": "FAILED",
    "aborted": "ABORTED",
    "interrupted": "INTERRUPTED",
    "crashed": "CRASHED",
}

# Chaos Toolkit's own log lines, mapped to the phase they open (chaoslib run/hypothesis/activity)
_PHASES = [
    (re.compile(r"Running experiment: "), lambda m: "starting"),
    (re.compile(r"Steady state hypothesis: "), None),  # before or after: decided by state
    (re.compile(r"Playing your experiment's method now"), lambda m: "method"),
    (re.compile(r"(?:Action|Probe): (.+?)(?: \[in background\])?$"), None),
    (re.compile(r"Let's rollback"), lambda m: "rollbacks"),
    (re.compile(r"inference-chaos: verdict (\w+)"), lambda m: "report"),
]


def clock(seconds: float | None) -> str:
    """`75.2` -> `1:15`, `3725` -> `1:02:05`; unknown is `?`."""
    if seconds is None or seconds != seconds:
        return "?"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def bar(fraction: float, width: int = 20) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def remaining_s(estimates: list[float], index: int, elapsed_in_current: float) -> float:
    """Seconds left: what is left of the current experiment's estimate (never below zero),
    plus the estimates of those still to come."""
    current = max(0.0, estimates[index] - elapsed_in_current) if index < len(estimates) else 0.0
    return current + sum(estimates[index + 1 :])


def status_line(
    index: int,
    total: int,
    name: str,
    phase: str,
    suite_elapsed: float,
    remaining: float,
    width: int = 20,
    with_bar: bool = True,
) -> str:
    """`[3/14] worker-kill  method: kill-one-worker  4:10 elapsed, ~9:30 left [####------]`."""
    done = suite_elapsed / (suite_elapsed + remaining) if suite_elapsed + remaining > 0 else 0.0
    line = (
        f"[{index + 1}/{total}] {name}  {phase}  "
        f"{clock(suite_elapsed)} elapsed, ~{clock(remaining)} left"
    )
    return f"{line} {bar(done, width)} {done:4.0%}" if with_bar else line


def verdict_line(index: int, total: int, result: dict[str, Any]) -> str:
    """`[3/14] worker-kill  PASS  52.1s` with the first reason when it did not pass."""
    mark = VERDICT_MARK.get(result.get("verdict", ""), str(result.get("verdict", "?")).upper())
    line = f"[{index + 1}/{total}] {result['name']}  {mark}  {result.get('duration_s', 0):.1f}s"
    reasons = result.get("reasons") or []
    if result.get("verdict") != "passed" and reasons:
        line += f"  ({reasons[0]}" + (f"; +{len(reasons) - 1} more" if len(reasons) > 1 else "")
        line += ")"
    return line


class PhaseTracker:
    """Turns the lines a `chaos run` prints into the phase a person cares about."""

    def __init__(self) -> None:
        self.phase = "starting"
        self._seen_method = False

    def feed(self, line: str) -> str | None:
        """The new phase when this line opens one, else None."""
        for pattern, name in _PHASES:
            match = pattern.search(line)
            if not match:
                continue
            if pattern.pattern.startswith("Steady state"):
                new = "hypothesis after" if self._seen_method else "hypothesis before"
            elif pattern.pattern.startswith("(?:Action"):
                activity = match.group(1).strip()
                if self.phase.startswith("hypothesis"):
                    new = f"{self.phase.split(':')[0]}: {activity}"
                elif self.phase.startswith("rollbacks"):
                    return None
                else:
                    new = f"method: {activity}"
            else:
                new = name(match) if name else self.phase
            if new.startswith("method"):
                self._seen_method = True
            if new != self.phase:
                self.phase = new
                return new
            return None
        return None


class Progress:
    """The suite's live display; safe to call from the thread that reads a run's output."""

    def __init__(
        self, names: list[str], estimates: list[float], stream: TextIO | None = None
    ) -> None:
        self.names = names
        self.estimates = list(estimates)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.index = 0
        self.phase = "starting the cluster"
        self._experiment_started = self.started
        self._lock = threading.Lock()
        self._drawn = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.tty:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _line(self) -> str:
        now = time.monotonic()
        remaining = remaining_s(self.estimates, self.index, now - self._experiment_started)
        name = self.names[self.index] if self.index < len(self.names) else "all run"
        return status_line(
            min(self.index, len(self.names) - 1),
            len(self.names),
            name,
            self.phase,
            now - self.started,
            remaining,
            with_bar=self.tty,
        )

    def _draw(self) -> None:
        if not self.tty:
            return
        self.stream.write("\r\x1b[2K" + self._line())
        self.stream.flush()
        self._drawn = True

    def _say(self, text: str) -> None:
        """A line that stays: above the status line in a terminal, on its own in a log."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = False
        self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()

    def note(self, text: str) -> None:
        with self._lock:
            self._say(text)

    def start(self, index: int) -> None:
        with self._lock:
            self.index = index
            self.phase = "starting"
            self._experiment_started = time.monotonic()
            if self.tty:
                self._draw()
            else:
                self._say(self._line())

    def set_phase(self, phase: str) -> None:
        with self._lock:
            if phase == self.phase:
                return
            self.phase = phase
            if self.tty:
                self._draw()
            else:
                self._say(self._line())

    def finish(self, index: int, result: dict[str, Any]) -> None:
        with self._lock:
            self.estimates[index] = float(result.get("duration_s") or self.estimates[index])
            self.index = index + 1
            last = self.index >= len(self.names)
            self.phase = "stopping the cluster, writing the summary" if last else "starting"
            self._experiment_started = time.monotonic()
            self._say(verdict_line(index, len(self.names), result))

    def close(self) -> None:
        self._stop.set()
        if self._ticker:
            self._ticker.join(timeout=2)
        with self._lock:
            if self.tty and self._drawn:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            self._drawn = False
