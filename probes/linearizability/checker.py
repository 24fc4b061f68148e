"""Check a whole history: split it by key, search each key, in parallel when it pays.

Linearizability is compositional (Herlihy & Wing): a history is linearizable exactly when
each key's sub-history is, so keys are independent searches. Whether a key is easy cannot
be told from its size (the search is exponential in the worst case), so the checker starts
every key in this process and only when they have not all finished after `HAND_OVER_AFTER_S`
(about what a worker pool costs to start) does it hand part of the unfinished keys to worker
processes while it carries on with the rest. The first illegal key stops everything, and
the deadline makes the verdict `unknown`, never `ok`.

Operations are prepared as Porcupine and Knossos prepare them: failed operations did not
take effect and are dropped; pending ones (timed out, never returned) stay in with a return
time of +infinity, so they may take effect anywhere after their call or not at all; pending
reads constrain nothing and are dropped too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

from probes.linearizability.history import Operation
from probes.linearizability.interleave import MAX_STATES, Interleaver
from probes.linearizability.models import Model
from probes.linearizability.pool import KeyPool
from probes.linearizability.search import PartitionSearch
from probes.linearizability.verdict import KeyResult, Verdict, combine

__all__ = ["HAND_OVER_AFTER_S", "KeyResult", "Verdict", "check", "prepare", "share_out"]

HAND_OVER_AFTER_S = 0.25


def prepare(
    operations: Sequence[Operation], model: Model
) -> tuple[dict[Any, list[Operation]], int]:
    """Validate, drop what cannot matter, and partition; returns (parts, number dropped)."""
    model.validate(operations)
    kept = [op for op in operations if op.status != "fail" and model.constrains(op)]
    return model.partition(kept), len(operations) - len(kept)


def check(
    operations: Sequence[Operation],
    model: Model,
    *,
    timeout: float | None = None,
    workers: int | None = None,
    hand_over_after: float = HAND_OVER_AFTER_S,
    max_states: int = MAX_STATES,
) -> Verdict:
    """Is the history linearizable under `model`? `timeout` seconds bound the whole check.

    `workers` caps the processes used, this one included (default: the CPU count; 1 keeps
    everything in this process). `max_states` bounds the memoised states each process holds
    (past it the answer is unknown). ValueError on operations the model cannot take.
    """
    started = time.monotonic()
    deadline = math.inf if timeout is None else started + timeout
    parts, dropped = prepare(operations, model)
    workers = max(1, workers or os.cpu_count() or 1)
    here = Interleaver(parts, model, max_states)
    ended = here.run(min(deadline, started + hand_over_after))
    pool: KeyPool | None = None
    if ended == "time" and workers > 1 and len(here.active) > 1 and time.monotonic() < deadline:
        keep, *shares = share_out(here.active, min(workers, len(here.active)))
        here.release({job.key for job in here.active if job.key not in keep})
        pool = KeyPool(
            [{key: parts[key] for key in share} for share in shares], model, deadline, max_states
        )
        ended = here.run(deadline, pool)
        if ended == "illegal":
            pool.stop()
    elif ended == "time" and time.monotonic() < deadline:
        ended = here.run(deadline)
    here.abandon_all(here.why(ended))
    results = dict(here.results)
    if pool is not None:
        results.update(pool.results())
    verdict = combine([results[key] for key in parts], model.name)
    verdict.operations = sum(len(ops) for ops in parts.values())
    verdict.dropped = dropped
    verdict.parallel = pool is not None
    verdict.elapsed_s = time.monotonic() - started
    return verdict


def share_out(jobs: list[PartitionSearch], shares: int) -> list[set[Any]]:
    """Deal unfinished keys into `shares` sets of similar size (operations); share 0 stays in
    this process and gets the keys searched longest, whose work a worker would redo."""
    bins: list[set[Any]] = [set() for _ in range(shares)]
    loads = [0] * shares
    for job in sorted(jobs, key=lambda j: (-j.elapsed_s, -j.operations)):
        least = loads.index(min(loads))
        bins[least].add(job.key)
        loads[least] += job.operations
    return bins
