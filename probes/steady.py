"""SLO probes for the steady-state hypothesis, which Chaos Toolkit runs before and after.

Before the method the run's load has not started, so the probe takes a short baseline sample
of its own and judges the SLO on it (few requests: the availability verdict is usually
"inconclusive", which does not fail the hypothesis; a latency bound missed with nothing
broken does). After the method it judges the run's whole load, fault window included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes import slo

__all__ = ["availability_slo", "latency_slo"]


def _records(configuration: dict[str, Any] | None, baseline_seconds: float) -> tuple[Path, str]:
    """The run's load records if the load ran, else a fresh baseline sample."""
    configuration = configuration or {}
    records = Path(configuration.get("records_path") or "")
    if records.is_file() and records.stat().st_size > 0:
        return records, "load"
    url = configuration.get("gateway_url")
    if not url:
        raise ActivityFailed("no load records and no gateway_url to take a baseline sample from")
    from loadtests.sample import sample_load

    run_dir = Path(configuration.get("run_dir") or ".")
    baseline = run_dir / "baseline.jsonl"
    if not baseline.exists():
        count = sample_load(
            url,
            baseline,
            seconds=baseline_seconds,
            max_tokens=int(configuration.get("max_tokens", 16)),
        )
        if count == 0:
            raise ActivityFailed(f"baseline sample against {url} completed no request")
    return baseline, "baseline"


def availability_slo(
    target: float = 0.999,
    window: str = "all",
    confidence: float = 0.95,
    baseline_seconds: float = 3.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    path, sample = _records(configuration, baseline_seconds)
    window = window if sample == "load" else "all"
    result = slo.availability(
        records_path=str(path),
        window=window,
        target=target,
        confidence=confidence,
        configuration=configuration,
    )
    return {**result, "sample": sample}


def latency_slo(
    metric: str = "ttft",
    quantile: float = 0.95,
    bound_s: float = 1.0,
    window: str = "all",
    baseline_seconds: float = 3.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    path, sample = _records(configuration, baseline_seconds)
    window = window if sample == "load" else "all"
    result = slo.latency(
        metric=metric,
        quantile=quantile,
        bound_s=float(bound_s),
        window=window,
        records_path=str(path),
        configuration=configuration,
    )
    return {**result, "sample": sample}
