"""The report's "Tasks" section: where the tasks ran before and after a GPU or node failed, how
long each moved task took to serve again, and the recovery figures around it.

Outputs are recognised by their `check`, not by activity names, as in `reports.controlplane`:
the migration probe's report carries `check: "task-migration"` and the section is shown only
when one exists; load balance, RTO, RPO and scale-out checks add their figures to it. The node
and GPU grid is derived from the placements themselves (and the fault's victims), because the
journal holds no inventory of the cluster. Like the rest of the report this reads plain data
only and tolerates any piece being missing or damaged.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reports.charts import FaultSpan, MigrationBar, migration_chart
from reports.formatting import fmt_latency, fmt_number, is_number
from reports.records import fault_label

MIGRATION = "task-migration"
LOAD_BALANCE = "load-balance"
RTO = "rto"
RPO = "rpo"
SCALED_OUT = "scaled-out"
RECOVERY_CHECKS = (LOAD_BALANCE, RTO, RPO, SCALED_OUT)
MAX_CHART_ROWS = 40  # a node of 8 GPUs moves 8 tasks; beyond this the chart stops being read
MAX_NAMED = 8  # task ids listed in one table cell before "+N more"
MAX_MAP_NODES = 16  # beyond this the map shows only the nodes the migration touched
MAX_MAP_GPUS = 16  # a real node has 8; more columns than this come from a damaged report

_WORKER = re.compile(r"^worker-n(\d+)-g(\d+)$")
_NODE = re.compile(r"^node-(\d+)$")


@dataclass(frozen=True)
class Placement:
    """Where one task runs: a node and the GPUs it holds there."""

    node: str
    gpus: tuple[int, ...]

    @classmethod
    def parse(cls, value: Any) -> Placement | None:
        """`{"node", "gpus": [g]}` (or a single `gpu`); None for anything else."""
        if not isinstance(value, Mapping) or not value.get("node"):
            return None
        gpus = value.get("gpus")
        if gpus is None and is_number(value.get("gpu")):
            gpus = [value["gpu"]]
        if not isinstance(gpus, Sequence) or isinstance(gpus, str):
            return None
        indexes = tuple(sorted({int(g) for g in gpus if is_number(g) and g >= 0}))
        return cls(str(value["node"]), indexes)

    def text(self) -> str:
        gpus = "+".join(str(g) for g in self.gpus)
        return f"{self.node} g{gpus}" if gpus else self.node


@dataclass
class TaskOutputs:
    """The outputs of one journal that describe tasks, each with where it was recorded."""

    migrations: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    recovery: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)


def is_migration_output(output: Any) -> bool:
    """The migration probe's report (probes.migration.migration_report)."""
    return isinstance(output, Mapping) and output.get("check") == MIGRATION


def find_task_outputs(journal: Mapping[str, Any]) -> TaskOutputs:
    """Migration and recovery checks from the method and the hypothesis; the verdict control's
    SLO list (which copies every check) only when no activity output holds them."""
    found = TaskOutputs()
    for where, output in _outputs(journal):
        if is_migration_output(output):
            found.migrations.append((where, output))
        elif output.get("check") in RECOVERY_CHECKS:
            found.recovery.append((where, output))
    chaos = _mapping(journal.get("inference_chaos"))
    slos = [s for s in chaos.get("slos") or [] if isinstance(s, Mapping)]
    if not found.migrations:
        found.migrations = [("SLO list", s) for s in slos if is_migration_output(s)]
    if not found.recovery:
        found.recovery = [("SLO list", s) for s in slos if s.get("check") in RECOVERY_CHECKS]
    return found


def tasks_section(journal: Mapping[str, Any]) -> dict[str, Any] | None:
    """Everything the "Tasks" section shows, formatted; None without a migration report."""
    found = find_task_outputs(journal)
    if not found.migrations:
        return None
    chaos = _mapping(journal.get("inference_chaos"))
    faults = [f for f in chaos.get("faults") or [] if isinstance(f, Mapping)]
    many = len(found.migrations) > 1
    migrations = [
        migration_view(output, faults, chart_id=f"migration-{i}" if i else "migration")
        | {"where": where if many else ""}
        for i, (where, output) in enumerate(found.migrations)
    ]
    counts = Counter(output.get("check") for _, output in found.recovery)
    repeated = {check for check, count in counts.items() if count > 1}  # name where each ran
    rows = [
        recovery_row(output, where if output.get("check") in repeated else "")
        for where, output in found.recovery
    ]
    migrations[-1]["figures"].extend(rows)
    return {"migrations": migrations}


def glance_cards(section: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The headline: the slowest migration against its bound, and lost tasks if any."""
    if not section:
        return []
    cards = []
    for view in section["migrations"][:2]:
        cards.append((view["glance_key"], view["glance_value"]))
        if view["lost"]:
            cards.append(("tasks lost", str(len(view["lost"]))))
    return cards


# --- one migration report -----------------------------------------------------------------------


def migration_view(
    output: Mapping[str, Any], faults: Sequence[Mapping[str, Any]] = (), chart_id: str = "migration"
) -> dict[str, Any]:
    """The grids, the chart and the tables of one task-migration report."""
    fault = _mapping(output.get("fault"))
    if not fault and faults:  # an older report without its fault: the run's faults stand in
        fault = {"victims": [v for f in faults for v in f.get("victims") or []]}
    entries = [e for e in output.get("tasks") or [] if isinstance(e, Mapping) and e.get("task")]
    before = _placements(output.get("before"))
    after = _placements(output.get("after"))
    for entry in entries:  # a report that lists moves but not the whole map still draws them
        task = str(entry["task"])
        source, target = Placement.parse(entry.get("from")), Placement.parse(entry.get("to"))
        if source is not None:
            before.setdefault(task, source)
        if target is not None and task not in after:
            after[task] = target
    lost = sorted({str(t) for t in _list(output.get("lost"))}, key=_natural)
    duplicated, duplicate_text = _duplicates(output.get("duplicated"))
    stranded = sorted({str(t) for t in _list(output.get("stranded"))}, key=_natural)
    bound = output.get("bound_s")
    bound = float(bound) if is_number(bound) else None
    victims = [*_list(fault.get("victims")), *_list(fault.get("nodes"))]  # nodes: a node fault
    grid = task_map(before, after, victims, lost=lost, duplicated=duplicated)
    moved = [e for e in entries if e.get("moved") is not False]  # False: it stayed put
    chart, chart_note = _chart(moved, fault, bound, chart_id)
    slowest = output.get("max_migration_s")
    bound_text = f" (bound {fmt_latency(bound)})" if bound is not None else ""
    return {
        "ok": bool(output.get("ok")),
        "pill": "pass" if output.get("ok") else "fail",
        "summary": str(output.get("summary") or ""),
        "fault": fault_label(fault) if fault else "",
        "map": grid,
        "chart_svg": chart,
        "chart_note": chart_note,
        "task_rows": [_task_row(e, fault, bound, stranded) for e in entries],
        "times_note": (
            "Detected, serving and routed are seconds since the fault was injected."
            if is_number(fault.get("injected_at"))
            else "Detected, serving and routed are Unix times: the injection time is unknown."
        ),
        "figures": _figures(output, bound, lost, duplicate_text, stranded),
        "lost": lost,
        "glance_key": f"slowest migration{bound_text}",
        "glance_value": fmt_latency(slowest) if is_number(slowest) else "not recovered",
    }


def victim_gpus(victims: Iterable[Any]) -> tuple[set[tuple[str, int]], set[str], list[str]]:
    """The fault's victims as failed GPUs (`worker-n1-g0` is node-1 GPU 0), failed whole nodes
    (`node-1`), and the rest (store replicas, controllers), which have no cell."""
    gpus: set[tuple[str, int]] = set()
    nodes: set[str] = set()
    others: list[str] = []
    for victim in victims:
        name = str(victim)
        worker, node = _WORKER.match(name), _NODE.match(name)
        if worker:
            gpus.add((f"node-{int(worker.group(1))}", int(worker.group(2))))
        elif node:
            nodes.add(name)
        else:
            others.append(name)
    return gpus, nodes, others


def task_map(
    before: Mapping[str, Placement],
    after: Mapping[str, Placement],
    victims: Iterable[Any] = (),
    *,
    lost: Iterable[str] = (),
    duplicated: Iterable[str] = (),
) -> dict[str, Any]:
    """Rows of nodes, cells of GPUs 0..n-1, for before and after the migration.

    The nodes and n come from the placements and the victims: the journal knows no more of the
    cluster, so a GPU no task and no fault ever touched shows as idle (or not at all).
    """
    failed_gpus, failed_nodes, other_victims = victim_gpus(victims)
    moved = {t for t in before.keys() & after.keys() if before[t] != after[t]}
    lost_set = set(lost) | (before.keys() - after.keys() if after else set())
    duplicated_set = set(duplicated)
    new = after.keys() - before.keys() if before else set()
    used = [(p.node, g) for p in (*before.values(), *after.values()) for g in p.gpus]
    nodes = {n for n, _ in used} | {n for n, _ in failed_gpus} | failed_nodes
    n_gpus = max([g + 1 for _, g in used] + [g + 1 for _, g in failed_gpus] + [1])
    order = sorted(nodes, key=_natural)
    hidden = 0
    if len(order) > MAX_MAP_NODES:  # a large cluster: only where something changed
        changed = moved | lost_set | new | set(duplicated)
        touched = {p.node for t in changed for p in (before.get(t), after.get(t)) if p}
        touched |= {n for n, _ in failed_gpus} | failed_nodes
        kept = sorted(touched, key=_natural)[:MAX_MAP_NODES]
        hidden, order = len(order) - len(kept), kept
    clipped = n_gpus > MAX_MAP_GPUS
    n_gpus = min(n_gpus, MAX_MAP_GPUS)

    def cells(placements: Mapping[str, Placement], phase: str) -> list[dict[str, Any]]:
        on: dict[tuple[str, int], list[str]] = {}
        for task in sorted(placements, key=_natural):
            for gpu in placements[task].gpus:
                on.setdefault((placements[task].node, gpu), []).append(task)
        rows = []
        for node in order:
            row = []
            for gpu in range(n_gpus):
                tasks = on.get((node, gpu), [])
                hit = (node, gpu) in failed_gpus or node in failed_nodes
                row.append(_cell(gpu, tasks, phase, hit, before, after, moved, lost_set, new))
                if len(tasks) > 1:
                    row[-1]["css"] += " conflict"
                if phase == "after" and duplicated_set & set(tasks):
                    row[-1]["css"] += " duplicated"
            victim = node in failed_nodes
            rows.append({"node": node, "note": "failed node" if victim else "", "cells": row})
        return rows

    return {
        "gpus": list(range(n_gpus)),
        "before": cells(before, "before"),
        "after": cells(after, "after"),
        "moved": sorted(moved, key=_natural),
        "new": sorted(new, key=_natural),
        "lost": sorted(lost_set, key=_natural),
        "other_victims": other_victims,
        "empty": not order,
        "hidden_nodes": hidden,
        "clipped_gpus": clipped,
    }


def _cell(
    gpu: int,
    tasks: list[str],
    phase: str,
    hit: bool,
    before: Mapping[str, Placement],
    after: Mapping[str, Placement],
    moved: set[str],
    lost: set[str],
    new: set[str],
) -> dict[str, Any]:
    """One GPU's cell: its tasks, a class per state and a line saying where they went or came
    from, so the grid reads without the table."""
    css = ["gpu"]
    notes = []
    for task in tasks:
        if phase == "before" and task in moved:
            css.append("leaving")
            notes.append(f"→ {after[task].text()}")
        elif phase == "before" and task in lost:
            css.append("lost")
            notes.append("lost")
        elif phase == "after" and task in moved:
            css.append("moved")
            notes.append(f"← {before[task].text()}")
        elif phase == "after" and task in new:
            css.append("new")
            notes.append("new")
    if hit:
        css.append("failed" if phase == "after" else "victim")
        if phase == "after":
            notes.append("failed GPU" if not tasks else "still on a failed GPU")
    if not tasks and not hit:
        css.append("idle")
    title = (
        f"GPU {gpu}: " + (", ".join(tasks) or "idle") + ("; " + "; ".join(notes) if notes else "")
    )
    return {
        "gpu": gpu,
        "tasks": tasks,
        "css": " ".join(dict.fromkeys(css)),
        "note": "; ".join(notes),
        "title": title,
    }


def _chart(
    entries: Sequence[Mapping[str, Any]],
    fault: Mapping[str, Any],
    bound: float | None,
    chart_id: str,
) -> tuple[str, str]:
    """The migration timeline on an axis of seconds since the injection (or the first
    detection when the injection time is unknown)."""
    if not entries:
        return "", "No task moved: there is no migration to draw."
    timed = [e for e in entries if is_number(e.get("detected_at"))]
    if not timed:
        return "", "No moved task has a detection time: there is no migration to draw."
    injected = fault.get("injected_at")
    if is_number(injected):
        zero, xlabel = float(injected), "seconds since the fault was injected"
    else:
        zero = min(float(e["detected_at"]) for e in timed)
        xlabel = "seconds since the first detection (no injection time recorded)"
    spans = []
    if is_number(injected):
        removed = fault.get("removed_at")
        end = float(removed) - zero if is_number(removed) else None
        spans.append(FaultSpan(fault_label(fault), 0.0, end))
    bars = []
    for entry in timed[:MAX_CHART_ROWS]:
        detected = float(entry["detected_at"]) - zero
        target = Placement.parse(entry.get("to"))
        label = f"{entry['task']} → {target.text()}" if target else f"{entry['task']} (not placed)"
        bars.append(
            MigrationBar(
                label=label,
                detected=detected,
                serving=_since(entry.get("serving_at"), zero),
                routed=_since(entry.get("routed_at"), zero),
                bound_at=detected + bound if bound is not None else None,
            )
        )
    note = ""
    if len(timed) > MAX_CHART_ROWS:
        note = f"The chart shows the first {MAX_CHART_ROWS} of {len(timed)} moved tasks."
    return migration_chart(bars, spans, xlabel=xlabel, chart_id=chart_id), note


def _task_row(
    entry: Mapping[str, Any], fault: Mapping[str, Any], bound: float | None, stranded: list[str]
) -> dict[str, Any]:
    """One task of the report: a move is judged by detection to routed against the bound; a
    task that stayed on the victims fails only while it is stranded there."""
    task = str(entry["task"])
    source, target = Placement.parse(entry.get("from")), Placement.parse(entry.get("to"))
    injected = fault.get("injected_at")
    zero = float(injected) if is_number(injected) else None
    from_detection = entry.get("seconds_from_detection")
    stayed = entry.get("moved") is False
    if stayed:
        pill = "fail" if task in stranded else "na"
    elif target is None or not is_number(from_detection):
        pill = "fail"  # not placed, or never routed again
    elif bound is not None:
        pill = "pass" if from_detection <= bound else "fail"
    else:
        pill = "inconclusive"
    to = target.text() if target else "not placed"
    if stayed:
        to = f"stayed on {to}" if target else "not placed"
    moves = entry.get("moves")
    reason = str(entry.get("reason") or "")
    return {
        "task": task,
        "reason": reason,
        "from": source.text() if source else "—",
        "to": to + (f" ({moves} moves)" if is_number(moves) and moves > 1 else ""),
        "detected": _rel(entry.get("detected_at"), zero) or "—",
        "serving": _rel(entry.get("serving_at"), zero) or ("—" if stayed else "never"),
        "routed": _rel(entry.get("routed_at"), zero) or ("—" if stayed else "never"),
        "from_detection": fmt_latency(from_detection),
        "from_fault": fmt_latency(entry.get("seconds_from_fault")),
        "pill": pill,
    }


def _figures(
    output: Mapping[str, Any],
    bound: float | None,
    lost: list[str],
    duplicated: list[str],
    stranded: list[str],
) -> list[dict[str, Any]]:
    detection = output.get("detection_s")
    slowest = output.get("max_migration_s")
    within = f"≤ {fmt_latency(bound)}" if bound is not None else "no bound set"
    rows = [
        _row(
            "migration check",
            "held" if output.get("ok") else "did not hold",
            "every task of the failed capacity routed elsewhere in time, none lost or duplicated",
            "pass" if output.get("ok") else "fail",
            note=str(output.get("summary") or ""),
        ),
        _row(
            "detection",
            fmt_latency(detection) if is_number(detection) else "not detected",
            f"{within} after the injection (the design's target; the check does not judge it)",
            _within(detection, bound),
        ),
        _row(
            "slowest migration",
            fmt_latency(slowest) if is_number(slowest) else "not recovered",
            f"{within} from detection to routed",
            _within(slowest, bound),
        ),
        _row(
            "tasks left on the failed capacity",
            _names(stranded),
            "none while the fault lasts",
            "fail" if stranded else "pass",
        ),
        _row("tasks lost", _names(lost), "none", "fail" if lost else "pass"),
        _row(
            "tasks duplicated",
            "; ".join(duplicated) or "none",
            "no GPU shared, no task routed outside its placement",
            "fail" if duplicated else "pass",
        ),
    ]
    return rows


def recovery_row(output: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """A load-balance, RTO, RPO or scale-out check as one figure row."""
    check = str(output.get("check"))
    suffix = f" ({where})" if where else ""
    verdict = output.get("ok")
    judged = ("pass" if verdict else "fail") if isinstance(verdict, bool) else None
    if check == LOAD_BALANCE:
        value, bound = output.get("max_over_mean_minus_1"), output.get("bound")
        by = f" per {output['by']}" if isinstance(output.get("by"), str) else ""
        return _row(
            f"load balance{by}, max/mean − 1{suffix}",
            _percent(value),
            f"≤ {_percent(bound)}" if is_number(bound) else "no bound set",
            judged or _within(value, bound),
            note=_members(output.get("per_member")),
        )
    if check == RTO:
        value, bound = output.get("rto_s"), output.get("bound_s")
        return _row(
            f"RTO{suffix}",
            fmt_latency(value) if is_number(value) else "not recovered",
            f"≤ {fmt_latency(bound)}" if is_number(bound) else "no bound set",
            judged or _within(value, bound),
            note=str(output.get("summary") or ""),
        )
    if check == RPO:
        value = output.get("rpo_s")
        writes = output.get("lost_writes")
        writes = writes if isinstance(writes, list) else []
        text = fmt_latency(value) if is_number(value) else "—"
        text += f" · {len(writes):,} acknowledged write(s) lost"
        computed = "pass" if value == 0 and not writes else "fail"
        if not is_number(value):
            computed = "inconclusive"
        return _row(
            f"RPO{suffix}",
            text,
            "0: no acknowledged write lost",
            judged or computed,
            note=str(output.get("summary") or ""),
        )
    return _row(
        f"scaled out{suffix}",
        str(output.get("summary") or ("held" if verdict else "did not hold")),
        "new replicas serving",
        judged or "inconclusive",
    )


# --- small helpers --------------------------------------------------------------------------------


def _row(name: str, value: str, expectation: str, pill: str, note: str = "") -> dict[str, Any]:
    """The same row shape as the control plane's figures, so the template lays both out alike."""
    return {"name": name, "value": value, "expectation": expectation, "pill": pill, "note": note}


def _within(value: Any, bound: Any) -> str:
    if not is_number(value):
        return "fail"
    if not is_number(bound):
        return "inconclusive"
    return "pass" if value <= bound else "fail"


def _placements(value: Any) -> dict[str, Placement]:
    placements = {}
    for task, where in _mapping(value).items():
        placement = Placement.parse(where)
        if placement is not None:
            placements[str(task)] = placement
    return placements


def _since(moment: Any, zero: float) -> float | None:
    return float(moment) - zero if is_number(moment) else None


def _rel(moment: Any, zero: float | None) -> str:
    if not is_number(moment):
        return ""
    return f"{float(moment) - zero:+.2f} s" if zero is not None else f"{float(moment):.2f}"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f}%" if is_number(value) else "—"


def _members(per_member: Any) -> str:
    """The busiest members first, so the imbalance the figure speaks of is named."""
    members = _mapping(per_member)
    numeric = {str(k): v for k, v in members.items() if is_number(v)}
    if not numeric:
        return ""
    ranked = sorted(numeric.items(), key=lambda kv: (-kv[1], _natural(kv[0])))
    shown = ", ".join(f"{k} {fmt_number(v)}" for k, v in ranked[:MAX_NAMED])
    more = len(ranked) - MAX_NAMED
    return "per member: " + shown + (f", +{more} more" if more > 0 else "")


def _duplicates(value: Any) -> tuple[list[str], list[str]]:
    """The duplicated task ids, and one line per duplicate. The probe reports two tasks on one
    GPU (`{"gpu", "tasks"}`) or a task routed outside its placement (`{"task", "workers"}`);
    plain task ids are accepted too."""
    tasks: set[str] = set()
    lines = []
    for item in _list(value):
        if isinstance(item, Mapping):
            named = [str(t) for t in _list(item.get("tasks"))]
            if item.get("task") is not None:
                named.append(str(item["task"]))
            tasks.update(named)
            where = item.get("gpu") or ", ".join(str(w) for w in _list(item.get("workers")))
            text = ", ".join(named) or "?"
            text += f" {item['reason']}" if item.get("reason") else ""
            lines.append(text + (f" ({where})" if where else ""))
        else:
            tasks.add(str(item))
            lines.append(str(item))
    return sorted(tasks, key=_natural), lines[:MAX_NAMED] + (
        [f"+{len(lines) - MAX_NAMED} more"] if len(lines) > MAX_NAMED else []
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _names(tasks: Sequence[str]) -> str:
    if not tasks:
        return "none"
    more = len(tasks) - MAX_NAMED
    return ", ".join(tasks[:MAX_NAMED]) + (f" +{more} more" if more > 0 else "")


def _natural(name: str) -> tuple:
    """`node-10` after `node-9`, `task-10` after `task-9`."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


def _outputs(journal: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every mapping output with where it ran: method first, then the hypothesis."""
    groups = [("method", journal.get("run"))]
    states = _mapping(journal.get("steady_states"))
    groups += [
        (f"hypothesis {p}", _mapping(states.get(p)).get("probes")) for p in ("before", "after")
    ]
    found = []
    for where, runs in groups:
        for run in runs or []:
            output = _mapping(run).get("output")
            if isinstance(output, Mapping):
                found.append((where, output))
    return found


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
