"""Task migration probes: after a GPU or node fault, did every task land on healthy capacity,
how fast, and was any task lost or run twice?

The controllers leave everything needed in the metadata store (docs/internals.md, "Tasks and
the controllers"): the desired tasks (`tasks.spec`), the current placements
(`tasks.assignment`), the routing table (`routing.upstreams`) and a log of what they did
(`controller.events`). The assignment *before* the fault is not stored as such; it is the
`after` of the last `assignment` event older than the fault (or the first event's `before`).

The analysis is a pure function over plain dicts (`analyse`), so it is tested without a
cluster; the probes only read the store, wait for the controller to settle, and call it.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from chaoslib.exceptions import ActivityFailed

from resilience.store_client import Store, StoreUnavailable

__all__ = ["migration_report", "task_map", "tasks_serving"]

SPEC_KEY = "tasks.spec"
ASSIGNMENT_KEY = "tasks.assignment"
EVENTS_KEY = "controller.events"
ROUTING_KEY = "routing.upstreams"
SCHEDULE_KEY = "nodes.schedule"
POLL_S = 0.1
NODE_KINDS = ("node-crash", "node-pause", "node-isolate", "node-drain")
_WORKER_NAME = re.compile(r"^worker-n(\d+)-g(\d+)$")

Placement = dict[str, Any]  # {"node": str, "gpus": [int]}
Gpu = tuple[str, int]  # (node, gpu index)


# -- where things are ------------------------------------------------------------------------


def store_for(configuration: Mapping[str, Any] | None, timeout_s: float = 2.0) -> Store:
    """A client of the cluster's store: `configuration["raft_endpoints"]`, else the state file."""
    found: Any = (configuration or {}).get("raft_endpoints")
    if not found:
        from resilience.state import read_state

        found = (read_state() or {}).get("raft_endpoints")
    if isinstance(found, str):
        found = [e for e in found.split(",") if e]
    if not found:
        raise ActivityFailed(
            "no metadata store: set configuration raft_endpoints or start the embedded cluster"
        )
    return Store([str(e) for e in found], timeout_s=timeout_s)


def read_cluster(store: Store) -> dict[str, Any]:
    """What the controllers keep in the store, read once; unreachable is ActivityFailed."""
    try:
        return {
            "spec": store.get(SPEC_KEY),
            "assignment": store.get(ASSIGNMENT_KEY),
            "events": store.get(EVENTS_KEY) or [],
            "routing": store.get(ROUTING_KEY),
        }
    except (StoreUnavailable, ValueError) as exc:
        raise ActivityFailed(f"cannot read the controllers' keys: {exc}") from None


def run_fault(fault_id: str | None = None) -> dict[str, Any]:
    """The run's fault with this id, else the one injected last."""
    from experiments.context import current_run

    run = current_run()
    faults = run.faults() if run is not None else []
    if fault_id is not None:
        for f in faults:
            if f["id"] == fault_id:
                if not f.get("injected_at"):
                    raise ActivityFailed(f"fault {fault_id} was never injected")
                return f
        raise ActivityFailed(f"no fault with id {fault_id!r} in this run")
    injected = [f for f in faults if f.get("injected_at")]
    if not injected:
        raise ActivityFailed("this run has injected no fault yet")
    return max(injected, key=lambda f: f["injected_at"])


def fault_started_at(fault: Mapping[str, Any]) -> float:
    """When the fault began: `injected_at`, or earlier when the backend noted the moment it
    started acting (a drain is written to the store before the ledger marks it injected)."""
    started = (fault.get("details") or {}).get("started_at")
    injected = float(fault["injected_at"])
    return min(injected, float(started)) if started is not None else injected


def worker_location(name: str, labels: Mapping[str, Any] | None = None) -> Gpu | None:
    """(node, gpu) of a worker from its labels, else from its name (`worker-n1-g0`)."""
    labels = labels or {}
    if labels.get("node") is not None and labels.get("gpu") is not None:
        try:
            return str(labels["node"]), int(labels["gpu"])
        except ValueError:
            pass
    m = _WORKER_NAME.match(name)
    return (f"node-{m.group(1)}", int(m.group(2))) if m else None


def known_workers(routing: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Gpu]:
    """Every worker's (node, gpu): the routing table's labels and the state file's."""
    from resilience.state import read_state

    out: dict[str, Gpu] = {}
    for p in (read_state() or {}).get("processes", []):
        if (p.get("labels") or {}).get("role") == "worker":
            where = worker_location(p["name"], p.get("labels"))
            if where:
                out[p["name"]] = where
    for entry in routing or []:
        where = worker_location(entry.get("name", ""), entry.get("labels"))
        if where:
            out[entry["name"]] = where
    return out


# -- pure pieces ------------------------------------------------------------------------------


def spec_task_ids(spec: Mapping[str, Any] | None) -> list[str]:
    return [str(t["id"]) for t in (spec or {}).get("tasks", [])]


def placements(assignment: Mapping[str, Any] | None) -> dict[str, Placement]:
    return dict((assignment or {}).get("placements") or {})


def same_place(a: Placement | None, b: Placement | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.get("node") == b.get("node") and sorted(a.get("gpus", [])) == sorted(b.get("gpus", []))


def gpus_of(placement: Placement | None) -> set[Gpu]:
    if not placement:
        return set()
    return {(str(placement["node"]), int(g)) for g in placement.get("gpus", [])}


def assignment_before(
    events: list[Mapping[str, Any]], at: float, current: Mapping[str, Placement]
) -> tuple[dict[str, Placement], str]:
    """The placements in force just before `at`, and where that came from."""
    assignments = [e for e in events if e.get("kind") == "assignment"]
    earlier = [e for e in assignments if float(e.get("at", 0)) < at]
    if earlier:
        return dict(earlier[-1].get("after") or {}), "assignment event before the fault"
    if assignments:
        return dict(assignments[0].get("before") or {}), "first assignment event's before"
    return dict(current), "current assignment (no assignment event)"


def victim_scope(
    fault: Mapping[str, Any], locations: Mapping[str, Gpu]
) -> tuple[set[str], set[Gpu], set[str]]:
    """(whole nodes, single GPUs, worker names) the fault took away."""
    params = fault.get("params") or {}
    nodes = set(params.get("nodes") or []) if fault.get("kind") in NODE_KINDS else set()
    victims = [str(v) for v in fault.get("victims") or []]
    gpus = {locations[v] for v in victims if v in locations}
    workers = {v for v in victims if v in locations}
    workers |= {w for w, (node, _) in locations.items() if node in nodes}
    return nodes, gpus, workers


def capacity_lost(fault: Mapping[str, Any]) -> bool:
    """Whether the fault takes the victims' GPUs away while it lasts, so their tasks must move.
    An application Xid (13, 31, 94) is remediated in place by a restart, and throttling,
    HBM pressure or a slow network leave the GPU usable: their tasks may stay."""
    kind = fault.get("kind")
    params = fault.get("params") or {}
    if kind in NODE_KINDS or kind in ("pod-kill", "pod-pause"):
        return True
    return (
        kind == "gpu-xid"
        and (params.get("set") or {}).get("healthy") is False
        and params.get("recovery") != "restart"
    )


def _on(placement: Placement | None, nodes: set[str], gpus: set[Gpu]) -> bool:
    return bool(placement) and (placement["node"] in nodes or bool(gpus_of(placement) & gpus))


def routes_by_task(routing: Iterable[Mapping[str, Any]] | None) -> dict[str, list[str]]:
    """The workers the routing table sends each task's traffic to."""
    out: dict[str, list[str]] = defaultdict(list)
    for entry in routing or []:
        task = (entry.get("labels") or {}).get("task")
        if task:
            out[str(task)].append(str(entry["name"]))
    return dict(out)


def duplicates(
    after: Mapping[str, Placement],
    routing: list[Mapping[str, Any]] | None,
    locations: Mapping[str, Gpu],
) -> list[dict[str, Any]]:
    """Two tasks on one GPU, or a task still routed to a worker outside its placement (it runs
    in two places)."""
    found: list[dict[str, Any]] = []
    by_gpu: dict[Gpu, list[str]] = defaultdict(list)
    for task, p in sorted(after.items()):
        for gpu in gpus_of(p):
            by_gpu[gpu].append(task)
    for (node, gpu), tasks in sorted(by_gpu.items()):
        if len(tasks) > 1:
            found.append({"gpu": f"{node}/gpu{gpu}", "tasks": tasks, "reason": "shared GPU"})
    for task, workers in sorted(routes_by_task(routing).items()):
        home = gpus_of(after.get(task))
        elsewhere = sorted(w for w in workers if locations.get(w) not in home)
        if elsewhere and task in after:
            found.append(
                {"task": task, "workers": elsewhere, "reason": "routed outside its placement"}
            )
    return found


def _t(value: Any) -> float | None:
    return None if value is None else float(value)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def analyse(
    fault: Mapping[str, Any],
    cluster: Mapping[str, Any],
    locations: Mapping[str, Gpu],
    bound_s: float = 1.0,
) -> dict[str, Any]:
    """The migration report for one fault from one reading of the store (pure)."""
    t0 = fault_started_at(fault)
    must_move = fault.get("removed_at") is None and capacity_lost(fault)
    events = [e for e in cluster.get("events") or [] if isinstance(e, dict)]
    after = placements(cluster.get("assignment"))
    unplaceable = list((cluster.get("assignment") or {}).get("unplaceable") or [])
    spec_ids = spec_task_ids(cluster.get("spec"))
    before, before_source = assignment_before(events, t0, after)
    nodes, gpus, workers = victim_scope(fault, locations)

    moves: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("kind") == "migration" and float(e.get("assigned_at") or 0) >= t0:
            moves[str(e["task"])].append(e)
    on_victims = sorted(t for t, p in before.items() if _on(p, nodes, gpus))
    changed = sorted(t for t in before if t in after and not same_place(before[t], after[t]))
    migrated = sorted(t for t, es in moves.items() if any(e.get("from") for e in es))
    moved = sorted(set(on_victims) | set(changed) | (set(migrated) & set(before)))
    if spec_ids:  # a task the autoscaler removed is neither moved nor lost
        moved = [t for t in moved if t in spec_ids]

    tasks: list[dict[str, Any]] = []
    unsettled: list[str] = []
    stranded: list[str] = []
    for task in moved:
        history = sorted(moves.get(task, []), key=lambda e: float(e.get("assigned_at") or 0))
        last = history[-1] if history else None
        to = after.get(task)
        landed = last is not None and same_place(last.get("to"), to)
        detected = min(
            (float(e["detected_at"]) for e in history if e.get("detected_at")), default=None
        )
        routed = _t(last.get("routed_at")) if landed else None
        stayed = same_place(before.get(task), to) and not history
        if stayed and _on(to, nodes, gpus) and must_move:
            stranded.append(task)
        if to is not None and not stayed and routed is None:
            unsettled.append(task)
        tasks.append(
            {
                "task": task,
                "from": before.get(task),
                "to": to,
                "on_victims": task in on_victims,
                "moved": not stayed,
                "moves": len(history),
                "reason": last.get("reason") if last else None,
                "detected_at": detected,
                "serving_at": _t(last.get("serving_at")) if landed else None,
                "routed_at": routed,
                "seconds_from_detection": _minus(routed, detected),
                "seconds_from_fault": _minus(routed, t0),
            }
        )

    lost = sorted(t for t in spec_ids if t not in after or t in unplaceable)
    duplicated = duplicates(after, cluster.get("routing"), locations)
    detections = [
        e
        for e in events
        if e.get("kind") == "detected"
        and float(e.get("at") or 0) >= t0
        and (
            e.get("worker") in workers
            or e.get("node") in nodes
            or (e.get("node"), e.get("gpu")) in gpus
        )
    ]
    first_detection = min((float(e["at"]) for e in detections), default=None)
    timed = [t["seconds_from_detection"] for t in tasks if t["seconds_from_detection"] is not None]
    slow = [
        t["task"]
        for t in tasks
        if t["moved"]
        and (t["seconds_from_detection"] is None or t["seconds_from_detection"] > bound_s)
    ]
    settled = not lost and not unsettled and not stranded and all(t in after for t in spec_ids)
    ok = not lost and not duplicated and not slow and not stranded
    report = {
        "ok": ok,
        "check": "task-migration",
        "bound_s": bound_s,
        "settled": settled,
        "fault": {
            "id": fault.get("id"),
            "kind": fault.get("kind"),
            "victims": list(fault.get("victims") or []),
            "nodes": sorted(nodes),
            "injected_at": t0,
            "removed_at": fault.get("removed_at"),
        },
        "tasks": tasks,
        "lost": lost,
        "duplicated": duplicated,
        "stranded": stranded,
        "slow": slow,
        "before": before,
        "before_source": before_source,
        "after": after,
        "detection_s": _minus(first_detection, t0),
        "max_migration_s": max(timed) if timed else None,
        "epoch": (cluster.get("assignment") or {}).get("epoch"),
    }
    report["summary"] = _summary(report)
    return report


def _summary(r: Mapping[str, Any]) -> str:
    where = ", ".join(r["fault"]["nodes"]) or ", ".join(r["fault"]["victims"]) or "the victims"
    moved = [t for t in r["tasks"] if t["moved"]]
    if not r["tasks"]:
        text = f"no task was on {where}"
    else:
        text = f"{len(moved)} of {len(r['tasks'])} task(s) on {where} moved"
        if r["detection_s"] is not None:
            text += f", detected {r['detection_s']:.2f} s after the fault"
        if r["max_migration_s"] is not None:
            text += f", slowest routed {r['max_migration_s']:.2f} s after detection"
        text += f" (bound {r['bound_s']:g} s)"
    problems = []
    if r["slow"]:
        problems.append(f"not routed within the bound: {', '.join(r['slow'])}")
    if r["stranded"]:
        problems.append(f"still on the failed capacity: {', '.join(r['stranded'])}")
    if r["lost"]:
        problems.append(f"lost: {', '.join(r['lost'])}")
    if r["duplicated"]:
        problems.append(f"{len(r['duplicated'])} duplicate placement(s) or route(s)")
    return text + ("; " + "; ".join(problems) if problems else "; none lost, none duplicated")


def serving_state(cluster: Mapping[str, Any]) -> dict[str, Any]:
    """Which tasks of the spec are placed and routed (pure)."""
    spec_ids = spec_task_ids(cluster.get("spec"))
    after = placements(cluster.get("assignment"))
    routes = routes_by_task(cluster.get("routing"))
    not_placed = [t for t in spec_ids if t not in after]
    not_routed = [t for t in spec_ids if not routes.get(t)]
    serving = [t for t in spec_ids if t in after and routes.get(t)]
    ok = bool(spec_ids) and not not_placed and not not_routed
    summary = (
        f"{len(serving)} of {len(spec_ids)} task(s) placed and routed"
        + (f"; not placed: {', '.join(not_placed)}" if not_placed else "")
        + (f"; not routed: {', '.join(not_routed)}" if not_routed else "")
    )
    return {
        "ok": ok,
        "check": "tasks-serving",
        "desired": len(spec_ids),
        "placed": len([t for t in spec_ids if t in after]),
        "serving": len(serving),
        "not_placed": not_placed,
        "not_routed": not_routed,
        "routes": {t: routes.get(t, []) for t in spec_ids},
        "summary": summary,
    }


# -- probes -----------------------------------------------------------------------------------


def migration_report(
    bound_s: float = 1.0,
    fault_id: str | None = None,
    settle_s: float = 10.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Wait up to `settle_s` for the controller to settle after the run's latest fault (or
    `fault_id`), then judge: every task that was on the victims moved to healthy capacity and
    serves through the gateway within `bound_s` of its detection, none lost, none duplicated."""
    bound_s, settle_s = float(bound_s), float(settle_s)  # "${var}" may arrive as text
    fault = run_fault(fault_id)
    store = store_for(configuration)
    deadline = time.monotonic() + max(0.0, settle_s)
    while True:
        cluster = read_cluster(store)
        if cluster["spec"] is None:
            raise ActivityFailed("no tasks.spec in the store: the cluster runs no controllers")
        report = analyse(fault, cluster, known_workers(cluster["routing"]), bound_s)
        if (report["settled"] and not report["duplicated"]) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    if not report["settled"]:
        report["summary"] += f"; not settled {settle_s:g} s after the check began"
    return report


def task_map(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The current assignment: which task runs where, by task and by node."""
    store = store_for(configuration)
    try:
        assignment = store.get(ASSIGNMENT_KEY)
    except (StoreUnavailable, ValueError) as exc:
        raise ActivityFailed(f"cannot read {ASSIGNMENT_KEY}: {exc}") from None
    if assignment is None:
        raise ActivityFailed(
            f"no {ASSIGNMENT_KEY} in the store: no controller placed tasks (start with --tasks N)"
        )
    where = placements(assignment)
    by_node: dict[str, list[str]] = defaultdict(list)
    for task, p in sorted(where.items()):
        by_node[p["node"]].append(task)
    return {
        "epoch": assignment.get("epoch"),
        "leader": assignment.get("leader"),
        "at": assignment.get("at"),
        "tasks": len(where),
        "placements": where,
        "unplaceable": list(assignment.get("unplaceable") or []),
        "by_node": dict(by_node),
    }


def tasks_serving(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every task of the spec is placed and the routing table sends traffic to it."""
    cluster = read_cluster(store_for(configuration))
    if cluster["spec"] is None:
        raise ActivityFailed("no tasks.spec in the store: the cluster runs no controllers")
    return serving_state(cluster)
