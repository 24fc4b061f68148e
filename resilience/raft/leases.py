"""The leader's stopwatch on every lease.

Only the leader measures lease time, and it never writes deadlines to the log: clocks differ
between machines, so a replica-local deadline would make replicas disagree. When a lease runs
out the leader proposes its revocation, and every replica deletes the keys at that log position.
A new leader knows no deadlines and gives every lease a full TTL from the moment it takes over
(etcd does the same): a lease can outlive its TTL by a failover, never fall short of it.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LeaseTimer"]


class LeaseTimer:
    """Deadlines of the leases this leader knows, and which revocations it already proposed."""

    def __init__(self) -> None:
        self._deadlines: dict[int, float] = {}
        self._revoking: dict[int, float] = {}  # lease -> when its revocation was proposed

    def reset(self) -> None:
        """Forget every deadline: called when this replica becomes leader or stops being one."""
        self._deadlines.clear()
        self._revoking.clear()

    def keepalive(self, lease_id: int, ttl: float, now: float) -> float:
        """Restart the lease's TTL; returns the new deadline."""
        self._deadlines[lease_id] = now + ttl
        self._revoking.pop(lease_id, None)
        return self._deadlines[lease_id]

    def deadline(self, lease_id: int) -> float | None:
        return self._deadlines.get(lease_id)

    def expired(self, ttls: Mapping[int, float], now: float, retry_after: float) -> list[int]:
        """Leases (from the applied store's id -> TTL) whose revocation should be proposed now.

        A lease first seen here starts its full TTL now. A revocation already proposed is not
        proposed again until `retry_after` seconds passed (its proposal may have been lost).
        """
        for gone in set(self._deadlines) - set(ttls):
            del self._deadlines[gone]
            self._revoking.pop(gone, None)
        due = []
        for lease_id, ttl in ttls.items():
            deadline = self._deadlines.setdefault(lease_id, now + ttl)
            if now < deadline:
                continue
            proposed = self._revoking.get(lease_id)
            if proposed is None or now - proposed >= retry_after:
                self._revoking[lease_id] = now
                due.append(lease_id)
        return sorted(due)
