"""What users felt, from the raw load records alone: figures per window and time to recover.

The report reads the JSON-lines records `loadtests` wrote and the fault records of the journal,
nothing else. Windows are the ones the SLO probes judge (`probes.windows`), so a figure on the
page and a probe's verdict always speak of the same requests. Every input may be damaged: a
line that cannot be read is counted and skipped, a fault record without a usable time is
ignored, because a report is most needed exactly when a run went wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probes.windows import Window, experiment_windows
from reports.charts import RecordColumns, Timeline
from reports.formatting import is_number

# Recovered once no second has errors and TTFT p95 is within this factor of the before-window's.
RECOVERY_TTFT_FACTOR = 1.5


@dataclass(frozen=True)
class Recovery:
    """How long one fault took to stop hurting users, measured on the per-second timeline."""

    fault_label: str
    recovered: bool
    after_injection_s: float | None  # None when not recovered or not measurable
    after_removal_s: float | None
    note: str


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


def load_columns(records_path: str | Path | None) -> tuple[RecordColumns | None, str]:
    """The usable records as columns, or None; and a note for the reader when any were lost."""
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


def injected_faults(faults: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The fault records that carry an injection time, in their recorded order."""
    return [f for f in faults if is_number(f.get("injected_at"))]


def report_windows(
    faults: Sequence[Mapping[str, Any]], load_start: float, load_end: float
) -> list[Window]:
    """before / during / recovery / after / all, exactly as the SLO probes split the load.

    A removal time that is not a number counts as a fault still active at the end.
    """
    timed = [
        {
            "injected_at": float(f["injected_at"]),
            "removed_at": float(f["removed_at"]) if is_number(f.get("removed_at")) else None,
        }
        for f in injected_faults(faults)
    ]
    return list(experiment_windows(timed, load_start, load_end).values())


def window_figures(columns: RecordColumns, window: Window) -> dict[str, Any]:
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
    if not is_number(injected) or not len(timeline):
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
        recovered_bin - (float(removed) - timeline.origin) if is_number(removed) else None
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


def recoveries(
    timeline: Timeline, faults: Sequence[Mapping[str, Any]], baseline_ttft_p95: float | None
) -> list[Recovery]:
    """Time to recover for every injected fault, in injection order.

    Each fault is judged only until the next one was injected: later damage is not its own.
    """
    injected = sorted(injected_faults(faults), key=lambda f: f["injected_at"])
    out = []
    for index, fault in enumerate(injected):
        later = injected[index + 1 :]
        until = float(later[0]["injected_at"]) - timeline.origin if later else None
        out.append(time_to_recover(timeline, fault, baseline_ttft_p95, until))
    return out


def fault_label(fault: Mapping[str, Any]) -> str:
    """A short name for a fault: its kind and its victims."""
    victims = [str(v) for v in fault.get("victims") or []]
    shown = ", ".join(victims[:3]) + (f" +{len(victims) - 3}" if len(victims) > 3 else "")
    return f"{fault.get('kind') or 'fault'} {shown}".strip()


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}
