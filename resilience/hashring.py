"""Consistent hashing with bounded loads, for session-affine routing that never piles up.

Plain consistent hashing keeps a session on one worker (its KV cache stays warm) but lets a hot
key overload that worker. Bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016; HAProxy's
`hash-balance-factor`, Envoy's `hash_balance_factor`) fix that: a key goes to the first member
clockwise whose load is below ceil(c * (total + 1) / n), so no member ever holds more than about
c times the mean while idle keys still land on their usual member.

The ring is pure: it knows the members and the points, the caller passes the current loads.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Collection, Iterable, Iterator, Mapping

DEFAULT_VNODES = 100
DEFAULT_LOAD_FACTOR = 1.25


def stable_hash(key: str) -> int:
    """A 64-bit hash that is the same in every process (unlike `hash()`, which is salted)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def load_bound(load_factor: float, total_load: int, members: int) -> int:
    """The load a member must stay *below* to take one more key: ceil(c * (total + 1) / n)."""
    if members <= 0:
        return 0
    return math.ceil(load_factor * (total_load + 1) / members)


class BoundedLoadRing:
    """A hash ring with `vnodes` points per member and a bounded-load `choose`."""

    def __init__(
        self,
        members: Iterable[str] = (),
        *,
        vnodes: int = DEFAULT_VNODES,
        load_factor: float = DEFAULT_LOAD_FACTOR,
    ) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        if load_factor < 1.0:
            raise ValueError("load_factor must be at least 1.0 (1.0 means perfect balance)")
        self.vnodes = vnodes
        self.load_factor = load_factor
        self._members: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self.set_members(members)

    @property
    def members(self) -> frozenset[str]:
        return self._members

    def set_members(self, members: Iterable[str]) -> None:
        """Replace the member set; points depend only on names, so survivors keep their arcs."""
        self._members = frozenset(members)
        points = sorted(
            (stable_hash(f"{member}\x00{i}"), member)
            for member in self._members
            for i in range(self.vnodes)
        )
        self._points = [point for point, _ in points]
        self._owners = [owner for _, owner in points]

    def add(self, member: str) -> None:
        self.set_members(self._members | {member})

    def remove(self, member: str) -> None:
        self.set_members(self._members - {member})

    def walk(self, key: str) -> Iterator[str]:
        """Distinct members in clockwise order from the key's position on the ring."""
        count = len(self._points)
        if count == 0:
            return
        start = bisect_right(self._points, stable_hash(key))
        seen: set[str] = set()
        for offset in range(count):
            owner = self._owners[(start + offset) % count]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self._members):
                    return

    def owner(self, key: str) -> str | None:
        """Plain consistent hashing: the member that owns the key's arc, loads ignored."""
        return next(self.walk(key), None)

    def choose(
        self,
        key: str,
        loads: Mapping[str, int],
        exclude: Collection[str] = (),
    ) -> str | None:
        """The first member clockwise, not excluded, whose load is below the bound.

        `loads` holds the in-flight count per member (missing = 0). The bound is computed over
        the eligible members only, so ejected or already-tried members neither take the key nor
        inflate the average. Returns None when no member is eligible.
        """
        eligible = [m for m in self._members if m not in exclude]
        if not eligible:
            return None
        total = sum(loads.get(m, 0) for m in eligible)
        bound = load_bound(self.load_factor, total, len(eligible))
        for member in self.walk(key):
            if member not in exclude and loads.get(member, 0) < bound:
                return member
        # Unreachable in exact arithmetic (the least-loaded member is below the mean, hence
        # below the bound); kept so float rounding can never drop a request.
        return min(eligible, key=lambda m: (loads.get(m, 0), m))
