"""The key figures of one run, read from its journal for the nightly suite.

The suite compares nights, so it needs a few numbers per run that mean the same thing every
night (availability, TTFT, failover and migration times, balance, RTO/RPO, linearizability).
Outputs are recognised by their shape or their
`check` name, never by activity names, as in the report. A crashed run leaves a journal with
pieces missing or damaged, and the suite must still write its summary: nothing here raises on
odd data, a figure that cannot be read is left out (never zero).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from reports.formatting import fmt_latency, fmt_share, is_number

log = logging.getLogger(__name__)

PHASES = (("before", "hypothesis-before"), ("after", "hypothesis-after"))
METHOD = "method"
LINEARIZABILITY_RESULTS = {"ok": True, "illegal": False}
_DIGITS = 6

Output = Mapping[str, Any]


# --- walking the journal ----------------------------------------------------------------------


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def activity_runs(journal: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every activity run of the hypothesis and the method, in order, with its phase name."""
    states = as_mapping(journal.get("steady_states"))
    before, after = PHASES
    for run in as_list(as_mapping(states.get(before[0])).get("probes")):
        if isinstance(run, Mapping):
            yield before[1], run
    for run in as_list(journal.get("run")):
        if isinstance(run, Mapping):
            yield METHOD, run
    for run in as_list(as_mapping(states.get(after[0])).get("probes")):
        if isinstance(run, Mapping):
            yield after[1], run


def _outputs(journal: Mapping[str, Any]) -> list[Output]:
    """Activity outputs, then the verdict control's SLO list: copies of the judged ones, which
    stand in for a journal whose activities lost them (every figure takes the worst of its
    outputs, so a copy never changes it)."""
    found = [r["output"] for _, r in activity_runs(journal) if isinstance(r.get("output"), Mapping)]
    slos = as_list(as_mapping(journal.get("inference_chaos")).get("slos"))
    return found + [s for s in slos if isinstance(s, Mapping)]


def _checks_named(outputs: list[Output], check: str) -> list[Output]:
    return [o for o in outputs if o.get("check") == check]


def _numbers(outputs: list[Output], key: str) -> list[float]:
    return [float(o[key]) for o in outputs if is_number(o.get(key))]


def _worst(values: list[float]) -> float | None:
    """Several outputs of one check (a copy in the SLO list, two probes): the worst counts."""
    return round(max(values), _DIGITS) if values else None


# --- figures ----------------------------------------------------------------------------------


def _windows_all(outputs: list[Output]) -> Mapping[str, Any]:
    """The client-side "all" window of the windows report (probes.slo.windows_report)."""
    for output in reversed(outputs):
        windows = output.get("windows")
        if output.get("source", "client") != "client" or not isinstance(windows, Mapping):
            continue
        whole = windows.get("all")
        if isinstance(whole, Mapping) and isinstance(whole.get("availability"), Mapping):
            return whole
    return {}


def _whole_run_slos(outputs: list[Output], kind: str) -> list[Output]:
    """Client-side SLO outputs over window `all`: availability ones, or latency ones of `kind`."""
    found = []
    for o in outputs:
        if "check" in o or o.get("window", "all") != "all" or o.get("source", "client") != "client":
            continue
        if kind == "availability" and "sli" in o and "metric" not in o:
            found.append(o)
        elif o.get("metric") == kind:
            found.append(o)
    return found


def _availability(outputs: list[Output]) -> float | None:
    sli = as_mapping(_windows_all(outputs).get("availability")).get("sli")
    if is_number(sli):
        return round(float(sli), _DIGITS)
    slos = [o for o in _whole_run_slos(outputs, "availability") if is_number(o.get("sli"))]
    if not slos:
        return None  # the widest window (most requests) is the one covering the whole run
    widest = max(slos, key=lambda o: o.get("total") if is_number(o.get("total")) else -1)
    return round(float(widest["sli"]), _DIGITS)


def _ttft(outputs: list[Output]) -> dict[str, float]:
    latency = as_mapping(as_mapping(_windows_all(outputs).get("latency")).get("ttft"))
    found = {q: float(latency[q]) for q in ("p50", "p95", "p99") if is_number(latency.get(q))}
    if not found:
        slos = _whole_run_slos(outputs, "ttft")
        if slos:
            widest = max(slos, key=lambda o: o.get("count") if is_number(o.get("count")) else -1)
            found = {q: float(widest[q]) for q in ("p50", "p95", "p99") if is_number(widest.get(q))}
            quantile = widest.get("quantile")
            if is_number(quantile) and is_number(widest.get("value")):
                name = f"p{round(float(quantile) * 100)}"
                if name in ("p50", "p95", "p99"):
                    found.setdefault(name, float(widest["value"]))
    return {f"ttft_{q}_s": round(v, _DIGITS) for q, v in found.items()}


def _time_to_new_leader(outputs: list[Output]) -> float | None:
    """The store's failover; a controller failover where the run had no store observer."""
    raft = _worst(_numbers(_checks_named(outputs, "raft-failover"), "failover_s"))
    if raft is not None:
        return raft
    return _worst(_numbers(_checks_named(outputs, "controller-failover"), "seconds"))


def _migration_seconds(output: Output) -> list[float]:
    if is_number(output.get("max_migration_s")):
        return [float(output["max_migration_s"])]
    seconds = []  # an older report without the maximum: detection to routed per moved task
    for task in as_list(output.get("tasks")):
        task = as_mapping(task)
        detected, routed = task.get("detected_at"), task.get("routed_at")
        if task.get("moved") is not False and is_number(detected) and is_number(routed):
            seconds.append(float(routed) - float(detected))
    return seconds


def _time_to_migrate(outputs: list[Output]) -> float | None:
    migrations = _checks_named(outputs, "task-migration")
    return _worst([s for o in migrations for s in _migration_seconds(o)])


def _linearizable(outputs: list[Output]) -> tuple[bool, bool | None]:
    """(any check found, verdict): false if any history was illegal, None if any was unknown."""
    checks = _checks_named(outputs, "linearizability")
    if not checks:
        return False, None
    verdicts = []
    for check in checks:
        result = check.get("result")
        if result in LINEARIZABILITY_RESULTS:
            verdicts.append(LINEARIZABILITY_RESULTS[result])
        elif result is None and isinstance(check.get("ok"), bool):
            verdicts.append(check["ok"])
        else:
            verdicts.append(None)
    if False in verdicts:
        return True, False
    return True, None if None in verdicts else True


_SIMPLE: dict[str, Callable[[list[Output]], float | None]] = {
    "availability": _availability,
    "time_to_new_leader_s": _time_to_new_leader,
    "time_to_migrate_s": _time_to_migrate,
    "detection_s": lambda o: _worst(_numbers(_checks_named(o, "task-migration"), "detection_s")),
    "balance": lambda o: _worst(
        _numbers(_checks_named(o, "load-balance"), "max_over_mean_minus_1")
    ),
    "rto_s": lambda o: _worst(_numbers(_checks_named(o, "rto"), "rto_s")),
    "rpo_s": lambda o: _worst(_numbers(_checks_named(o, "rpo"), "rpo_s")),
}
# name -> (label a person reads, unit): the order is the one summary.json and the page use
FIGURES = {
    "availability": ("availability", "share"),
    "ttft_p50_s": ("TTFT p50", "seconds"),
    "ttft_p95_s": ("TTFT p95", "seconds"),
    "ttft_p99_s": ("TTFT p99", "seconds"),
    "time_to_new_leader_s": ("time to new leader", "seconds"),
    "time_to_migrate_s": ("time to migrate", "seconds"),
    "detection_s": ("detection", "seconds"),
    "balance": ("load imbalance", "share"),
    "rto_s": ("RTO", "seconds"),
    "rpo_s": ("RPO", "seconds"),
    "linearizable": ("linearizable", "bool"),
}
FIGURE_ORDER = tuple(FIGURES)


def figure_label(name: str) -> str:
    return FIGURES.get(name, (name, ""))[0]


def fmt_figure(name: str, value: Any) -> str:
    """A figure's value as the page and the JUnit messages show it."""
    unit = FIGURES.get(name, (name, ""))[1]
    if unit == "bool" or isinstance(value, bool) or value is None:
        return "yes" if value is True else "no" if value is False else "unknown"
    if not is_number(value):
        return str(value)
    if unit == "seconds":
        return fmt_latency(value)
    if name == "availability":
        return fmt_share(value)
    if unit == "share":
        return f"{value * 100:.1f}%"
    return f"{value:.4g}"


def fmt_change(name: str, delta: float) -> str:
    """An absolute difference of a figure: percentage points for shares, time for seconds."""
    unit = FIGURES.get(name, (name, ""))[1]
    sign = "+" if delta >= 0 else "−"
    if unit == "share":
        return f"{sign}{abs(delta) * 100:.2g} pp"
    if unit == "seconds":
        return f"{sign}{fmt_latency(abs(delta))}"
    return f"{delta:+.4g}"


def figures_from_journal(journal: dict) -> dict:
    """The run's key figures by their summary.json names; absent ones left out, never zero.
    `linearizable` is present (true, false, or null when the check could not decide) only when
    the run checked a history."""
    if not isinstance(journal, Mapping):
        return {}
    try:
        outputs = _outputs(journal)
    except (TypeError, AttributeError) as exc:  # pragma: no cover - _outputs only reads mappings
        log.warning("journal outputs unreadable: %s", exc)
        return {}
    found: dict[str, Any] = {}
    readers: list[tuple[str, Callable[[], Any]]] = [
        *((name, lambda read=read: read(outputs)) for name, read in _SIMPLE.items()),
        ("ttft", lambda: _ttft(outputs)),
        ("linearizable", lambda: _linearizable(outputs)),
    ]
    for name, read in readers:
        try:
            value = read()
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            log.warning("figure %s unreadable in this journal: %s", name, exc)
            continue
        if name == "ttft":
            found.update(value)
        elif name == "linearizable":
            checked, verdict = value
            if checked:
                found["linearizable"] = verdict
        elif value is not None:
            found[name] = value
    return {name: found[name] for name in FIGURE_ORDER if name in found}
