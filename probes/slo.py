"""SLO probes over the load generator's raw request records: the authoritative SLI.

Server metrics miss the requests that never connected; the client saw every one. These
probes read the JSON-lines records (docs/internals.md, "Load records"), cut them into the
experiment's windows, and judge availability with an exact binomial interval and latency
with exact percentiles. They work on plain dicts, so they need nothing from `loadtests`.

Where the inputs come from, first match wins: the probe's own argument, the current run
(`experiments.context.current_run()`), then `configuration["records_path"]` /
`configuration["faults_path"]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes import stats
from probes.windows import (
    DEFAULT_RECOVERY_SECONDS,
    WINDOW_NAMES,
    Window,
    experiment_windows,
    in_window,
    load_span,
)

__all__ = ["availability", "latency", "windows_report"]

Record = Mapping[str, Any]
DEFAULT_TIMEOUT_S = 30.0
DISPLAY_QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
_DEADLINE_CHECK_EVERY = 4096


# --- Latency definitions (vLLM benchmark_serving), over successful requests only ---------


def _ttft(r: Record) -> list[float]:
    return [] if r.get("first_token_at") is None else [r["first_token_at"] - r["sent_at"]]


def _ttvt(r: Record) -> list[float]:
    at = r.get("first_visible_token_at")
    return [] if at is None else [at - r["sent_at"]]


def _e2e(r: Record) -> list[float]:
    return [] if r.get("done_at") is None else [r["done_at"] - r["sent_at"]]


def _tpot(r: Record) -> list[float]:
    tokens = r.get("output_tokens") or 0
    if tokens < 2 or r.get("done_at") is None or r.get("first_token_at") is None:
        return []
    return [(r["done_at"] - r["first_token_at"]) / (tokens - 1)]


def _itl(r: Record) -> list[float]:
    chunks = r.get("chunk_times") or []
    return [b - a for a, b in zip(chunks, chunks[1:], strict=False)]


LATENCY_METRICS: dict[str, Callable[[Record], list[float]]] = {
    "ttft": _ttft,
    "ttvt": _ttvt,
    "e2e": _e2e,
    "tpot": _tpot,
    "itl": _itl,
}


def latency_samples(records: Sequence[Record], metric: str) -> list[float]:
    """Every sample of `metric` (seconds) from the successful records."""
    extract = LATENCY_METRICS[metric]
    samples: list[float] = []
    for r in records:
        if not r.get("ok"):
            continue
        try:
            samples.extend(float(v) for v in extract(r))
        except (TypeError, ValueError) as exc:
            problem = f"malformed load record {r.get('id')!r} for {metric}: {exc}"
            raise ActivityFailed(problem) from None
    return samples


# --- Inputs ----------------------------------------------------------------------------


class _Deadline:
    """Probes run inside Chaos Toolkit, which ignores `timeout` for Python activities."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds

    def check(self, doing: str) -> None:
        if time.monotonic() > self.expires:
            raise ActivityFailed(f"{doing}: deadline of {self.seconds:g}s exceeded")


def read_record_lines(path: Path, deadline: _Deadline | None = None) -> tuple[list[dict], int]:
    """Parse a JSON-lines records file; return (records, skipped truncated last lines).

    The load generator may still be writing: a last line without its newline that does not
    parse is a record in flight and is skipped. A bad line anywhere else is corruption, and
    dropping it could hide a failed request, so it fails the probe.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ActivityFailed(f"no load records at {path}: file not found") from None
    except OSError as exc:
        raise ActivityFailed(f"no load records at {path}: {exc.strerror or exc}") from None
    lines = text.split("\n")
    complete_last = text.endswith("\n")
    records: list[dict] = []
    skipped = 0
    for number, line in enumerate(lines, start=1):
        if deadline is not None and number % _DEADLINE_CHECK_EVERY == 0:
            deadline.check(f"reading {path}")
        if not line.strip():
            continue
        is_unterminated_last = number == len(lines) and not complete_last
        try:
            record = json.loads(line)
            _validate(record)
        except (ValueError, TypeError) as exc:
            if is_unterminated_last:
                skipped += 1
                continue
            raise ActivityFailed(f"corrupt load record at {path}:{number}: {exc}") from None
        records.append(record)
    return records, skipped


def _validate(record: Any) -> None:
    if not isinstance(record, dict):
        raise TypeError("not a JSON object")
    sent_at = record.get("sent_at")
    if not isinstance(sent_at, int | float) or isinstance(sent_at, bool):
        raise TypeError("missing numeric sent_at")
    if not isinstance(record.get("ok"), bool):
        raise TypeError("missing boolean ok")


def _current_run() -> Any | None:
    """The lead's run context when that module exists and a run is active."""
    try:
        from experiments.context import current_run
    except ImportError:
        return None
    return current_run()


def _resolve_records_path(records_path: str | None, configuration: Mapping | None) -> Path:
    if records_path:
        return Path(records_path)
    run = _current_run()
    if run is not None and getattr(run, "records_path", None):
        return Path(run.records_path)
    configured = (configuration or {}).get("records_path")
    if configured:
        return Path(configured)
    raise ActivityFailed(
        "no load records at any known place: no records_path argument, no current run, "
        "no configuration['records_path']"
    )


def _resolve_faults(faults_path: str | None, configuration: Mapping | None) -> list[dict]:
    if not faults_path:
        run = _current_run()
        if run is not None:
            return list(run.faults())
        faults_path = (configuration or {}).get("faults_path")
    if not faults_path:
        return []
    path = Path(faults_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ActivityFailed(f"no fault records at {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise ActivityFailed(f"unreadable fault records at {path}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("faults", [])
    if not isinstance(data, list):
        raise ActivityFailed(f"unreadable fault records at {path}: expected a list of faults")
    return data


def _resolve_recovery_seconds(
    recovery_seconds: float | None, configuration: Mapping | None
) -> float:
    if recovery_seconds is not None:
        return float(recovery_seconds)
    return float((configuration or {}).get("recovery_seconds", DEFAULT_RECOVERY_SECONDS))


class _Run:
    """The records and windows of one run, loaded once per probe call."""

    def __init__(
        self,
        records_path: str | None,
        faults_path: str | None,
        recovery_seconds: float | None,
        configuration: Mapping | None,
        timeout_s: float,
    ) -> None:
        self.deadline = _Deadline(timeout_s)
        self.path = _resolve_records_path(records_path, configuration)
        self.records, self.skipped_lines = read_record_lines(self.path, self.deadline)
        if not self.records:
            raise ActivityFailed(f"no load records at {self.path}: the file holds no requests")
        self.faults = _resolve_faults(faults_path, configuration)
        self.recovery_seconds = _resolve_recovery_seconds(recovery_seconds, configuration)
        self.load_start, self.load_end = load_span(self.records)
        try:
            self.windows = experiment_windows(
                self.faults, self.load_start, self.load_end, self.recovery_seconds
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ActivityFailed(f"cannot place the run's faults in time: {exc}") from None

    def window(self, name: str) -> Window:
        if name not in self.windows:
            raise ActivityFailed(f"unknown window {name!r}: use one of {', '.join(WINDOW_NAMES)}")
        return self.windows[name]


# --- Summaries (no exceptions for empty windows: the report shows them) ---------------


def availability_summary(good: int, total: int, target: float, confidence: float) -> dict[str, Any]:
    """Verdict, SLI, interval and burn rate for a count of good requests out of total."""
    if total > 0:
        lower, upper = stats.one_sided_bounds(good, total, confidence)
        sli: float | None = good / total
        burn: float | None = stats.burn_rate(good / total, target)
    else:
        lower, upper, sli, burn = 0.0, 1.0, None, None
    verdict = stats.slo_verdict(good, total, target, confidence)
    return {
        "ok": verdict != "fail",
        "verdict": verdict,
        "sli": sli,
        "good": good,
        "total": total,
        "errors": total - good,
        "target": target,
        "confidence": confidence,
        "interval": [lower, upper],
        "interval_method": (
            f"Clopper-Pearson, one-sided bounds at {confidence:g} each "
            f"(two-sided {2 * confidence - 1:g})"
        ),
        "burn_rate": burn,
        "requests_needed": stats.requests_needed(target, confidence),
    }


def latency_summary(samples: Sequence[float]) -> dict[str, Any]:
    """Count and display percentiles of one metric's samples."""
    if not samples:
        return {"count": 0, **{k: None for k in DISPLAY_QUANTILES}}
    values = stats.quantiles(samples, list(DISPLAY_QUANTILES.values()))
    return {"count": len(samples), **dict(zip(DISPLAY_QUANTILES, values, strict=True))}


def _window_fields(run: _Run, window: Window) -> dict[str, Any]:
    return {
        "window": window.name,
        "window_start": window.start,
        "window_end": window.end,
        "records_path": str(run.path),
        "skipped_lines": run.skipped_lines,
        "source": "client",
    }


# --- Probes ---------------------------------------------------------------------------


def availability(
    records_path: str | None = None,
    window: str = "all",
    target: float = 0.999,
    confidence: float = 0.95,
    faults_path: str | None = None,
    recovery_seconds: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Share of requests that succeeded in one window, judged pass / fail / inconclusive.

    ok is False only for "fail": too few requests to decide is not a breach.
    """
    _check_target(target, confidence)
    run = _Run(records_path, faults_path, recovery_seconds, configuration, timeout_s)
    span = run.window(window)
    records = in_window(run.records, span)
    if not records:
        raise ActivityFailed(
            f"no load records at {run.path} in window {window!r} [{span.start:.3f}, {span.end:.3f})"
        )
    good = sum(1 for r in records if r["ok"])
    result = availability_summary(good, len(records), target, confidence)
    result.update(_window_fields(run, span))
    return result


def latency(
    metric: str = "ttft",
    quantile: float = 0.95,
    bound_s: float | None = None,
    window: str = "all",
    records_path: str | None = None,
    faults_path: str | None = None,
    recovery_seconds: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """The exact `quantile` of a latency metric in one window; ok when it is <= bound_s.

    metric: ttft, ttvt (first visible token), e2e, tpot or itl; successful requests only.
    """
    if metric not in LATENCY_METRICS:
        raise ActivityFailed(f"unknown latency metric {metric!r}: use {', '.join(LATENCY_METRICS)}")
    if not 0.0 <= quantile <= 1.0:
        raise ActivityFailed(f"quantile must be within [0, 1], got {quantile}")
    if bound_s is None:
        raise ActivityFailed(f"latency probe for {metric} needs bound_s (seconds)")
    run = _Run(records_path, faults_path, recovery_seconds, configuration, timeout_s)
    span = run.window(window)
    records = in_window(run.records, span)
    samples = latency_samples(records, metric)
    if not samples:
        raise ActivityFailed(
            f"no {metric} samples in load records at {run.path} in window {window!r} "
            f"({len(records)} requests, none successful with that measurement)"
        )
    value = stats.quantile(samples, quantile)
    return {
        "ok": value <= bound_s,
        "metric": metric,
        "value": value,
        "quantile": quantile,
        "bound_s": float(bound_s),
        **latency_summary(samples),
        **_window_fields(run, span),
    }


def windows_report(
    records_path: str | None = None,
    target: float = 0.999,
    confidence: float = 0.95,
    latency_quantile: float = 0.95,
    latency_bounds: dict[str, float] | None = None,
    faults_path: str | None = None,
    recovery_seconds: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Availability and latency of every window, for the report.

    Empty windows are listed with total 0 and an inconclusive verdict rather than failing.
    `latency_bounds` ({"ttft": 2.0, ...}) adds an ok per metric at `latency_quantile`;
    the report's ok is False when any window's availability fails or a bound is exceeded.
    """
    _check_target(target, confidence)
    bounds = dict(latency_bounds or {})
    unknown = set(bounds) - set(LATENCY_METRICS)
    if unknown:
        raise ActivityFailed(f"unknown latency metric(s) in latency_bounds: {sorted(unknown)}")
    run = _Run(records_path, faults_path, recovery_seconds, configuration, timeout_s)
    report_windows: dict[str, Any] = {}
    all_ok = True
    for name in WINDOW_NAMES:
        run.deadline.check(f"summarising {run.path}")
        span = run.windows[name]
        records = in_window(run.records, span)
        good = sum(1 for r in records if r["ok"])
        entry_availability = availability_summary(good, len(records), target, confidence)
        entry_latency: dict[str, Any] = {}
        for metric in LATENCY_METRICS:
            samples = latency_samples(records, metric)
            summary = latency_summary(samples)
            if metric in bounds and samples:
                value = stats.quantile(samples, latency_quantile)
                summary.update(
                    value=value, bound_s=float(bounds[metric]), ok=value <= bounds[metric]
                )
                all_ok = all_ok and summary["ok"]
            entry_latency[metric] = summary
        all_ok = all_ok and entry_availability["ok"]
        report_windows[name] = {
            "start": span.start,
            "end": span.end,
            "duration_s": span.duration,
            "availability": entry_availability,
            "latency": entry_latency,
        }
    return {
        "ok": all_ok,
        "source": "client",
        "records_path": str(run.path),
        "skipped_lines": run.skipped_lines,
        "faults": len(run.faults),
        "load_start": run.load_start,
        "load_end": run.load_end,
        "recovery_seconds": run.recovery_seconds,
        "target": target,
        "confidence": confidence,
        "latency_quantile": latency_quantile,
        "windows": report_windows,
    }


def _check_target(target: float, confidence: float) -> None:
    if not 0.0 < target < 1.0:
        raise ActivityFailed(f"target must be within (0, 1), got {target}")
    if not 0.0 < confidence < 1.0:
        raise ActivityFailed(f"confidence must be within (0, 1), got {confidence}")
