"""The replica's Prometheus series, read from the node at scrape time (no bookkeeping twice)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from resilience.raft.node import RaftNode

__all__ = ["RaftCollector", "raft_registry"]


class RaftCollector(Collector):
    """Names as in docs/internals.md; counters get their `_total` suffix from the client."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node, stats = self._node, self._node.stats
        yield GaugeMetricFamily(
            "raft_is_leader", "1 while this replica is the leader.", value=int(node.is_leader)
        )
        yield GaugeMetricFamily("raft_term", "Current Raft term.", value=node.term)
        yield CounterMetricFamily(
            "raft_leader_changes",
            "Leaderships (leader, term) this replica has seen begin.",
            value=stats.leader_changes,
        )
        yield GaugeMetricFamily(
            "raft_commit_index", "Highest log index known committed.", value=node.commit_index
        )
        yield GaugeMetricFamily(
            "raft_applied_index",
            "Highest log index applied to the store.",
            value=node.applied_index,
        )
        yield CounterMetricFamily(
            "raft_proposals_failed",
            "Proposals that timed out or were overwritten before commit.",
            value=stats.proposals_failed,
        )
        yield CounterMetricFamily(
            "raft_snapshots", "Snapshots this replica took of its store.", value=stats.snapshots
        )


def raft_registry(node: RaftNode) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RaftCollector(node))
    return registry
