"""Raw per-request load records, their JSON-lines files, and the metrics derived from them.

Every request the load generator sends becomes one `LoadRecord`, written as one JSON line
(docs/internals.md, "Load records"). Probes compute exact percentiles over exact time windows
from these raw records; Locust's own rounded percentiles are for display only.

Definitions follow vLLM's `benchmark_serving`:

- TTFT = first token-carrying chunk (reasoning or content) minus send time.
- TTFVT (time to first visible token) = first `delta.content` chunk minus send time; DeepSeek
  streams reasoning first, so users see text later than the first token.
- ITL = every gap between consecutive token-carrying chunks.
- TPOT = (E2E - TTFT) / (output tokens - 1); undefined for a single token.
- E2E = end of stream minus send time.

This module is deliberately light (the standard library, and the exact quantiles of
`probes.stats`, which are pure too): probes and reports may import it.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from probes.stats import quantile, quantiles

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


@dataclass(slots=True)
class LoadRecord:
    """One request as the client saw it; times are Unix seconds on one clock."""

    id: str
    sent_at: float
    first_chunk_at: float | None = None
    first_token_at: float | None = None
    first_visible_token_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    done_at: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    status: int | None = None
    ok: bool = False
    error: str | None = None
    served_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One line of JSON, no newline."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadRecord:
        """Build from a dict, ignoring unknown keys so newer writers stay readable."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["chunk_times"] = list(kwargs.get("chunk_times") or [])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, line: str) -> LoadRecord:
        return cls.from_dict(json.loads(line))

    # Derived metrics (seconds). None when the record cannot define them.

    @property
    def ttft(self) -> float | None:
        """Time to first token (reasoning or content)."""
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.sent_at

    @property
    def ttfvt(self) -> float | None:
        """Time to first visible (`delta.content`) token."""
        if self.first_visible_token_at is None:
            return None
        return self.first_visible_token_at - self.sent_at

    @property
    def e2e(self) -> float | None:
        """End-to-end latency; for a failed request, the time until it failed."""
        if self.done_at is None:
            return None
        return self.done_at - self.sent_at

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; needs at least two tokens."""
        ttft, e2e = self.ttft, self.e2e
        if ttft is None or e2e is None or self.output_tokens < 2:
            return None
        return (e2e - ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Every gap between consecutive token-carrying chunks."""
        times = self.chunk_times
        return [b - a for a, b in zip(times, times[1:], strict=False)]


# JSON-lines files


def write_records(path: str | os.PathLike[str], records: Iterable[LoadRecord]) -> int:
    """Write records as JSON lines (replacing the file); returns how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(record.to_json() + "\n")
            count += 1
    return count


def append_record(fh: Any, record: LoadRecord) -> None:
    """Append one record to an open text file and flush, so a killed writer loses at most it."""
    fh.write(record.to_json() + "\n")
    fh.flush()


def iter_records(path: str | os.PathLike[str]) -> Iterator[LoadRecord]:
    """Yield the records of a JSON-lines file.

    The writer may have been killed mid-line, so an unparsable *last* line is skipped; an
    unparsable line anywhere else means the file is corrupt and raises ValueError.
    """
    pending: tuple[int, str] | None = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if pending is not None:
                yield _parse_line(path, *pending)
            pending = (number, line)
    if pending is not None:
        try:
            yield LoadRecord.from_json(pending[1])
        except (ValueError, TypeError):
            return  # truncated tail of a killed (or still running) writer


def _parse_line(path: str | os.PathLike[str], number: int, line: str) -> LoadRecord:
    try:
        return LoadRecord.from_json(line)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: line {number} is not a load record: {exc}") from exc


def read_records(path: str | os.PathLike[str]) -> list[LoadRecord]:
    """All records of a JSON-lines file; a missing file reads as no records."""
    if not Path(path).exists():
        return []
    return list(iter_records(path))


# Statistics


def percentile(values: Iterable[float], q: float) -> float | None:
    """Exact q-th percentile (0-100), or None for no values; the SLO probes' interpolation."""
    ordered = list(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    return quantile(ordered, q / 100.0)


def distribution(values: Iterable[float]) -> dict[str, Any]:
    """Count, mean, min, max and p50/p90/p95/p99 of a sample (seconds in, seconds out)."""
    ordered = sorted(values)
    out: dict[str, Any] = {"count": len(ordered)}
    if not ordered:
        out.update({"mean": None, "min": None, "max": None})
        out.update({f"p{q}": None for q in PERCENTILES})
        return out
    out["mean"] = math.fsum(ordered) / len(ordered)
    out["min"] = ordered[0]
    out["max"] = ordered[-1]
    values_at = quantiles(ordered, [q / 100.0 for q in PERCENTILES])
    out.update({f"p{q}": value for q, value in zip(PERCENTILES, values_at, strict=True)})
    return out


def select_window(
    records: Iterable[LoadRecord], start: float | None = None, end: float | None = None
) -> list[LoadRecord]:
    """Records *sent* within [start, end): a request belongs to the window it started in."""
    return [
        r
        for r in records
        if (start is None or r.sent_at >= start) and (end is None or r.sent_at < end)
    ]


def summarize(
    records: Iterable[LoadRecord], start: float | None = None, end: float | None = None
) -> dict[str, Any]:
    """Plain-data summary of a run or of a window of it.

    Latency distributions are over successful requests only (as vLLM's benchmark does), in
    seconds. Throughput is successful output tokens over the wall window from the first send
    to the last end seen.
    """
    chosen = select_window(records, start, end)
    good = [r for r in chosen if r.ok]
    failed = len(chosen) - len(good)

    def values(metric: str) -> list[float]:
        return [v for r in good if (v := getattr(r, metric)) is not None]

    itls = [gap for r in good for gap in r.itls]
    window_start = min((r.sent_at for r in chosen), default=None)
    window_end = max(
        (t for r in chosen for t in (r.done_at, r.sent_at) if t is not None), default=None
    )
    wall = (window_end - window_start) if window_start is not None else 0.0
    output_tokens = sum(r.output_tokens for r in good)
    errors = Counter(r.error or f"status {r.status}" for r in chosen if not r.ok)
    return {
        "requests": len(chosen),
        "ok": len(good),
        "failed": failed,
        "success_share": (len(good) / len(chosen)) if chosen else None,
        "window_start": window_start,
        "window_end": window_end,
        "wall_seconds": wall,
        "output_tokens": output_tokens,
        "output_tokens_per_second": (output_tokens / wall) if wall > 0 else None,
        "requests_per_second": (len(chosen) / wall) if wall > 0 else None,
        "ttft": distribution(values("ttft")),
        "ttfvt": distribution(values("ttfvt")),
        "itl": distribution(itls),
        "tpot": distribution(values("tpot")),
        "e2e": distribution(values("e2e")),
        "errors": dict(errors.most_common(20)),
    }
