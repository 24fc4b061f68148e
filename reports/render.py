"""Turn a Chaos Toolkit journal and the run's load records into one self-contained HTML page.

The page answers, in reading order: did it pass, what was broken and when, what users felt,
which SLOs held, how long recovery took, and what the experiment itself did. It only reads
plain data (the journal, the JSON-lines load records, optional Prometheus series) and never
knows how any of it was measured. Every piece may be missing: the page then says so instead
of failing, because a report is most needed exactly when a run went wrong.

This module builds the page: what users felt comes from `reports.records`, the Raft control
plane (leader timeline, failover figures, linearizability) from `reports.controlplane`, where
the tasks ran and how they moved from `reports.tasks`, charts from `reports.charts`, the text of
each value from `reports.formatting`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from probes.windows import Window
from reports.charts import (
    FaultSpan,
    RecordColumns,
    bin_timeline,
    series_chart,
    served_by_chart,
    timeline_chart,
)
from reports.controlplane import (
    control_plane_section,
    epoch,
    glance_cards,
    is_check_output,
    without_history_html,
)
from reports.formatting import (
    fmt_duration,
    fmt_exception,
    fmt_int,
    fmt_json,
    fmt_latency,
    fmt_mapping,
    fmt_number,
    fmt_rel,
    fmt_share,
    fmt_summary,
    fmt_wall,
    is_number,
)
from reports.records import (
    Recovery,
    fault_label,
    injected_faults,
    load_columns,
    recoveries,
    report_windows,
    window_figures,
)
from reports.stop_condition import stop_condition_section
from reports.tasks import glance_cards as task_glance_cards
from reports.tasks import tasks_section

VERDICTS = {
    "passed": ("passed", "The system held: every check stayed within its bounds."),
    "deviated": ("deviated", "The steady state deviated: a weakness was found."),
    "failed": ("failed", "The run failed: the experiment could not be carried out as declared."),
    "aborted": (
        "aborted",
        "The run was stopped early by its stop condition: users lost too much of the error "
        "budget, so every fault was removed before its time.",
    ),
    "interrupted": ("interrupted", "The run was interrupted before it finished."),
    "unknown": ("unknown", "No verdict could be determined."),
}


def render_report(
    journal: dict,
    records_path: str | Path | None,
    out_path: str | Path,
    prometheus_series: dict | None = None,
) -> Path:
    """Write the run's HTML report to out_path and return that path."""
    html = render_html(journal, records_path, prometheus_series)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def render_html(
    journal: Mapping[str, Any],
    records_path: str | Path | None,
    prometheus_series: Mapping[str, Any] | None = None,
) -> str:
    """The report as an HTML string (for callers that embed or serve it)."""
    context = build_context(journal or {}, records_path, prometheus_series)
    return _environment().get_template("report.html.j2").render(**context)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


# --- Building the template's context -------------------------------------------------------


def build_context(
    journal: Mapping[str, Any],
    records_path: str | Path | None,
    prometheus_series: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Everything the template shows, already formatted: the template only lays it out."""
    missing: list[str] = []
    chaos = _mapping(journal.get("inference_chaos"))
    faults = [f for f in chaos.get("faults") or [] if isinstance(f, Mapping)]
    columns, records_note = load_columns(records_path)
    if records_note:
        missing.append(records_note)
    experiment = _mapping(journal.get("experiment"))
    journal_start = epoch(journal.get("start"))
    origin, origin_label = _origin(columns, journal_start, faults)
    spans = _spans(faults, origin)

    load = _load_section(columns, faults, origin) if columns is not None else None
    verdict = _verdict(journal, chaos, missing)
    if not faults:
        missing.append("No fault records: the journal names no injected fault.")
    slos = [s for s in chaos.get("slos") or [] if isinstance(s, Mapping)]
    if not slos:
        missing.append("No SLO results were recorded.")
    method = _activity_rows(journal.get("run"), origin)
    if not method and experiment.get("method"):
        missing.append(
            "The method did not run: the run stopped before it "
            f"(status: {journal.get('status') or 'unknown'})."
        )
    rollbacks = _activity_rows(journal.get("rollbacks"), origin)
    hypothesis = _hypothesis(experiment, _mapping(journal.get("steady_states")), origin)
    control_plane = control_plane_section(journal, origin, origin_label, faults, spans)
    tasks = tasks_section(journal)
    prometheus_svg = ""
    if prometheus_series:
        prometheus_svg = series_chart(prometheus_series, origin, spans)

    return {
        "title": str(experiment.get("title") or "Untitled experiment"),
        "description": str(experiment.get("description") or ""),
        "tags": [str(t) for t in experiment.get("tags") or []],
        "verdict": verdict,
        "stop_condition": stop_condition_section(chaos),
        "run": _run_facts(journal, chaos, origin, origin_label),
        "origin_label": origin_label,
        "missing": missing,
        "glance": _glance(load, slos, verdict, control_plane, tasks),
        "faults": [_fault_row(f, origin) for f in faults],
        "load": load,
        "control_plane": control_plane,
        "tasks": tasks,
        "slos": [_slo_row(s, origin) for s in slos],
        "slo_note": (
            "Claiming 99.9% at 95% confidence needs about 3,000 requests without a single "
            "error; with fewer, a clean run is reported as inconclusive, not as a pass."
        ),
        "hypothesis": hypothesis,
        "method": method,
        "rollbacks": rollbacks,
        "timeline_bars": _timeline_bars(method + rollbacks + hypothesis["all_rows"]),
        "prometheus_svg": prometheus_svg,
        "raw_outputs": _raw_outputs(journal, slos, faults),
        "configuration": fmt_json(experiment.get("configuration")),
        "generated_at": fmt_wall(time.time()),
    }


def _origin(
    columns: RecordColumns | None, journal_start: float | None, faults: Sequence[Mapping]
) -> tuple[float, str]:
    """t = 0 of every relative time on the page: load start, else experiment start."""
    if columns is not None:
        return float(columns.sent.min()), "load start (first request sent)"
    if journal_start is not None:
        return journal_start, "experiment start"
    injected = [float(f["injected_at"]) for f in injected_faults(faults)]
    if injected:
        return min(injected), "first fault injection"
    return 0.0, "the Unix epoch (no start time known)"


def _load_section(
    columns: RecordColumns, faults: Sequence[Mapping[str, Any]], origin: float
) -> dict[str, Any]:
    timeline = bin_timeline(columns, origin)
    load_end = float(columns.sent.max())
    windows = report_windows(faults, origin, load_end)
    figures = {w.name: window_figures(columns, w) for w in windows}
    rows = [
        _window_row(w, figures[w.name], origin)
        for w in windows
        if w.name == "all" or w.end > w.start
    ]
    baseline = figures["before"]["ttft"]["p95"]
    recovery_list = recoveries(timeline, faults, baseline)
    spans = _spans(faults, origin)
    victims = sorted({str(v) for f in faults for v in f.get("victims") or []})
    return {
        "windows": rows,
        "recoveries": [_recovery_row(r) for r in recovery_list],
        "baseline_ttft_p95": fmt_latency(baseline),
        "timeline_svg": timeline_chart(timeline, spans),
        "served_by_svg": served_by_chart(timeline, spans, victims),
        "totals": figures["all"],
        "recovery_list": recovery_list,
    }


def _spans(faults: Sequence[Mapping[str, Any]], origin: float) -> list[FaultSpan]:
    spans = []
    for fault in injected_faults(faults):
        removed = fault.get("removed_at")
        end = float(removed) - origin if is_number(removed) else None
        spans.append(FaultSpan(fault_label(fault), float(fault["injected_at"]) - origin, end))
    return spans


def _verdict(
    journal: Mapping[str, Any], chaos: Mapping[str, Any], missing: list[str]
) -> dict[str, Any]:
    word = str(chaos.get("verdict") or "")
    reasons = [str(r) for r in chaos.get("reasons") or []]
    derived = False
    if word not in VERDICTS or word == "unknown":
        derived = True
        status = journal.get("status")
        if status in ("interrupted", "aborted"):
            word = "interrupted"
        elif status == "failed":
            word = "failed"
        elif journal.get("deviated"):
            word = "deviated"
        elif status == "completed":
            word = "passed"
        else:
            word = "unknown"
        reasons.append(
            "No verdict from the inference-chaos control; derived from the Chaos Toolkit "
            f"status {status or 'none'!r} (deviated: {bool(journal.get('deviated'))})."
        )
        missing.append("The verdict control did not record a verdict in the journal.")
    css, meaning = VERDICTS[word]
    notes = [str(n) for n in chaos.get("notes") or []]
    return {
        "word": word,
        "css": css,
        "meaning": meaning,
        "reasons": reasons,
        "notes": notes,
        "derived": derived,
    }


def _run_facts(
    journal: Mapping[str, Any], chaos: Mapping[str, Any], origin: float, origin_label: str
) -> list[tuple[str, str]]:
    start, end = epoch(journal.get("start")), epoch(journal.get("end"))
    duration = journal.get("duration")
    facts = [
        ("run id", str(chaos.get("run_id") or "—")),
        ("Chaos Toolkit status", str(journal.get("status") or "—")),
        ("deviated", "yes" if journal.get("deviated") else "no"),
        ("started", fmt_wall(start) if start is not None else "—"),
        ("ended", fmt_wall(end) if end is not None else "—"),
        ("duration", fmt_duration(duration) if is_number(duration) else "—"),
        ("t = 0 is", f"{origin_label}, {fmt_wall(origin)}"),
    ]
    if journal.get("node") or journal.get("platform"):
        facts.append(("ran on", f"{journal.get('node') or '?'} ({journal.get('platform') or '?'})"))
    if journal.get("chaoslib-version"):
        facts.append(("chaoslib", str(journal["chaoslib-version"])))
    return facts


def _glance(
    load: Mapping[str, Any] | None,
    slos: Sequence[Mapping[str, Any]],
    verdict: Mapping,
    control_plane: Mapping[str, Any] | None = None,
    tasks: Mapping[str, Any] | None = None,
) -> list[tuple[str, str]]:
    cards = [("verdict", verdict["word"]), *glance_cards(control_plane), *task_glance_cards(tasks)]
    if load is not None:
        totals = load["totals"]
        cards.append(("requests", f"{totals['total']:,}"))
        cards.append(("succeeded", fmt_share(totals["success"])))
        cards.append(("TTFT p95", fmt_latency(totals["ttft"]["p95"])))
        for recovery in load["recovery_list"][:2]:
            cards.append((f"recovery: {recovery.fault_label}", _recovery_value(recovery)))
    if slos:
        passed = sum(1 for s in slos if _slo_verdict(s) == "pass")
        cards.append(("SLOs passed", f"{passed} of {len(slos)}"))
    return cards


def _fault_row(fault: Mapping[str, Any], origin: float) -> dict[str, Any]:
    injected, removed = fault.get("injected_at"), fault.get("removed_at")
    if is_number(injected) and is_number(removed):
        duration = fmt_duration(float(removed) - float(injected))
    elif is_number(injected):
        duration = "still active at the end of the record"
    else:
        duration = "never injected"
    return {
        "id": str(fault.get("id") or ""),
        "kind": str(fault.get("kind") or "?"),
        "target": str(fault.get("target") or ""),
        "victims": [str(v) for v in fault.get("victims") or []],
        "selector": fmt_mapping(fault.get("selector")),
        "params": fmt_mapping(fault.get("params")),
        "backend": str(fault.get("backend") or ""),
        "injected_rel": fmt_rel(injected, origin),
        "injected_wall": fmt_wall(injected) if is_number(injected) else "—",
        "removed_rel": fmt_rel(removed, origin) if is_number(removed) else "not removed",
        "removed_wall": fmt_wall(removed) if is_number(removed) else "—",
        "duration": duration,
        "error": str(fault.get("error") or ""),
        "manifests": _manifests_yaml(fault),
        "emulated": [str(e) for e in (fault.get("details") or {}).get("emulated") or []],
    }


def _manifests_yaml(fault: Mapping[str, Any]) -> str:
    """What the backend created for the fault (Chaos Mesh objects, Jobs), as YAML."""
    manifests = (fault.get("details") or {}).get("manifests") or []
    if not manifests:
        return ""
    return yaml.safe_dump_all(list(manifests), sort_keys=False, default_flow_style=False)


def _window_row(window: Window, fig: Mapping[str, Any], origin: float) -> dict[str, Any]:
    end = window.end if math.isfinite(window.end) else window.start
    return {
        "name": window.name,
        "span": f"{window.start - origin:+.1f} s → {end - origin:+.1f} s",
        "total": f"{fig['total']:,}",
        "errors": f"{fig['errors']:,}",
        "success": fmt_share(fig["success"]),
        "ttft": {k: fmt_latency(v) for k, v in fig["ttft"].items()},
        "e2e": {k: fmt_latency(v) for k, v in fig["e2e"].items()},
        "stream_tps": fmt_number(fig["stream_tokens_per_s"]),
        "tps": fmt_number(fig["tokens_per_s"]),
        "bad": fig["total"] > 0 and fig["errors"] > 0,
    }


def _recovery_row(recovery: Recovery) -> dict[str, Any]:
    return {
        "fault": recovery.fault_label,
        "recovered": recovery.recovered,
        "after_injection": _recovery_value(recovery),
        "after_removal": (
            f"{recovery.after_removal_s:+.0f} s"
            if recovery.after_removal_s is not None
            else ("—" if recovery.recovered else "not recovered")
        ),
        "note": recovery.note,
    }


def _recovery_value(recovery: Recovery) -> str:
    if recovery.after_injection_s is None:
        return "not recovered"
    return f"{recovery.after_injection_s:.1f} s"


def _slo_verdict(slo: Mapping[str, Any]) -> str:
    verdict = slo.get("verdict")
    if verdict in ("pass", "fail", "inconclusive"):
        return str(verdict)
    if "check" in slo and slo.get("result") == "unknown":
        return "inconclusive"  # a check cut short proves nothing either way
    if "metric" in slo and (slo.get("value") is None or not slo.get("count", 1)):
        return "inconclusive"
    if "ok" in slo:
        return "pass" if slo["ok"] else "fail"
    return "inconclusive"


def _slo_row(slo: Mapping[str, Any], origin: float) -> dict[str, Any]:
    verdict = _slo_verdict(slo)
    window = _fmt_window(slo, origin)
    source = str(slo.get("source") or "")
    if "check" in slo:
        return _check_row(slo, verdict, window, source)
    if "metric" in slo:
        quantile = slo.get("quantile")
        q = (
            f"p{fmt_number(quantile * 100 if quantile <= 1 else quantile)}"
            if is_number(quantile)
            else ""
        )
        spread = ", ".join(
            f"{k} {fmt_latency(slo.get(k))}" for k in ("p50", "p95", "p99") if k in slo
        )
        return {
            "name": str(slo.get("name") or f"{str(slo['metric']).upper()} {q}".strip()),
            "target": f"≤ {fmt_latency(slo.get('bound_s'))}",
            "measured": fmt_latency(slo.get("value")),
            "detail": f"{slo.get('count', '?')} samples" + (f"; {spread}" if spread else ""),
            "interval": "—",
            "verdict": verdict,
            "window": window,
            "source": source,
            "note": "",
        }
    interval = slo.get("interval")
    interval_text = "—"
    if isinstance(interval, Sequence) and len(interval) == 2:
        interval_text = f"{fmt_share(interval[0])} – {fmt_share(interval[1])}"
    note = ""
    if verdict == "inconclusive":
        needed = slo.get("requests_needed")
        note = (
            f"too few requests to decide: needs about {needed:,} error-free requests"
            if isinstance(needed, int)
            else "too few requests to decide"
        )
    burn = slo.get("burn_rate")
    detail = f"{fmt_int(slo.get('good'))} good of {fmt_int(slo.get('total'))}"
    if is_number(burn):
        detail += f"; burn rate {burn:.2f}"
    return {
        "name": str(slo.get("name") or "availability"),
        "target": fmt_share(slo.get("target")),
        "measured": fmt_share(slo.get("sli")),
        "detail": detail,
        "interval": interval_text,
        "verdict": verdict,
        "window": window,
        "source": source,
        "note": note,
    }


def _check_row(slo: Mapping[str, Any], verdict: str, window: str, source: str) -> dict[str, Any]:
    """A named check the verdict control judges like an SLO (linearizability, step-down)."""
    check = str(slo["check"])
    measured = slo.get("result")
    if measured is None:
        measured = "held" if slo.get("ok") else "violated"
    return {
        "name": str(slo.get("name") or check),
        "target": "linearizable" if is_check_output(slo, "linearizability") else "holds",
        "measured": str(measured),
        "detail": str(slo.get("summary") or ""),
        "interval": "—",
        "verdict": verdict,
        "window": window if window != "—" else str(slo.get("phase") or "—"),
        "source": source or str(slo.get("probe") or ""),
        "note": "",
    }


def _fmt_window(slo: Mapping[str, Any], origin: float) -> str:
    window = slo.get("window")
    start, end = slo.get("window_start"), slo.get("window_end")
    if isinstance(window, Sequence) and not isinstance(window, str) and len(window) == 2:
        start, end, window = window[0], window[1], ""
    text = str(window or "")
    if is_number(start) and is_number(end):
        text += f" ({fmt_rel(start, origin)} → {fmt_rel(end, origin)})"
    return text.strip() or "—"


def _hypothesis(
    experiment: Mapping[str, Any], states: Mapping[str, Any], origin: float
) -> dict[str, Any]:
    declared = _mapping(experiment.get("steady-state-hypothesis"))
    phases = []
    all_rows: list[dict[str, Any]] = []
    for phase in ("before", "after"):
        state = states.get(phase)
        if not isinstance(state, Mapping):
            phases.append({"phase": phase, "met": None, "rows": [], "status": "not checked"})
            continue
        rows = _activity_rows(state.get("probes"), origin, phase=f"hypothesis {phase}")
        met = state.get("steady_state_met")
        status = "met" if met else ("not met" if met is False else "undetermined")
        phases.append({"phase": phase, "met": met, "rows": rows, "status": status})
        all_rows.extend(rows)
    return {
        "title": str(declared.get("title") or ""),
        "declared": bool(declared),
        "phases": phases,
        "all_rows": all_rows,
    }


def _activity_rows(runs: Any, origin: float, phase: str = "") -> list[dict[str, Any]]:
    rows = []
    for run in runs or []:
        if not isinstance(run, Mapping):
            continue
        activity = _mapping(run.get("activity"))
        start = epoch(run.get("start"))
        duration = run.get("duration")
        tolerance_met = run.get("tolerance_met")
        rows.append(
            {
                "name": str(activity.get("name") or "unnamed"),
                "type": str(activity.get("type") or ""),
                "phase": phase,
                "background": bool(activity.get("background")),
                "status": str(run.get("status") or "unknown"),
                "tolerance_met": tolerance_met,
                "tolerance": fmt_summary(activity.get("tolerance")),
                "start_rel": fmt_rel(start, origin) if start is not None else "—",
                "start": start,
                "duration_s": float(duration) if is_number(duration) else None,
                "duration": fmt_duration(duration) if is_number(duration) else "—",
                "error": fmt_exception(run.get("exception")),
                "output": fmt_summary(run.get("output")),
            }
        )
    return rows


def _timeline_bars(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place each activity on a shared bar so overlaps (background load) are visible."""
    timed = [r for r in rows if r["start"] is not None]
    if not timed:
        return []
    lo = min(r["start"] for r in timed)
    hi = max(r["start"] + (r["duration_s"] or 0.0) for r in timed)
    span = max(hi - lo, 1e-6)
    bars = []
    for row in sorted(timed, key=lambda r: r["start"]):
        left = (row["start"] - lo) / span * 100
        width = max((row["duration_s"] or 0.0) / span * 100, 0.4)
        bars.append(
            {
                "label": f"{row['phase'] or row['type']}: {row['name']}",
                "status": row["status"],
                "left": f"{min(left, 99.6):.2f}",
                "width": f"{min(width, 100 - min(left, 99.6)):.2f}",
                "when": f"{row['start_rel']}, {row['duration']}",
            }
        )
    return bars


def _raw_outputs(
    journal: Mapping[str, Any], slos: Sequence[Mapping], faults: Sequence[Mapping]
) -> list[dict[str, str]]:
    items = []
    states = _mapping(journal.get("steady_states"))
    groups = [
        (f"hypothesis {p}", _mapping(states.get(p)).get("probes")) for p in ("before", "after")
    ]
    groups += [("method", journal.get("run")), ("rollback", journal.get("rollbacks"))]
    for group, runs in groups:
        for run in runs or []:
            if not isinstance(run, Mapping):
                continue
            name = _mapping(run.get("activity")).get("name") or "unnamed"
            body = {"output": without_history_html(run.get("output"))}
            if run.get("exception"):
                body["exception"] = "".join(str(x) for x in run["exception"])
            items.append({"label": f"{group}: {name}", "body": fmt_json(body)})
    if slos:
        items.append(
            {"label": "SLO results (as recorded)", "body": fmt_json(without_history_html(slos))}
        )
    if faults:
        items.append({"label": "fault records (as recorded)", "body": fmt_json(list(faults))})
    return items


# --- Reading the journal ----------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
