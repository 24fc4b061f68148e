"""Appends load records to a JSON-lines file, one flushed line per request.

Flushing per record means a killed Locust process loses at most the line it was writing,
which `records.iter_records` tolerates. The lock makes the sink safe for threads and, under
gevent's monkey-patching, for greenlets.
"""

from __future__ import annotations

import os
import threading

from loadtests.records import LoadRecord, append_record


class RecordSink:
    """An append-only records file shared by every user of one process."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.count = 0

    def append(self, record: LoadRecord) -> None:
        with self._lock:
            if self._fh.closed:
                return
            append_record(self._fh, record)
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
