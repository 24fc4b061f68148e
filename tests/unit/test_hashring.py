"""Consistent hashing with bounded loads: stable, minimal movement, bounded under skew."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from resilience.hashring import BoundedLoadRing, load_bound, stable_hash

MEMBERS = [f"worker-{i}" for i in range(5)]
KEYS = [f"session-{i}" for i in range(20_000)]


def owners(ring: BoundedLoadRing) -> dict[str, str | None]:
    return {key: ring.owner(key) for key in KEYS}


def test_stable_hash_is_fixed_across_processes() -> None:
    # A pinned value: Python's salted hash() would differ between runs, blake2b never does.
    assert stable_hash("session-1") == stable_hash("session-1")
    assert stable_hash("session-1") != stable_hash("session-2")
    assert stable_hash("abc") == 0xD8BB14D833D59559


def test_mapping_does_not_depend_on_insertion_order() -> None:
    forward = BoundedLoadRing(MEMBERS)
    backward = BoundedLoadRing(reversed(MEMBERS))
    incremental = BoundedLoadRing()
    for member in MEMBERS:
        incremental.add(member)
    assert owners(forward) == owners(backward) == owners(incremental)


def test_keys_spread_evenly_over_members() -> None:
    counts = Counter(owners(BoundedLoadRing(MEMBERS)).values())
    mean = len(KEYS) / len(MEMBERS)
    assert set(counts) == set(MEMBERS)
    assert max(counts.values()) / mean < 1.25
    assert min(counts.values()) / mean > 0.75


def test_member_leaving_moves_only_its_own_keys() -> None:
    ring = BoundedLoadRing(MEMBERS)
    before = owners(ring)
    ring.remove("worker-2")
    after = owners(ring)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == "worker-2" for k in moved)
    assert "worker-2" not in after.values()
    share = len(moved) / len(KEYS)
    assert 0.5 / len(MEMBERS) < share < 1.5 / len(MEMBERS)


def test_member_joining_takes_about_one_nth_and_only_moves_keys_to_itself() -> None:
    ring = BoundedLoadRing(MEMBERS)
    before = owners(ring)
    ring.add("worker-new")
    after = owners(ring)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "worker-new" for k in moved)
    share = len(moved) / len(KEYS)
    n = len(MEMBERS) + 1
    assert 0.5 / n < share < 1.5 / n


def test_idle_ring_keeps_affinity() -> None:
    ring = BoundedLoadRing(MEMBERS)
    for key in KEYS[:500]:
        assert ring.choose(key, {}) == ring.owner(key)


def test_load_bound_formula() -> None:
    assert load_bound(1.25, 0, 4) == 1  # an empty cluster accepts one request anywhere
    assert load_bound(1.25, 99, 4) == 32  # ceil(1.25 * 100 / 4) = 31.25 -> 32
    assert load_bound(1.0, 7, 4) == 2
    assert load_bound(1.25, 5, 0) == 0


def test_full_owner_spills_to_next_member_clockwise() -> None:
    ring = BoundedLoadRing(MEMBERS, load_factor=1.25)
    key = "hot-session"
    walk = list(ring.walk(key))
    assert sorted(walk) == sorted(MEMBERS)
    loads = {walk[0]: 10}  # total 10 over 5 members: bound ceil(1.25 * 11 / 5) = 3
    assert ring.choose(key, loads) == walk[1]
    loads[walk[1]] = 4  # total 14: bound ceil(1.25 * 15 / 5) = 4, so walk[1] is full too
    assert ring.choose(key, loads) == walk[2]


def test_excluded_members_are_never_chosen() -> None:
    ring = BoundedLoadRing(MEMBERS)
    for key in KEYS[:300]:
        exclude = {ring.owner(key), "worker-0"}
        chosen = ring.choose(key, {}, exclude)
        assert chosen is not None and chosen not in exclude
    assert ring.choose("k", {}, set(MEMBERS)) is None
    assert BoundedLoadRing().choose("k", {}) is None


def test_bound_is_computed_over_eligible_members_only() -> None:
    ring = BoundedLoadRing(["a", "b", "c"], load_factor=1.0)
    # 'c' is excluded with a large load: it must not raise the bound for 'a' and 'b'.
    loads = {"a": 2, "b": 1, "c": 100}
    assert ring.choose("any", loads, {"c"}) == "b"


def zipf_keys(count: int, distinct: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1.0 / (rank**s) for rank in range(1, distinct + 1)]
    return rng.choices([f"user-{i}" for i in range(distinct)], weights=weights, k=count)


@pytest.mark.parametrize("load_factor", [1.25, 1.1])
def test_bounded_load_holds_under_zipf_keys(load_factor: float) -> None:
    """Requests arrive with Zipf-skewed keys and finish in random order; no member overflows."""
    rng = random.Random(7)
    ring = BoundedLoadRing(MEMBERS, load_factor=load_factor)
    loads = dict.fromkeys(MEMBERS, 0)
    plain_loads = dict.fromkeys(MEMBERS, 0)
    live: list[tuple[str, str]] = []
    worst_ratio = worst_plain_ratio = 0.0
    hot_key_members: set[str] = set()
    for key in zipf_keys(20_000, 1_000, 1.1, seed=3):
        total = sum(loads.values())
        chosen = ring.choose(key, loads)
        assert chosen is not None
        assert loads[chosen] < load_bound(load_factor, total, len(MEMBERS))
        loads[chosen] += 1
        plain = ring.owner(key)
        assert plain is not None
        plain_loads[plain] += 1
        live.append((chosen, plain))
        if key == "user-0":
            hot_key_members.add(chosen)
        if len(live) > 200:  # steady state around 200 requests in flight
            done_bounded, done_plain = live.pop(rng.randrange(len(live)))
            loads[done_bounded] -= 1
            plain_loads[done_plain] -= 1
            mean = sum(loads.values()) / len(MEMBERS)
            worst_ratio = max(worst_ratio, max(loads.values()) / mean)
            worst_plain_ratio = max(worst_plain_ratio, max(plain_loads.values()) / mean)
    assert worst_ratio <= load_factor + 0.05
    assert worst_plain_ratio > 1.5  # the skew is real: plain hashing would overload a member
    assert len(hot_key_members) >= 2  # the hottest session spilled over instead of piling up


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        BoundedLoadRing(MEMBERS, load_factor=0.9)
    with pytest.raises(ValueError):
        BoundedLoadRing(MEMBERS, vnodes=0)
