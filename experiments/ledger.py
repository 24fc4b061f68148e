"""The bookkeeping of faults: what was injected where, when, and whether it is gone again.

Every record is plain data for the journal and the report. The ledger is mirrored to a file
after every change, so a run that crashed can still be cleaned up by `inference-chaos recover`.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FaultRecord:
    kind: str
    victims: list[str]
    params: dict[str, Any]
    selector: dict[str, Any]
    backend: str
    target: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    injected_at: float | None = None
    removed_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.injected_at is not None and self.removed_at is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRecord:
        return cls(**data)


class Ledger:
    """Thread-safe list of a run's fault records, mirrored to `path` when one is given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._records: list[FaultRecord] = []
        self._lock = threading.RLock()
        self._removing: dict[str, threading.Event] = {}  # fault id -> set once it is removed

    def add(self, record: FaultRecord) -> FaultRecord:
        with self._lock:
            self._records.append(record)
            self._flush()
        return record

    def mark_injected(self, record: FaultRecord, details: dict[str, Any]) -> None:
        with self._lock:
            record.injected_at = time.time()
            record.details = details
            self._flush()

    def mark_removed(self, record: FaultRecord, error: str | None = None) -> None:
        with self._lock:
            record.removed_at = time.time()
            record.error = error
            self._flush()
            done = self._removing.get(record.id)
        if done is not None:
            done.set()

    def claim_removal(self, record: FaultRecord) -> threading.Event | None:
        """Who removes a fault: None for the one caller that should (it must call
        mark_removed), else an event that is set once that caller is done. A fault hold that
        wakes, a stop condition and a signal handler may all try at once; one recovery runs."""
        with self._lock:
            if record.removed_at is not None:
                done = threading.Event()
                done.set()
                return done
            if record.id in self._removing:
                return self._removing[record.id]
            self._removing[record.id] = threading.Event()
            return None

    def get(self, fault_id: str) -> FaultRecord:
        with self._lock:
            for r in self._records:
                if r.id == fault_id:
                    return r
        raise KeyError(fault_id)

    def active(self) -> list[FaultRecord]:
        with self._lock:
            return [r for r in self._records if r.active]

    def records(self) -> list[FaultRecord]:
        with self._lock:
            return list(self._records)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.records()]

    def _flush(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        ledger = cls(path)
        ledger._records = [FaultRecord.from_json(d) for d in json.loads(path.read_text())]
        return ledger
