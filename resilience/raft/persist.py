"""Small files that must never be seen half-written: the term/vote and the snapshot.

Raft's safety rests on a replica never forgetting a term it entered or a vote it cast, so both
are on disk before they take effect. Each file is replaced whole: write a temporary file, fsync
it, rename it over the old one, fsync the directory (the rename itself lives in the directory).
A crash leaves either the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HardState",
    "Snapshot",
    "fsync_dir",
    "load_hard_state",
    "load_snapshot",
    "save_hard_state",
    "save_snapshot",
    "write_atomic",
]


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class HardState:
    """What a replica must remember across restarts beyond its log."""

    term: int = 0
    voted_for: int | None = None


def load_hard_state(path: Path) -> HardState:
    """The saved term and vote; a replica that never saved one starts at term 0."""
    if not path.exists():
        return HardState()
    raw = json.loads(path.read_bytes())
    return HardState(term=int(raw["term"]), voted_for=raw["voted_for"])


def save_hard_state(path: Path, state: HardState, fsync: bool = True) -> None:
    body = {"term": state.term, "voted_for": state.voted_for}
    write_atomic(path, json.dumps(body).encode(), fsync=fsync)


@dataclass(frozen=True)
class Snapshot:
    """The state machine as of log entry `index` (of term `term`); index 0 is the empty start."""

    index: int = 0
    term: int = 0
    state: dict[str, Any] | None = None


def load_snapshot(path: Path) -> Snapshot:
    if not path.exists():
        return Snapshot()
    raw = json.loads(path.read_bytes())
    return Snapshot(index=int(raw["index"]), term=int(raw["term"]), state=raw["state"])


def save_snapshot(path: Path, snapshot: Snapshot, fsync: bool = True) -> None:
    body = {"index": snapshot.index, "term": snapshot.term, "state": snapshot.state}
    write_atomic(path, json.dumps(body, separators=(",", ":")).encode(), fsync=fsync)
