"""Did the gateway save every request it could? DESIGN's promise while a GPU dies.

The gateway retries a request on another worker as long as no token reached the user, and
never replays a stream that has already sent tokens (the user saw them; a replay could differ).
So a fault that kills a GPU costs exactly the streams in flight on it, and nothing else: every
failed request must have had its first token already. A failure *before* the first token is a
request the gateway should have saved.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from loadtests.records import read_records

__all__ = ["saved_before_first_token"]


def saved_before_first_token(
    records_path: str | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Judged: no request of the run failed before its first token (100% of the requests the
    gateway could retry succeeded); mid-stream losses are counted and shown, not judged."""
    path = Path(records_path or (configuration or {}).get("records_path") or "")
    if not path.is_file():
        raise ActivityFailed(f"no load records at {str(path) or '(records_path not set)'}")
    records = read_records(path)
    if not records:
        raise ActivityFailed(f"{path} holds no request")
    failed = [r for r in records if not r.ok]
    before = [r for r in failed if r.first_token_at is None]
    mid = [r for r in failed if r.first_token_at is not None]
    retryable = len(records) - len(mid)
    ok = not before
    return {
        "ok": ok,
        "check": "retry-before-first-token",
        "verdict": "pass" if ok else "fail",
        "requests": len(records),
        "failed_before_first_token": len(before),
        "failed_mid_stream": len(mid),
        "mid_stream_by_worker": dict(Counter(r.served_by or "unknown" for r in mid)),
        "saved_share": (retryable - len(before)) / retryable if retryable else None,
        "errors_before_first_token": sorted({str(r.error) for r in before})[:5],
        "summary": (
            f"{retryable - len(before)} of {retryable} requests without a token yet succeeded"
            f" ({len(before)} failed before their first token); {len(mid)} stream(s) lost"
            " mid-stream with their GPU (never replayed, by design)"
        ),
    }
