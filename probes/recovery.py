"""Recovery objectives of a failover (a zone lost): RTO from the clients' side, RPO from the
store's history.

RTO is what the users and the operators both agree on: the time from the fault until every
task serves again (the controllers' migration events) *and* the requests the clients sent are
back at the availability target, in windows of `window_s` seconds sustained for a few windows,
so one lucky window between failures does not count as recovered.

RPO is proved from a recorded client history (`probes.raft.actions.start_history`), not
assumed: every write the store acknowledged before the fault must still be visible to the
reads made after it. A read that returns an older value, or nothing, with no later write or
delete that could explain it, means acknowledged data was lost; RPO is then the age of the
oldest lost write at the fault. The seed promised RPO = 0; this is how we show it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ActivityFailed

from probes.migration import (
    analyse,
    fault_started_at,
    known_workers,
    read_cluster,
    run_fault,
    store_for,
)
from probes.slo import read_record_lines

__all__ = ["recovery_time", "data_loss"]

WRITES = ("write", "cas", "delete")


# -- RTO --------------------------------------------------------------------------------------


def availability_windows(
    records: Sequence[Mapping[str, Any]], start: float, window_s: float
) -> list[dict[str, Any]]:
    """Consecutive windows [start + k*w, start + (k+1)*w) up to the last send, each with its
    good and total requests (a request belongs to the window it was sent in)."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    sent = [float(r["sent_at"]) for r in records if float(r["sent_at"]) >= start]
    if not sent:
        return []
    count = int(math.floor((max(sent) - start) / window_s)) + 1
    good = [0] * count
    total = [0] * count
    for r in records:
        t = float(r["sent_at"])
        if t < start:
            continue
        k = int((t - start) // window_s)
        total[k] += 1
        good[k] += bool(r.get("ok"))
    return [
        {
            "start": start + k * window_s,
            "end": start + (k + 1) * window_s,
            "good": good[k],
            "total": total[k],
            "availability": good[k] / total[k] if total[k] else None,
        }
        for k in range(count)
    ]


def recovered_at(
    windows: Sequence[Mapping[str, Any]],
    not_before: float,
    target: float,
    sustain_windows: int = 3,
) -> float | None:
    """End of the first window ending at or after `not_before` whose availability and that of
    the next `sustain_windows - 1` windows with requests meet the target (windows without
    requests prove nothing and are skipped); None when the clients never got back."""
    measured = [w for w in windows if w["total"]]
    for i, w in enumerate(measured):
        if w["end"] < not_before:
            continue
        run = measured[i : i + max(1, sustain_windows)]
        if all(x["availability"] >= target for x in run):
            return float(w["end"])
    return None


def tasks_back_at(migration: Mapping[str, Any]) -> float | None:
    """When the last moved task was routed again (the fault's start when none had to move);
    None while a task still does not serve."""
    if not migration["settled"]:
        return None
    routed = [t["routed_at"] for t in migration["tasks"] if t["moved"]]
    if any(r is None for r in routed):
        return None
    return max(routed, default=migration["fault"]["injected_at"])


def judge_rto(
    fault_at: float,
    tasks_at: float | None,
    windows: Sequence[Mapping[str, Any]],
    bound_s: float,
    target: float,
    sustain_windows: int = 3,
) -> dict[str, Any]:
    """The judged RTO from the tasks' return and the clients' windows (pure)."""
    clients_at = (
        recovered_at(windows, tasks_at, target, sustain_windows) if tasks_at is not None else None
    )
    rto = None if clients_at is None else round(clients_at - fault_at, 3)
    ok = rto is not None and rto <= bound_s
    worst = min((w for w in windows if w["total"]), key=lambda w: w["availability"], default=None)
    if rto is not None:
        summary = f"RTO {rto:.2f} s (bound {bound_s:g} s)"
    elif tasks_at is None:
        summary = f"not recovered: not every task serves again (bound {bound_s:g} s)"
    else:
        summary = (
            f"not recovered: client availability never held {target:.3%} for {sustain_windows} "
            f"window(s) after the tasks came back (bound {bound_s:g} s)"
        )
    if tasks_at is not None:
        summary += f"; tasks serving again {tasks_at - fault_at:.2f} s after the fault"
    if worst is not None:
        summary += f"; worst window {worst['availability']:.1%} ({worst['good']}/{worst['total']})"
    return {
        "ok": ok,
        "check": "rto",
        "rto_s": rto,
        "bound_s": bound_s,
        "availability_target": target,
        "sustain_windows": sustain_windows,
        "tasks_serving_s": None if tasks_at is None else round(tasks_at - fault_at, 3),
        "clients_recovered_s": rto,
        "windows": list(windows),
        "summary": summary,
    }


def records_path_for(records_path: str | None, configuration: Mapping[str, Any] | None) -> Path:
    """The run's load records: the argument, configuration `records_path`, the run's own, or
    the file of the load this process started."""
    if records_path:
        return Path(records_path)
    configured = (configuration or {}).get("records_path")
    if configured:
        return Path(configured)
    from experiments.context import current_run

    run = current_run()
    if run is not None and run.records_path.exists():
        return run.records_path
    from loadtests.actions import current_run as current_load

    load = current_load()
    if load is not None:
        return Path(load.records_path)
    raise ActivityFailed("no load records: pass records_path or set configuration records_path")


def recovery_time(
    bound_s: float = 120,
    availability_target: float = 0.999,
    window_s: float = 2.0,
    sustain_windows: int = 3,
    fault_id: str | None = None,
    records_path: str | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """RTO of the run's latest fault (or `fault_id`): from its injection to the end of the
    first `window_s` window, once every task serves again, from which the clients' availability
    holds `availability_target` for `sustain_windows` windows. ok when RTO <= `bound_s`."""
    try:  # "${var}" may arrive as text
        bound_s, availability_target = float(bound_s), float(availability_target)
        window_s, sustain_windows = float(window_s), int(sustain_windows)
    except (TypeError, ValueError) as exc:
        raise ActivityFailed(f"recovery_time: {exc}") from None
    if not 0 < availability_target <= 1:
        raise ActivityFailed(
            f"availability_target must be within (0, 1], got {availability_target}"
        )
    if window_s <= 0:
        raise ActivityFailed(f"window_s must be positive, got {window_s}")
    fault = run_fault(fault_id)
    t0 = fault_started_at(fault)
    cluster = read_cluster(store_for(configuration))
    if cluster["spec"] is None:
        migration = None
        tasks_at: float | None = t0  # no controllers, no tasks to wait for
    else:
        migration = analyse(fault, cluster, known_workers(cluster["routing"]))
        tasks_at = tasks_back_at(migration)
    path = records_path_for(records_path, configuration)
    records, _ = read_record_lines(path)
    windows = availability_windows(records, t0, window_s)
    if not windows:
        raise ActivityFailed(f"no load record at {path} was sent after the fault at {t0:.3f}")
    result = judge_rto(t0, tasks_at, windows, bound_s, availability_target, sustain_windows)
    result.update(
        fault={"id": fault["id"], "kind": fault["kind"], "victims": fault["victims"]},
        fault_at=t0,
        window_s=window_s,
        records_path=str(path),
        migration_summary=migration["summary"] if migration else "no controllers",
    )
    return result


# -- RPO --------------------------------------------------------------------------------------


def _written_value(op: Mapping[str, Any]) -> Any:
    if op["op"] == "write":
        return op["input"]
    if op["op"] == "cas":
        return (op["input"] or {}).get("value")
    return None  # delete


def _may_have_written(op: Mapping[str, Any]) -> bool:
    """A write that took effect or may have: ok or unknown, and a CAS that did not fail."""
    if op["op"] not in WRITES or op["status"] == "fail":
        return False
    return not (op["op"] == "cas" and op["status"] == "ok" and op["output"] is not True)


def find_lost_writes(ops: Sequence[Mapping[str, Any]], fault_at: float) -> dict[str, Any]:
    """Acknowledged writes before `fault_at` that reads after it no longer see (pure; times on
    the history's own clock).

    Per key, the acknowledged writes are those that returned ok before the fault; the latest
    of them are those no other acknowledged write began after (concurrent ones are all
    candidates). A read called after the fault may return one of those, or the value of a
    write that was not acknowledged before the fault and began before the read ended (it may
    have landed later). Anything else is lost data: every acknowledged write that began after
    the one the read returned (all of them when it returned absent and none was a delete).
    """
    by_key: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for op in ops:
        by_key[str(op["key"])].append(op)
    lost: list[dict[str, Any]] = []
    acknowledged_total = 0
    verified: list[str] = []
    unverified: list[str] = []
    for key, key_ops in sorted(by_key.items()):
        acked = [
            o
            for o in key_ops
            if _may_have_written(o)
            and o["status"] == "ok"
            and o["return"] is not None
            and o["return"] < fault_at
        ]
        if not acked:
            continue
        acknowledged_total += len(acked)
        latest = [w for w in acked if not any(o["call"] > w["return"] for o in acked)]
        acked_ids = {id(o) for o in acked}
        later = [o for o in key_ops if _may_have_written(o) and id(o) not in acked_ids]
        reads = sorted(
            (
                o
                for o in key_ops
                if o["op"] == "read" and o["status"] == "ok" and o["call"] >= fault_at
            ),
            key=lambda o: o["call"],
        )
        if not reads:
            unverified.append(key)
            continue
        verified.append(key)
        for read in reads:
            allowed = [_written_value(w) for w in latest]
            allowed += [_written_value(w) for w in later if w["call"] < read["return"]]
            if read["output"] in allowed:
                continue
            seen = [w for w in acked if _written_value(w) == read["output"]]
            newest_seen = max(seen, key=lambda w: w["return"]) if seen else None
            gone = [w for w in acked if newest_seen is None or w["call"] > newest_seen["return"]]
            gone = gone or latest
            lost.append(
                {
                    "key": key,
                    "read_at": read["call"],
                    "read_value": read["output"],
                    "expected": [_written_value(w) for w in latest],
                    "lost": [
                        {"value": _written_value(w), "op": w["op"], "acknowledged_at": w["return"]}
                        for w in sorted(gone, key=lambda w: w["return"])
                    ],
                    "oldest_lost_at": min(w["return"] for w in gone),
                }
            )
            break
    oldest = min((entry["oldest_lost_at"] for entry in lost), default=None)
    return {
        "lost_writes": lost,
        "rpo_s": 0.0 if oldest is None else round(fault_at - oldest, 4),
        "acknowledged_before_fault": acknowledged_total,
        "verified_keys": verified,
        "unverified_keys": unverified,
    }


def latest_history(configuration: Mapping[str, Any] | None) -> Path:
    """The newest history file the run recorded (`raft-history*.jsonl` in the run's folder, or
    in the recorder's temporary folder when the run set none)."""
    from experiments.context import current_run
    from probes.raft import actions as raft_actions

    folders = [(configuration or {}).get("run_dir")]
    run = current_run()
    folders += [run.out_dir if run is not None else None, raft_actions._temp_dir]
    found = [p for folder in folders if folder for p in Path(folder).glob("raft-history*.jsonl")]
    if not found:
        raise ActivityFailed(
            "no recorded history: call probes.raft.actions start_history before the fault "
            "(or pass history_path)"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def read_history(path: Path) -> tuple[list[dict[str, Any]], float]:
    """The operations of a history file and its offset from the history's clock to Unix time."""
    from probes.raft.history import meta_path_for

    try:
        meta = json.loads(meta_path_for(path).read_text(encoding="utf-8"))
        offset = float(meta["wall_offset_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ActivityFailed(
            f"no usable clock offset for {path} in its .meta.json: {exc}"
        ) from None
    ops = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ActivityFailed(f"cannot read the history {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ops.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                continue  # the recorder was cut mid-line
            raise ActivityFailed(f"corrupt history line {path}:{number}") from None
    return ops, offset


def data_loss(
    history_path: str | None = None,
    fault_id: str | None = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """RPO of the run's latest fault (or `fault_id`) from the recorded store history: every
    write acknowledged before the fault must be visible to the reads after it."""
    fault = run_fault(fault_id)
    path = Path(history_path) if history_path else latest_history(configuration)
    ops, offset = read_history(path)
    fault_wall = fault_started_at(fault)
    found = find_lost_writes(ops, fault_wall - offset)
    if not found["acknowledged_before_fault"]:
        raise ActivityFailed(
            f"{path}: no write was acknowledged before the fault: nothing to prove"
        )
    if not found["verified_keys"]:
        raise ActivityFailed(
            f"{path}: no successful read after the fault, so no acknowledged write was checked"
        )
    for entry in found["lost_writes"]:  # to Unix time, like every other timeline of the run
        entry["read_at"] += offset
        entry["oldest_lost_at"] += offset
        for w in entry["lost"]:
            w["acknowledged_at"] += offset
    lost = found["lost_writes"]
    ok = found["rpo_s"] == 0 and not lost
    summary = (
        f"RPO 0: all {found['acknowledged_before_fault']} writes acknowledged before the fault "
        f"are visible after it ({len(found['verified_keys'])} key(s) read back)"
        if ok
        else f"RPO {found['rpo_s']:.3f} s: {len(lost)} key(s) lost acknowledged writes "
        f"({', '.join(e['key'] for e in lost)})"
    )
    if found["unverified_keys"]:
        summary += f"; {len(found['unverified_keys'])} key(s) never read after the fault"
    return {
        "ok": ok,
        "check": "rpo",
        "summary": summary,
        "fault": {"id": fault["id"], "kind": fault["kind"], "injected_at": fault_wall},
        "history_path": str(path),
        **found,
    }
