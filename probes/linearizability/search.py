"""The search for one sub-history: Wing & Gong with Lowe's memoisation, as Porcupine does it.

The history becomes a list of call and return entries sorted by time, threaded as a doubly
linked list. Walking from the head, a call entry is a candidate to linearize next; a return
entry means the operation returning there must already have been linearized, so every
candidate has been tried and the search backtracks. Linearizing a candidate "lifts" its call
and return entries out of the list (dancing links) and pushes it on a stack; backtracking
"unlifts" it. A set of (linearized operations as an int bitset, model state) pairs already
explored prunes the search: reaching the same set of operations in the same state again can
lead nowhere new (Lowe's improvement, the heart of Porcupine's `checkSingle`).

Two additions to Porcupine's search, both sound and both measured on its test histories:

- an observer (a read, a cas known to have failed) that fits the current state is linearized
  at once and its level is not tried otherwise (see `_fitting_observer` for why that loses
  nothing); this took a 10,000-operation history with 1,000 clients from 8.5 s to 0.09 s;
- calls between two returns are tried earliest-return first (`_calls_by_return`), which
  found linearizations with up to 12x fewer states on contended keys.

The list lives in plain int arrays (next, prev, match) rather than node objects, which is
cheaper in Python.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from probes.linearizability.history import Operation
from probes.linearizability.models import Model

__all__ = ["Candidate", "Counterexample", "PartitionSearch", "SearchOutcome", "search"]

SLICE = 1024  # steps between yields, about a millisecond: the grain of deadlines and sharing


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Candidate:
    """An operation that could have been linearized next, and why it was not."""

    operation: Operation
    reason: str  # "inconsistent": the model rejects it here; "dead end": nothing fits after it

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.operation.to_json(), "reason": self.reason}


@dataclass(frozen=True)
class Counterexample:
    """Where the deepest attempt got stuck: the longest linearizable prefix found, the state it
    leaves, the operation that had already returned but could not be placed, and every
    operation that was a candidate to go next."""

    key: Any
    prefix: list[Operation]
    state: Any
    returned: Operation
    candidates: list[Candidate]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "prefix": [op.to_json() for op in self.prefix],
            "state_after_prefix": self.state,
            "returned": self.returned.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
        }

    def illegal_ids(self) -> set[int]:
        """Ids of the operations to highlight: the stuck one and the rejected candidates."""
        ids = {self.returned.id}
        ids.update(c.operation.id for c in self.candidates if c.reason == "inconsistent")
        return ids


@dataclass
class SearchOutcome:
    """ok, illegal (with a counterexample) or unknown (deadline or stopped, with a reason)."""

    result: str
    operations: int
    explored: int
    elapsed_s: float = 0.0
    counterexample: Counterexample | None = None
    reason: str | None = None


class PartitionSearch:
    """One key's search, advanced a slice at a time so one process can interleave many keys
    (as Porcupine runs a goroutine per key): a key that is quickly shown illegal is then not
    stuck behind a hard one."""

    def __init__(
        self,
        operations: Sequence[Operation],
        model: Model,
        key: Any = None,
        slice_steps: int = SLICE,
    ) -> None:
        self.key = key
        self.operations = len(operations)
        self.explored = 0
        self.elapsed_s = 0.0
        self._steps = _search_steps(list(operations), model, key, slice_steps)

    def advance(self) -> SearchOutcome | None:
        """Run one slice; the outcome once the search has finished, else None."""
        started = time.monotonic()
        try:
            self.explored = next(self._steps)
            return None
        except StopIteration as done:
            outcome: SearchOutcome = done.value
            self.explored = outcome.explored
            return outcome
        finally:
            self.elapsed_s += time.monotonic() - started

    def abandon(self, reason: str) -> SearchOutcome:
        """Give up: the answer is unknown (never ok), with the work done so far."""
        self._steps.close()
        return SearchOutcome("unknown", self.operations, self.explored, reason=reason)


def search(
    operations: Sequence[Operation],
    model: Model,
    key: Any = None,
    deadline: float = math.inf,
    stop: StopFlag | None = None,
) -> SearchOutcome:
    """Decide whether `operations` (one partition) linearize under `model`.

    `deadline` is on `time.monotonic()`; past it, or once `stop` is set, the answer is
    unknown, never ok.
    """
    job = PartitionSearch(operations, model, key)
    while True:
        outcome = job.advance()
        if outcome is None and time.monotonic() > deadline:
            outcome = job.abandon("deadline passed")
        elif outcome is None and stop is not None and stop.is_set():
            outcome = job.abandon("stopped")
        if outcome is not None:
            outcome.elapsed_s = job.elapsed_s
            return outcome


def _search_steps(
    ops: list[Operation], model: Model, key: Any, slice_steps: int
) -> Generator[int, None, SearchOutcome]:
    """The search proper; yields the number of explored states every `slice_steps` steps."""
    n = len(ops)
    # Entries sorted by time. At equal times calls sort before returns: Porcupine treats the
    # interval [call, return] as closed, so an operation returning at the instant another is
    # called may still be ordered after it. With coarse clocks (line numbers, millisecond
    # stamps) a tie says nothing about real order, and we never claim a violation on a tie.
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(ops)] + [(op.end, 1, i) for i, op in enumerate(ops)]
    )
    events = _calls_by_return(events, ops)
    size = 2 * n + 1  # node 0 is the head sentinel; event k is node k + 1
    nxt = list(range(1, size + 1))
    nxt[-1] = -1
    prv = list(range(-1, size - 1))
    match = [-1] * size  # call node -> its return node; -1 on return nodes
    op_of = [-1] * size
    call_node = [0] * n
    for pos, (_, kind, i) in enumerate(events, 1):
        op_of[pos] = i
        if kind == 0:
            call_node[i] = pos
        else:
            match[call_node[i]] = pos

    encoded = [model.encode(op) for op in ops]
    inputs = [inp for inp, _ in encoded]
    outputs = [out for _, out in encoded]
    observer = [model.observes(inp, out) for inp, out in encoded]
    step = model.step
    state = model.init
    linearized = 0
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any, bool]] = []
    best_depth = -1
    best: tuple[list[int], Any, int, list[int]] | None = None
    steps = 0
    node = _fitting_observer(nxt, match, op_of, observer, step, state, inputs, outputs)
    while nxt[0] != -1:
        steps += 1
        if not steps % slice_steps:
            yield len(seen)
        ret_node = match[node]
        if ret_node != -1:  # a call entry: try to linearize this operation now
            i = op_of[node]
            ok, new_state = step(state, inputs[i], outputs[i])
            if not ok:
                node = nxt[node]
                continue
            new_linearized = linearized | (1 << i)
            memo = (new_linearized, new_state)
            if memo not in seen:
                seen.add(memo)
                stack.append((node, state, observer[i]))
                state, linearized = new_state, new_linearized
                p, q = prv[node], nxt[node]  # lift the call entry ...
                nxt[p] = q
                prv[q] = p
                p, q = prv[ret_node], nxt[ret_node]  # ... and its return entry
                nxt[p] = q
                if q != -1:
                    prv[q] = p
                node = _fitting_observer(nxt, match, op_of, observer, step, state, inputs, outputs)
                continue
            if not observer[i]:
                node = nxt[node]
                continue
            # A fitting observer whose successor configuration has been explored already:
            # as it is the only choice worth trying here, this configuration is dead too.
        else:
            # A return entry: its operation had to be linearized by now and none of the
            # candidates before it worked out from this state. Remember the deepest such
            # point for the counterexample, then backtrack.
            if len(stack) > best_depth:
                best_depth = len(stack)
                best = (
                    [op_of[s_node] for s_node, _, _ in stack],
                    state,
                    op_of[node],
                    _calls_before(nxt, match, op_of, node),
                )
        forced = True
        while forced:
            if not stack:
                assert best is not None
                return SearchOutcome(
                    "illegal",
                    n,
                    len(seen),
                    counterexample=_counterexample(ops, model, key, *best),
                )
            # An observer (a read, a failed cas) that fitted was the only choice worth
            # trying at its level: if nothing worked after it, nothing works from there.
            node, state, forced = stack.pop()
            linearized ^= 1 << op_of[node]
            r = match[node]  # unlift the return entry, then the call entry
            p, q = prv[r], nxt[r]
            nxt[p] = r
            if q != -1:
                prv[q] = r
            p, q = prv[node], nxt[node]
            nxt[p] = node
            prv[q] = node
        node = nxt[node]
    return SearchOutcome("ok", n, len(seen))


def _calls_by_return(
    events: list[tuple[float, int, int]], ops: list[Operation]
) -> list[tuple[float, int, int]]:
    """Within each run of call entries between two return entries, order calls by return.

    Only the order of calls relative to returns carries meaning; inside a run it is free,
    and it is the order the search tries candidates in. Trying the operation that must
    return soonest first finds a linearization with less backtracking, the greedy choice
    of interval scheduling.
    """
    out: list[tuple[float, int, int]] = []
    run: list[tuple[float, int, int]] = []
    for event in events:
        if event[1] == 0:
            run.append(event)
            continue
        run.sort(key=lambda e: (ops[e[2]].end, e[2]))
        out.extend(run)
        run = []
        out.append(event)
    run.sort(key=lambda e: (ops[e[2]].end, e[2]))
    out.extend(run)
    return out


def _fitting_observer(
    nxt: list[int],
    match: list[int],
    op_of: list[int],
    observer: list[bool],
    step: Any,
    state: Any,
    inputs: list[Any],
    outputs: list[Any],
) -> int:
    """The first candidate that is an observer fitting `state`, else the first candidate.

    Linearizing such an operation first loses nothing: it changes no state, and any
    linearization that places it later can place it here instead (every operation that
    must precede it is already linearized, or it would not be a candidate). So when one
    fits it is the only choice the search needs to try at this level.
    """
    node = first = nxt[0]
    while node != -1 and match[node] != -1:
        i = op_of[node]
        if observer[i] and step(state, inputs[i], outputs[i])[0]:
            return node
        node = nxt[node]
    return first


def _calls_before(nxt: list[int], match: list[int], op_of: list[int], stop_node: int) -> list[int]:
    """Operations whose call entries precede `stop_node` in the list: the candidates tried."""
    found, node = [], nxt[0]
    while node != stop_node and node != -1:
        if match[node] != -1:
            found.append(op_of[node])
        node = nxt[node]
    return found


def _counterexample(
    ops: list[Operation],
    model: Model,
    key: Any,
    prefix: list[int],
    state: Any,
    returned: int,
    candidates: list[int],
) -> Counterexample:
    tried = []
    for i in candidates:
        ok, _ = model.apply(state, ops[i])
        tried.append(Candidate(ops[i], "dead end" if ok else "inconsistent"))
    return Counterexample(key, [ops[i] for i in prefix], state, ops[returned], tried)
