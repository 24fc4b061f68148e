"""The replicated KV store (revisions, CAS, leases, snapshots) and the leader's lease clock."""

from __future__ import annotations

import json

from resilience.raft.leases import LeaseTimer
from resilience.raft.statemachine import (
    KVStateMachine,
    cas_command,
    delete_command,
    lease_grant_command,
    lease_revoke_command,
    put_command,
)


def test_put_get_delete_and_revisions() -> None:
    sm = KVStateMachine()
    assert sm.apply(put_command("a", "1"), index=5) == {"revision": 1, "index": 5}
    assert sm.apply(put_command("b", "2"), index=6)["revision"] == 2
    assert sm.apply(put_command("a", "3"), index=7)["revision"] == 3
    kv = sm.get("a")
    assert kv is not None and (kv.value, kv.mod_revision, kv.lease) == ("3", 3, None)
    assert sm.apply(delete_command("a"), index=8) == {"deleted": True, "revision": 4}
    assert sm.get("a") is None
    # deleting what is absent changes nothing, not even the revision
    assert sm.apply(delete_command("a"), index=9) == {"deleted": False, "revision": 4}


def test_compare_and_set() -> None:
    sm = KVStateMachine()
    assert sm.apply(cas_command("k", None, "first"), 1) == {
        "succeeded": True,
        "value": "first",
        "revision": 1,
    }
    assert sm.apply(cas_command("k", None, "again"), 2) == {
        "succeeded": False,
        "value": "first",
        "revision": 1,
    }
    assert sm.apply(cas_command("k", "wrong", "x"), 3)["succeeded"] is False
    assert sm.apply(cas_command("k", "first", "second"), 4)["succeeded"] is True
    assert sm.get("k").value == "second"  # type: ignore[union-attr]
    assert sm.apply(cas_command("absent", "x", "y"), 5) == {
        "succeeded": False,
        "value": None,
        "revision": 2,
    }


def test_lease_revocation_deletes_its_keys_in_one_revision() -> None:
    sm = KVStateMachine()
    lease = sm.apply(lease_grant_command(2.5), 1)
    assert lease == {"id": 1, "ttl": 2.5}
    sm.apply(put_command("x", "1", lease=1), 2)
    sm.apply(put_command("y", "1", lease=1), 3)
    sm.apply(put_command("z", "1"), 4)
    sm.apply(put_command("y", "2"), 5)  # a put without the lease detaches y from it
    result = sm.apply(lease_revoke_command(1, "expired"), 6)
    assert result == {"revoked": True, "revision": 5, "deleted": ["x"]}
    assert sm.get("x") is None and sm.get("y") is not None and sm.get("z") is not None
    assert sm.lease_ttls() == {}
    assert sm.apply(lease_revoke_command(1), 7)["revoked"] is False


def test_put_on_an_unknown_lease_is_refused_without_a_revision() -> None:
    sm = KVStateMachine()
    assert sm.apply(put_command("a", "1", lease=9), 1) == {"error": "lease not found", "lease": 9}
    assert sm.revision == 0 and sm.get("a") is None


def test_snapshot_round_trip_through_json() -> None:
    sm = KVStateMachine()
    sm.apply(lease_grant_command(10), 1)
    sm.apply(put_command("leased", "v", lease=1), 2)
    sm.apply(put_command("plain", "w"), 3)
    state = json.loads(json.dumps(sm.snapshot()))

    restored = KVStateMachine()
    restored.restore(state)
    assert restored.snapshot() == sm.snapshot()
    # the restored store keeps behaving like the original: lease ids and key ownership
    assert restored.apply(lease_grant_command(1), 4)["id"] == 2
    assert restored.apply(lease_revoke_command(1), 5)["deleted"] == ["leased"]
    restored.restore(None)
    assert restored.revision == 0 and restored.get("plain") is None


def test_snapshot_shares_nothing_with_the_live_store() -> None:
    sm = KVStateMachine()
    sm.apply(put_command("a", "1"), 1)
    state = sm.snapshot()
    sm.apply(put_command("a", "2"), 2)
    assert state["kv"]["a"][0] == "1"


def test_lease_timer_expires_after_the_ttl_and_keepalive_extends() -> None:
    timer = LeaseTimer()
    ttls = {1: 1.0, 2: 1.0}
    assert timer.expired(ttls, now=100.0, retry_after=2.0) == []  # first seen: full TTL from now
    timer.keepalive(2, 1.0, now=100.8)
    assert timer.expired(ttls, now=101.0, retry_after=2.0) == [1]
    assert timer.expired(ttls, now=101.5, retry_after=2.0) == []  # already proposed
    assert timer.expired(ttls, now=101.9, retry_after=2.0) == [2]
    assert timer.expired(ttls, now=103.1, retry_after=2.0) == [1]  # proposal lost: retried
    assert timer.expired({}, now=103.2, retry_after=2.0) == []
    assert timer.deadline(1) is None  # revoked leases are forgotten


def test_a_new_leader_gives_every_lease_a_full_ttl() -> None:
    timer = LeaseTimer()
    timer.keepalive(1, 5.0, now=0.0)
    timer.reset()
    assert timer.expired({1: 5.0}, now=4.0, retry_after=1.0) == []
    assert timer.deadline(1) == 9.0
