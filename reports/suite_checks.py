"""The judged checks of one run, read from its journal: what the suite's score counts.

A check is a hypothesis probe (Chaos Toolkit's tolerance decides), a method probe whose output
judges (`ok` with `verdict`, `bound_s` or `check`, as `experiments.verdict` reads them), or a
method probe that raised. Each gets one line with its figures, worded as the verdict's reasons
are, so the suite page and the JUnit messages read like the run's own report. Like the figures,
nothing here raises on a damaged journal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from experiments.verdict import describe_slo, is_slo_result
from reports.formatting import fmt_compact, fmt_exception, fmt_summary
from reports.suite_figures import METHOD, PHASES, activity_runs, as_list, as_mapping

log = logging.getLogger(__name__)

SUMMARY_LIMIT = 300
MAX_LISTED = 5  # list items named in a check's summary
MAX_FIELDS = 4  # fields of a plain probe output named in its summary

Output = Mapping[str, Any]


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= SUMMARY_LIMIT else line[: SUMMARY_LIMIT - 1] + "…"


def _describe(output: Output) -> str:
    """The judged output's figures in one line, as the verdict's reasons word them."""
    if is_slo_result(output):
        try:
            return describe_slo(dict(output))
        except (TypeError, ValueError, KeyError):
            pass  # a damaged output: fall back to its own words
    if isinstance(output.get("summary"), str) and output["summary"]:
        return str(output["summary"])
    problems = output.get("problems")
    if isinstance(problems, list) and problems:
        return "; ".join(str(p) for p in problems)
    return _plain_fields(output)


def _plain_fields(output: Output) -> str:
    """A hypothesis probe's own figures (scalars and short lists, not nested detail)."""
    parts = []
    for key, value in output.items():
        if key == "ok" or value is None or value == []:
            continue
        short_list = isinstance(value, list) and len(value) <= MAX_LISTED
        if short_list and all(isinstance(v, str | int | float) for v in value):
            parts.append(f"{key} {', '.join(fmt_compact(v) for v in value)}")
        elif isinstance(value, str | int | float):
            parts.append(f"{key} {fmt_compact(value)}")
    return "; ".join(parts[:MAX_FIELDS]) or ("ok" if output.get("ok") else "not ok")


def _check(phase: str, run: Mapping[str, Any], judged_only: bool) -> dict[str, Any] | None:
    activity = as_mapping(run.get("activity"))
    if activity.get("type", "probe") != "probe":
        return None
    name = str(activity.get("name") or "unnamed")
    output = run.get("output")
    if run.get("status") == "failed":
        reason = fmt_exception(run.get("exception")) or "no output"
        summary = _one_line(f"could not measure: {reason}")
        return {"name": name, "ok": False, "summary": summary, "phase": phase}
    if judged_only and not is_slo_result(output):
        return None
    tolerance_met = run.get("tolerance_met")
    if isinstance(tolerance_met, bool):  # a hypothesis probe: Chaos Toolkit's tolerance decides
        ok = tolerance_met
    elif isinstance(output, Mapping) and isinstance(output.get("ok"), bool):
        ok = output["ok"]
    else:
        ok = run.get("status") == "succeeded"
    summary = _describe(output) if isinstance(output, Mapping) else fmt_summary(output)
    return {"name": name, "ok": ok, "summary": _one_line(summary), "phase": phase}


def checks_from_journal(journal: dict) -> list[dict]:
    """Every check the score counts, in the order they ran: each hypothesis probe (before and
    after), each method probe whose output judges (`ok` with `verdict`, `bound_s` or `check`),
    and each method probe that raised (it could not measure what it was there to judge)."""
    if not isinstance(journal, Mapping):
        return []
    checks = []
    for phase, run in activity_runs(journal):
        try:
            check = _check(phase, run, judged_only=phase == METHOD)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            log.warning("check unreadable in this journal: %s", exc)
            continue
        if check is not None:
            checks.append(check)
    if not checks:  # a journal whose activities are gone: the verdict control's copies remain
        for slo in as_list(as_mapping(journal.get("inference_chaos")).get("slos")):
            if isinstance(slo, Mapping) and isinstance(slo.get("ok"), bool):
                phase = {"before": PHASES[0][1], "after": PHASES[1][1]}.get(
                    str(slo.get("phase")), METHOD
                )
                name = str(slo.get("probe") or slo.get("check") or slo.get("name") or "slo")
                summary = _one_line(_describe(slo))
                checks.append({"name": name, "ok": slo["ok"], "summary": summary, "phase": phase})
    return checks
