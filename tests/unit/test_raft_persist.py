"""Term/vote and snapshot files: round trips, defaults, and atomic replacement."""

from __future__ import annotations

from pathlib import Path

from resilience.raft.persist import (
    HardState,
    Snapshot,
    load_hard_state,
    load_snapshot,
    save_hard_state,
    save_snapshot,
    write_atomic,
)


def test_hard_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load_hard_state(path) == HardState(0, None)
    save_hard_state(path, HardState(7, 2))
    assert load_hard_state(path) == HardState(7, 2)
    save_hard_state(path, HardState(8, None))
    assert load_hard_state(path) == HardState(8, None)


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old content that is longer")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_leftover_temporary_from_a_crash_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_hard_state(path, HardState(3, 1))
    (tmp_path / "state.json.tmp").write_bytes(b'{"term": 99')  # crash before the rename
    assert load_hard_state(path) == HardState(3, 1)
    save_hard_state(path, HardState(4, None))
    assert load_hard_state(path) == HardState(4, None)


def test_snapshot_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    assert load_snapshot(path) == Snapshot(0, 0, None)
    state = {"revision": 3, "kv": {"a": ["1", 3, None]}, "leases": {}, "next_lease_id": 1}
    save_snapshot(path, Snapshot(120, 4, state))
    assert load_snapshot(path) == Snapshot(120, 4, state)
