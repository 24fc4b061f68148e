"""An emulated Chaos Mesh 2.x controller-manager and admission webhook.

It follows the real controllers (chaos-mesh/chaos-mesh `controllers/common/*`), one store write
per step so watches see each step as its own MODIFIED event:

- finalizers: adds `chaos-mesh/records`; on deletion removes it once every record is
  `Not Injected`, or at once when `chaos-mesh.chaos-mesh.org/cleanFinalizer: forced` is set;
- desiredphase: `Stop` when deleted, paused (`experiment.chaos-mesh.org/pause: "true"`) or past
  `spec.duration` (one-shot pod-kill/container-kill stay `Run`), else `Run`;
- records: selects targets once (`spec.selector` + `mode`/`value`, NetworkChaos also
  `spec.target` under selectorKey `.Target`), then applies/recovers them towards the desired phase
  after `inject_delay_s` / `recover_delay_s`, with Succeeded/Failed events;
- condition: Selected (records exist), AllInjected / AllRecovered (every record Injected / Not
  Injected, so both are True while nothing is selected, as on a real cluster), Paused.

The webhook defaults an empty `selector.namespaces` to the object's namespace.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from experiments.kube.crds import CrdSchemas
from experiments.kube.names import (
    CLEAN_FINALIZER_ANNOTATION,
    CLEAN_FINALIZER_FORCED,
    PAUSE_ANNOTATION,
    RECORDS_FINALIZER,
)
from tests.fakekube import meta, workloads
from tests.fakekube.scheduler import Scheduler
from tests.fakekube.selectors import field_value, match_labels
from tests.fakekube.store import Obj, Store

INJECTED = "Injected"
NOT_INJECTED = "Not Injected"
MAX_EVENTS = 10  # Chaos Mesh's default `maxEvents` per record
RETRY_CAP_S = 1.0
# kinds whose selector picks containers (record id ns/pod/container) rather than pods
CONTAINER_KINDS = {"StressChaos", "IOChaos", "TimeChaos"}


@dataclass
class ChaosMeshBehaviour:
    """Knobs tests turn; each is read when the controller acts, so it may change mid-test."""

    inject_delay_s: float = 0.05
    recover_delay_s: float = 0.05
    fail_injection: str | None = None  # records stay Not Injected with this Failed event message
    never_inject: bool = False  # no controller at all: no finalizer, no status, ever
    stuck_finalizer: bool = False  # recovery of a deleted object fails until cleanFinalizer=forced
    recreate_killed_pods: bool = True  # after pod-kill, the pod's owner makes a new pod
    job_delay_s: float = 0.1  # batch/v1 Jobs finish this long after creation
    jobs_fail: bool | str = False  # Jobs end Failed (a string is the condition message)


def parse_go_duration(text: str) -> float | None:
    """`time.ParseDuration` for the forms Chaos Mesh accepts ("30s", "1m30s", "500ms")."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * units[u] for n, u in parts)


def make_admission(schemas: CrdSchemas) -> Callable[[Obj, Obj | None], None]:
    """The CRD schema check (422 listing every problem) plus Chaos Mesh's defaulting webhook."""

    def admit(obj: Obj, old: Obj | None) -> None:
        problems = []
        for text in schemas.errors(obj, strict=False):
            where = f"{obj.get('kind', '')} {obj['metadata'].get('name', '?')}: "
            text = text.removeprefix(where)
            field, _, message = text.partition(": ")
            if field == "(root)":
                field = ""
            required = re.fullmatch(r"'([^']+)' is a required property", message)
            if required:
                field = f"{field}.{required.group(1)}" if field else required.group(1)
                message = "Required value"
            problems.append((field, message))
        if problems:
            raise meta.invalid(
                obj["kind"], obj["apiVersion"].split("/")[0], obj["metadata"]["name"], problems
            )
        if old is None:
            spec = obj.get("spec") or {}
            target = spec.get("target") if obj["kind"] == "NetworkChaos" else None
            for selector_holder in (spec, target if isinstance(target, dict) else {}):
                selector = selector_holder.get("selector")
                if isinstance(selector, dict) and not selector.get("namespaces"):
                    selector["namespaces"] = [obj["metadata"]["namespace"]]

    return admit


class ChaosMeshController:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        behaviour: ChaosMeshBehaviour,
        plurals: set[str],
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.behaviour = behaviour
        self.plurals = plurals
        self.enabled = True
        self._pending: set[tuple[str, str, str, str]] = set()
        self._retry_s: dict[tuple[str, str, str], float] = {}
        self._rng = random.Random()
        self._born: dict[str, float] = {}
        store.add_listener(self._changed)

    # ---- event plumbing --------------------------------------------------------------------

    def _changed(self, plural: str, kind: str, obj: Obj, old: Obj | None) -> None:
        if plural in self.plurals and kind == "ADDED":
            # creationTimestamp has whole seconds; sub-second test durations need better
            self._born[obj["metadata"]["uid"]] = time.time()
        if plural in self.plurals and kind != "DELETED" and self.enabled:
            key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
            self.scheduler.call_later(0, lambda: self.reconcile(*key))

    def _once(
        self, step: str, key: tuple[str, str, str], delay: float, action: Callable[[], None]
    ) -> None:
        """Schedule `action` unless the same step for the same object is already waiting."""
        token = (step, *key)
        if token in self._pending:
            return
        self._pending.add(token)

        def run() -> None:
            self._pending.discard(token)
            action()

        self.scheduler.call_later(delay, run)

    # ---- reconcile -------------------------------------------------------------------------

    def reconcile(self, plural: str, namespace: str, name: str) -> None:
        if self.behaviour.never_inject:
            return
        with self.store.lock:
            obj = self.store.get(plural, namespace, name)
            if obj is None:
                return
            key = (plural, namespace, name)
            md = obj["metadata"]
            finalizers = md.get("finalizers") or []
            annotations = md.get("annotations") or {}
            deleting = bool(md.get("deletionTimestamp"))
            forced = annotations.get(CLEAN_FINALIZER_ANNOTATION) == CLEAN_FINALIZER_FORCED
            if deleting and forced and finalizers:
                md["finalizers"] = []
                self.store.update(plural, obj)
                return
            if not deleting and RECORDS_FINALIZER not in finalizers:
                md["finalizers"] = [*finalizers, RECORDS_FINALIZER]
                self.store.update(plural, obj)
                return
            experiment = obj.setdefault("status", {}).setdefault("experiment", {})
            desired = self._desired_phase(obj, key)
            if experiment.get("desiredPhase") != desired:
                experiment["desiredPhase"] = desired
                self.store.update(plural, obj)
                return
            records = experiment.get("containerRecords")
            if records is None:
                self._once("select", key, self.behaviour.inject_delay_s, lambda: self._select(*key))
            elif desired == "Run" and any(r["phase"] != INJECTED for r in records):
                delay = self._retry_s.get(key, self.behaviour.inject_delay_s)
                self._once("apply", key, delay, lambda: self._apply(*key))
            elif desired == "Stop" and any(r["phase"] != NOT_INJECTED for r in records):
                delay = self._retry_s.get(key, self.behaviour.recover_delay_s)
                self._once("recover", key, delay, lambda: self._recover(*key))
            conditions = self._conditions(records, annotations)
            if obj["status"].get("conditions") != conditions:
                obj["status"]["conditions"] = conditions
                self.store.update(plural, obj)
                return
            resumed = all(r["phase"] == NOT_INJECTED for r in records or [])
            if deleting and resumed and finalizers:
                md["finalizers"] = []
                self.store.update(plural, obj)

    def _desired_phase(self, obj: Obj, key: tuple[str, str, str]) -> str:
        if obj["metadata"].get("deletionTimestamp"):
            return "Stop"
        spec = obj.get("spec") or {}
        if obj["kind"] == "PodChaos" and spec.get("action") in ("pod-kill", "container-kill"):
            return "Run"  # one-shot: never "stopped", only deleted
        duration = parse_go_duration(spec.get("duration") or "")
        if duration is not None:
            left = duration - self._age_s(obj)
            if left <= 0:
                return "Stop"
            self._once("duration", key, left + 0.01, lambda: self.reconcile(*key))
        annotations = obj["metadata"].get("annotations") or {}
        return "Stop" if annotations.get(PAUSE_ANNOTATION) == "true" else "Run"

    def _age_s(self, obj: Obj) -> float:
        born = self._born.get(obj["metadata"]["uid"])
        if born is None:
            created = datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
            born = created.replace(tzinfo=UTC).timestamp()
        return time.time() - born

    @staticmethod
    def _conditions(records: list[dict] | None, annotations: dict[str, str]) -> list[dict]:
        def cond(kind: str, value: bool) -> dict[str, str]:
            return {"type": kind, "status": "True" if value else "False"}

        return [
            cond("Selected", records is not None),
            cond("AllInjected", all(r["phase"] == INJECTED for r in records or [])),
            cond("AllRecovered", all(r["phase"] == NOT_INJECTED for r in records or [])),
            cond("Paused", annotations.get(PAUSE_ANNOTATION) == "true"),
        ]

    # ---- records: select, apply, recover ---------------------------------------------------

    def _select(self, plural: str, namespace: str, name: str) -> None:
        with self.store.lock:
            obj = self.store.get(plural, namespace, name)
            if (
                obj is None
                or obj.get("status", {}).get("experiment", {}).get("containerRecords") is not None
            ):
                return
            records: list[dict[str, Any]] = []
            for selector_key, holder in self._selector_specs(obj):
                ids = self._targets(obj, holder)
                if not ids:
                    return  # "no target has been selected": records stay empty, Selected False
                records.extend(
                    {
                        "id": i,
                        "selectorKey": selector_key,
                        "phase": NOT_INJECTED,
                        "injectedCount": 0,
                        "recoveredCount": 0,
                    }
                    for i in ids
                )
            obj["status"]["experiment"]["containerRecords"] = records
            if obj["status"]["experiment"].get("desiredPhase") == "Run":
                self._apply_records(plural, obj)
            self.store.update(plural, obj)

    def _apply(self, plural: str, namespace: str, name: str) -> None:
        with self.store.lock:
            obj = self.store.get(plural, namespace, name)
            if obj is None or obj["status"]["experiment"].get("desiredPhase") != "Run":
                return
            self._apply_records(plural, obj)
            self.store.update(plural, obj)

    def _apply_records(self, plural: str, obj: Obj) -> None:
        key = (plural, obj["metadata"]["namespace"], obj["metadata"]["name"])
        failure = self.behaviour.fail_injection
        for record in obj["status"]["experiment"]["containerRecords"]:
            if record["phase"] == INJECTED:
                continue
            if failure:
                _add_event(record, "Failed", "Apply", failure)
                continue
            record["phase"] = INJECTED
            record["injectedCount"] += 1
            _add_event(record, "Succeeded", "Apply")
            self._effect_on_pod(obj, record["id"], injected=True)
        if failure:  # the real controller requeues with backoff and tries again
            previous = self._retry_s.get(key, self.behaviour.inject_delay_s / 2)
            self._retry_s[key] = min(RETRY_CAP_S, max(previous * 2, 0.01))
        else:
            self._retry_s.pop(key, None)

    def _recover(self, plural: str, namespace: str, name: str) -> None:
        key = (plural, namespace, name)
        with self.store.lock:
            obj = self.store.get(plural, namespace, name)
            if obj is None or obj["status"]["experiment"].get("desiredPhase") != "Stop":
                return
            stuck = self.behaviour.stuck_finalizer and obj["metadata"].get("deletionTimestamp")
            for record in obj["status"]["experiment"]["containerRecords"]:
                if record["phase"] == NOT_INJECTED:
                    continue
                if stuck:
                    _add_event(
                        record,
                        "Failed",
                        "Recover",
                        "rpc error: code = Unavailable desc = chaos-daemon unreachable",
                    )
                    continue
                record["phase"] = NOT_INJECTED
                record["recoveredCount"] += 1
                _add_event(record, "Succeeded", "Recover")
                self._effect_on_pod(obj, record["id"], injected=False)
            if stuck:
                previous = self._retry_s.get(key, self.behaviour.recover_delay_s / 2)
                self._retry_s[key] = min(RETRY_CAP_S, max(previous * 2, 0.01))
            else:
                self._retry_s.pop(key, None)
            self.store.update(plural, obj)

    def _effect_on_pod(self, obj: Obj, record_id: str, injected: bool) -> None:
        """What a PodChaos does to the pods themselves; other kinds leave pods as they are."""
        if obj["kind"] != "PodChaos":
            return
        ns, pod, *container = record_id.split("/")
        action = (obj.get("spec") or {}).get("action")
        if action == "pod-kill" and injected:
            self.scheduler.call_later(
                0,
                lambda: workloads.kill_pod(
                    self.store, ns, pod, self.behaviour.recreate_killed_pods
                ),
            )
        elif action == "container-kill" and injected and container:
            self.scheduler.call_later(
                0, lambda: workloads.restart_container(self.store, ns, pod, container[0])
            )
        elif action == "pod-failure":
            self.scheduler.call_later(
                0, lambda: workloads.set_pod_ready(self.store, ns, pod, not injected)
            )

    # ---- selection -------------------------------------------------------------------------

    @staticmethod
    def _selector_specs(obj: Obj) -> list[tuple[str, dict[str, Any]]]:
        spec = obj.get("spec") or {}
        specs = [(".", spec)]
        if obj["kind"] == "NetworkChaos" and spec.get("target"):
            specs.append((".Target", spec["target"]))
        return specs

    def _targets(self, obj: Obj, holder: dict[str, Any]) -> list[str]:
        """Record ids for one selector: `ns/pod`, or `ns/pod/container` for container kinds."""
        pods = self._select_pods(holder.get("selector") or {})
        pods = self._filter_by_mode(pods, holder.get("mode"), holder.get("value"))
        spec = obj.get("spec") or {}
        per_container = obj["kind"] in CONTAINER_KINDS or (
            obj["kind"] == "PodChaos" and spec.get("action") == "container-kill"
        )
        ids = []
        for pod in pods:
            base = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            if not per_container:
                ids.append(base)
                continue
            names = [c["name"] for c in pod["spec"]["containers"]]
            wanted = spec.get("containerNames") or []
            chosen = [n for n in names if n in wanted] if wanted else names[:1]
            ids.extend(f"{base}/{n}" for n in chosen)
        return ids

    def _select_pods(self, selector: dict[str, Any]) -> list[Obj]:
        if selector.get("pods"):
            found = []
            for ns, names in selector["pods"].items():
                for pod_name in names:
                    pod = self.store.get("pods", ns, pod_name)
                    if pod is not None:
                        found.append(pod)
            return found
        namespaces = selector.get("namespaces") or []
        pods = [
            p
            for p in self.store.list("pods")
            if not namespaces or p["metadata"]["namespace"] in namespaces
        ]

        def matches(labels: dict | None, wanted: dict | None) -> bool:
            labels = labels or {}
            return all(labels.get(k) == v for k, v in (wanted or {}).items())

        label_selector = {
            "matchLabels": selector.get("labelSelectors") or {},
            "matchExpressions": selector.get("expressionSelectors") or [],
        }
        pods = [p for p in pods if match_labels(label_selector, p["metadata"].get("labels"))]
        pods = [
            p
            for p in pods
            if matches(p["metadata"].get("annotations"), selector.get("annotationSelectors"))
        ]
        pods = [
            p
            for p in pods
            if all(
                field_value(p, k) == v for k, v in (selector.get("fieldSelectors") or {}).items()
            )
        ]
        if selector.get("nodes") or selector.get("nodeSelectors"):
            nodes = set(selector.get("nodes") or [])
            if selector.get("nodeSelectors"):
                nodes |= {
                    n["metadata"]["name"]
                    for n in self.store.list("nodes")
                    if matches(n["metadata"].get("labels"), selector["nodeSelectors"])
                }
            pods = [p for p in pods if p["spec"].get("nodeName") in nodes]
        phases = selector.get("podPhaseSelectors") or []
        if phases:
            pods = [p for p in pods if (p.get("status") or {}).get("phase") in phases]
        return pods

    def _filter_by_mode(self, pods: list[Obj], mode: str | None, value: Any) -> list[Obj]:
        if not pods:
            return []
        count = len(pods)
        try:
            number = int(value) if value not in (None, "") else 0
        except (TypeError, ValueError):
            return []
        if mode == "all":
            return pods
        if mode == "one":
            count = 1
        elif mode == "fixed":
            count = min(number, len(pods))
        elif mode == "fixed-percent":
            count = math.floor(len(pods) * number / 100)
        elif mode == "random-max-percent":
            count = math.floor(len(pods) * self._rng.randint(0, number) / 100)
        else:
            return []
        if count <= 0:
            return []
        chosen = set(self._rng.sample(range(len(pods)), count))
        return [p for i, p in enumerate(pods) if i in chosen]


def _add_event(record: dict[str, Any], kind: str, operation: str, message: str = "") -> None:
    event = {"type": kind, "operation": operation, "timestamp": meta.now()}
    if message:
        event["message"] = message
    events = record.setdefault("events", [])
    events.append(event)
    del events[:-MAX_EVENTS]
