"""The run's verdict, read from the journal: passed, deviated, failed, aborted or interrupted.

Chaos Toolkit's own status is not enough to trust an exit code: a fault action that failed
does not fail the run, and an SLO that was missed only counts when a tolerance says so. The
verdict here looks at every activity and every SLO result and says why in plain words.

`aborted` is a run its stop condition cut short (`experiments.stop_condition`): it outranks
`failed`, since whatever the method left undone after the breach was left undone on purpose;
those other problems stay in the reasons.
"""

from __future__ import annotations

from typing import Any

RANK = {"passed": 0, "deviated": 1, "failed": 2, "aborted": 3, "interrupted": 4}
HARNESS_ACTION_MODULES = ("experiments.faults", "loadtests.actions")


def _last_line(exception: Any) -> str:
    if isinstance(exception, list) and exception:
        return str(exception[-1]).strip().splitlines()[-1]
    return str(exception or "").strip()


def _probe_runs(journal: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every probe run in the journal with the phase it ran in."""
    out: list[tuple[str, dict[str, Any]]] = []
    for phase in ("before", "after"):
        ss = (journal.get("steady_states") or {}).get(phase) or {}
        out += [(phase, r) for r in ss.get("probes") or []]
    out += [
        ("method", r)
        for r in journal.get("run") or []
        if (r.get("activity") or {}).get("type") == "probe"
    ]
    return out


def is_slo_result(output: Any) -> bool:
    """A probe output that judges: an SLO (`verdict` or `bound_s`) or a named `check` (failover
    time, split brain, linearizability) with a `summary` line."""
    return (
        isinstance(output, dict)
        and "ok" in output
        and ("verdict" in output or "bound_s" in output or "check" in output)
    )


def describe_slo(slo: dict[str, Any]) -> str:
    if "check" in slo:
        return f"{slo['check']}: {slo.get('summary', 'not met' if not slo['ok'] else 'met')}"
    if "bound_s" in slo:
        value = slo.get("value")
        shown = f"{value * 1000:.0f} ms" if isinstance(value, int | float) else "n/a"
        return (
            f"{slo.get('metric', 'latency')} p{round(float(slo.get('quantile', 0)) * 100)} "
            f"{shown} vs bound {float(slo['bound_s']) * 1000:.0f} ms "
            f"(window {slo.get('window', 'all')})"
        )
    sli = slo.get("sli")
    shown = f"{sli * 100:.3f}%" if isinstance(sli, int | float) else "n/a"
    return (
        f"availability {shown} vs target {float(slo.get('target', 0)) * 100:.1f}% "
        f"{slo.get('verdict', '')} ({slo.get('good')}/{slo.get('total')}, "
        f"window {slo.get('window', 'all')}, {slo.get('source', 'client')})"
    )


def reach_verdict(
    journal: dict[str, Any],
    faults: list[dict[str, Any]],
    cleanup_errors: list[str] | None = None,
    aborted_reason: str | None = None,
    stop_condition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    verdict = "passed"
    reasons: list[str] = []

    def worse(level: str, reason: str) -> None:
        nonlocal verdict
        if RANK[level] > RANK[verdict]:
            verdict = level
        reasons.append(reason)

    status = journal.get("status")
    stopped_by = (stop_condition or {}).get("stopped_by")
    if aborted_reason:
        worse("failed", f"aborted before the method: {aborted_reason}")
    elif stopped_by:  # its InterruptExecution is why Chaos Toolkit says "interrupted"
        worse("aborted", str(stopped_by.get("reason") or "stop condition breached"))
    elif status == "interrupted":
        worse("interrupted", "the run was interrupted")
    elif status == "aborted":
        worse("failed", "Chaos Toolkit aborted the run on an unexpected error (see its log)")

    before = (journal.get("steady_states") or {}).get("before")
    if before is not None and not before.get("steady_state_met"):
        bad = [
            r["activity"]["name"]
            for r in before.get("probes") or []
            if r.get("status") != "succeeded" or r.get("tolerance_met") is False
        ]
        worse("failed", f"steady state not met before the method ({', '.join(bad) or 'probes'})")

    for r in journal.get("run") or []:
        activity = r.get("activity") or {}
        module = (activity.get("provider") or {}).get("module", "")
        if r.get("status") == "failed" and module in HARNESS_ACTION_MODULES:
            worse("failed", f"{activity.get('name')}: {_last_line(r.get('exception'))}")

    for phase, r in _probe_runs(journal):
        if r.get("status") == "failed":
            worse(
                "failed",
                f"probe {r['activity'].get('name')} ({phase}) could not measure: "
                f"{_last_line(r.get('exception'))}",
            )

    slos = []
    notes: list[str] = []
    if (stop_condition or {}).get("prometheus_errors"):
        notes.append(
            f"stop condition: {stop_condition['prometheus_errors']} of "
            f"{stop_condition.get('polls')} polls got no answer from Prometheus "
            f"(last: {stop_condition.get('last_prometheus_error')})"
        )
    for phase, r in _probe_runs(journal):
        output = r.get("output")
        if is_slo_result(output):
            slos.append({**output, "probe": r["activity"].get("name"), "phase": phase})
            if not output["ok"] and phase != "before":
                worse("deviated", f"SLO missed: {describe_slo(output)}")
            elif output.get("verdict") == "inconclusive" and phase != "before":
                notes.append(
                    f"inconclusive, too few requests to claim the target: {describe_slo(output)}"
                )

    after = (journal.get("steady_states") or {}).get("after")
    if after is not None and not after.get("steady_state_met"):
        bad = [
            r["activity"]["name"]
            for r in after.get("probes") or []
            if r.get("tolerance_met") is False
        ]
        if bad:
            worse("deviated", f"hypothesis not met after the method ({', '.join(bad)})")

    left = [f for f in faults if f.get("injected_at") and not f.get("removed_at")]
    if left:
        worse("failed", f"{len(left)} fault(s) still active after the run")
    for error in cleanup_errors or []:
        worse("failed", error)
    for f in faults:
        if f.get("error"):
            worse("failed", f"fault {f['kind']} on {', '.join(f['victims'])}: {f['error']}")

    return {"verdict": verdict, "reasons": reasons, "notes": notes, "slos": slos}
