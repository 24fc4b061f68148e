"""Outlier ejection for upstream workers, in the manner of Envoy's outlier detection.

A member is ejected (taken out of routing) when it fails `consecutive_failures` requests in a
row, fails that many active health checks in a row, is slow to answer health checks several
times in a row, or when its recent time to first token is far above its healthy peers'. An
ejection lasts `base_ejection_s` times the number of recent ejections (capped), so a flapping
worker stays out longer each time; it ends only when the time is up *and* a health check passes.
Never more than `max_ejection_percent` of the members are out at once: a detector that ejects
everybody turns a partial outage into a total one.

Pure logic: the caller reports outcomes and owns the clock (injectable for tests); every call
that ejects returns an `Ejection` so the caller can count and log it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

REASON_FAILURES = "consecutive_failures"
REASON_HEALTH = "health_check_failed"
REASON_SLOW_TTFT = "slow_ttft"
REASON_SLOW_HEALTH = "slow_health"


@dataclass(frozen=True)
class OutlierConfig:
    """Thresholds of outlier ejection; times in seconds."""

    consecutive_failures: int = 3
    base_ejection_s: float = 2.0
    max_ejection_s: float = 30.0
    ejection_decay_s: float = 30.0  # each period without an ejection forgives one past ejection
    max_ejection_percent: float = 50.0
    slow_factor: float = 3.0  # k: slow when TTFT > max(k * peers' median, floor)
    slow_floor_s: float = 0.5
    ttft_window: int = 10  # recent requests whose median TTFT is judged
    ttft_min_samples: int = 3
    ttft_ewma_alpha: float = 0.3
    health_slow_s: float = 0.25  # a health check slower than this is a slow strike
    slow_health_strikes: int = 3
    return_requires_health: bool = True

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.slow_health_strikes < 1:
            raise ValueError("failure and strike thresholds must be at least 1")
        if self.ttft_window < 1 or not 1 <= self.ttft_min_samples <= self.ttft_window:
            raise ValueError("need 1 <= ttft_min_samples <= ttft_window")
        if not 0.0 <= self.max_ejection_percent <= 100.0:
            raise ValueError("max_ejection_percent must be within 0..100")
        if not 0.0 < self.ttft_ewma_alpha <= 1.0:
            raise ValueError("ttft_ewma_alpha must be within (0, 1]")


@dataclass(frozen=True)
class Ejection:
    """One ejection decision; `until` is on the detector's clock."""

    member: str
    reason: str
    until: float
    duration_s: float


@dataclass
class MemberState:
    """What the detector remembers about one member."""

    request_failures: int = 0
    health_failures: int = 0
    slow_health_strikes: int = 0
    ejected: bool = False
    ejected_until: float = 0.0
    reason: str | None = None
    ejections: int = 0  # the multiplier of the next ejection's length
    last_return: float = 0.0
    health_ok: bool | None = None
    health_latency_s: float | None = None
    ttft_ewma: float | None = None
    ttft: deque[float] = field(default_factory=deque)

    def ttft_median(self) -> float | None:
        return statistics.median(self.ttft) if self.ttft else None


class OutlierDetector:
    """Decides which members are ejected from what the caller reports about them."""

    def __init__(
        self,
        config: OutlierConfig | None = None,
        members: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or OutlierConfig()
        self._clock = clock
        self._members: dict[str, MemberState] = {}
        self.set_members(members)

    # -- membership ---------------------------------------------------------------------------

    def set_members(self, members: Iterable[str]) -> None:
        """Keep the state of members that stay, start fresh for new ones, forget the rest."""
        wanted = list(dict.fromkeys(members))
        self._members = {name: self._members.get(name) or self._fresh_state() for name in wanted}

    def _fresh_state(self) -> MemberState:
        return MemberState(ttft=deque(maxlen=self.config.ttft_window), last_return=self._clock())

    @property
    def members(self) -> list[str]:
        return list(self._members)

    # -- queries ------------------------------------------------------------------------------

    def is_ejected(self, name: str) -> bool:
        state = self._members.get(name)
        if state is None or not state.ejected:
            return False
        if not self.config.return_requires_health and self._clock() >= state.ejected_until:
            self._return(state)
            return False
        return True

    def ejected_members(self) -> set[str]:
        return {name for name in self._members if self.is_ejected(name)}

    def is_healthy(self, name: str) -> bool:
        """Routable and not failing its health checks (unknown health counts as healthy)."""
        state = self._members.get(name)
        return state is not None and not self.is_ejected(name) and state.health_ok is not False

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Plain data per member for status pages; `ejected_for_s` is the time left."""
        now = self._clock()
        out: dict[str, dict[str, object]] = {}
        for name, s in self._members.items():
            ejected = self.is_ejected(name)
            out[name] = {
                "healthy": self.is_healthy(name),
                "ejected": ejected,
                "ejected_for_s": max(0.0, s.ejected_until - now) if ejected else None,
                "reason": s.reason if ejected else None,
                "ejections": s.ejections,
                "consecutive_failures": s.request_failures,
                "health_failures": s.health_failures,
                "health_ok": s.health_ok,
                "health_latency_s": s.health_latency_s,
                "ttft_ewma": s.ttft_ewma,
                "ttft_median": s.ttft_median(),
            }
        return out

    # -- outcomes -----------------------------------------------------------------------------

    def record_success(self, name: str) -> None:
        """A request completed: the run of request failures is broken."""
        state = self._members.get(name)
        if state is not None:
            state.request_failures = 0

    def record_failure(self, name: str) -> Ejection | None:
        """A request failed on this member (connect error, reset, 5xx, timeout, broken stream)."""
        state = self._members.get(name)
        if state is None:
            return None
        state.request_failures += 1
        if state.request_failures >= self.config.consecutive_failures:
            return self._eject(name, REASON_FAILURES)
        return None

    def record_ttft(self, name: str, seconds: float) -> Ejection | None:
        """A first token arrived after `seconds`; eject the member if slow next to its peers."""
        state = self._members.get(name)
        if state is None:
            return None
        cfg = self.config
        state.ttft.append(seconds)
        state.ttft_ewma = (
            seconds
            if state.ttft_ewma is None
            else cfg.ttft_ewma_alpha * seconds + (1.0 - cfg.ttft_ewma_alpha) * state.ttft_ewma
        )
        if len(state.ttft) < cfg.ttft_min_samples or state.ejected:
            return None
        mine = statistics.median(state.ttft)
        if mine > self.slow_threshold(exclude=name):
            return self._eject(name, REASON_SLOW_TTFT)
        return None

    def slow_threshold(self, exclude: str | None = None) -> float:
        """max(k x the median TTFT of the routable peers with enough samples, the floor).

        Infinite while no peer has enough samples: slowness is relative, and the first member
        to collect samples under a heavy but even load must not be judged against nothing.
        """
        cfg = self.config
        peer_medians = [
            statistics.median(s.ttft)
            for name, s in self._members.items()
            if name != exclude and not s.ejected and len(s.ttft) >= cfg.ttft_min_samples
        ]
        if not peer_medians:
            return math.inf
        return max(cfg.slow_factor * statistics.median(peer_medians), cfg.slow_floor_s)

    def record_health(self, name: str, ok: bool, latency_s: float) -> Ejection | None:
        """An active health check finished; failures and slow answers count, passes bring back."""
        state = self._members.get(name)
        if state is None:
            return None
        cfg = self.config
        state.health_ok = ok
        state.health_latency_s = latency_s
        slow = latency_s > cfg.health_slow_s
        if not ok:
            state.health_failures += 1
            if state.health_failures >= cfg.consecutive_failures:
                return self._eject(name, REASON_HEALTH)
            return None
        state.health_failures = 0
        if state.ejected:
            if not slow and self._clock() >= state.ejected_until:
                self._return(state)
            return None
        if not slow:
            state.slow_health_strikes = 0
            return None
        state.slow_health_strikes += 1
        if state.slow_health_strikes >= cfg.slow_health_strikes:
            return self._eject(name, REASON_SLOW_HEALTH)
        return None

    # -- ejection -----------------------------------------------------------------------------

    def _ejection_allowed(self) -> bool:
        total = len(self._members)
        if total < 2:
            return False  # ejecting the only member cannot route traffic anywhere better
        percent = self.config.max_ejection_percent
        # Like Envoy, a non-zero percentage always allows one ejection, even of three members.
        allowed = max(1, math.floor(total * percent / 100.0)) if percent > 0 else 0
        ejected = sum(1 for s in self._members.values() if s.ejected)
        return ejected < allowed

    def _eject(self, name: str, reason: str) -> Ejection | None:
        state = self._members[name]
        if state.ejected or not self._ejection_allowed():
            return None
        cfg = self.config
        now = self._clock()
        if cfg.ejection_decay_s > 0:
            forgiven = int((now - state.last_return) // cfg.ejection_decay_s)
            state.ejections = max(0, state.ejections - forgiven)
        state.ejections += 1
        duration = min(cfg.base_ejection_s * state.ejections, cfg.max_ejection_s)
        state.ejected = True
        state.ejected_until = now + duration
        state.reason = reason
        return Ejection(member=name, reason=reason, until=state.ejected_until, duration_s=duration)

    def _return(self, state: MemberState) -> None:
        """Back into routing with a clean slate, so stale slow samples don't re-eject at once."""
        state.ejected = False
        state.reason = None
        state.request_failures = 0
        state.health_failures = 0
        state.slow_health_strikes = 0
        state.ttft.clear()
        state.ttft_ewma = None
        state.last_return = self._clock()
