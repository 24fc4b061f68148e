"""The control plane of a Raft experiment, as the report shows it: who led when, the failover
figures with a pass/fail pill each, and the linearizability verdict with its history view.

Outputs are recognised by their shape, not by activity names, so a renamed step or another
experiment using the same probes still gets the section: the failover observer's report has a
`timeline` and `failover_s`; the consistency checks carry `check` ("linearizability",
"isolated-leader-steps-down"). Like the rest of the report this reads plain data only and
tolerates any piece being missing or damaged: a report is most needed when a run went wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reports.charts import FaultSpan, LeaderClaim, LeaderStint, leader_chart
from reports.formatting import fmt_exception, fmt_json, fmt_latency, fmt_rel, is_number

LINEARIZABILITY = "linearizability"
STEP_DOWN = "isolated-leader-steps-down"
# What the history figure may not contain before it is embedded unescaped: anything that runs
# or fetches. The probes write it themselves; this guards against a doctored journal.
_UNSAFE_MARKUP = re.compile(
    r"<\s*/?\s*(?:script|iframe|object|embed|link|img|image|use|foreignobject|meta|base)\b"
    r"|\son\w+\s*=|\s(?:xlink:)?href\s*=|\ssrc\s*=|url\s*\(|@import|javascript:",
    re.IGNORECASE,
)
_XMLNS = re.compile(r'\sxmlns(?::\w+)?="[^"]*"')
# A failed probe has no output to recognise it by: then its module says it spoke of Raft.
RAFT_PROBE_MODULES = ("probes.raft", "probes.consistency")
RESULT_WORDS = {"ok": "linearizable", "illegal": "NOT linearizable", "unknown": "unknown"}
RESULT_PILLS = {"ok": "pass", "illegal": "fail", "unknown": "inconclusive"}


@dataclass
class ControlPlaneOutputs:
    """The probe outputs of one journal that describe the control plane."""

    failovers: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = field(default_factory=list)
    linearizability: Mapping[str, Any] | None = None
    step_downs: list[Mapping[str, Any]] = field(default_factory=list)
    unmeasured: list[Mapping[str, Any]] = field(default_factory=list)  # probes that raised
    replica_ids: dict[str, str] = field(default_factory=dict)  # endpoint -> replica id

    def __bool__(self) -> bool:
        return bool(self.failovers or self.linearizability or self.step_downs)


def is_failover_output(output: Any) -> bool:
    """The Raft observer's report (probes.raft.actions.observer_report)."""
    return isinstance(output, Mapping) and "timeline" in output and "failover_s" in output


def is_check_output(output: Any, check: str) -> bool:
    return isinstance(output, Mapping) and output.get("check") == check


def find_outputs(journal: Mapping[str, Any]) -> ControlPlaneOutputs:
    """Collect the control-plane outputs from the method, the hypothesis and the SLO list."""
    found = ControlPlaneOutputs()
    for run in _all_runs(journal):
        output = run.get("output")
        if run.get("status") == "failed" and _is_raft_probe(run):
            found.unmeasured.append(run)
        if not isinstance(output, Mapping):
            continue
        found.replica_ids.update(_replica_ids(output))
        if is_failover_output(output):
            found.failovers.append((run, output))
        elif is_check_output(output, LINEARIZABILITY) and found.linearizability is None:
            found.linearizability = output
        elif is_check_output(output, STEP_DOWN):
            found.step_downs.append(output)
    if found.linearizability is None:  # the verdict control copies checks into its SLO list
        chaos = journal.get("inference_chaos")
        slos = chaos.get("slos") if isinstance(chaos, Mapping) else None
        found.linearizability = next(
            (s for s in slos or [] if is_check_output(s, LINEARIZABILITY)), None
        )
    return found


def control_plane_section(
    journal: Mapping[str, Any],
    origin: float,
    origin_label: str,
    faults: Sequence[Mapping[str, Any]],
    spans: Sequence[FaultSpan],
) -> dict[str, Any] | None:
    """Everything the "Control plane" section shows, formatted; None when there is nothing."""
    found = find_outputs(journal)
    if not found:
        return None
    victims = {str(v) for f in faults for v in f.get("victims") or []}
    observations = [
        _observation(run, output, index, origin, origin_label, spans, victims, found)
        for index, (run, output) in enumerate(found.failovers)
    ]
    step_downs = [_step_down_row(s, found.replica_ids) for s in found.step_downs]
    step_downs += [_unmeasured_row(run) for run in found.unmeasured]
    if observations:
        observations[-1]["rows"].extend(step_downs)
        step_downs = []
    return {
        "observations": observations,
        "step_down_rows": step_downs,  # only when there is no observer report to join
        "linearizability": _linearizability(found.linearizability),
        "fault_mark_note": _fault_mark_note(found.failovers, faults, origin),
    }


def glance_cards(section: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The headline figures: failover time against its bound, and the history's verdict."""
    if not section:
        return []
    cards = []
    for observation in section["observations"][:2]:
        cards.append((observation["glance_key"], observation["glance_value"]))
    lin = section["linearizability"]
    if lin is not None:
        cards.append((lin["glance_key"], lin["word"]))
    return cards


def without_history_html(value: Any) -> Any:
    """The output with its embedded figure replaced by a note (the figure is shown above)."""
    if isinstance(value, Mapping):
        return {
            k: (
                f"<figure, {len(v):,} characters: shown in the Control plane section>"
                if k == "history_html" and isinstance(v, str) and v
                else without_history_html(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [without_history_html(v) for v in value]
    return value


def embeddable_history(markup: Any) -> tuple[str, str]:
    """The history figure fit to embed unescaped, or ("", why not)."""
    if not isinstance(markup, str) or not markup.strip():
        return "", "The checker drew no history view."
    markup = _XMLNS.sub("", markup)  # inline SVG in HTML needs no namespace URL
    if _UNSAFE_MARKUP.search(markup):
        return "", "The history view was left out: it holds markup that could run or fetch."
    return markup, ""


# --- one observer report ---------------------------------------------------------------------


def _observation(
    run: Mapping[str, Any],
    output: Mapping[str, Any],
    index: int,
    origin: float,
    origin_label: str,
    spans: Sequence[FaultSpan],
    victims: set[str],
    found: ControlPlaneOutputs,
) -> dict[str, Any]:
    t0_at = output.get("t0_at")
    t0_at = float(t0_at) if is_number(t0_at) else None
    stints = leader_stints(output, origin, _observed_until(run, output))
    replicas = _replica_order(output, stints, found.replica_ids.values())
    victim_ids = {r for r in replicas if any(v == r or v.endswith(f"-{r}") for v in victims)}
    failover_s = output.get("failover_s")
    mark = t0_at - origin if t0_at is not None else None
    svg = leader_chart(
        stints,
        replicas,
        spans,
        victims=victim_ids,
        fault_mark=mark,
        failover_s=float(failover_s) if is_number(failover_s) and mark is not None else None,
        claims=_claims(output, t0_at, origin),
        xlabel=f"seconds since {origin_label}",
        chart_id=f"leader-{index}" if index else "leader",
    )
    bound = output.get("failover_bound_s")
    return {
        "ok": bool(output.get("ok")),
        "pill": "pass" if output.get("ok") else "fail",
        "problems": [str(p) for p in output.get("problems") or []],
        "chart_svg": svg,
        "rows": _figure_rows(output, found.replica_ids),
        "glance_key": f"failover (bound {fmt_latency(bound)})" if is_number(bound) else "failover",
        "glance_value": fmt_latency(failover_s) if is_number(failover_s) else "no new leader",
    }


def leader_stints(
    output: Mapping[str, Any], origin: float, observed_until: float | None
) -> list[LeaderStint]:
    """The observer's timeline as spans of one (leader, term), in seconds since origin.

    Entries carry Unix `at`; older ones only `t` (seconds since the fault mark `t0_at`).
    The last stint lasts until the observer stopped looking.
    """
    t0_at = output.get("t0_at")
    points = []
    for entry in output.get("timeline") or []:
        if not isinstance(entry, Mapping):
            continue
        at = entry.get("at")
        if not is_number(at) and is_number(entry.get("t")) and is_number(t0_at):
            at = float(t0_at) + float(entry["t"])
        if not is_number(at):
            continue
        leader = entry.get("leader")
        term = entry.get("term")
        points.append(
            (
                float(at) - origin,
                None if leader is None else str(leader),
                int(term) if is_number(term) else None,
            )
        )
    points.sort(key=lambda p: p[0])
    if not points:
        return []
    last = points[-1][0]
    end = observed_until - origin if observed_until is not None else last
    end = max(end, last + 0.05)
    stints = []
    for (start, leader, term), following in zip(points, [*points[1:], None], strict=True):
        stop = following[0] if following is not None else end
        stints.append(LeaderStint(start, stop, leader, term))
    return stints


def _observed_until(run: Mapping[str, Any], output: Mapping[str, Any]) -> float | None:
    """When the observer stopped: the report ran to its end (it stops the observer)."""
    for key in ("end", "start"):
        moment = epoch(run.get(key))
        if moment is not None:
            return moment
    last = [e.get("at") for e in output.get("timeline") or [] if isinstance(e, Mapping)]
    numbers = [float(a) for a in last if is_number(a)]
    return max(numbers) + 1.0 if numbers else None


def _claims(output: Mapping[str, Any], t0_at: float | None, origin: float) -> list[LeaderClaim]:
    """Split-brain claims (their `at` is seconds since the fault mark) on the report's axis."""
    claims: list[LeaderClaim] = []
    if t0_at is None:
        return claims
    for brain in output.get("split_brain") or []:
        if not isinstance(brain, Mapping):
            continue
        term = brain.get("term")
        for claim in brain.get("claims") or []:
            if not isinstance(claim, Mapping) or not is_number(claim.get("at")):
                continue
            claims.append(
                LeaderClaim(
                    t0_at + float(claim["at"]) - origin,
                    str(claim.get("leader")),
                    int(term) if is_number(term) else None,
                )
            )
    return claims


def _replica_order(
    output: Mapping[str, Any], stints: Sequence[LeaderStint], known: Iterable[str]
) -> list[str]:
    """Every replica that could lead, numerically when ids are numbers."""
    ids = {s.leader for s in stints if s.leader is not None} | set(known)
    for key in ("leader_before", "new_leader"):
        leader = _mapping(output.get(key)).get("leader")
        if leader is not None:
            ids.add(str(leader))
    for brain in output.get("split_brain") or []:
        ids.update(str(x) for x in _mapping(brain).get("leaders") or [])
    return sorted(ids, key=lambda i: (0, int(i), "") if i.isdigit() else (1, 0, i))


def _figure_rows(output: Mapping[str, Any], replica_ids: Mapping[str, str]) -> list[dict]:
    before = _mapping(output.get("leader_before"))
    new = output.get("new_leader")
    new = new if isinstance(new, Mapping) else None
    term0 = before.get("term")
    rows = [
        _row(
            "leader before the fault",
            _leader_text(before),
            "one leader",
            "pass" if before.get("leader") is not None else "fail",
        )
    ]
    if new is not None:
        moved = new.get("leader") != before.get("leader")
        higher = not (is_number(term0) and is_number(new.get("term"))) or new["term"] > term0
        new_pill = "pass" if moved and higher else "fail"
    else:  # the probe's own problems say whether a new leader was expected
        expected = any("no new leader" in str(p) for p in output.get("problems") or [])
        new_pill = "fail" if expected else "na"
    rows.append(
        _row(
            "new leader",
            _leader_text(new) if new else "none seen",
            f"another replica, in a term above {term0}" if is_number(term0) else "another replica",
            new_pill,
            note=_reported_by(new, replica_ids),
        )
    )
    rows.append(_bounded_row("failover time", output, "failover_s", "failover_bound_s", new_pill))
    rows.append(_bounded_row("first acknowledged write", output, "first_write_s", "write_bound_s"))
    rows.append(_leader_changes_row(output.get("leader_changes"), new_pill))
    rows.append(_split_brain_row(output.get("split_brain")))
    rows.append(_terms_row(output, replica_ids))
    rows.append(_writes_row(_mapping(output.get("writes_after_fault"))))
    return rows


def _bounded_row(
    name: str, output: Mapping[str, Any], key: str, bound_key: str, missing_pill: str = ""
) -> dict[str, Any]:
    value, bound = output.get(key), output.get(bound_key)
    after = "after the fault mark"
    if is_number(bound):
        expectation = f"≤ {fmt_latency(bound)} {after}"
        pill = "pass" if is_number(value) and value <= bound else "fail"
    else:
        expectation = f"no bound set; {after}"
        pill = "pass" if is_number(value) else "inconclusive"
    if not is_number(value) and missing_pill == "na":
        pill = "na"
    text = fmt_latency(value) if is_number(value) else "never"
    return _row(name, text, expectation, pill)


def _leader_changes_row(changes: Any, new_pill: str) -> dict[str, Any]:
    if not is_number(changes):
        return _row("leader changes", "—", "at least one (the failover)", "inconclusive")
    note = "leadership moved more than once" if changes > 1 else ""
    pill = "pass" if changes >= 1 else ("na" if new_pill == "na" else "fail")
    return _row("leader changes", str(changes), "at least one (the failover)", pill, note=note)


def _split_brain_row(brains: Any) -> dict[str, Any]:
    expectation = "never two leaders in one term"
    if not isinstance(brains, list):
        return _row("split brain", "—", expectation, "inconclusive")
    if not brains:
        return _row("split brain", "none", expectation, "pass")
    parts = []
    for brain in brains:
        brain = _mapping(brain)
        leaders = ", ".join(str(x) for x in brain.get("leaders") or [])
        parts.append(f"term {brain.get('term', '?')}: replicas {leaders} all led")
    return _row("split brain", "; ".join(parts), expectation, "fail")


def _terms_row(output: Mapping[str, Any], replica_ids: Mapping[str, str]) -> dict[str, Any]:
    monotonic = output.get("terms_monotonic")
    regressions = [r for r in output.get("term_regressions") or [] if isinstance(r, Mapping)]
    drops = [
        f"{_replica_name(r.get('endpoint'), replica_ids)} {r.get('from')} → {r.get('to')}"
        + ("" if r.get("counted", True) else " (after a restart, not counted)")
        for r in regressions
    ]
    if monotonic is None:
        return _row("terms only grow", "—", "per replica", "inconclusive")
    text = "yes" if monotonic else "no"
    if drops:
        text += ": " + "; ".join(drops)
    return _row("terms only grow", text, "per replica", "pass" if monotonic else "fail")


def _writes_row(writes: Mapping[str, Any]) -> dict[str, Any]:
    counts = {k: writes.get(k) for k in ("ok", "fail", "unknown")}
    if not all(is_number(v) for v in counts.values()):
        return _row("writes after the fault", "—", "some acknowledged", "inconclusive")
    text = f"{counts['ok']:,} ok · {counts['fail']:,} failed · {counts['unknown']:,} unknown"
    return _row(
        "writes after the fault",
        text,
        "some acknowledged; failed or unknown ones are judged by the history check",
        "pass" if counts["ok"] > 0 else "fail",
    )


def _step_down_row(output: Mapping[str, Any], replica_ids: Mapping[str, str]) -> dict[str, Any]:
    victims = ", ".join(str(v) for v in output.get("victims") or []) or "the isolated replica"
    seconds = output.get("stepped_down_s")
    majority = output.get("majority_leader")
    if is_number(seconds):
        text = f"after {fmt_latency(seconds)}"
        if majority:
            text += f"; majority leader {_replica_name(majority, replica_ids)}"
    else:
        text = "did not step down (or the majority had no leader)"
    return _row(
        f"isolated leader steps down ({victims})",
        text,
        "stops leading while the majority elects its own",
        "pass" if output.get("ok") else "fail",
        note="" if output.get("ok") else str(output.get("summary") or ""),
    )


def _unmeasured_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """A control-plane probe that raised: the check was not made, which is no pass."""
    name = str(_mapping(run.get("activity")).get("name") or "a control-plane probe")
    error = fmt_exception(run.get("exception")) or "no error recorded"
    return _row(name, "could not measure", "a measurement", "fail", note=error)


def _row(name: str, value: str, expectation: str, pill: str, note: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "expectation": expectation, "pill": pill, "note": note}


def _leader_text(leader: Mapping[str, Any] | None) -> str:
    if not leader or leader.get("leader") is None:
        return "none" + (f" (term {leader['term']})" if leader and "term" in leader else "")
    return f"replica {leader['leader']}, term {leader.get('term', '?')}"


def _reported_by(new: Mapping[str, Any] | None, replica_ids: Mapping[str, str]) -> str:
    endpoint = (new or {}).get("reported_by")
    return f"first reported by {_replica_name(endpoint, replica_ids)}" if endpoint else ""


def _replica_name(endpoint: Any, replica_ids: Mapping[str, str]) -> str:
    """`replica 0` when the endpoint's id is known, else the endpoint itself."""
    if endpoint is None:
        return "?"
    replica = replica_ids.get(str(endpoint))
    return f"replica {replica}" if replica is not None else str(endpoint)


def _fault_mark_note(
    failovers: Sequence[tuple[Mapping, Mapping]], faults: Sequence[Mapping], origin: float
) -> str:
    """Say where the failover clock starts relative to the injection: they differ."""
    marks = [o.get("t0_at") for _, o in failovers if is_number(o.get("t0_at"))]
    injected = [f.get("injected_at") for f in faults if is_number(f.get("injected_at"))]
    if not marks:
        return ""
    mark = float(marks[0])
    text = f"Failover times count from the fault mark at {fmt_rel(mark, origin)}"
    if injected:
        lag = min(float(i) for i in injected) - mark
        text += f", {fmt_latency(abs(lag))} {'before' if lag >= 0 else 'after'} the injection"
    return text + "."


# --- the linearizability verdict -------------------------------------------------------------


def _linearizability(output: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if output is None:
        return None
    result = str(output.get("result") or "unknown")
    if result not in RESULT_WORDS:
        result = "unknown"
    verdict = _mapping(output.get("verdict"))
    html, html_note = embeddable_history(output.get("history_html"))
    operations = output.get("operations")
    ops = f"{operations:,} ops" if is_number(operations) else ""
    reason = verdict.get("reason") if result == "unknown" else None
    return {
        "result": result,
        "word": RESULT_WORDS[result],
        "pill": RESULT_PILLS[result],
        "summary": str(output.get("summary") or ""),
        "reason": str(reason or ""),
        "counterexample": _counterexample_text(verdict) if result == "illegal" else "",
        "history_html": html,
        "history_note": html_note,
        "glance_key": f"history ({ops})" if ops else "history",
    }


def _counterexample_text(verdict: Mapping[str, Any]) -> str:
    """The checker's own wording for the counterexample; its JSON if that cannot be rebuilt."""
    cx = verdict.get("counterexample")
    if not isinstance(cx, Mapping):
        keyed = [k.get("counterexample") for k in verdict.get("keys") or [] if _mapping(k)]
        cx = next((c for c in keyed if isinstance(c, Mapping)), None)
    if cx is None:
        return "The checker found the history illegal but recorded no counterexample."
    try:
        from probes.linearizability.history import Operation
        from probes.linearizability.report import counterexample_text
        from probes.linearizability.search import Candidate, Counterexample

        def operation(data: Mapping[str, Any]) -> Operation:
            fields = {k: data[k] for k in ("id", "process", "op", "key", "input", "output")}
            return Operation(**fields, call=data["call"], ret=data["return"], status=data["status"])

        rebuilt = Counterexample(
            key=cx["key"],
            prefix=[operation(op) for op in cx["prefix"]],
            state=cx["state_after_prefix"],
            returned=operation(cx["returned"]),
            candidates=[
                Candidate(operation(c["operation"]), str(c["reason"])) for c in cx["candidates"]
            ],
        )
        return counterexample_text(rebuilt)
    except (ImportError, KeyError, TypeError, ValueError):
        return fmt_json(cx)


# --- reading the journal ---------------------------------------------------------------------


def _all_runs(journal: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Method runs first, then the hypothesis probes (they may carry the same checks)."""
    runs = [r for r in journal.get("run") or [] if isinstance(r, Mapping)]
    states = _mapping(journal.get("steady_states"))
    for phase in ("before", "after"):
        probes = _mapping(states.get(phase)).get("probes") or []
        runs.extend(r for r in probes if isinstance(r, Mapping))
    return runs


def _is_raft_probe(run: Mapping[str, Any]) -> bool:
    """A probe of the control-plane modules (only used for probes that left no output)."""
    provider = _mapping(_mapping(run.get("activity")).get("provider"))
    module = str(provider.get("module") or "")
    return module.startswith(RAFT_PROBE_MODULES)


def _replica_ids(output: Mapping[str, Any]) -> dict[str, str]:
    """endpoint -> replica id from any output that lists replicas (observer start, health)."""
    replicas = output.get("replicas")
    items = replicas.values() if isinstance(replicas, Mapping) else replicas
    if not isinstance(items, Iterable) or isinstance(items, str | bytes):
        return {}
    found = {}
    for replica in items:
        replica = _mapping(replica)
        if replica.get("endpoint") and replica.get("id") is not None:
            found[str(replica["endpoint"])] = str(replica["id"])
    return found


def epoch(value: Any) -> float | None:
    """Journal times are ISO strings; fault and probe times Unix floats. Accept both."""
    if is_number(value):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
