"""Judging a Raft store from what its replicas said about themselves: pure functions, no I/O.

The observer records, per replica, every change of what `status` answered (who it is, whom it
follows, its term, or that it did not answer), and every write it made. From those alone:

- **failover**: time from the fault (t0) to the first answer naming a leader other than the one
  at t0, in a higher term. A replica that names the same leader again, or a new one in the old
  term, has not seen a failover yet (etcd names its new leader a moment before its reported
  term grows, because it reports the term of the last *applied* entry).
- **first acknowledged write**: time from t0 to the return of the first write sent after t0 and
  acknowledged by the new regime: in a higher term when the store says the term, else sent after
  the new leader was first seen (so a write the old leader took just before dying never counts).
- **split brain**: two replicas claiming leadership of the same term (Raft's Election Safety).
  For stores that report the applied term, a leader's claim counts at the highest term it
  reached while leading, which is its real term; the lower ones are the lag described above.
- **terms only grow** per replica. A store that reports the applied term may restart below its
  last term after a crash (it re-applies its log); such a drop right after the replica was
  unreachable is listed but does not count against it. Our store persists its term, so for it
  every drop counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "StatusSample",
    "WriteSample",
    "count_leader_changes",
    "first_acknowledged_write",
    "first_new_leader",
    "judge",
    "leader_timeline",
    "split_brain",
    "term_regressions",
    "view_at",
]

_DIGITS = 4


@dataclass(frozen=True)
class StatusSample:
    """One replica's answer (or silence) at monotonic time `at` (when the answer arrived)."""

    endpoint: str
    at: float
    id: str | None = None
    leader: str | None = None
    term: int | None = None
    role: str | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None and self.term is not None

    @property
    def claims_leadership(self) -> bool:
        if not self.answered:
            return False
        return self.role == "leader" or (self.leader is not None and self.leader == self.id)

    def same_state(self, other: StatusSample | None) -> bool:
        """True when `other` says the same thing (used to keep only changes)."""
        return other is not None and (
            self.id,
            self.leader,
            self.term,
            self.role,
            self.error is None,
        ) == (other.id, other.leader, other.term, other.role, other.error is None)


@dataclass(frozen=True)
class WriteSample:
    """One observer write: monotonic call and return times, outcome, term if the store said."""

    call: float
    ret: float
    status: str  # "ok" | "fail" | "unknown"
    term: int | None = None


def _by_time(samples: Iterable[StatusSample]) -> list[StatusSample]:
    return sorted(samples, key=lambda s: s.at)


def _best_claim(latest: dict[str, StatusSample]) -> tuple[str | None, int | None, str | None]:
    """(leader, term, endpoint) the replicas agree on best: the named leader in the highest
    term, a self-claim winning a tie; (None, highest term, None) when nobody names one."""
    best: StatusSample | None = None
    top_term: int | None = None
    for s in latest.values():
        if not s.answered:
            continue
        assert s.term is not None
        top_term = s.term if top_term is None else max(top_term, s.term)
        if s.leader is None:
            continue
        if best is None or (s.term, s.claims_leadership) > (best.term, best.claims_leadership):
            best = s
    if best is None:
        return None, top_term, None
    return best.leader, best.term, best.endpoint


def view_at(samples: Iterable[StatusSample], t: float) -> tuple[str | None, int | None]:
    """Leader and term as the replicas' latest answers up to time `t` tell it."""
    latest: dict[str, StatusSample] = {}
    for s in _by_time(samples):
        if s.at > t:
            break
        latest[s.endpoint] = s
    leader, term, _ = _best_claim(latest)
    return leader, term


def leader_timeline(samples: Iterable[StatusSample]) -> list[dict[str, Any]]:
    """Every change of the cluster's (leader, term) as seen from outside: [{at, leader, term}]."""
    latest: dict[str, StatusSample] = {}
    timeline: list[dict[str, Any]] = []
    for s in _by_time(samples):
        latest[s.endpoint] = s
        leader, term, endpoint = _best_claim(latest)
        if timeline and (timeline[-1]["leader"], timeline[-1]["term"]) == (leader, term):
            continue
        timeline.append({"at": s.at, "leader": leader, "term": term, "reported_by": endpoint})
    return timeline


def count_leader_changes(timeline: Sequence[dict[str, Any]]) -> int:
    """Times the leader changed: another id, or the same id again after a leaderless gap in a
    higher term (a re-election). A term that grows under the same leader without a gap is etcd's
    applied term catching up, not a change."""
    changes = 0
    previous: dict[str, Any] | None = None
    gap = False
    for entry in timeline:
        if entry["leader"] is None:
            gap = True
            continue
        if previous is not None and (
            entry["leader"] != previous["leader"] or (gap and entry["term"] > previous["term"])
        ):
            changes += 1
        previous, gap = entry, False
    return changes


def first_new_leader(
    samples: Iterable[StatusSample], t0: float, leader0: str | None, term0: int
) -> StatusSample | None:
    """First answer after t0 naming a leader other than `leader0`, in a term above `term0`."""
    for s in _by_time(samples):
        if s.at < t0 or not s.answered or s.leader is None:
            continue
        assert s.term is not None
        if s.leader != leader0 and s.term > term0:
            return s
    return None


def first_acknowledged_write(
    writes: Iterable[WriteSample], t0: float, new_leader_at: float | None, term0: int | None
) -> WriteSample | None:
    """Earliest-returning write sent after t0 that the new regime acknowledged (see module doc)."""
    best: WriteSample | None = None
    for w in writes:
        if w.status != "ok" or w.call < t0:
            continue
        if new_leader_at is not None:
            if w.term is not None and term0 is not None:
                if w.term <= term0:
                    continue
            elif w.call < new_leader_at:
                continue
        if best is None or w.ret < best.ret:
            best = w
    return best


def _stints(samples: list[StatusSample]) -> list[list[StatusSample]]:
    """One replica's runs of answers claiming leadership; a silence does not end a run."""
    runs: list[list[StatusSample]] = []
    current: list[StatusSample] = []
    for s in samples:
        if not s.answered:
            continue
        if s.claims_leadership and (not current or current[-1].id == s.id):
            current.append(s)
            continue
        if current:
            runs.append(current)
        current = [s] if s.claims_leadership else []
    if current:
        runs.append(current)
    return runs


def split_brain(
    samples: Iterable[StatusSample], applied_term: bool = False
) -> list[dict[str, Any]]:
    """Terms in which two different replicas claimed leadership: [{term, leaders, claims}]."""
    per_endpoint: dict[str, list[StatusSample]] = defaultdict(list)
    for s in _by_time(samples):
        per_endpoint[s.endpoint].append(s)
    claims: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for endpoint, own in per_endpoint.items():
        for stint in _stints(own):
            terms = [s.term for s in stint if s.term is not None]
            counted = {max(terms)} if applied_term else set(terms)
            for term in counted:
                first = next(s for s in stint if s.term == term)
                assert first.id is not None
                claims[term].setdefault(first.id, {"endpoint": endpoint, "at": first.at})
    return [
        {
            "term": term,
            "leaders": sorted(by_id),
            "claims": [{"leader": i, **c} for i, c in sorted(by_id.items())],
        }
        for term, by_id in sorted(claims.items())
        if len(by_id) > 1
    ]


def term_regressions(
    samples: Iterable[StatusSample], applied_term: bool = False
) -> list[dict[str, Any]]:
    """Every drop of a replica's term: [{endpoint, from, to, at, after_outage, counted}]."""
    top: dict[str, int] = {}
    outage: dict[str, bool] = defaultdict(bool)
    found: list[dict[str, Any]] = []
    for s in _by_time(samples):
        if not s.answered:
            outage[s.endpoint] = True
            continue
        assert s.term is not None
        before = top.get(s.endpoint)
        if before is not None and s.term < before:
            after_outage = outage[s.endpoint]
            found.append(
                {
                    "endpoint": s.endpoint,
                    "from": before,
                    "to": s.term,
                    "at": s.at,
                    "after_outage": after_outage,
                    "counted": not (applied_term and after_outage),
                }
            )
            if applied_term and after_outage:
                top[s.endpoint] = s.term  # restarted: it counts up again from its log
        else:
            top[s.endpoint] = s.term
        outage[s.endpoint] = False
    return found


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, _DIGITS)


def judge(
    samples: Sequence[StatusSample],
    writes: Sequence[WriteSample],
    t0: float,
    *,
    failover_bound_s: float,
    write_bound_s: float | None = None,
    expect_new_leader: bool = True,
    applied_term: bool = False,
    wall_offset_s: float = 0.0,
) -> dict[str, Any]:
    """The observer's verdict as plain data. Raises ValueError when nothing was seen before t0."""
    leader0, term0 = view_at(samples, t0)
    if term0 is None:
        raise ValueError("no replica answered its status before the fault: nothing to compare")
    new = first_new_leader(samples, t0, leader0, term0)
    failover_s = None if new is None else new.at - t0
    first = first_acknowledged_write(writes, t0, None if new is None else new.at, term0)
    first_write_s = None if first is None else first.ret - t0
    brains = split_brain(samples, applied_term)
    regressions = term_regressions(samples, applied_term)
    counted_regressions = [r for r in regressions if r["counted"]]
    timeline = leader_timeline(samples)

    problems: list[str] = []
    if expect_new_leader:
        if failover_s is None:
            problems.append(f"no new leader in a higher term than {term0} after the fault")
        elif failover_s > failover_bound_s:
            problems.append(f"new leader after {failover_s:.3f} s > {failover_bound_s} s")
    if write_bound_s is not None:
        if first_write_s is None:
            problems.append("no write was acknowledged after the fault")
        elif first_write_s > write_bound_s:
            problems.append(
                f"first write acknowledged after {first_write_s:.3f} s > {write_bound_s} s"
            )
    for b in brains:
        problems.append(f"split brain: {', '.join(b['leaders'])} all led term {b['term']}")
    for r in counted_regressions:
        problems.append(f"term went back from {r['from']} to {r['to']} on {r['endpoint']}")

    after = [w for w in writes if w.call >= t0]
    return {
        "ok": not problems,
        "problems": problems,
        "failover_s": _round(failover_s),
        "failover_bound_s": failover_bound_s,
        "first_write_s": _round(first_write_s),
        "write_bound_s": write_bound_s,
        "leader_before": {"leader": leader0, "term": term0},
        "new_leader": None
        if new is None
        else {"leader": new.leader, "term": new.term, "reported_by": new.endpoint},
        "leader_changes": count_leader_changes(timeline),
        "split_brain": [
            {**b, "claims": [{**c, "at": _round(c["at"] - t0)} for c in b["claims"]]}
            for b in brains
        ],
        "terms_monotonic": not counted_regressions,
        "term_regressions": [{**r, "at": _round(r["at"] - t0)} for r in regressions],
        "writes_after_fault": {
            status: sum(1 for w in after if w.status == status)
            for status in ("ok", "fail", "unknown")
        },
        "timeline": [
            {
                "t": _round(e["at"] - t0),
                "at": _round(e["at"] + wall_offset_s),
                "leader": e["leader"],
                "term": e["term"],
                "reported_by": e["reported_by"],
            }
            for e in timeline
        ],
    }
