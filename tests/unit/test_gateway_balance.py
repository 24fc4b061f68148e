"""The gateway's choice of worker: in-flight bounds alone, or recent load as well."""

from __future__ import annotations

import random
from collections import Counter

from resilience.gateway import Gateway, GatewayConfig, Upstream

WORKERS = [Upstream(f"worker-{i}", f"http://127.0.0.1:{9000 + i}") for i in range(4)]


def zipf_keys(count: int, sessions: int = 200, s: float = 1.1, seed: int = 7) -> list[str]:
    weights = [1 / (rank**s) for rank in range(1, sessions + 1)]
    rng = random.Random(seed)
    return [f"session-{k}" for k in rng.choices(range(sessions), weights=weights, k=count)]


def served(config: GatewayConfig, keys: list[str]) -> Counter[str]:
    """Which worker each request goes to when requests start one after another."""
    gateway = Gateway(config, WORKERS)
    counts: Counter[str] = Counter()
    for key in keys:
        worker = gateway.pick(key, [])
        assert worker is not None
        gateway.note_started(worker)
        counts[worker] += 1
    return counts


def imbalance(counts: Counter[str]) -> float:
    mean = sum(counts.values()) / len(WORKERS)
    return max(counts[w.name] for w in WORKERS) / mean - 1


def test_recent_load_keeps_served_requests_within_five_percent_on_zipf_sessions():
    keys = zipf_keys(2000)
    balanced = served(GatewayConfig(load_factor=1.04, balance_window_s=60), keys)
    in_flight_only = served(GatewayConfig(load_factor=1.04), keys)
    assert imbalance(balanced) < 0.05
    # with nothing in flight, the in-flight bound never binds: plain hashing, hot keys pile up
    assert imbalance(in_flight_only) > 0.5


def test_without_a_window_nothing_is_remembered():
    gateway = Gateway(GatewayConfig(), WORKERS)
    gateway.note_started("worker-0")
    assert gateway._loads() == {w.name: 0 for w in WORKERS}
