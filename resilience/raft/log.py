"""The replicated log on disk: one append-only file of checksummed records, kept in memory too.

Layout: a header record naming the base (the index and term of the last entry folded into a
snapshot), then one record per entry. A record is a 4-byte big-endian payload length, a 4-byte
CRC-32 of the payload, and the payload (compact JSON). A crash in the middle of an append leaves
a torn last record; opening the log drops it, which is safe because an entry is acknowledged
only after fsync, so a torn one was never acknowledged.

Appends are plain `write` calls; `sync` (fsync) is what makes them count, and the node calls it,
possibly on a worker thread, before it acknowledges anything. Compaction rewrites the short tail
into a new file that replaces the old one atomically.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resilience.raft.persist import fsync_dir, write_atomic

__all__ = ["Entry", "LogCorrupt", "RaftLog"]

log = logging.getLogger("resilience.raft.log")

_FRAME = struct.Struct(">II")  # payload length, CRC-32 of the payload


class LogCorrupt(Exception):
    """The header is unreadable: not a torn append, so refusing to start is the safe answer."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry; `command` None is the no-op a new leader commits to learn its commit index."""

    index: int
    term: int
    command: Any = None

    def to_json(self) -> list[Any]:
        return [self.index, self.term, self.command]

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> Entry:
        index, term, command = raw
        return cls(int(index), int(term), command)


def _frame(payload: Any) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _read_frames(data: bytes) -> tuple[list[tuple[int, Any]], int]:
    """Every intact record as (offset, payload), and where the intact part ends."""
    frames: list[tuple[int, Any]] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            payload = json.loads(data[start:end])
        except ValueError:
            break
        frames.append((pos, payload))
        pos = end
    return frames, pos


class RaftLog:
    """Entries after `base_index`, in memory and in one file; only `sync` may run on a thread."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self.base_index = 0
        self.base_term = 0
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # byte offset of each entry's record
        self._end = 0
        if not path.exists():
            self._rewrite(0, 0, [])
        else:
            self._load()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.durable_index = self.last_index  # what was read back from disk is on disk

    # Reading -------------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.base_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.base_term

    def term_at(self, index: int) -> int | None:
        """The term of entry `index`; None when it is compacted away or not written yet."""
        if index == self.base_index:
            return self.base_term
        if self.base_index < index <= self.last_index:
            return self._entries[index - self.base_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        if not self.base_index < index <= self.last_index:
            raise IndexError(f"log entry {index} not held (base {self.base_index})")
        return self._entries[index - self.base_index - 1]

    def slice(self, start: int, limit: int) -> list[Entry]:
        """Up to `limit` entries from index `start` on (start must be above the base)."""
        if start <= self.base_index:
            raise IndexError(f"log entry {start} is compacted (base {self.base_index})")
        offset = start - self.base_index - 1
        return self._entries[offset : offset + limit]

    def first_index_of_term_at(self, index: int) -> int:
        """The first held index whose term equals entry `index`'s: a follower's conflict hint.

        The leader skips the whole conflicting term in one round trip instead of one entry each.
        """
        term = self.term_at(index)
        first = index
        while first - 1 > self.base_index and self.term_at(first - 1) == term:
            first -= 1
        return first

    # Writing -------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Write entries after the last one; durable only after `sync`."""
        if not entries:
            return
        records = []
        offset = self._end
        for expected, entry in enumerate(entries, start=self.last_index + 1):
            if entry.index != expected:
                raise ValueError(f"append of entry {entry.index} where {expected} is next")
            record = _frame(entry.to_json())
            self._offsets.append(offset)
            offset += len(record)
            records.append(record)
        self._entries.extend(entries)
        self._write_all(b"".join(records))
        self._end = offset

    def truncate_after(self, index: int) -> None:
        """Drop every entry after `index` (a follower's conflicting, never-committed suffix)."""
        if index >= self.last_index:
            return
        if index < self.base_index:
            raise ValueError(
                f"cannot truncate to {index}: entries up to {self.base_index} are gone"
            )
        keep = index - self.base_index
        self._end = self._offsets[keep]
        del self._entries[keep:], self._offsets[keep:]
        os.ftruncate(self._fd, self._end)
        self.durable_index = min(self.durable_index, index)

    def sync(self) -> None:
        """fsync everything written so far; the one method that may run on another thread."""
        if self._fsync:
            os.fsync(self._fd)

    def mark_durable(self, index: int) -> None:
        """Record that entries up to `index` were written before a completed `sync`."""
        self.durable_index = max(self.durable_index, min(index, self.last_index))

    def compact(self, upto: int) -> None:
        """Forget entries up to `upto` (they are in a snapshot); the rest move to a new file."""
        if upto <= self.base_index:
            return
        term = self.term_at(upto)
        if term is None:
            raise ValueError(f"cannot compact to {upto}: the log ends at {self.last_index}")
        self._replace(upto, term, self._entries[upto - self.base_index :])

    def reset(self, base_index: int, base_term: int) -> None:
        """Discard every entry and start after a snapshot the log knows nothing of."""
        self._replace(base_index, base_term, [])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # Internals -----------------------------------------------------------------------------

    def _replace(self, base_index: int, base_term: int, entries: list[Entry]) -> None:
        os.close(self._fd)
        self._rewrite(base_index, base_term, entries)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.durable_index = self.last_index  # the new file was fsynced whole

    def _rewrite(self, base_index: int, base_term: int, entries: list[Entry]) -> None:
        """Write header and entries to a new file that atomically replaces the log."""
        records = [_frame({"base_index": base_index, "base_term": base_term})]
        offsets = []
        offset = len(records[0])
        for entry in entries:
            record = _frame(entry.to_json())
            offsets.append(offset)
            offset += len(record)
            records.append(record)
        write_atomic(self.path, b"".join(records), fsync=self._fsync)
        self.base_index, self.base_term = base_index, base_term
        self._entries, self._offsets, self._end = list(entries), offsets, offset

    def _load(self) -> None:
        data = self.path.read_bytes()
        frames, intact_end = _read_frames(data)
        if not frames or not isinstance(frames[0][1], dict):
            raise LogCorrupt(f"{self.path}: no readable header")
        header = frames[0][1]
        self.base_index, self.base_term = int(header["base_index"]), int(header["base_term"])
        self._end = frames[1][0] if len(frames) > 1 else intact_end
        for offset, payload in frames[1:]:
            entry = Entry.from_json(payload)
            if entry.index != self.last_index + 1 or entry.term < self.last_term:
                log.warning("%s: entry %d out of order; dropping the rest", self.path, entry.index)
                break
            self._entries.append(entry)
            self._offsets.append(offset)
            self._end = offset + _record_length(data, offset)
        if self._end < len(data):
            log.warning("%s: dropping %d bytes of torn tail", self.path, len(data) - self._end)
            with open(self.path, "r+b") as handle:
                handle.truncate(self._end)
                if self._fsync:
                    os.fsync(handle.fileno())
            if self._fsync:
                fsync_dir(self.path.parent)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def _record_length(data: bytes, offset: int) -> int:
    length, _ = _FRAME.unpack_from(data, offset)
    return _FRAME.size + length
