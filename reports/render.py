"""Turn a Chaos Toolkit journal and the run's load records into one self-contained HTML page.

The page answers, in reading order: did it pass, what was broken and when, what users felt,
which SLOs held, how long recovery took, and what the experiment itself did. It only reads
plain data (the journal, the JSON-lines load records, optional Prometheus series) and never
knows how any of it was measured. Every piece may be missing: the page then says so instead
of failing, because a report is most needed exactly when a run went wrong.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from reports.charts import (
    FaultSpan,
    RecordColumns,
    Timeline,
    bin_timeline,
    series_chart,
    served_by_chart,
    timeline_chart,
)

# The phase windows, as probes define them: a request belongs to the window holding its send.
RECOVERY_WINDOW_S = 10.0
# Recovered once no second has errors and TTFT p95 is within this factor of the before-window's.
RECOVERY_TTFT_FACTOR = 1.5
RAW_OUTPUT_LIMIT = 20_000
SUMMARY_LIMIT = 160

VERDICTS = {
    "passed": ("passed", "The system held: every check stayed within its bounds."),
    "deviated": ("deviated", "The steady state deviated: a weakness was found."),
    "failed": ("failed", "The run failed: the experiment could not be carried out as declared."),
    "interrupted": ("interrupted", "The run was interrupted before it finished."),
    "unknown": ("unknown", "No verdict could be determined."),
}


@dataclass(frozen=True)
class PhaseWindow:
    """A named half-open span [start, end) of Unix time."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class Recovery:
    """How long one fault took to stop hurting users, measured on the per-second timeline."""

    fault_label: str
    recovered: bool
    after_injection_s: float | None  # None when not recovered or not measurable
    after_removal_s: float | None
    note: str


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


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Load JSON-lines records; return them and the count of lines that could not be read.

    A run killed mid-write leaves a truncated last line; losing that one request must not
    lose the report.
    """
    records: list[dict[str, Any]] = []
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                skipped += 1
    return records, skipped


def phase_windows(
    faults: Sequence[Mapping[str, Any]], load_start: float, load_end: float
) -> list[PhaseWindow]:
    """before / during / recovery / after / all, the same split the SLO probes use."""
    span_end = math.nextafter(load_end, math.inf)
    injected = [f for f in faults if _is_number(f.get("injected_at"))]
    if injected:
        first = min(float(f["injected_at"]) for f in injected)
        removals = [f.get("removed_at") for f in injected]
        last = math.inf if any(not _is_number(r) for r in removals) else max(removals)

        def clip(t: float) -> float:
            return min(max(t, load_start), span_end)

        b1 = clip(first)
        b2 = max(b1, clip(last))
        b3 = max(b2, clip(last + RECOVERY_WINDOW_S))
    else:
        b1 = b2 = b3 = span_end
    bounds = (load_start, b1, b2, b3, span_end)
    names = ("before", "during", "recovery", "after")
    windows = [PhaseWindow(name, bounds[i], bounds[i + 1]) for i, name in enumerate(names)]
    return [*windows, PhaseWindow("all", load_start, span_end)]


def window_figures(columns: RecordColumns, window: PhaseWindow) -> dict[str, Any]:
    """What users felt in one window, from the records sent within it."""
    mask = (columns.sent >= window.start) & (columns.sent < window.end)
    total = int(mask.sum())
    ok = mask & columns.ok
    good = int(ok.sum())
    ttft = columns.ttft[mask]
    ttft = ttft[~np.isnan(ttft)]
    e2e = columns.e2e[ok]
    tokens = columns.output_tokens[ok]
    decode = columns.done[ok] - columns.first_token[ok]
    stream_ok = (tokens > 1) & (decode > 0)
    per_stream = (tokens[stream_ok] - 1) / decode[stream_ok]
    duration = window.end - window.start
    total_tokens = float(np.nansum(tokens))
    return {
        "total": total,
        "good": good,
        "errors": total - good,
        "success": good / total if total else None,
        "ttft": _percentiles(ttft),
        "e2e": _percentiles(e2e),
        "stream_tokens_per_s": float(np.median(per_stream)) if per_stream.size else None,
        "tokens_per_s": total_tokens / duration if total and duration > 0 else None,
    }


def time_to_recover(
    timeline: Timeline,
    fault: Mapping[str, Any],
    baseline_ttft_p95: float | None,
    until: float | None = None,
) -> Recovery:
    """First second after injection from which errors are 0 and TTFT p95 is near baseline.

    "From which" means for good: every later second up to `until` (seconds since the
    timeline's origin: the next fault's injection, else the end of the load) stays clean.
    A second in which no request was sent proves nothing either way, so recovery is dated
    by the first clean second with traffic after the last bad one; a load that stalled
    until it ended has not recovered.
    """
    label = fault_label(fault)
    injected = fault.get("injected_at")
    if not _is_number(injected) or not len(timeline):
        return Recovery(label, False, None, None, "not measurable: no injection time or no load")
    inj_rel = float(injected) - timeline.origin
    first_bin = max(0, math.floor(inj_rel))
    last_bin = len(timeline) if until is None else min(len(timeline), math.floor(until))
    if first_bin >= last_bin:
        return Recovery(label, False, None, None, "not measurable: no load after the injection")
    bad = timeline.errors[first_bin:last_bin] > 0
    if baseline_ttft_p95 is not None:
        p95 = timeline.ttft_p95[first_bin:last_bin]
        bad |= np.nan_to_num(p95, nan=0.0) > RECOVERY_TTFT_FACTOR * baseline_ttft_p95
    bad_bins = np.flatnonzero(bad)
    clean_from = int(bad_bins[-1]) + 1 if bad_bins.size else 0
    with_traffic = np.flatnonzero(timeline.sent[first_bin:last_bin][clean_from:] > 0)
    if not with_traffic.size:
        ending = "before the next fault" if until is not None else "before the load ended"
        return Recovery(label, False, None, None, f"not recovered {ending}")
    recovered_bin = first_bin + clean_from + int(with_traffic[0])
    after_injection = max(0.0, recovered_bin - inj_rel)
    removed = fault.get("removed_at")
    after_removal = (
        recovered_bin - (float(removed) - timeline.origin) if _is_number(removed) else None
    )
    if not bad_bins.size:
        note = "no visible impact"
    elif after_removal is not None and after_removal < 0:
        note = "recovered while the fault was still active"
    else:
        note = "recovered"
    if baseline_ttft_p95 is None:
        note += " (judged on errors only: no before-window TTFT baseline)"
    return Recovery(label, True, after_injection, after_removal, note)


def fault_label(fault: Mapping[str, Any]) -> str:
    """A short name for a fault: its kind and its victims."""
    victims = [str(v) for v in fault.get("victims") or []]
    shown = ", ".join(victims[:3]) + (f" +{len(victims) - 3}" if len(victims) > 3 else "")
    return f"{fault.get('kind') or 'fault'} {shown}".strip()


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
    columns, records_note = _load_columns(records_path)
    if records_note:
        missing.append(records_note)
    experiment = _mapping(journal.get("experiment"))
    journal_start = _epoch(journal.get("start"))
    origin, origin_label = _origin(columns, journal_start, faults)

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
    prometheus_svg = ""
    if prometheus_series:
        spans = _spans(faults, origin)
        prometheus_svg = series_chart(prometheus_series, origin, spans)

    return {
        "title": str(experiment.get("title") or "Untitled experiment"),
        "description": str(experiment.get("description") or ""),
        "tags": [str(t) for t in experiment.get("tags") or []],
        "verdict": verdict,
        "run": _run_facts(journal, chaos, origin, origin_label),
        "origin_label": origin_label,
        "missing": missing,
        "glance": _glance(load, slos, verdict),
        "faults": [_fault_row(f, origin) for f in faults],
        "load": load,
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
        "configuration": _pretty(experiment.get("configuration")),
        "generated_at": _wall(time.time()),
    }


def _load_columns(records_path: str | Path | None) -> tuple[RecordColumns | None, str]:
    if records_path is None:
        return None, "No load records file was given: there are no user-side figures or charts."
    path = Path(records_path)
    if not path.is_file():
        return None, f"The load records file {path} does not exist: no user-side figures."
    records, skipped = read_records(path)
    columns = RecordColumns.from_records(records)
    unusable = skipped + len(records) - len(columns)
    note = ""
    if not len(columns):
        note = f"The load records file {path} holds no usable request: no user-side figures."
        return None, note
    if unusable:
        note = f"{unusable} line(s) of {path} could not be read (e.g. a truncated last line)."
    return columns, note


def _origin(
    columns: RecordColumns | None, journal_start: float | None, faults: Sequence[Mapping]
) -> tuple[float, str]:
    """t = 0 of every relative time on the page: load start, else experiment start."""
    if columns is not None:
        return float(columns.sent.min()), "load start (first request sent)"
    if journal_start is not None:
        return journal_start, "experiment start"
    injected = [float(f["injected_at"]) for f in faults if _is_number(f.get("injected_at"))]
    if injected:
        return min(injected), "first fault injection"
    return 0.0, "the Unix epoch (no start time known)"


def _load_section(
    columns: RecordColumns, faults: Sequence[Mapping[str, Any]], origin: float
) -> dict[str, Any]:
    timeline = bin_timeline(columns, origin)
    load_end = float(columns.sent.max())
    windows = phase_windows(faults, origin, load_end)
    figures = {w.name: window_figures(columns, w) for w in windows}
    rows = [
        _window_row(w, figures[w.name], origin)
        for w in windows
        if w.name == "all" or w.end > w.start
    ]
    baseline = figures["before"]["ttft"]["p95"]
    recoveries = _recoveries(timeline, faults, baseline)
    spans = _spans(faults, origin)
    victims = sorted({str(v) for f in faults for v in f.get("victims") or []})
    return {
        "windows": rows,
        "recoveries": [_recovery_row(r) for r in recoveries],
        "baseline_ttft_p95": _fmt_latency(baseline),
        "timeline_svg": timeline_chart(timeline, spans),
        "served_by_svg": served_by_chart(timeline, spans, victims),
        "totals": figures["all"],
        "recovery_list": recoveries,
    }


def _recoveries(
    timeline: Timeline, faults: Sequence[Mapping[str, Any]], baseline: float | None
) -> list[Recovery]:
    injected = sorted(
        (f for f in faults if _is_number(f.get("injected_at"))), key=lambda f: f["injected_at"]
    )
    out = []
    for index, fault in enumerate(injected):
        later = injected[index + 1 :]
        until = float(later[0]["injected_at"]) - timeline.origin if later else None
        out.append(time_to_recover(timeline, fault, baseline, until))
    return out


def _spans(faults: Sequence[Mapping[str, Any]], origin: float) -> list[FaultSpan]:
    spans = []
    for fault in faults:
        if not _is_number(fault.get("injected_at")):
            continue
        removed = fault.get("removed_at")
        end = float(removed) - origin if _is_number(removed) else None
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
    start, end = _epoch(journal.get("start")), _epoch(journal.get("end"))
    duration = journal.get("duration")
    facts = [
        ("run id", str(chaos.get("run_id") or "—")),
        ("Chaos Toolkit status", str(journal.get("status") or "—")),
        ("deviated", "yes" if journal.get("deviated") else "no"),
        ("started", _wall(start) if start is not None else "—"),
        ("ended", _wall(end) if end is not None else "—"),
        ("duration", _fmt_duration(duration) if _is_number(duration) else "—"),
        ("t = 0 is", f"{origin_label}, {_wall(origin)}"),
    ]
    if journal.get("node") or journal.get("platform"):
        facts.append(("ran on", f"{journal.get('node') or '?'} ({journal.get('platform') or '?'})"))
    if journal.get("chaoslib-version"):
        facts.append(("chaoslib", str(journal["chaoslib-version"])))
    return facts


def _glance(
    load: Mapping[str, Any] | None, slos: Sequence[Mapping[str, Any]], verdict: Mapping
) -> list[tuple[str, str]]:
    cards = [("verdict", verdict["word"])]
    if load is not None:
        totals = load["totals"]
        cards.append(("requests", f"{totals['total']:,}"))
        cards.append(("succeeded", _fmt_share(totals["success"])))
        cards.append(("TTFT p95", _fmt_latency(totals["ttft"]["p95"])))
        for recovery in load["recovery_list"][:2]:
            cards.append((f"recovery: {recovery.fault_label}", _recovery_value(recovery)))
    if slos:
        passed = sum(1 for s in slos if _slo_verdict(s) == "pass")
        cards.append(("SLOs passed", f"{passed} of {len(slos)}"))
    return cards


def _fault_row(fault: Mapping[str, Any], origin: float) -> dict[str, Any]:
    injected, removed = fault.get("injected_at"), fault.get("removed_at")
    if _is_number(injected) and _is_number(removed):
        duration = _fmt_duration(float(removed) - float(injected))
    elif _is_number(injected):
        duration = "still active at the end of the record"
    else:
        duration = "never injected"
    return {
        "id": str(fault.get("id") or ""),
        "kind": str(fault.get("kind") or "?"),
        "target": str(fault.get("target") or ""),
        "victims": [str(v) for v in fault.get("victims") or []],
        "selector": _kv(fault.get("selector")),
        "params": _kv(fault.get("params")),
        "backend": str(fault.get("backend") or ""),
        "injected_rel": _fmt_rel(injected, origin),
        "injected_wall": _wall(injected) if _is_number(injected) else "—",
        "removed_rel": _fmt_rel(removed, origin) if _is_number(removed) else "not removed",
        "removed_wall": _wall(removed) if _is_number(removed) else "—",
        "duration": duration,
        "error": str(fault.get("error") or ""),
    }


def _window_row(window: PhaseWindow, fig: Mapping[str, Any], origin: float) -> dict[str, Any]:
    end = window.end if math.isfinite(window.end) else window.start
    return {
        "name": window.name,
        "span": f"{window.start - origin:+.1f} s → {end - origin:+.1f} s",
        "total": f"{fig['total']:,}",
        "errors": f"{fig['errors']:,}",
        "success": _fmt_share(fig["success"]),
        "ttft": {k: _fmt_latency(v) for k, v in fig["ttft"].items()},
        "e2e": {k: _fmt_latency(v) for k, v in fig["e2e"].items()},
        "stream_tps": _fmt_number(fig["stream_tokens_per_s"]),
        "tps": _fmt_number(fig["tokens_per_s"]),
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
    if "metric" in slo and (slo.get("value") is None or not slo.get("count", 1)):
        return "inconclusive"
    if "ok" in slo:
        return "pass" if slo["ok"] else "fail"
    return "inconclusive"


def _slo_row(slo: Mapping[str, Any], origin: float) -> dict[str, Any]:
    verdict = _slo_verdict(slo)
    window = _fmt_window(slo, origin)
    source = str(slo.get("source") or "")
    if "metric" in slo:
        quantile = slo.get("quantile")
        q = (
            f"p{_fmt_number(quantile * 100 if quantile <= 1 else quantile)}"
            if _is_number(quantile)
            else ""
        )
        spread = ", ".join(
            f"{k} {_fmt_latency(slo.get(k))}" for k in ("p50", "p95", "p99") if k in slo
        )
        return {
            "name": str(slo.get("name") or f"{str(slo['metric']).upper()} {q}".strip()),
            "target": f"≤ {_fmt_latency(slo.get('bound_s'))}",
            "measured": _fmt_latency(slo.get("value")),
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
        interval_text = f"{_fmt_share(interval[0])} – {_fmt_share(interval[1])}"
    note = ""
    if verdict == "inconclusive":
        needed = slo.get("requests_needed")
        note = (
            f"too few requests to decide: needs about {needed:,} error-free requests"
            if isinstance(needed, int)
            else "too few requests to decide"
        )
    burn = slo.get("burn_rate")
    detail = f"{_fmt_int(slo.get('good'))} good of {_fmt_int(slo.get('total'))}"
    if _is_number(burn):
        detail += f"; burn rate {burn:.2f}"
    return {
        "name": str(slo.get("name") or "availability"),
        "target": _fmt_share(slo.get("target")),
        "measured": _fmt_share(slo.get("sli")),
        "detail": detail,
        "interval": interval_text,
        "verdict": verdict,
        "window": window,
        "source": source,
        "note": note,
    }


def _fmt_window(slo: Mapping[str, Any], origin: float) -> str:
    window = slo.get("window")
    start, end = slo.get("window_start"), slo.get("window_end")
    if isinstance(window, Sequence) and not isinstance(window, str) and len(window) == 2:
        start, end, window = window[0], window[1], ""
    text = str(window or "")
    if _is_number(start) and _is_number(end):
        text += f" ({_fmt_rel(start, origin)} → {_fmt_rel(end, origin)})"
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
        start = _epoch(run.get("start"))
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
                "tolerance": _summarise(activity.get("tolerance")),
                "start_rel": _fmt_rel(start, origin) if start is not None else "—",
                "start": start,
                "duration_s": float(duration) if _is_number(duration) else None,
                "duration": _fmt_duration(duration) if _is_number(duration) else "—",
                "error": _exception_line(run.get("exception")),
                "output": _summarise(run.get("output")),
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
            body = {"output": run.get("output")}
            if run.get("exception"):
                body["exception"] = "".join(str(x) for x in run["exception"])
            items.append({"label": f"{group}: {name}", "body": _pretty(body)})
    if slos:
        items.append({"label": "SLO results (as recorded)", "body": _pretty(list(slos))})
    if faults:
        items.append({"label": "fault records (as recorded)", "body": _pretty(list(faults))})
    return items


# --- Formatting -------------------------------------------------------------------------


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _pretty(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    if len(text) > RAW_OUTPUT_LIMIT:
        text = text[:RAW_OUTPUT_LIMIT] + f"\n… ({len(text) - RAW_OUTPUT_LIMIT:,} more characters)"
    return text


def _summarise(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    else:
        text = _compact(value)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _kv(value: Any) -> str:
    if not value:
        return "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    return _compact(value)


def _exception_line(exception: Any) -> str:
    """The last line of a formatted traceback is the one a reader needs."""
    if not exception:
        return ""
    text = "".join(str(x) for x in exception) if isinstance(exception, list) else str(exception)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _epoch(value: Any) -> float | None:
    """Journal times are ISO strings; fault and load times are Unix floats. Accept both."""
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return None


def _wall(t: Any) -> str:
    if not _is_number(t):
        return "—"
    return datetime.fromtimestamp(float(t), tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _fmt_rel(t: Any, origin: float) -> str:
    return f"{float(t) - origin:+.1f} s" if _is_number(t) else "—"


def _fmt_duration(seconds: Any) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def _fmt_latency(seconds: Any) -> str:
    if not _is_number(seconds) or math.isnan(seconds):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def _fmt_share(share: Any) -> str:
    if not _is_number(share) or math.isnan(share):
        return "—"
    text = f"{share * 100:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _fmt_number(value: Any) -> str:
    if not _is_number(value) or math.isnan(value):
        return "—"
    return f"{value:,.1f}".removesuffix(".0")


def _fmt_int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
