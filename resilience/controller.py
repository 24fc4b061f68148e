"""The recovery controller: detects failed GPUs and nodes, moves their tasks, heals and scales.

Several instances run; leader election through the metadata store (`resilience.election`) lets
exactly one act. Everything the leader decides from lives in the store (the desired tasks, the
assignment, cordons, the autoscale policy), so a new leader picks up where the old one stopped
(docs/internals.md "Tasks and the controllers"). The decisions themselves are pure functions
(`resilience.detector`, `resilience.placement`, `resilience.autoscale`); this module does the
I/O around them:

- probe every worker's health (a heartbeat) and DCGM metrics, feed the detector;
- reconcile: place the tasks on healthy capacity, load every moved task on its target, publish
  the routing table once the targets serve (make-before-break), unload the sources;
- remediate: restart a worker after an application Xid (how: `resilience.remediation`, the
  supervisor or a pod deletion on Kubernetes), cordon a node after a fatal one;
- scale the number of tasks to the demand the gateway sees, when a policy asks for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from resilience import state as state_mod
from resilience.autoscale import AutoscaleConfig, Autoscaler
from resilience.detector import FATAL_XIDS, Detection, Detector, DetectorConfig, Probe
from resilience.election import ElectionConfig, LeaderElection
from resilience.jsonconfig import dataclass_from_json
from resilience.placement import Assignment, Node, Placement, Task, diff, place
from resilience.remediation import KubernetesRemediation, Remediation, SupervisorRemediation
from resilience.routing_table import ROUTING_KEY
from resilience.store_client import AsyncStore, StoreUnavailable, encode

log = logging.getLogger("resilience.controller")

SPEC_KEY = "tasks.spec"
ASSIGNMENT_KEY = "tasks.assignment"
SCHEDULE_KEY = "nodes.schedule"
POLICY_KEY = "autoscale.policy"
EVENTS_KEY = "controller.events"
MAX_EVENTS = 500
XID_LINE = re.compile(r"^DCGM_FI_DEV_XID_ERRORS\{[^}]*\}\s+([0-9.eE+-]+)", re.MULTILINE)
BUSY_LINE = re.compile(
    r"^vllm:num_requests_(?:running|waiting)\{[^}]*\}\s+([0-9.eE+-]+)", re.MULTILINE
)
REQUESTS_LINE = re.compile(r"^gateway_requests_total\{[^}]*\}\s+([0-9.eE+-]+)", re.MULTILINE)


@dataclass
class ControllerConfig:
    probe_interval_s: float = 0.2
    probe_timeout_s: float = 0.3
    metrics_interval_s: float = 0.5
    heartbeat_timeout_s: float = 0.75
    task_check_interval_s: float = 1.0
    load_timeout_s: float = 5.0
    reconcile_interval_s: float = 0.25
    lease_ttl_s: float = 1.0
    model_load_s: float | None = None  # None: the worker's own default
    restart_grace_s: float = 5.0
    restart_drain_s: float = 2.0  # in-flight streams get this long to finish before a restart
    autoscale_interval_s: float = 1.0
    autoscale_add_nodes: bool = True


@dataclass
class WorkerRef:
    name: str
    node: str
    gpu: int
    url: str
    link_url: str
    zone: str = ""


@dataclass
class ClusterMap:
    """cluster.json: which workers exist, where, and how to reach them."""

    nodes: dict[str, int] = field(default_factory=dict)  # node -> GPU count
    workers: dict[tuple[str, int], WorkerRef] = field(default_factory=dict)
    initial_nodes: set[str] = field(default_factory=set)
    zones: dict[str, str] = field(default_factory=dict)  # node -> zone

    @classmethod
    def load(cls, path: Path) -> ClusterMap:
        data = json.loads(path.read_text())
        out = cls()
        for node, info in data.get("nodes", {}).items():
            out.nodes[node] = int(info["gpus"])
            out.zones[node] = str(info.get("zone", ""))
            if info.get("initial", True):
                out.initial_nodes.add(node)
            for gpu, w in info.get("workers", {}).items():
                ref = WorkerRef(
                    w["name"], node, int(gpu), w["url"], w["link_url"], info.get("zone", "")
                )
                out.workers[(node, int(gpu))] = ref
        return out

    def by_name(self) -> dict[str, WorkerRef]:
        return {w.name: w for w in self.workers.values()}


class Metrics:
    def __init__(self) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=False)
        self.is_leader = Gauge("controller_is_leader", "1 while this instance leads.", registry=reg)
        self.migrations = Counter(
            "controller_migrations_total", "Tasks moved to another GPU.", registry=reg
        )
        self.detections = Counter(
            "controller_detections_total", "GPU failures detected.", ["reason"], registry=reg
        )
        self.migration_seconds = Histogram(
            "controller_migration_seconds",
            "From detection to the task serving through the gateway.",
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0),
            registry=reg,
        )
        self.tasks = Gauge("controller_tasks", "Tasks by state.", ["state"], registry=reg)
        self.remediations = Counter(
            "controller_remediations_total", "Automatic repairs.", ["action"], registry=reg
        )
        self.desired = Gauge(
            "controller_desired_replicas", "Tasks the spec asks for.", registry=reg
        )


def _placement_json(p: Placement | None) -> dict[str, Any] | None:
    return None if p is None else p.to_json()


class Controller:
    def __init__(
        self,
        identity: str,
        config: ControllerConfig,
        store_endpoints: list[str],
        remediation: Remediation,
        cluster_path: Path,
        initial_tasks: int,
        task_gpus: int,
    ) -> None:
        self.identity = identity
        self.config = config
        self.store_endpoints = store_endpoints
        self.remediation = remediation
        self.cluster_path = cluster_path
        self.initial_tasks = initial_tasks
        self.task_gpus = task_gpus
        self.metrics = Metrics()
        self.cluster = ClusterMap()
        self._cluster_mtime = 0.0
        self.detector = Detector(DetectorConfig(heartbeat_timeout_s=config.heartbeat_timeout_s))
        self.session: aiohttp.ClientSession | None = None
        self.store: AsyncStore | None = None
        self.election: LeaderElection | None = None
        # what the leader knows; reset on every election
        self.assignment_raw: str | None = None
        self.assignment = Assignment()
        self.epoch = 0
        self.task_state: dict[str, str] = {}  # worker -> idle/loading/serving/<task id> serving
        self.worker_task: dict[str, str | None] = {}  # worker -> task it reported
        self.detected_at: dict[str, tuple[float, str]] = {}  # worker -> (when, reason)
        self.routed_raw: str | None = None
        self.settled = False
        self.cordoned: set[str] = set()
        self.qps_samples: list[tuple[float, float]] = []
        self._last_requests: tuple[float, float] | None = None
        self._wake = asyncio.Event()
        self._last_metrics_at: dict[str, float] = {}
        self._last_xid: dict[str, int] = {}
        self._last_task_check = 0.0
        self._adding_node = False
        self._background: set[asyncio.Task[None]] = set()
        self._unreported: list[Detection] = []  # seen while standing by
        self.restarting: set[str] = set()  # workers being drained and restarted right now
        self.unavailable: set[str] = set()  # scale actions the platform cannot do: asked once

    # -- helpers ----------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        return self.election is not None and self.election.is_leader

    def _reload_cluster(self) -> None:
        try:
            mtime = self.cluster_path.stat().st_mtime
        except OSError:
            return
        if mtime != self._cluster_mtime:
            self.cluster = ClusterMap.load(self.cluster_path)
            self._cluster_mtime = mtime

    async def _http(
        self, method: str, url: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        assert self.session is not None
        t = aiohttp.ClientTimeout(total=timeout or self.config.probe_timeout_s)
        async with self.session.request(method, url, json=body, timeout=t) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, text

    async def _emit(self, *events: dict[str, Any]) -> None:
        """Append events to the store's bounded list (CAS append; a lost race retries)."""
        assert self.store is not None
        for _ in range(10):
            raw = await self.store.get_raw(EVENTS_KEY)
            current = json.loads(raw) if raw else []
            new = (current + list(events))[-MAX_EVENTS:]
            ok, _ = await self.store.cas(EVENTS_KEY, raw, new)
            if ok:
                return

    # -- probing ----------------------------------------------------------------------------
    async def probe_loop(self) -> None:
        """Every instance probes (a hot standby): when the leader dies with the GPUs it was
        watching, as in a zone failure, the new leader already knows what failed and when."""
        while True:
            self._reload_cluster()
            workers = list(self.cluster.workers.values())
            results = await asyncio.gather(*(self._probe(w) for w in workers))
            detections = [d for d in results if d is not None]
            detections += self.detector.tick(time.time())
            try:
                if self.leading and self._unreported:
                    await self._report_standby_detections()
                if detections and self.leading:
                    await self._handle_detections(detections)
                elif detections:
                    self._unreported = (self._unreported + detections)[-200:]
            except StoreUnavailable as exc:  # acted on, not yet recorded: try again next round
                log.warning("detections kept for the next round: %s", exc)
                self._unreported = (self._unreported + detections)[-200:]
            except Exception:  # a bug must not stop the probing: log it and go on
                log.exception("handling detections failed")
            await asyncio.sleep(self.config.probe_interval_s)

    async def _report_standby_detections(self) -> None:
        """On election: act on what this instance saw as a standby and still holds."""
        pending = [
            d
            for d in self._unreported
            if d.state != "recovered" and self.detector.state(d.worker) == d.state
        ]
        self._unreported = []
        latest: dict[str, Detection] = {}
        for d in pending:
            latest[d.worker] = d
        if latest:
            await self._handle_detections(list(latest.values()))

    async def _probe(self, w: WorkerRef) -> Detection | None:
        now = time.time()
        try:
            status, _ = await self._http("GET", f"{w.url}/health")
            outcome = "ok" if status == 200 else "unhealthy"
        except aiohttp.ClientConnectorError:
            outcome = "refused"
        except (TimeoutError, aiohttp.ClientError):
            outcome = "timeout"
        xid = 0
        due = now - self._last_metrics_at.get(w.name, 0.0) >= self.config.metrics_interval_s
        if outcome != "refused" and (outcome != "ok" or due):
            xid = await self._read_xid(w)
            self._last_metrics_at[w.name] = now
        elif outcome == "ok":
            xid = self._last_xid.get(w.name, 0)
        self._last_xid[w.name] = xid
        return self.detector.observe(Probe(w.name, now, outcome, xid))

    async def _read_xid(self, w: WorkerRef) -> int:
        """The last Xid dcgm-exporter's field holds (0: none); read from the worker's metrics."""
        assert self.session is not None
        try:
            async with self.session.get(
                f"{w.url}/metrics", timeout=aiohttp.ClientTimeout(total=self.config.probe_timeout_s)
            ) as r:
                text = await r.text()
        except (TimeoutError, aiohttp.ClientError):
            return self._last_xid.get(w.name, 0)
        match = XID_LINE.search(text)
        return int(float(match.group(1))) if match else 0

    async def _handle_detections(self, detections: list[Detection]) -> None:
        events = []
        by_name = self.cluster.by_name()
        for d in detections:
            w = by_name.get(d.worker)
            base = {
                "at": d.at,
                "worker": d.worker,
                "node": w.node if w else None,
                "gpu": w.gpu if w else None,
                "reason": d.reason,
                "xid": d.xid,
            }
            if d.state == "recovered":
                log.info("%s recovered", d.worker)
                self.detected_at.pop(d.worker, None)
                events.append({"kind": "recovered", **base})
                continue
            self.metrics.detections.labels(d.reason).inc()
            log.info("detected %s: %s (%s)", d.worker, d.state, d.reason)
            events.append({"kind": "detected", **base})
            if d.state == "app_fault":
                task = asyncio.create_task(self._restart(d))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            else:
                self.detected_at[d.worker] = (d.at, d.reason)
                if d.xid in FATAL_XIDS and w is not None:
                    events.append(await self._cordon(w.node, f"xid {d.xid} on {d.worker}"))
        await self._emit(*events)
        self._wake.set()

    # -- remediation ------------------------------------------------------------------------
    async def _restart(self, d: Detection) -> None:
        """An application Xid: the CUDA context is gone, the process must go (the GPU is fine).

        As a pod's graceful termination does: out of the routing table first, then the streams
        still running finish (up to `restart_drain_s`), then the restart. Only the requests the
        fault itself broke are lost, none the repair would."""
        w = self.cluster.by_name().get(d.worker)
        drain = self.config.restart_drain_s
        self.detector.remediating(d.worker, time.time() + drain + self.config.restart_grace_s)
        self.task_state[d.worker] = "restarting"
        self.restarting.add(d.worker)
        drained = None
        try:
            await self._publish_routing()
            if w is not None:
                drained = await self._wait_idle(w, drain)
        except StoreUnavailable as exc:
            log.warning("could not take %s out of the routing table: %s", d.worker, exc)
        outcome = await self.remediation.restart_worker(d.worker)
        ok = outcome.ok
        self.restarting.discard(d.worker)
        log.info("restarted %s (drained: %s, ok: %s)", d.worker, drained, ok)
        self.metrics.remediations.labels("restart").inc()
        await self._emit(
            {
                "kind": "remediation",
                "at": time.time(),
                "detected_at": d.at,
                "worker": d.worker,
                "action": "restart",
                "reason": d.reason,
                "drained": drained,
                "ok": ok,
                "detail": outcome.detail if not ok else None,
            }
        )
        self._last_task_check = 0.0  # reload its task as soon as it is back
        self._wake.set()

    async def _wait_idle(self, w: WorkerRef, limit_s: float) -> bool:
        """True once the worker runs and queues no request (vLLM's gauges), within the limit."""
        assert self.session is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                async with self.session.get(
                    f"{w.url}/metrics", timeout=aiohttp.ClientTimeout(total=0.5)
                ) as r:
                    text = await r.text()
            except (TimeoutError, aiohttp.ClientError):
                return False
            busy = sum(float(v) for v in BUSY_LINE.findall(text))
            if busy == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _cordon(self, node: str, reason: str) -> dict[str, Any]:
        assert self.store is not None
        now = time.time()
        for _ in range(10):
            raw = await self.store.get_raw(SCHEDULE_KEY)
            schedule = json.loads(raw) if raw else {}
            entry = schedule.get(node) or {}
            if entry.get("cordoned"):
                break
            schedule[node] = {"cordoned": True, "draining": False, "reason": reason, "at": now}
            ok, _ = await self.store.cas(SCHEDULE_KEY, raw, schedule)
            if ok:
                break
        self.metrics.remediations.labels("cordon").inc()
        return {
            "kind": "remediation",
            "at": now,
            "node": node,
            "action": "cordon",
            "reason": reason,
        }

    async def _cordon_late_fatal_xids(self, failed: set[str]) -> None:
        """A GPU that failed first by silence and shows a fatal Xid later still cordons its
        node (the detector reports a failure once, by its first reason)."""
        by_name = self.cluster.by_name()
        for name in sorted(failed):
            w = by_name.get(name)
            xid = self._last_xid.get(name, 0)
            if w is not None and xid in FATAL_XIDS and w.node not in self.cordoned:
                event = await self._cordon(w.node, f"xid {xid} on {name}")
                self.cordoned.add(w.node)
                await self._emit(event)

    async def _uncordon_repaired(self, schedule: dict[str, Any], raw: str | None) -> None:
        """A node cordoned for a fatal Xid is schedulable again once all its GPUs are back."""
        assert self.store is not None
        repaired = [
            node
            for node, entry in schedule.items()
            if entry.get("reason", "").startswith("xid")
            and not entry.get("draining")
            and node in self.cluster.nodes
            and all(
                self.detector.state(w.name) == "healthy" and self._last_xid.get(w.name, 0) == 0
                for w in self.cluster.workers.values()
                if w.node == node
            )
        ]
        if not repaired:
            return
        new = {k: v for k, v in schedule.items() if k not in repaired}
        ok, _ = await self.store.cas(SCHEDULE_KEY, raw, new)
        if ok:
            self.metrics.remediations.labels("uncordon").inc()
            await self._emit(
                *(
                    {"kind": "remediation", "at": time.time(), "node": n, "action": "uncordon",
                     "reason": "every GPU healthy again"}
                    for n in repaired
                )
            )  # fmt: skip

    # -- reconcile --------------------------------------------------------------------------
    async def on_elected(self) -> None:
        assert self.store is not None
        self.metrics.is_leader.set(1)
        self.assignment_raw = await self.store.get_raw(ASSIGNMENT_KEY)
        if self.assignment_raw:
            data = json.loads(self.assignment_raw)
            self.assignment = Assignment.from_json(data)
            self.epoch = int(data.get("epoch", 0))
        else:
            self.assignment, self.epoch = Assignment(), 0
        if await self.store.get_raw(SPEC_KEY) is None and self.initial_tasks:
            spec = {"tasks": [{"id": f"task-{i}", "gpus": self.task_gpus}
                              for i in range(self.initial_tasks)]}  # fmt: skip
            await self.store.cas(SPEC_KEY, None, spec)
        self.routed_raw = await self.store.get_raw(ROUTING_KEY)
        self.task_state.clear()
        self._last_task_check = 0.0
        self.settled = False
        await self._emit(
            {"kind": "leader", "at": time.time(), "id": self.identity, "epoch": self.epoch}
        )
        await self._report_standby_detections()
        self._wake.set()

    async def on_lost(self) -> None:
        self.metrics.is_leader.set(0)
        self.settled = False

    async def reconcile_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.reconcile_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.leading:
                continue
            try:
                await self.reconcile()
            except StoreUnavailable as exc:
                log.warning("reconcile postponed: %s", exc)
            except Exception:  # a bug must not stop the loop: log it and try again
                log.exception("reconcile failed")

    async def reconcile(self) -> None:
        assert self.store is not None
        self._reload_cluster()
        spec = await self.store.get(SPEC_KEY) or {"tasks": []}
        tasks = [Task(str(t["id"]), int(t.get("gpus", 1))) for t in spec["tasks"]]
        self.metrics.desired.set(len(tasks))
        schedule_raw = await self.store.get_raw(SCHEDULE_KEY)
        schedule = json.loads(schedule_raw) if schedule_raw else {}
        await self._uncordon_repaired(schedule, schedule_raw)
        self.cordoned = {n for n, e in schedule.items() if e.get("cordoned")}
        failed = self.detector.failed()
        await self._cordon_late_fatal_xids(failed)
        nodes = []
        for node, gpus in sorted(self.cluster.nodes.items()):
            entry = schedule.get(node) or {}
            failed_gpus = frozenset(
                w.gpu for w in self.cluster.workers.values() if w.node == node and w.name in failed
            )
            nodes.append(
                Node(
                    node,
                    gpus,
                    failed_gpus=failed_gpus,
                    failed=bool(entry.get("draining")),
                    cordoned=bool(entry.get("cordoned")),
                    zone=self.cluster.zones.get(node, ""),
                )
            )
        new = place(tasks, nodes, self.assignment)
        if new.placements != self.assignment.placements or new.unplaceable != sorted(
            self.assignment.unplaceable
        ):
            await self._apply(new)
        await self._check_tasks()
        await self._publish_routing()
        serving = sum(
            1
            for task, p in self.assignment.placements.items()
            if self.task_state.get(self._worker_of(p).name if self._worker_of(p) else "")
            == f"serving:{task}"
        )
        self.metrics.tasks.labels("serving").set(serving)
        self.metrics.tasks.labels("unplaceable").set(len(self.assignment.unplaceable))
        self.settled = (
            serving == len(tasks)
            and not self.assignment.unplaceable
            and self.routed_raw == self._routing_raw()
        )
        if new.unplaceable and self.config.autoscale_add_nodes:
            await self._maybe_add_node(tasks)

    def _worker_of(self, p: Placement) -> WorkerRef | None:
        return self.cluster.workers.get((p.node, p.gpus[0]))

    async def _apply(self, new: Assignment) -> None:
        """Write the new assignment, load moved tasks on their targets, then route to them."""
        assert self.store is not None
        old = self.assignment
        body = {
            "epoch": self.epoch + 1,
            "leader": self.identity,
            "at": time.time(),
            **new.to_json(),
        }
        ok, current = await self.store.cas(ASSIGNMENT_KEY, self.assignment_raw, body)
        if not ok:  # someone else wrote it (a former leader): start again from what is there
            self.assignment_raw = current
            if current:
                self.assignment = Assignment.from_json(json.loads(current))
                self.epoch = int(json.loads(current).get("epoch", 0))
            return
        assigned_at = time.time()
        self.assignment_raw, self.assignment, self.epoch = encode(body), new, self.epoch + 1
        moves = diff(old, new)
        log.info(
            "assignment %d: %d move(s) %s, unplaceable %s",
            self.epoch,
            len(moves),
            ", ".join(f"{m.task} {m.source.node}->{m.target.node if m.target else None}"
                      for m in moves),
            new.unplaceable,
        )  # fmt: skip
        fresh = [t for t in new.placements if t not in old.placements]
        await self._emit(
            {"kind": "assignment", "at": assigned_at, "epoch": self.epoch,
             "before": {t: p.to_json() for t, p in old.placements.items()},
             "after": {t: p.to_json() for t, p in new.placements.items()},
             "unplaceable": new.unplaceable}
        )  # fmt: skip
        changed = [m.task for m in moves if m.target is not None] + fresh
        loaded = await asyncio.gather(*(self._load(t, new.placements[t]) for t in changed))
        serving_at = dict(zip(changed, loaded, strict=True))
        await self._publish_routing()
        routed_at = await self._confirm_routed(
            [self._worker_of(new.placements[t]) for t in changed if serving_at[t]]
        )
        by_name = self.cluster.by_name()
        events = []
        for m in moves:
            source_worker = self._worker_of(m.source)
            detected = self.detected_at.get(source_worker.name) if source_worker else None
            if detected is None and m.source.node in self.cordoned:
                detected = (assigned_at, f"node {m.source.node} draining")
            when, reason = detected or (assigned_at, "rebalance")
            routed = routed_at if m.target is not None and serving_at.get(m.task) else None
            if routed is not None:
                self.metrics.migrations.inc()
                self.metrics.migration_seconds.observe(max(0.0, routed - when))
            events.append(
                {"kind": "migration", "task": m.task, "reason": reason,
                 "from": m.source.to_json(), "to": _placement_json(m.target),
                 "detected_at": when, "assigned_at": assigned_at,
                 "serving_at": serving_at.get(m.task), "routed_at": routed, "epoch": self.epoch}
            )  # fmt: skip
            # make-before-break: the source goes only now that the target serves
            if source_worker and source_worker.name in by_name:
                if source_worker.name not in self.detector.failed():
                    await self._unload(source_worker)
        await self._emit(*events)

    async def _load(self, task: str, p: Placement) -> float | None:
        """PUT /task on the task's first GPU's worker and wait until it serves; None: failed."""
        w = self._worker_of(p)
        if w is None:
            return None
        body: dict[str, Any] = {"id": task}
        if self.config.model_load_s is not None:
            body["load_s"] = self.config.model_load_s
        deadline = time.monotonic() + self.config.load_timeout_s
        try:
            status, _ = await self._http("PUT", f"{w.url}/task", body, timeout=1.0)
            if status >= 300:
                return None
            while time.monotonic() < deadline:
                status, info = await self._http("GET", f"{w.url}/task")
                if status == 200 and info.get("id") == task and info.get("state") == "serving":
                    self.task_state[w.name] = f"serving:{task}"
                    return time.time()
                await asyncio.sleep(0.02)
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.task_state[w.name] = "failed-load"
        return None

    async def _unload(self, w: WorkerRef) -> None:
        try:
            await self._http("DELETE", f"{w.url}/task")
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.task_state[w.name] = "idle"

    async def _check_tasks(self) -> None:
        """Every second: a worker that lost its task (restarted) gets it loaded again."""
        now = time.monotonic()
        if now - self._last_task_check < self.config.task_check_interval_s:
            return
        self._last_task_check = now
        failed = self.detector.failed()
        pairs = [
            (task, self._worker_of(p))
            for task, p in self.assignment.placements.items()
            if self._worker_of(p) is not None
        ]
        pairs = [
            (t, w)
            for t, w in pairs
            if w is not None and w.name not in failed and w.name not in self.restarting
        ]

        async def check(task: str, w: WorkerRef) -> None:
            try:
                status, info = await self._http("GET", f"{w.url}/task")
            except (TimeoutError, aiohttp.ClientError):
                return
            if status != 200:
                return
            if info.get("id") == task and info.get("state") == "serving":
                self.task_state[w.name] = f"serving:{task}"
            elif info.get("id") != task or info.get("state") == "idle":
                log.info("%s lost %s (it reports %s): loading it again", w.name, task, info)
                self.task_state[w.name] = "reloading"
                if await self._load(task, self.assignment.placements[task]):
                    await self._emit(
                        {"kind": "reload", "at": time.time(), "task": task, "worker": w.name}
                    )

        await asyncio.gather(*(check(t, w) for t, w in pairs))

    def _routing_table(self) -> list[dict[str, Any]]:
        table = []
        failed = self.detector.failed()
        for task, p in sorted(self.assignment.placements.items()):
            w = self._worker_of(p)
            if w is None or w.name in failed:
                continue
            if self.task_state.get(w.name) not in (f"serving:{task}", None):
                continue
            table.append(
                {
                    "name": w.name,
                    "url": w.link_url,
                    "labels": {"task": task, "node": w.node, "gpu": str(w.gpu), "zone": w.zone},
                }
            )
        return table

    def _routing_raw(self) -> str:
        return json.dumps(self._routing_table(), sort_keys=True)

    async def _publish_routing(self) -> None:
        assert self.store is not None
        raw = self._routing_raw()
        if raw == self.routed_raw or raw == "[]":
            return
        await self._put_raw(ROUTING_KEY, raw)
        self.routed_raw = raw

    async def _put_raw(self, key: str, raw: str) -> None:
        """The routing table in the exact form the gateway and supervisor write it."""
        assert self.store is not None
        status, body = await self.store._call("PUT", f"/kv/{key}", {"value": raw})
        if status != 200:
            raise StoreUnavailable(f"PUT {key}: {status} {body}")

    async def _confirm_routed(self, workers: list[WorkerRef | None]) -> float | None:
        """When the gateway lists every target as a healthy upstream (it polls the table)."""
        names = {w.name for w in workers if w is not None}
        if not names:
            return None
        gateway = (state_mod.read_state() or {}).get("gateway_url")
        if not gateway:
            return time.time()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                status, upstreams = await self._http("GET", f"{gateway}/upstreams")
                if status == 200 and all(
                    n in upstreams and upstreams[n].get("healthy", True)
                    and not upstreams[n].get("ejected") for n in names
                ):  # fmt: skip
                    return time.time()
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.02)
        return None

    async def _maybe_add_node(self, tasks: list[Task]) -> None:
        """No room for every task: ask the platform for a node, as a cluster autoscaler does.

        A platform that cannot add nodes (Kubernetes: its cluster autoscaler does) says so once,
        recorded as a failed scale event; it is not asked again at every reconcile."""
        if self._adding_node or "add-node" in self.unavailable or not await self._autoscaling():
            return
        self._adding_node = True
        try:
            gpus = max(self.cluster.nodes.values(), default=1)
            outcome = await self.remediation.add_node(gpus)
            event = {"kind": "scale", "at": time.time(), "action": "add-node",
                     "ok": outcome.ok, "node": outcome.node}  # fmt: skip
            if not outcome.ok:
                log.warning("adding a node failed: %s", outcome.detail)
                event["detail"] = outcome.detail
            if not outcome.available:
                self.unavailable.add("add-node")
                event["available"] = False
            await self._emit(event)
            self._cluster_mtime = 0.0
        finally:
            self._adding_node = False

    # -- autoscaling ------------------------------------------------------------------------
    async def _autoscaling(self) -> dict[str, Any] | None:
        assert self.store is not None
        return await self.store.get(POLICY_KEY)

    async def autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.autoscale_interval_s)
            if not self.leading:
                self.qps_samples.clear()
                self._last_requests = None
                continue
            try:
                await self._autoscale_once()
            except StoreUnavailable as exc:
                log.warning("autoscaler postponed: %s", exc)
            except Exception:
                log.exception("autoscaler failed")

    async def _gateway_requests(self) -> float | None:
        gateway = (state_mod.read_state() or {}).get("gateway_url")
        if not gateway or self.session is None:
            return None
        try:
            async with self.session.get(
                f"{gateway}/metrics", timeout=aiohttp.ClientTimeout(total=1.0)
            ) as r:
                text = await r.text()
        except (TimeoutError, aiohttp.ClientError):
            return None
        return sum(float(v) for v in REQUESTS_LINE.findall(text))

    async def _autoscale_once(self) -> None:
        assert self.store is not None
        policy = await self._autoscaling()
        if not policy:
            self.qps_samples.clear()
            self._last_requests = None
            await self._remove_idle_added_nodes()
            return
        known = {f.name for f in fields(AutoscaleConfig)}
        config = AutoscaleConfig(**{k: v for k, v in policy.items() if k in known})
        total = await self._gateway_requests()
        now = time.time()
        if total is None:
            return
        if self._last_requests is not None:
            t0, c0 = self._last_requests
            if now > t0 and total >= c0:
                self.qps_samples.append((now, (total - c0) / (now - t0)))
        self._last_requests = (now, total)
        horizon = config.scale_in_cooldown_s + 60
        self.qps_samples = [(t, q) for t, q in self.qps_samples if t >= now - horizon]
        spec_raw = await self.store.get_raw(SPEC_KEY)
        spec = json.loads(spec_raw) if spec_raw else {"tasks": []}
        current = len(spec["tasks"])
        decision = Autoscaler(config).decide(now, self.qps_samples, current)
        if decision.replicas == current:
            return
        ids = [t["id"] for t in spec["tasks"]]
        if decision.replicas > current:
            taken = set(ids)
            n = 0
            while len(ids) < decision.replicas:
                if f"task-{n}" not in taken:
                    ids.append(f"task-{n}")
                n += 1
        else:
            ids = sorted(ids, key=lambda i: (len(i), i))[: decision.replicas]
        new_spec = {"tasks": [{"id": i, "gpus": self.task_gpus} for i in ids]}
        ok, _ = await self.store.cas(SPEC_KEY, spec_raw, new_spec)
        if ok:
            await self._emit(
                {"kind": "scale", "at": now, "from": current, "to": decision.replicas,
                 "reason": decision.reason, "qps": self.qps_samples[-1][1] if self.qps_samples
                 else None, "forecast_qps": decision.forecast_qps}
            )  # fmt: skip
            self._wake.set()

    async def _remove_idle_added_nodes(self) -> None:
        """Nodes added for a flood go again once no task runs on them and no policy wants them."""
        if "remove-node" in self.unavailable:
            return
        used = {p.node for p in self.assignment.placements.values()}
        for node in sorted(set(self.cluster.nodes) - self.cluster.initial_nodes - used):
            outcome = await self.remediation.remove_node(node)
            if outcome.ok:
                await self._emit(
                    {"kind": "scale", "at": time.time(), "action": "remove-node", "node": node}
                )
                self._cluster_mtime = 0.0
            elif not outcome.available:  # said once; a failure that may pass is retried quietly
                self.unavailable.add("remove-node")
                await self._emit(
                    {"kind": "scale", "at": time.time(), "action": "remove-node", "node": node,
                     "ok": False, "available": False, "detail": outcome.detail}
                )  # fmt: skip
                return

    # -- HTTP API ---------------------------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        leading = self.leading
        serving = sum(1 for s in self.task_state.values() if s.startswith("serving:"))
        return {
            "id": self.identity,
            "role": "leader" if leading else "standby",
            "leader": self.election.leader_id if self.election else None,
            "epoch": self.epoch,
            "settled": bool(leading and self.settled),
            "tasks": len(self.assignment.placements) + len(self.assignment.unplaceable),
            "serving": serving if leading else None,
            "failed_gpus": sorted(self.detector.failed()) if leading else [],
            "cordoned": sorted(self.cordoned) if leading else [],
        }

    async def handle_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status())

    async def handle_events(self, request: web.Request) -> web.Response:
        assert self.store is not None
        try:
            return web.json_response(await self.store.get(EVENTS_KEY) or [])
        except StoreUnavailable as exc:
            return web.json_response({"error": str(exc)}, status=503)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4},
        )

    async def serve(self, host: str, port: int) -> None:
        self.session = aiohttp.ClientSession()
        self.store = AsyncStore(self.session, self.store_endpoints)
        self.election = LeaderElection(
            self.store,
            self.identity,
            ElectionConfig(lease_ttl_s=self.config.lease_ttl_s),
            on_elected=self.on_elected,
            on_lost=self.on_lost,
        )
        self._reload_cluster()
        app = web.Application()
        app.router.add_get("/status", self.handle_status)
        app.router.add_get("/events", self.handle_events)
        app.router.add_get("/metrics", self.handle_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loops = [
            asyncio.create_task(c)
            for c in (
                self.election.run(),
                self.probe_loop(),
                self.reconcile_loop(),
                self.autoscale_loop(),
            )
        ]
        await stop.wait()
        for t in loops:
            t.cancel()
        await self.election.resign()
        await runner.cleanup()
        await self.remediation.close()
        await self.session.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `--remediation` picks who restarts workers and adds nodes."""
    p = argparse.ArgumentParser(prog="python -m resilience.controller", description=__doc__)
    p.add_argument("--id", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--store", required=True, help="comma-separated client URLs of the store")
    p.add_argument(
        "--remediation",
        choices=("supervisor", "kubernetes"),
        default="supervisor",
        help="supervisor: the embedded cluster's supervisor (--supervisor URL); kubernetes: "
        "delete a worker's pod to restart it (in-cluster credentials, --namespace)",
    )
    p.add_argument("--supervisor", help="the supervisor's control URL (--remediation supervisor)")
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the workers' namespace (--remediation kubernetes; default $POD_NAMESPACE)",
    )
    p.add_argument("--kubeconfig", help="a kubeconfig instead of the pod's in-cluster credentials")
    p.add_argument("--cluster", required=True, help="cluster.json written by the supervisor")
    p.add_argument("--tasks", type=int, default=0, help="tasks to create on first start")
    p.add_argument("--task-gpus", type=int, default=1)
    p.add_argument("--config", default="{}", help="JSON object overriding ControllerConfig")
    args = p.parse_args(argv)
    if args.remediation == "supervisor":
        if not args.supervisor:
            p.error("--remediation supervisor needs --supervisor URL")
        if args.kubeconfig:
            p.error("--kubeconfig is for --remediation kubernetes")
    else:
        if args.supervisor:
            p.error("--supervisor is for --remediation supervisor")
        if not args.namespace:
            p.error("--remediation kubernetes needs --namespace (or $POD_NAMESPACE)")
    return args


def remediation_from_args(args: argparse.Namespace) -> Remediation:
    if args.remediation == "kubernetes":
        return KubernetesRemediation(args.namespace, kubeconfig=args.kubeconfig)
    return SupervisorRemediation(args.supervisor)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("CONTROLLER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = dataclass_from_json(ControllerConfig, json.loads(args.config), "controller config")
    controller = Controller(
        args.id,
        config,
        [e for e in args.store.split(",") if e],
        remediation_from_args(args),
        Path(args.cluster),
        args.tasks,
        args.task_gpus,
    )
    asyncio.run(controller.serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
