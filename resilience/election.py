"""Leader election through the metadata store, so exactly one controller acts at a time.

The leader holds a key attached to a lease and keeps the lease alive; a standby watches the key
and tries to take it (a CAS from "absent") once the lease of a dead or cut-off leader expired
and the store deleted the key. A leader that cannot renew its lease for most of a TTL stops
acting *before* the store could hand leadership to someone else, so two controllers never act
at once (the store measures the TTL from its side, which starts no earlier than our renewal).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from resilience.store_client import AsyncStore, StoreUnavailable

log = logging.getLogger("resilience.election")
LEADER_KEY = "controller.leader"


@dataclass(frozen=True)
class ElectionConfig:
    lease_ttl_s: float = 1.0
    renew_interval_s: float = 0.2  # keepalive period of the leader, poll period of a standby
    safety_margin: float = 0.8  # act only within this share of the TTL after the last renewal


class LeaderElection:
    """Campaigns forever; `is_leader` says whether this instance may act right now."""

    def __init__(
        self,
        store: AsyncStore,
        identity: str,
        config: ElectionConfig | None = None,
        on_elected: Callable[[], Awaitable[None]] | None = None,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self.config = config or ElectionConfig()
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.leader_id: str | None = None
        self.lease: int | None = None
        self._valid_until = 0.0  # monotonic: leadership is only trusted until then

    @property
    def is_leader(self) -> bool:
        return self.lease is not None and time.monotonic() < self._valid_until

    async def run(self) -> None:
        while True:
            try:
                if self.lease is None:
                    await self._campaign()
                else:
                    await self._renew()
            except StoreUnavailable as exc:
                log.debug("store unavailable: %s", exc)
            if self.lease is not None and time.monotonic() >= self._valid_until:
                await self._lose("lease not renewed in time")
            await asyncio.sleep(self.config.renew_interval_s)

    async def _campaign(self) -> None:
        current = await self.store.get(LEADER_KEY)
        if current is not None:
            self.leader_id = str(current.get("id"))
            return
        lease = await self.store.grant_lease(self.config.lease_ttl_s)
        started = time.monotonic()
        won, raw = await self.store.cas(
            LEADER_KEY, None, {"id": self.identity, "since": time.time()}, lease=lease
        )
        if not won:
            await self.store.revoke(lease)
            self.leader_id = None
            return
        self.lease = lease
        self.leader_id = self.identity
        self._valid_until = started + self.config.lease_ttl_s * self.config.safety_margin
        log.info("%s became the leader (lease %s)", self.identity, lease)
        if self.on_elected:
            await self.on_elected()

    async def _renew(self) -> None:
        assert self.lease is not None
        sent = time.monotonic()
        if await self.store.keepalive(self.lease):
            self._valid_until = sent + self.config.lease_ttl_s * self.config.safety_margin
        else:
            await self._lose("lease expired at the store")

    async def _lose(self, why: str) -> None:
        log.warning("%s lost leadership: %s", self.identity, why)
        self.lease = None
        self.leader_id = None
        if self.on_lost:
            await self.on_lost()

    async def resign(self) -> None:
        """Hand leadership over at once (a clean shutdown), instead of after a TTL."""
        if self.lease is not None:
            lease, self.lease = self.lease, None
            try:
                await self.store.revoke(lease)
            except StoreUnavailable:
                pass
