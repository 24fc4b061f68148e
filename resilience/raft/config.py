"""Every knob of a Raft replica, as one flat dataclass that `--config JSON` overrides.

The defaults are etcd-like but tuned for loopback: a 50 ms heartbeat and a 150-300 ms randomized
election timeout replace a lost leader well under a second. The failover benchmark compares
with etcd run with the same two numbers, so keep them explicit here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from resilience.jsonconfig import dataclass_from_json

__all__ = ["RaftConfig"]


@dataclass(frozen=True)
class RaftConfig:
    """Times in seconds; counts in log entries."""

    heartbeat_interval_s: float = 0.05
    election_timeout_min_s: float = 0.15
    election_timeout_max_s: float = 0.30
    tick_interval_s: float = 0.01  # timer resolution of the real runtime
    rpc_timeout_s: float = 1.0  # one AppendEntries or vote round trip; a partition ends it
    snapshot_rpc_timeout_s: float = 5.0  # InstallSnapshot carries the whole state
    write_deadline_s: float = 2.0  # a write not applied by then is 503 "outcome unknown"
    read_deadline_s: float = 2.0  # ReadIndex: confirm leadership and catch up by then
    leader_wait_s: float = 0.5  # a replica with no known leader holds a request this long
    max_entries_per_append: int = 512
    snapshot_threshold: int = 1000  # entries kept in the log before a snapshot compacts it
    snapshot_trailing_entries: int = 100  # kept after compaction so a slow follower needs none
    lease_check_interval_s: float = 0.05
    pre_vote: bool = True
    check_quorum: bool = True
    fsync: bool = True  # off only for tests that measure something other than the disk
    # UNSAFE, tests only (resilience/raft/unsafe.py): GET answers from the local store,
    # without ReadIndex or redirect, so stale reads happen. Never on outside tests.
    unsafe_local_reads: bool = False

    def __post_init__(self) -> None:
        positive = {
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "election_timeout_min_s": self.election_timeout_min_s,
            "tick_interval_s": self.tick_interval_s,
            "rpc_timeout_s": self.rpc_timeout_s,
            "snapshot_rpc_timeout_s": self.snapshot_rpc_timeout_s,
            "write_deadline_s": self.write_deadline_s,
            "read_deadline_s": self.read_deadline_s,
            "lease_check_interval_s": self.lease_check_interval_s,
            "max_entries_per_append": self.max_entries_per_append,
            "snapshot_threshold": self.snapshot_threshold,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"raft config {name} must be positive, got {value!r}")
        if self.election_timeout_max_s < self.election_timeout_min_s:
            raise ValueError("raft config election_timeout_max_s is below election_timeout_min_s")
        if self.heartbeat_interval_s >= self.election_timeout_min_s:
            raise ValueError("raft config heartbeat_interval_s must be below the election timeout")
        if self.leader_wait_s < 0 or self.snapshot_trailing_entries < 0:
            raise ValueError("raft config leader_wait_s and snapshot_trailing_entries must be >= 0")

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> RaftConfig:
        """Build from a JSON object (text or parsed); unknown keys and wrong types are errors."""
        obj = json.loads(data) if isinstance(data, str) else data
        return dataclass_from_json(cls, obj, "raft config")
