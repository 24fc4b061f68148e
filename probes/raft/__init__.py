"""Raft probes: judge any Raft store (ours or etcd) from outside, as Chaos Toolkit activities.

From an experiment: `module: probes.raft`, `func: start_observer` / `mark_fault` /
`observer_report` / `start_history` / `stop_history` (see `probes.raft.actions`). The parts:
`clients` (two stores behind one protocol), `observer` (status polls and a writer in the
background), `judge` (failover, split brain, term order: pure functions), `history` (the
Jepsen-style recorder).
"""

from probes.raft.actions import (
    mark_fault,
    observer_report,
    start_history,
    start_observer,
    stop_history,
    stop_observer,
)

__all__ = [
    "mark_fault",
    "observer_report",
    "start_history",
    "start_observer",
    "stop_history",
    "stop_observer",
]
