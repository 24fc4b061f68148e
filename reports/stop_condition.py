"""The report's stop-condition banner: why a run was cut short, or that its guard held.

Reads the journal's `inference_chaos.stop_condition` (written by `experiments.control` from
`experiments.stop_condition`); a run without a stop condition shows nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reports.formatting import fmt_int, fmt_share, fmt_wall, is_number


def _rate(value: Any) -> str:
    return f"{value:.1f}x" if is_number(value) else "—"


def _limit(config: Mapping[str, Any]) -> str:
    window = config.get("window_s")
    shown = f"{window:g}s" if is_number(window) else "?"
    return (
        f"{_rate(config.get('max_burn_rate'))} over {shown} (SLO {fmt_share(config.get('slo'))}, "
        f"so at most {fmt_share(config.get('max_error_ratio'))} of requests may fail)"
    )


def stop_condition_section(chaos: Mapping[str, Any]) -> dict[str, Any] | None:
    """{stopped, headline, lines} for the template, or None when the run had no condition."""
    entry = chaos.get("stop_condition")
    if not isinstance(entry, Mapping):
        return None
    config = entry.get("config") if isinstance(entry.get("config"), Mapping) else {}
    stopped = entry.get("stopped_by") if isinstance(entry.get("stopped_by"), Mapping) else None
    polls = f"{entry.get('polls', 0)} polls ({entry.get('judged_polls', 0)} judged)"
    lines: list[str] = []
    if entry.get("prometheus_errors"):
        lines.append(
            f"{entry['prometheus_errors']} polls got no answer from Prometheus "
            f"(last: {entry.get('last_prometheus_error')})."
        )
    if stopped is None:
        return {
            "stopped": False,
            "headline": (
                f"Stop condition held: burn rate limit {_limit(config)}; highest seen "
                f"{_rate(entry.get('max_burn_rate_seen'))} in {polls}."
            ),
            "lines": lines,
        }
    figures = ""
    if is_number(stopped.get("burn_rate")):
        figures = (
            f"Burn rate {_rate(stopped['burn_rate'])}: {fmt_int(stopped.get('errors'))} of "
            f"{fmt_int(stopped.get('requests'))} requests failed "
            f"({fmt_share(stopped.get('error_ratio'))}). "
        )
    lines.insert(0, f"{figures}Limit: {_limit(config)}.")
    cleanup = stopped.get("cleanup") if isinstance(stopped.get("cleanup"), Mapping) else {}
    took = (
        f" {stopped['cleaned_up_at'] - stopped['at']:.1f} s after the breach"
        if is_number(stopped.get("cleaned_up_at")) and is_number(stopped.get("at"))
        else ""
    )
    removed = len(cleanup.get("removed") or [])
    lines.append(
        f"Breached at {fmt_wall(stopped.get('at'))}; {removed} active fault(s) removed and the "
        f"load stopped{took}; the rest of the method did not run."
    )
    for error in cleanup.get("errors") or []:
        lines.append(f"Cleanup problem: {error}")
    headline = str(stopped.get("reason") or "breached").removeprefix("stop condition: ")
    return {"stopped": True, "headline": headline, "lines": lines}
