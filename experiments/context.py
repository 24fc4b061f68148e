"""The run that is going on in this process: its id, its output folder and its fault ledger.

Chaos Toolkit calls our actions and probes as separate functions; this is where they meet.
The verdict control opens a run before the experiment and closes it after; actions called
outside a control (from a notebook, a test) get an ad-hoc run on first use.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments.ledger import Ledger
from resilience.state import home


@dataclass
class RunContext:
    run_id: str
    out_dir: Path
    ledger: Ledger
    started_at: float = field(default_factory=time.time)
    owns_cluster: bool = False
    interrupted: threading.Event = field(default_factory=threading.Event)
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def records_path(self) -> Path:
        return self.out_dir / "records.jsonl"

    @property
    def journal_path(self) -> Path:
        return self.out_dir / "journal.json"

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"

    def faults(self) -> list[dict[str, Any]]:
        return self.ledger.to_json()


_current: RunContext | None = None
_lock = threading.Lock()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


def start_run(title: str, out_root: str | Path | None = None) -> RunContext:
    """Open a new run with its own output folder `<out_root>/<time>-<title>`."""
    global _current
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{slug(title)}"
    root = Path(out_root or "chaos-runs")
    out_dir = root / run_id
    n = 1
    while out_dir.exists():
        n += 1
        out_dir = root / f"{run_id}-{n}"
    out_dir.mkdir(parents=True)
    ledger = Ledger(faults_mirror_path(out_dir.name))
    with _lock:
        _current = RunContext(run_id=out_dir.name, out_dir=out_dir.resolve(), ledger=ledger)
    return _current


def faults_mirror_path(run_id: str) -> Path:
    """Where a run's live ledger is mirrored, for `inference-chaos recover` after a crash."""
    return home() / "faults" / f"{run_id}.json"


def current_run() -> RunContext | None:
    return _current


def ensure_run(title: str = "adhoc") -> RunContext:
    return _current or start_run(title)


def end_run() -> None:
    global _current
    with _lock:
        _current = None
