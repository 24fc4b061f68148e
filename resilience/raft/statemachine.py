"""The key-value store every replica applies the committed log to, in the same order.

Semantics follow etcd's v3 store in miniature: one store-wide revision that grows by one per
change (a put, a delete that deleted, a successful compare-and-set, a lease revocation that
removed keys), each key remembering the revision that last modified it, and leases that own
keys. Applying is deterministic and never raises on a command already in the log: a command that
cannot take effect (a put on an unknown lease) yields an ``{"error": ...}`` result instead, the
same on every replica. Lease *time* is not here: the leader measures TTLs (`leases.py`) and
proposes the revocation, so every replica deletes the keys at the same log position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KVStateMachine",
    "KeyValue",
    "Lease",
    "cas_command",
    "delete_command",
    "lease_grant_command",
    "lease_revoke_command",
    "put_command",
]


@dataclass
class KeyValue:
    value: str
    mod_revision: int
    lease: int | None = None


@dataclass
class Lease:
    ttl: float
    keys: set[str] = field(default_factory=set)


def put_command(key: str, value: str, lease: int | None = None) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, "lease": lease}


def delete_command(key: str) -> dict[str, Any]:
    return {"op": "delete", "key": key}


def cas_command(
    key: str, expect: str | None, value: str, lease: int | None = None
) -> dict[str, Any]:
    """Set `key` to `value` only if its value is `expect` (None: only if the key is absent)."""
    return {"op": "cas", "key": key, "expect": expect, "value": value, "lease": lease}


def lease_grant_command(ttl: float) -> dict[str, Any]:
    return {"op": "lease_grant", "ttl": ttl}


def lease_revoke_command(lease_id: int, reason: str = "revoked") -> dict[str, Any]:
    return {"op": "lease_revoke", "id": lease_id, "reason": reason}


class KVStateMachine:
    """Keys, revisions and leases; `apply` is the only way they change."""

    def __init__(self) -> None:
        self.revision = 0
        self.kv: dict[str, KeyValue] = {}
        self.leases: dict[int, Lease] = {}
        self.next_lease_id = 1

    # Reads -----------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self.kv.get(key)

    def lease_ttls(self) -> dict[int, float]:
        return {lease_id: lease.ttl for lease_id, lease in self.leases.items()}

    # Apply -----------------------------------------------------------------------------------

    def apply(self, command: Mapping[str, Any], index: int) -> dict[str, Any]:
        """Apply one committed command (log position `index`) and return what the client sees."""
        op = command.get("op")
        if op == "put":
            return self._put(command["key"], command["value"], command.get("lease"), index)
        if op == "delete":
            return self._delete(command["key"])
        if op == "cas":
            return self._cas(command, index)
        if op == "lease_grant":
            lease_id = self.next_lease_id
            self.next_lease_id += 1
            self.leases[lease_id] = Lease(ttl=float(command["ttl"]))
            return {"id": lease_id, "ttl": float(command["ttl"])}
        if op == "lease_revoke":
            return self._revoke(int(command["id"]))
        return {"error": f"unknown op {op!r}"}

    def _put(self, key: str, value: str, lease: int | None, index: int) -> dict[str, Any]:
        if lease is not None and lease not in self.leases:
            return {"error": "lease not found", "lease": lease}
        self.revision += 1
        self._detach(key)
        self.kv[key] = KeyValue(value, self.revision, lease)
        if lease is not None:
            self.leases[lease].keys.add(key)
        return {"revision": self.revision, "index": index}

    def _delete(self, key: str) -> dict[str, Any]:
        if key not in self.kv:
            return {"deleted": False, "revision": self.revision}
        self.revision += 1
        self._detach(key)
        del self.kv[key]
        return {"deleted": True, "revision": self.revision}

    def _cas(self, command: Mapping[str, Any], index: int) -> dict[str, Any]:
        current = self.kv.get(command["key"])
        current_value = current.value if current is not None else None
        if current_value != command["expect"]:
            return {"succeeded": False, "value": current_value, "revision": self.revision}
        result = self._put(command["key"], command["value"], command.get("lease"), index)
        if "error" in result:
            return result
        return {"succeeded": True, "value": command["value"], "revision": self.revision}

    def _revoke(self, lease_id: int) -> dict[str, Any]:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return {"revoked": False, "revision": self.revision}
        if lease.keys:
            self.revision += 1  # one revision for the whole revocation, as in etcd
            for key in lease.keys:
                del self.kv[key]
        return {"revoked": True, "revision": self.revision, "deleted": sorted(lease.keys)}

    def _detach(self, key: str) -> None:
        old = self.kv.get(key)
        if old is not None and old.lease is not None and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)

    # Snapshots -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy that shares nothing mutable with the live store."""
        return {
            "revision": self.revision,
            "next_lease_id": self.next_lease_id,
            "kv": {k: [kv.value, kv.mod_revision, kv.lease] for k, kv in self.kv.items()},
            "leases": {str(i): lease.ttl for i, lease in self.leases.items()},
        }

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Replace everything with a snapshot's state (None: the empty store)."""
        self.kv = {}
        if state is None:
            self.revision, self.next_lease_id, self.leases = 0, 1, {}
            return
        self.revision = int(state["revision"])
        self.next_lease_id = int(state["next_lease_id"])
        self.leases = {int(i): Lease(ttl=float(ttl)) for i, ttl in state["leases"].items()}
        for key, (value, mod_revision, lease) in state["kv"].items():
            self.kv[key] = KeyValue(value, int(mod_revision), lease)
            if lease is not None and lease in self.leases:
                self.leases[lease].keys.add(key)
