"""A short, bounded sample of streaming requests, without Locust.

The steady-state hypothesis runs before the method starts the real load; this gives it
something to judge: a few seconds of concurrent streams against the same endpoint, recorded
in the same raw format as the load.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from loadtests.records import write_records
from loadtests.sse import ChatStreamer


def sample_load(
    url: str,
    out_path: str | Path,
    seconds: float = 3.0,
    concurrency: int = 4,
    max_tokens: int = 16,
    timeout: float = 10.0,
) -> int:
    """Stream requests from `concurrency` threads for `seconds`; return the record count."""
    records = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def user() -> None:
        with ChatStreamer(
            url, max_tokens=max_tokens, timeout=timeout, total_timeout=timeout
        ) as streamer:
            while time.monotonic() < deadline:
                record = streamer.send()
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=user, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 1)
    with lock:
        write_records(out_path, list(records))
        return len(records)
