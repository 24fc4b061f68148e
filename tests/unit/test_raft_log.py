"""The durable Raft log: append, reload, truncate, compact, and recovery from a torn append."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilience.raft.log import Entry, LogCorrupt, RaftLog


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [
        Entry(i, term, {"op": "put", "key": f"k{i}", "value": str(i)})
        for i in range(first, last + 1)
    ]


def test_a_new_log_is_empty_and_survives_reopening(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    assert (log.last_index, log.last_term, log.base_index) == (0, 0, 0)
    assert log.term_at(0) == 0 and log.term_at(1) is None
    log.close()
    again = RaftLog(tmp_path / "log.bin")
    assert again.last_index == 0


def test_appended_entries_come_back_after_reopening(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    log.append(entries(1, 3, term=1))
    log.append([Entry(4, 2, None)])
    log.sync()
    log.mark_durable(4)
    log.close()

    again = RaftLog(tmp_path / "log.bin")
    assert again.last_index == 4 and again.last_term == 2
    assert again.entry(2) == entries(1, 3, term=1)[1]
    assert again.entry(4).command is None
    assert again.durable_index == 4
    assert [e.index for e in again.slice(2, 2)] == [2, 3]


def test_append_refuses_a_gap(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    with pytest.raises(ValueError):
        log.append([Entry(2, 1, None)])


def test_truncate_drops_the_suffix_on_disk_too(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    log.append(entries(1, 5, term=1))
    log.mark_durable(5)
    log.truncate_after(2)
    assert log.last_index == 2 and log.durable_index == 2
    log.append(entries(3, 4, term=3))  # a new leader's entries where the old ones were
    log.close()

    again = RaftLog(tmp_path / "log.bin")
    assert [(e.index, e.term) for e in again.slice(1, 10)] == [(1, 1), (2, 1), (3, 3), (4, 3)]


def test_a_torn_last_record_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    log = RaftLog(path)
    log.append(entries(1, 3, term=1))
    log.close()
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # a crash in the middle of writing entry 3
        handle.truncate(size - 5)

    again = RaftLog(path)
    assert again.last_index == 2
    assert path.stat().st_size < size - 5  # the torn bytes are gone from the file as well
    again.append(entries(3, 3, term=2))
    again.close()
    assert RaftLog(path).term_at(3) == 2


def test_a_garbled_tail_fails_its_checksum_and_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    log = RaftLog(path)
    log.append(entries(1, 3, term=1))
    log.close()
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # the last record's payload no longer matches its CRC
    path.write_bytes(bytes(data))
    assert RaftLog(path).last_index == 2


def test_a_log_without_its_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(LogCorrupt):
        RaftLog(path)


def test_compaction_keeps_the_tail_and_remembers_the_base(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    log = RaftLog(path)
    log.append(entries(1, 4, term=1) + entries(5, 8, term=2))
    size_before = path.stat().st_size
    log.compact(6)
    assert (log.base_index, log.base_term, log.last_index) == (6, 2, 8)
    assert log.term_at(6) == 2 and log.term_at(5) is None
    with pytest.raises(IndexError):
        log.entry(6)
    with pytest.raises(IndexError):
        log.slice(5, 1)
    log.append(entries(9, 9, term=3))
    log.close()
    assert path.stat().st_size < size_before

    again = RaftLog(path)
    assert (again.base_index, again.base_term, again.last_index) == (6, 2, 9)
    assert [e.index for e in again.slice(7, 10)] == [7, 8, 9]


def test_reset_starts_after_a_snapshot(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    log.append(entries(1, 3, term=1))
    log.reset(50, 4)
    assert (log.base_index, log.last_index, log.last_term) == (50, 50, 4)
    log.append(entries(51, 51, term=4))
    log.close()
    again = RaftLog(tmp_path / "log.bin")
    assert (again.base_index, again.last_index) == (50, 51)


def test_truncating_into_the_compacted_prefix_is_refused(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    log.append(entries(1, 5, term=1))
    log.compact(3)
    with pytest.raises(ValueError):
        log.truncate_after(2)


def test_conflict_hint_is_the_first_index_of_the_term(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "log.bin")
    log.append(entries(1, 2, term=1) + entries(3, 6, term=2) + entries(7, 7, term=3))
    assert log.first_index_of_term_at(6) == 3
    assert log.first_index_of_term_at(7) == 7
    assert log.first_index_of_term_at(2) == 1
