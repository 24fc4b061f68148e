"""Earlier nights: reading their summaries, and telling a regression from night-to-night noise.

A figure regresses when tonight's value is worse than the median of the last 7 nights by more
than its tolerance. The median, not the last night, so one odd night neither hides nor causes a
regression; the tolerance, because a simulated cluster on a shared 2-core machine is noisy.
Which way is "worse" depends on the figure: lower is better for times, TTFT, balance and RPO,
higher for availability, and a history that was linearizable must stay so.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reports.formatting import is_number
from reports.suite_figures import figure_label, fmt_change, fmt_figure

log = logging.getLogger(__name__)

BASELINE_NIGHTS = 7
MAX_HISTORY_FILE_BYTES = 20 * 1024 * 1024  # a summary is a few kB; bigger is something else
_EPSILON = 1e-9  # float noise: a value exactly at the tolerance has not regressed

TIME_FIGURES = ("time_to_new_leader_s", "time_to_migrate_s", "detection_s", "rto_s")
TTFT_FIGURES = ("ttft_p50_s", "ttft_p95_s", "ttft_p99_s")
HIGHER_IS_BETTER = frozenset({"availability"})
BOOLEAN_FIGURES = frozenset({"linearizable"})
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    # +20%, but never flag less than 50 ms (times) or 10 ms (TTFT): below that it is jitter
    **{name: {"relative": 0.2, "absolute": 0.05} for name in TIME_FIGURES},
    **{name: {"relative": 0.2, "absolute": 0.01} for name in TTFT_FIGURES},
    "availability": {"absolute": 0.001},  # 0.1 percentage point
    "balance": {"absolute": 0.02},
    "rpo_s": {"absolute": 0.0},  # with a baseline of 0: any RPO above 0
}
TOLERANCE_KINDS = ("relative", "absolute")


# --- history ----------------------------------------------------------------------------------


def load_history(history_dir: Path | None) -> list[dict]:
    """Every earlier summary under history_dir (recursive, any `*.json` that parses to an object
    with an `experiments` list and a numeric `started_at`), oldest first, one per start time.
    Unreadable files are skipped with a warning; other JSON (journals) quietly."""
    if history_dir is None:
        return []
    root = Path(history_dir)
    if not root.is_dir():
        log.warning("history folder %s does not exist: no earlier nights to compare with", root)
        return []
    by_start: dict[float, dict] = {}
    for path in sorted(root.rglob("*.json")):
        summary = _read_summary(path)
        if summary is not None:
            by_start.setdefault(float(summary["started_at"]), summary)
    return [by_start[start] for start in sorted(by_start)]


def _read_summary(path: Path) -> dict | None:
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_HISTORY_FILE_BYTES:
            log.debug("history: %s is too big to be a suite summary, skipped", path)
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("history: skipped %s: %s", path, exc)
        return None
    if not isinstance(document, dict) or "experiments" not in document:
        return None  # a journal or another JSON file living next to the summaries
    if not isinstance(document["experiments"], list) or not is_number(document.get("started_at")):
        log.warning("history: skipped %s: no experiments list or no numeric started_at", path)
        return None
    return document


def figure_series(history: Sequence[Mapping[str, Any]], experiment: str, figure: str) -> list:
    """(started_at, value) of one experiment's figure over the nights that measured it."""
    series = []
    for night in history:
        for entry in night.get("experiments") or []:
            if not isinstance(entry, Mapping) or entry.get("name") != experiment:
                continue
            figures = entry.get("figures")
            value = figures.get(figure) if isinstance(figures, Mapping) else None
            if _usable(figure, value):
                series.append((float(night["started_at"]), value))
    return series


def _usable(figure: str, value: Any) -> bool:
    if figure in BOOLEAN_FIGURES:
        return isinstance(value, bool)
    return is_number(value) and math.isfinite(value)


# --- tolerances -------------------------------------------------------------------------------


def resolve_tolerances(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """The defaults with the `--tolerances` file's entries in their place. Raises ValueError on
    an unknown figure or an entry that is not `{"relative": x}` or `{"absolute": x}` (x >= 0),
    so a typo stops the suite rather than silently keeping the default; an entry may hold both,
    and then a change must exceed both to count."""
    tolerances = {name: dict(rule) for name, rule in DEFAULT_TOLERANCES.items()}
    if overrides is None:
        return tolerances
    if not isinstance(overrides, Mapping):
        raise ValueError("tolerances must map figure names to {relative: x} or {absolute: x}")
    for figure, rule in overrides.items():
        if figure in BOOLEAN_FIGURES:
            raise ValueError(f"tolerance for {figure}: fixed rule (true -> false), no tolerance")
        if figure not in DEFAULT_TOLERANCES:
            known = ", ".join(sorted(DEFAULT_TOLERANCES))
            raise ValueError(f"tolerance for unknown figure {figure!r} (known: {known})")
        if not isinstance(rule, Mapping) or not rule or set(rule) - set(TOLERANCE_KINDS):
            raise ValueError(f"tolerance for {figure}: expected {{relative: x}} or {{absolute: x}}")
        for kind, amount in rule.items():
            if not is_number(amount) or amount < 0 or not math.isfinite(amount):
                raise ValueError(f"tolerance for {figure}: {kind} must be a number >= 0")
        tolerances[figure] = {kind: float(amount) for kind, amount in rule.items()}
    return tolerances


# --- regressions ------------------------------------------------------------------------------


def find_regressions(
    current: dict, history: list[dict], tolerances: dict | None = None
) -> list[dict]:
    """Figures of `current` (a summary) worse than the median of their last 7 earlier values by
    more than their tolerance (defaults in DEFAULT_TOLERANCES; `tolerances` overrides per
    figure, see resolve_tolerances).

    Earlier values are the experiment's figure in the history nights that started before
    `current` (nights that did not measure it are passed over). With fewer than 7 the median of
    those there are is the baseline, even a single one; with none the figure is not judged.
    Each regression: experiment, figure, value, baseline, change (relative to the baseline for
    a relative tolerance, else absolute; null for a boolean or a zero baseline), tolerance (the
    rule applied), nights (how many earlier values made the baseline) and a one-line summary.
    """
    rules = resolve_tolerances(tolerances)
    now = current.get("started_at")
    earlier = [
        night
        for night in history
        if isinstance(night, Mapping)
        and is_number(night.get("started_at"))
        and (not is_number(now) or night["started_at"] < now)
    ]
    earlier.sort(key=lambda night: night["started_at"])
    found = []
    for entry in current.get("experiments") or []:
        figures = entry.get("figures") if isinstance(entry, Mapping) else None
        if not isinstance(figures, Mapping):
            continue
        name = str(entry.get("name"))
        for figure, value in figures.items():
            if not _usable(figure, value) or (
                figure not in rules and figure not in BOOLEAN_FIGURES
            ):
                continue
            values = [v for _, v in figure_series(earlier, name, figure)][-BASELINE_NIGHTS:]
            if not values:
                continue
            regression = _judge(name, figure, value, values, rules.get(figure, {}))
            if regression is not None:
                found.append(regression)
    return found


def baseline_of(figure: str, values: Sequence[Any]) -> Any:
    """The median; for a boolean the upper median, so a tie between true and false is true."""
    if figure in BOOLEAN_FIGURES:
        return bool(statistics.median_high(sorted(bool(v) for v in values)))
    return statistics.median(float(v) for v in values)


def _judge(
    experiment: str, figure: str, value: Any, values: list, rule: Mapping[str, float]
) -> dict | None:
    baseline = baseline_of(figure, values)
    record = {"experiment": experiment, "figure": figure, "value": value, "baseline": baseline}
    if figure in BOOLEAN_FIGURES:
        if not (baseline is True and value is False):
            return None
        summary = f"{figure_label(figure)}: true over the last {len(values)} night(s), now false"
        return record | {
            "change": None,
            "tolerance": {"boolean": "true -> false"},
            "nights": len(values),
            "summary": summary,
        }
    sign = -1.0 if figure in HIGHER_IS_BETTER else 1.0
    worse_by = (float(value) - baseline) * sign
    if worse_by <= _allowed(rule, baseline) + _EPSILON:
        return None
    if "relative" in rule:
        change = None if baseline == 0 else round((float(value) - baseline) / abs(baseline), 6)
    else:
        change = round(float(value) - baseline, 9)
    return record | {
        "baseline": round(baseline, 9),
        "change": change,
        "tolerance": dict(rule),
        "nights": len(values),
        "summary": describe_regression(figure, float(value), baseline, change, rule, len(values)),
    }


def _allowed(rule: Mapping[str, float], baseline: float) -> float:
    """How much worse than the baseline a value may be: the larger of the rule's amounts."""
    return max(rule.get("relative", 0.0) * abs(baseline), rule.get("absolute", 0.0))


def worst_allowed(figure: str, baseline: Any, rule: Mapping[str, float] | None) -> float | None:
    """The worst value that does not regress yet (None for a boolean or without a rule)."""
    if figure in BOOLEAN_FIGURES or not rule or not is_number(baseline):
        return None
    sign = -1.0 if figure in HIGHER_IS_BETTER else 1.0
    return float(baseline) + sign * _allowed(rule, float(baseline))


def describe_regression(
    figure: str,
    value: float,
    baseline: float,
    change: float | None,
    rule: Mapping[str, float],
    nights: int,
) -> str:
    """One line: "TTFT p95 81 ms vs median 54 ms of 7 night(s) (+50.0%, tolerance +20%)"."""
    moved = f"{change:+.1%}" if "relative" in rule and change is not None else ""
    moved = moved or fmt_change(figure, value - baseline)
    allowed = []
    if "relative" in rule:
        allowed.append(f"+{rule['relative']:.0%}")
    if "absolute" in rule:
        allowed.append(fmt_change(figure, rule["absolute"]).replace("+", "", 1))
    return (
        f"{figure_label(figure)} {fmt_figure(figure, value)} vs median "
        f"{fmt_figure(figure, baseline)} of {nights} night(s) "
        f"({moved}, tolerance {' and '.join(allowed)})"
    )
