"""Pure models of the network faults the fault proxy applies to a link.

Nothing here touches sockets or asyncio: every model takes its clock reading and its
`random.Random` from the caller, so unit tests can drive it with a seeded generator and a fake
clock. `resilience.faultproxy` does the I/O.

Vocabulary. A *link* is one proxied TCP path from a `source` process to a `target` process.
A *flow* is one direction of bytes on it, named from the proxy's point of view:

- ``"upstream"``: bytes the source sends to the target (client -> target);
- ``"downstream"``: bytes the target sends back (target -> client).

A fault's `direction` follows Chaos Mesh and is seen from the target: ``"to"`` selects the
target's egress (the downstream flow), ``"from"`` the bytes sent to it (upstream), ``"both"``
both flows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Direction = Literal["to", "from", "both"]
Partition = Literal["blackhole", "reset"]
Flow = Literal["upstream", "downstream"]

DIRECTIONS: tuple[str, ...] = get_args(Direction)
PARTITIONS: tuple[str, ...] = get_args(Partition)
FLOWS: tuple[Flow, ...] = ("upstream", "downstream")

# Which flows a Chaos Mesh direction selects (see the module docstring).
_FLOWS_OF_DIRECTION: dict[str, frozenset[str]] = {
    "to": frozenset({"downstream"}),
    "from": frozenset({"upstream"}),
    "both": frozenset(FLOWS),
}

DEFAULT_RTO_S = 0.2  # Linux TCP_RTO_MIN: what one lost segment costs on a fast LAN path
DEFAULT_RTO_MAX_S = 120.0  # Linux TCP_RTO_MAX
DEFAULT_MAX_RETRIES = 15  # Linux net.ipv4.tcp_retries2
DEFAULT_MSS = 1448  # bytes of payload per segment on a 1500-byte MTU with timestamps


@dataclass(frozen=True)
class LinkFault:
    """One network fault installed on one or more links, as the control API stores it."""

    id: str
    links: tuple[str, ...]
    direction: Direction = "both"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    correlation: float = 0.0
    loss: float = 0.0
    rate_bps: float | None = None
    partition: Partition | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, fault_id: str | None = None) -> LinkFault:
        """Validate a control-API body; `fault_id` (from the URL) may stand in for `id`.

        Raises ValueError naming the offending field, so the API can answer 400 with it.
        """
        if not isinstance(data, Mapping):
            raise ValueError("a fault must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(known)}")

        body_id = data.get("id")
        if fault_id is not None and body_id is not None and body_id != fault_id:
            raise ValueError(f"id in body {body_id!r} differs from id in path {fault_id!r}")
        the_id = fault_id if fault_id is not None else body_id
        if not isinstance(the_id, str) or not the_id:
            raise ValueError("'id' must be a non-empty string")

        links = data.get("links")
        if (
            not isinstance(links, list | tuple)
            or not links
            or not all(isinstance(name, str) and name for name in links)
        ):
            raise ValueError("'links' must be a non-empty list of link names")

        direction = data.get("direction", "both")
        if direction not in DIRECTIONS:
            raise ValueError(f"'direction' must be one of {list(DIRECTIONS)}, got {direction!r}")

        partition = data.get("partition")
        if partition is not None and partition not in PARTITIONS:
            raise ValueError(
                f"'partition' must be null or one of {list(PARTITIONS)}, got {partition!r}"
            )

        rate = data.get("rate_bps")
        if rate is not None:
            rate = _number(data, "rate_bps")
            if rate <= 0:
                raise ValueError("'rate_bps' must be > 0 bytes per second, or null for no limit")

        return cls(
            id=the_id,
            links=tuple(dict.fromkeys(links)),
            direction=direction,
            delay_ms=_number(data, "delay_ms"),
            jitter_ms=_number(data, "jitter_ms"),
            correlation=_number(data, "correlation", upper=100.0),
            loss=_number(data, "loss", upper=100.0),
            rate_bps=rate,
            partition=partition,
        )

    def to_json(self) -> dict[str, Any]:
        """The stored form, accepted back by `from_json`."""
        return {
            "id": self.id,
            "links": list(self.links),
            "direction": self.direction,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "correlation": self.correlation,
            "loss": self.loss,
            "rate_bps": self.rate_bps,
            "partition": self.partition,
        }

    def affects(self, link: str, flow: Flow) -> bool:
        """True when this fault applies to `flow` of `link`."""
        return link in self.links and flow in _FLOWS_OF_DIRECTION[self.direction]

    @property
    def is_noop(self) -> bool:
        """True when the fault changes nothing, so the proxy can keep its fast path."""
        return (
            self.delay_ms == 0
            and self.jitter_ms == 0
            and self.loss == 0
            and self.rate_bps is None
            and self.partition is None
        )


def _number(data: Mapping[str, Any], key: str, *, upper: float | None = None) -> float:
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key!r} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{key!r} must not be negative, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{key!r} must be at most {upper:g}, got {value!r}")
    return float(value)


class CorrelatedUniform:
    """Uniform [0, 1) numbers correlated with the previous one, as netem's `get_crandom`.

    value = (1 - rho) * fresh + rho * last. With rho = 0 draws are independent; with rho = 1
    the first draw repeats forever. Like netem, correlation also narrows the spread around the
    mean (a known property of this scheme, kept for fidelity with `tc qdisc ... delay`).
    """

    def __init__(self, correlation_percent: float, rng: random.Random) -> None:
        self._rho = correlation_percent / 100.0
        self._rng = rng
        self._last = rng.random()  # netem seeds `last` with a random value too

    def next(self) -> float:
        fresh = self._rng.random()
        if self._rho == 0.0:
            return fresh
        self._last = (1.0 - self._rho) * fresh + self._rho * self._last
        return self._last


class DelaySampler:
    """One-way delay per chunk: delay + jitter * correlated uniform(-1, 1), never negative.

    This is netem's `delay D J C%` without a distribution table (uniform jitter).
    """

    def __init__(
        self, delay_ms: float, jitter_ms: float, correlation: float, rng: random.Random
    ) -> None:
        self.delay_s = delay_ms / 1000.0
        self.jitter_s = jitter_ms / 1000.0
        self._uniform = CorrelatedUniform(correlation, rng) if jitter_ms > 0 else None

    def sample(self) -> float:
        """Seconds to hold the next chunk."""
        if self._uniform is None:
            return self.delay_s
        offset = self.jitter_s * (2.0 * self._uniform.next() - 1.0)
        return max(0.0, self.delay_s + offset)


class RetransmissionModel:
    """Loss on a TCP stream, as TCP experiences it: lost segments come back late, not never.

    A proxy cannot drop bytes out of a byte stream without corrupting it, and a real network
    cannot either: TCP retransmits. So a lost segment costs one retransmission timeout before
    it gets through; if the retransmission is lost too, the timeout doubles (exponential
    backoff, capped at `rto_max_s`). After `max_retries` consecutive losses TCP gives up on the
    connection, and so does the model (`gave_up`). A chunk of n bytes is ceil(n / mss)
    segments; it is late when any of them is lost, and loss is independent per segment.
    """

    def __init__(
        self,
        loss_percent: float,
        rng: random.Random,
        *,
        rto_s: float = DEFAULT_RTO_S,
        rto_max_s: float = DEFAULT_RTO_MAX_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        mss: int = DEFAULT_MSS,
    ) -> None:
        self.loss = loss_percent / 100.0
        self.rto_s = rto_s
        self.rto_max_s = rto_max_s
        self.max_retries = max_retries
        self.mss = mss
        self._rng = rng

    def penalty(self, n_bytes: int) -> tuple[float, bool]:
        """(extra seconds before the chunk arrives, whether TCP gave up on the connection)."""
        if self.loss <= 0.0:
            return 0.0, False
        segments = max(1, -(-n_bytes // self.mss))
        p_first = 1.0 - (1.0 - self.loss) ** segments
        if self._rng.random() >= p_first:
            return 0.0, False
        extra, rto = 0.0, self.rto_s
        for _ in range(self.max_retries):
            extra += rto
            rto = min(rto * 2.0, self.rto_max_s)
            if self._rng.random() >= self.loss:  # the retransmission got through
                return extra, False
        return extra, True


@dataclass
class TokenBucket:
    """Bandwidth limit: when may a chunk of n bytes leave, at `rate_bps` bytes per second.

    Reservations may run into debt, so callers learn a future departure time instead of
    polling; the debt makes later chunks wait their turn. `burst_bytes` bounds how much an idle
    link may send at once (tbf's `burst`).
    """

    rate_bps: float
    burst_bytes: float = 0.0
    _tokens: float = field(default=0.0, init=False)
    _stamp: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rate_bps <= 0:
            raise ValueError("rate_bps must be > 0")
        if self.burst_bytes <= 0:
            self.burst_bytes = default_burst(self.rate_bps)
        self._tokens = self.burst_bytes

    def reserve(self, n_bytes: int, now: float) -> float:
        """Debit n bytes at time `now` and return when they may leave (>= now)."""
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self.burst_bytes, self._tokens + (now - self._stamp) * self.rate_bps)
        if self._stamp is None or now > self._stamp:
            self._stamp = now
        self._tokens -= n_bytes
        if self._tokens >= 0:
            return now
        return now + (-self._tokens) / self.rate_bps


def default_burst(rate_bps: float) -> float:
    """10 ms worth of bytes, at least one segment: smooth pacing without per-byte timers."""
    return max(float(DEFAULT_MSS), rate_bps * 0.010)


def slice_size(rate_bps: float | None) -> int | None:
    """Largest piece a rate-limited flow should pace at once (about 20 ms of bandwidth)."""
    if rate_bps is None:
        return None
    return max(DEFAULT_MSS, int(rate_bps * 0.020))


@dataclass(frozen=True)
class Departure:
    """When a chunk arrives at the far end, and whether the connection dies instead."""

    at: float
    gave_up: bool = False


class LinkPolicy:
    """Every fault active on one flow of one link, combined into one rule.

    Delays add up (each fault keeps its own correlated sampler, as stacked netem qdiscs would),
    the worst loss wins, the narrowest rate wins, and a partition overrides everything else
    (reset beats blackhole). One policy is shared by all connections of the flow, like a qdisc
    on an interface: they share the bandwidth and the jitter sequence.
    """

    def __init__(
        self,
        faults: Iterable[LinkFault],
        rng: random.Random,
        *,
        rto_s: float = DEFAULT_RTO_S,
    ) -> None:
        self.faults: tuple[LinkFault, ...] = tuple(faults)
        if not self.faults:
            raise ValueError("a policy needs at least one fault")
        partitions = {f.partition for f in self.faults if f.partition}
        self.partition: Partition | None = (
            "reset" if "reset" in partitions else "blackhole" if partitions else None
        )
        self._samplers = [
            DelaySampler(f.delay_ms, f.jitter_ms, f.correlation, rng)
            for f in self.faults
            if f.delay_ms > 0 or f.jitter_ms > 0
        ]
        worst_loss = max(f.loss for f in self.faults)
        self._loss = RetransmissionModel(worst_loss, rng, rto_s=rto_s) if worst_loss else None
        rates = [f.rate_bps for f in self.faults if f.rate_bps is not None]
        self.rate_bps: float | None = min(rates) if rates else None
        self._bucket = TokenBucket(self.rate_bps) if self.rate_bps is not None else None
        self.slice_bytes = slice_size(self.rate_bps)

    @property
    def fault_ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.faults)

    def sample_delay(self) -> float:
        """Total one-way delay for the next chunk, in seconds."""
        return sum(s.sample() for s in self._samplers)

    def departure(self, n_bytes: int, now: float) -> Departure:
        """When n bytes handed over at `now` reach the far end: rate, then delay, then loss.

        The link is modelled as a bottleneck (serialisation at `rate_bps`) followed by the
        propagation delay; a lost segment adds its retransmission time on top.
        """
        leave = self._bucket.reserve(n_bytes, now) if self._bucket is not None else now
        arrive = leave + self.sample_delay()
        if self._loss is None:
            return Departure(arrive)
        extra, gave_up = self._loss.penalty(n_bytes)
        return Departure(arrive + extra, gave_up)


def combine(
    faults: Iterable[LinkFault],
    link: str,
    flow: Flow,
    rng: random.Random,
    *,
    rto_s: float = DEFAULT_RTO_S,
) -> LinkPolicy | None:
    """The policy for `flow` of `link` given every installed fault, or None when none applies."""
    active = [f for f in faults if f.affects(link, flow) and not f.is_noop]
    return LinkPolicy(active, rng, rto_s=rto_s) if active else None
