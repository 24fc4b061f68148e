"""Faults on a Kubernetes cluster: Chaos Mesh objects, node verbs and emulated GPU faults.

Candidates are the pods of the configured namespaces, with their labels plus `node` (where
they run) and `zone` (the node's topology.kubernetes.io/zone). A fault becomes:
- Chaos Mesh objects (experiments.kube.manifests), selector passed one-to-one, created and
  watched until AllInjected (experiments.kube.lifecycle); the pods Chaos Mesh reports become
  the fault's victims;
- node-crash: a PodChaos pod-kill of the node's pods and a NoSchedule taint, so replacements
  start elsewhere; node-drain: cordon and evictions (experiments.kube.nodes);
- GPU faults: DCGM field injection Jobs on the victims' nodes, and where the GPU is gone a
  taint and a PodChaos (experiments.kube.gpu; what is emulated is in docs/kubernetes-faults.md).
Every object carries the run's labels; what was made is written into the fault's details as it
is made, so a failure halfway is undone as far as it got, and `cleanup` finds the rest.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from experiments.backends.base import BackendError
from experiments.kube import gpu as kube_gpu
from experiments.kube import lifecycle, nodes
from experiments.kube.client import Kube, KubeError, call, connect, require_chaos_mesh
from experiments.kube.crds import CrdError, CrdSchemas
from experiments.kube.manifests import (
    SUPPORTED_KINDS,
    UnsupportedOnKubernetes,
    chaos_manifests,
    node_down_taint,
)
from experiments.kube.names import (
    CHAOS_KINDS,
    GPU_FAULT_TAINT,
    NODE_DOWN_TAINT,
    label_value,
    run_labels,
)
from experiments.kube.safety import check_blast_radius, check_namespace, worst_case_count
from experiments.kube.settings import KubeSettings
from experiments.ledger import FaultRecord
from experiments.selectors import Candidate, Selector

GPU_KINDS = ("gpu-xid", "gpu-hang", "gpu-throttle", "hbm-pressure")
NODE_CHAOS_KINDS = ("node-crash", "node-isolate")
UNSUPPORTED = {
    "pod-pause": "Chaos Mesh cannot freeze a process (no SIGSTOP); use pod_failure",
    "node-pause": "Chaos Mesh cannot freeze a node; use node_crash or node_isolate",
}
ZONE_LABEL = "topology.kubernetes.io/zone"
# labels we compute for candidates, not labels of the pods: a selector using them is resolved
# by us and pinned to pod names in the manifest
LIVE_LABELS = {"node", "zone", "serving"}
JOB_POLL_S = 0.2


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        kube: Kube,
        settings: KubeSettings,
        configuration: dict[str, Any] | None = None,
        crds: CrdSchemas | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.configuration = dict(configuration or {})
        self.crds = crds

    @classmethod
    def from_configuration(cls, configuration: dict[str, Any]) -> KubernetesBackend:
        """Connect and check, before anything is selected: credentials, Chaos Mesh's CRDs,
        and that every configured namespace may take faults."""
        try:
            settings = KubeSettings.from_configuration(configuration)
            kube = connect(configuration)
            require_chaos_mesh(kube)
            for ns in settings.namespaces:
                check_namespace(kube, ns, settings)
        except KubeError as exc:
            raise BackendError(str(exc)) from None
        try:
            crds = CrdSchemas.load()
        except CrdError:
            crds = None  # no local copy of the CRDs: the API server validates alone
        return cls(kube, settings, configuration, crds)

    # -- what may be hit -----------------------------------------------------------------------
    def supports(self, kind: str) -> bool:
        return kind in SUPPORTED_KINDS or kind in GPU_KINDS or kind == "node-drain"

    def why_unsupported(self, kind: str) -> str:
        return UNSUPPORTED.get(kind, "")

    def candidates(self) -> list[Candidate]:
        """Live pods of the configured namespaces (not terminating, not finished)."""
        zones = self._node_zones()
        routed = self._routed()
        out = []
        for ns in self.settings.namespaces:
            pods = self._call(f"list pods in {ns}", self.kube.core.list_namespaced_pod, ns)
            for pod in pods.items:
                meta, spec, status = pod.metadata, pod.spec, pod.status
                if meta.deletion_timestamp is not None:
                    continue
                if status and status.phase in ("Succeeded", "Failed"):
                    continue
                labels = dict(meta.labels or {})
                node = spec.node_name if spec else None
                if node:
                    labels.setdefault("node", node)
                    if zones.get(node):
                        labels.setdefault("zone", zones[node])
                if routed is not None and labels.get("role") == "worker":
                    labels.setdefault("serving", "true" if meta.name in routed else "false")
                out.append(Candidate(name=meta.name, labels=labels, namespace=ns))
        return out

    def _routed(self) -> set[str] | None:
        """Upstreams the gateway routes to now (their names are the worker pods' names in
        deploy/); None without a gateway_url or when it does not answer."""
        url = self.configuration.get("gateway_url")
        if not url:
            return None
        try:
            r = httpx.get(str(url).rstrip("/") + "/upstreams", timeout=2.0, trust_env=False)
            r.raise_for_status()
            return {
                name
                for name, u in r.json().items()
                if u.get("healthy", True) and not u.get("ejected")
            }
        except (httpx.HTTPError, ValueError, AttributeError):
            return None

    def _node_zones(self) -> dict[str, str]:
        listed = self._call("list nodes", self.kube.core.list_node)
        return {
            n.metadata.name: (n.metadata.labels or {}).get(ZONE_LABEL, "") for n in listed.items
        }

    def _call(self, doing: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(self.kube, doing, func, *args, **kwargs)
        except KubeError as exc:
            raise BackendError(str(exc)) from None

    # -- before injection ----------------------------------------------------------------------
    def admit(self, record: FaultRecord, selector: Selector) -> dict[str, Any]:
        """Namespaces allowed, blast radius within bounds, manifests valid; returns them."""
        namespaces = selector.namespaces or self.settings.namespaces
        try:
            for ns in namespaces:
                if ns not in self.settings.namespaces:
                    raise KubeError(
                        f"namespace {ns} is not among the run's namespaces "
                        f"({', '.join(self.settings.namespaces)}); add it to 'namespaces'"
                    )
            self._check_blast_radius(record, selector, namespaces)
            manifests = self.plan(record, run_id="dry-run")
        except (KubeError, UnsupportedOnKubernetes, CrdError) as exc:
            raise BackendError(str(exc)) from None
        return {"manifests": manifests}

    def _check_blast_radius(
        self, record: FaultRecord, selector: Selector, namespaces: list[str]
    ) -> None:
        if record.params.get("nodes"):
            total = len(self._call("list nodes", self.kube.core.list_node).items)
            hit = len(record.params["nodes"])
            check_blast_radius(hit, total, self.settings.max_node_share, "nodes", "the cluster")
            return
        everything = [c for c in self.candidates() if c.namespace in namespaces]
        matched = sum(1 for c in everything if selector.matches(c))
        hit = worst_case_count(selector, matched)
        check_blast_radius(
            hit, len(everything), self.settings.max_pod_share, "pods", ", ".join(namespaces)
        )

    def plan(self, record: FaultRecord, run_id: str) -> list[dict[str, Any]]:
        """Every object the fault creates (Chaos Mesh objects and Jobs), validated."""
        if record.kind in UNSUPPORTED:
            raise UnsupportedOnKubernetes(UNSUPPORTED[record.kind])
        labels = run_labels(run_id, record.id)
        namespace = self._home_namespace(record)
        manifests: list[dict[str, Any]] = []
        if record.kind in GPU_KINDS:
            manifests += self._gpu_manifests(record, labels, namespace)
        elif record.kind != "node-drain":
            selector = dict(record.selector)
            if record.kind in NODE_CHAOS_KINDS:
                selector = {
                    "namespaces": self.settings.namespaces,
                    "nodes": record.params["nodes"],
                    "mode": "all",
                    "value": None,
                }
            elif self._uses_live_labels(selector):
                selector = self._pinned(record)
            elif not selector.get("namespaces"):
                selector["namespaces"] = [namespace]
            kind = record.kind
            if kind == "pod-kill" and record.params.get("restart_after") is None:
                kind = "pod-failure"  # a killed pod comes straight back; this one stays down
            manifests += chaos_manifests(
                kind,
                record.params,
                selector,
                name=f"ic-{record.id}",
                namespace=namespace,
                labels=labels,
            )
        for m in manifests:
            if self.crds is not None and m.get("kind") in CHAOS_KINDS:
                self.crds.validate(m)
        return manifests

    def _uses_live_labels(self, selector: dict[str, Any]) -> bool:
        """Does the selector name a label we compute (serving, node, zone) rather than one
        the pods carry? Chaos Mesh could not match it."""
        keys = set((selector.get("labelSelectors") or {}).keys())
        return bool(keys & LIVE_LABELS)

    def _pinned(self, record: FaultRecord) -> dict[str, Any]:
        """The victims we resolved, by name: what a live label meant at injection time."""
        pods: dict[str, list[str]] = {}
        for v in self._victim_pods(record):
            pods.setdefault(v.namespace, []).append(v.name)
        return {"pods": pods, "mode": "all", "value": None}

    def _home_namespace(self, record: FaultRecord) -> str:
        """Where the fault's own objects live: the selector's first namespace, else the run's."""
        given = record.selector.get("namespaces") or []
        return str(given[0]) if given else self.settings.namespaces[0]

    def _victim_pods(self, record: FaultRecord) -> list[Candidate]:
        by_name = {c.name: c for c in self.candidates()}
        missing = [v for v in record.victims if v not in by_name]
        if missing:
            raise KubeError(f"pod(s) {', '.join(missing)} vanished before the fault")
        return [by_name[v] for v in record.victims]

    def _gpu_manifests(
        self, record: FaultRecord, labels: dict[str, str], namespace: str
    ) -> list[dict[str, Any]]:
        plan = kube_gpu.gpu_plan(record.kind, record.params)
        victims = self._victim_pods(record)
        out: list[dict[str, Any]] = []
        for i, node in enumerate(sorted({v.node for v in victims if v.node})):
            out.append(
                kube_gpu.dcgm_job(
                    f"ic-{record.id}-inject-{i}",
                    namespace,
                    node,
                    record.params.get("gpu_index"),
                    plan.injections,
                    labels,
                    image=self.settings.dcgm_image,
                    reinject_every_s=plan.reinject_every_s,
                )
            )
        if plan.pod_action:
            pods: dict[str, list[str]] = {}
            for v in victims:
                pods.setdefault(v.namespace, []).append(v.name)
            out += chaos_manifests(
                plan.pod_action,
                {"restart_after": None},
                {"pods": pods, "mode": "all", "value": None},
                name=f"ic-{record.id}",
                namespace=namespace,
                labels=labels,
            )
        return out

    # -- the three verbs -----------------------------------------------------------------------
    def inject(self, record: FaultRecord) -> dict[str, Any]:
        from experiments.context import ensure_run

        details = record.details  # filled as objects are made: a failure undoes what exists
        details.update(
            {
                "objects": [],
                "jobs": [],
                "taints": [],
                "cordoned": [],
                "kube": {"context": self.kube.context, "server": self.kube.server},
                # enough to reconnect for `inference-chaos recover` after a crashed run
                "configuration": {
                    "target": "kubernetes",
                    **{
                        k: self.configuration[k]
                        for k in (
                            "kubeconfig",
                            "kube_context",
                            "in_cluster",
                            "chaos_mesh_namespace",
                        )
                        if self.configuration.get(k) is not None
                    },
                    "namespaces": self.settings.namespaces,
                    "force_namespaces": True,  # checked when injected; recovery must not stall
                },
            }
        )
        run_id = ensure_run().run_id
        details["run_id"] = run_id
        details["owner"] = f"{label_value(run_id)}/{record.id}"  # marks on nodes name the run
        try:
            manifests = self.plan(record, run_id)
            details["manifests"] = manifests
            if record.kind == "node-drain":
                self._drain(record, details)
                return details
            jobs = [m for m in manifests if m.get("kind") == "Job"]
            chaos = [m for m in manifests if m.get("kind") in CHAOS_KINDS]
            holding = False
            if record.kind in GPU_KINDS:
                plan = kube_gpu.gpu_plan(record.kind, record.params)
                details["emulated"] = plan.emulated
                holding = plan.reinject_every_s is not None
            if jobs:  # a holding Job re-injects polled fields until deleted: wait for it to run
                self._run_jobs(jobs, details, until="running" if holding else "complete")
            self._apply_taints(record, details)
            injected: list[str] = []
            for manifest in chaos:
                lifecycle.create(self.kube, manifest)
                _, namespace, name = lifecycle.ref(manifest)
                details["objects"].append(
                    {"kind": manifest["kind"], "namespace": namespace, "name": name}
                )
                obj = lifecycle.wait_injected(self.kube, manifest, self.settings.inject_timeout_s)
                injected += lifecycle.injected_targets(obj)
            if chaos:
                details["injected_into"] = injected
                pods = sorted({i.split("/")[1] for i in injected if "/" in i})
                if pods and record.kind not in NODE_CHAOS_KINDS:
                    record.victims = pods
            return details
        except (KubeError, UnsupportedOnKubernetes, CrdError) as exc:
            raise BackendError(str(exc)) from None

    def _apply_taints(self, record: FaultRecord, details: dict[str, Any]) -> None:
        taint: dict[str, Any] | None = None
        targets: list[str] = []
        if record.kind == "node-crash":
            taint, targets = node_down_taint(record.id), list(record.params["nodes"])
        elif record.kind in GPU_KINDS:
            taint = kube_gpu.gpu_plan(record.kind, record.params).taint
            targets = sorted({v.node for v in self._victim_pods(record) if v.node})
        if not taint:
            return
        taint = {**taint, "value": label_value(details["run_id"])}  # `cleanup --run` finds it
        for node in targets:
            details["taints"].append({"node": node, "key": taint["key"]})
            nodes.taint(self.kube, node, taint)

    def _drain(self, record: FaultRecord, details: dict[str, Any]) -> None:
        timeout = float(record.params.get("timeout_s") or 60)
        evicted: dict[str, Any] = {}
        for node in record.params["nodes"]:
            if nodes.cordon(self.kube, node, owner=details["owner"]):
                details["cordoned"].append(node)
        for node in record.params["nodes"]:
            evicted[node] = nodes.drain(self.kube, node, self.settings.namespaces, timeout)
        details["drained"] = evicted

    def _run_jobs(
        self,
        jobs: list[dict[str, Any]],
        details: dict[str, Any],
        until: str = "complete",
        key: str = "jobs",
    ) -> None:
        """Create the Jobs and wait until each completed (or, `until="running"`, has a pod
        running); a failed Job is the fault's failure."""
        for job in jobs:
            ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
            call(
                self.kube, f"create Job {ns}/{name}", self.kube.batch.create_namespaced_job, ns, job
            )
            details.setdefault(key, []).append({"namespace": ns, "name": name})
        for job in jobs:
            self._wait_job(job["metadata"]["namespace"], job["metadata"]["name"], until)

    def _wait_job(self, namespace: str, name: str, until: str = "complete") -> None:
        deadline = time.monotonic() + self.settings.inject_timeout_s
        while True:
            job = call(
                self.kube,
                f"read Job {namespace}/{name}",
                self.kube.batch.read_namespaced_job_status,
                name,
                namespace,
            )
            if until == "running" and job.status and (job.status.active or 0) >= 1:
                return
            for c in (job.status.conditions if job.status else None) or []:
                if c.type == "Complete" and c.status == "True":
                    return
                if c.type == "Failed" and c.status == "True":
                    raise KubeError(
                        f"Job {namespace}/{name} failed: {c.reason or ''} {c.message or ''}".strip()
                    )
            if time.monotonic() > deadline:
                raise KubeError(
                    f"Job {namespace}/{name} not complete after {self.settings.inject_timeout_s:g}s"
                )
            time.sleep(JOB_POLL_S)

    def recover(self, record: FaultRecord) -> None:
        """Undo in reverse: Chaos Mesh objects (until gone), taints, cordons; then, for GPU
        faults, the healthy values injected and the Jobs deleted. Every step is tried; the
        errors are reported together."""
        details = record.details or {}
        errors: list[str] = []

        def attempt(step: Any, *args: Any) -> None:
            try:
                step(*args)
            except (KubeError, BackendError) as exc:
                errors.append(str(exc))

        for obj in reversed(details.get("objects") or []):
            attempt(
                lifecycle.remove,
                self.kube,
                obj["kind"],
                obj["namespace"],
                obj["name"],
                self.settings.recover_timeout_s,
                self.settings.force_recover,
            )
        for t in details.get("taints") or []:
            attempt(nodes.untaint, self.kube, t["node"], t["key"])
        for node in details.get("cordoned") or []:
            attempt(nodes.uncordon, self.kube, node, details.get("owner"))
        for job in details.get("jobs") or []:  # first: a holding Job would re-inject
            attempt(self._delete_job, job["namespace"], job["name"])
        if record.kind in GPU_KINDS and details.get("jobs"):
            attempt(self._gpu_recovery_jobs, record, details)
            for job in details.get("recovery_jobs") or []:
                attempt(self._delete_job, job["namespace"], job["name"])
        if errors:
            raise BackendError("; ".join(errors))

    def _gpu_recovery_jobs(self, record: FaultRecord, details: dict[str, Any]) -> None:
        plan = kube_gpu.gpu_plan(record.kind, record.params)
        injected = [m for m in details.get("manifests") or [] if m.get("kind") == "Job"]
        labels = (injected[0]["metadata"].get("labels") if injected else None) or {}
        jobs = []
        for i, job in enumerate(injected):
            node = job["spec"]["template"]["spec"]["nodeName"]
            jobs.append(
                kube_gpu.dcgm_job(
                    f"ic-{record.id}-recover-{i}",
                    job["metadata"]["namespace"],
                    node,
                    record.params.get("gpu_index"),
                    plan.recovery_injections,
                    labels,
                    image=self.settings.dcgm_image,
                )
            )
        details.setdefault("recovery_manifests", jobs)
        self._run_jobs(jobs, details, key="recovery_jobs")

    def _delete_job(self, namespace: str, name: str) -> None:
        try:
            call(
                self.kube,
                f"delete Job {namespace}/{name}",
                self.kube.batch.delete_namespaced_job,
                name,
                namespace,
                propagation_policy="Background",
            )
        except KubeError as exc:
            if "not found" not in str(exc):
                raise

    def set_paused(self, record: FaultRecord, paused: bool) -> None:
        """Pause or resume the fault's Chaos Mesh objects (and wait until they are)."""
        objects = (record.details or {}).get("objects") or []
        if not objects:
            raise BackendError(f"{record.kind} has no Chaos Mesh object to pause")
        try:
            for obj in objects:
                lifecycle.set_paused(
                    self.kube, obj["kind"], obj["namespace"], obj["name"], paused,
                    self.settings.inject_timeout_s,
                )  # fmt: skip
        except KubeError as exc:
            raise BackendError(str(exc)) from None

    def describe(self, record: FaultRecord) -> dict[str, Any]:
        details = record.details or {}
        return {
            "objects": details.get("objects", []),
            "injected_into": details.get("injected_into", []),
            "taints": details.get("taints", []),
            "cordoned": details.get("cordoned", []),
            "manifests": details.get("manifests", []),
        }


__all__ = ["KubernetesBackend", "GPU_FAULT_TAINT", "NODE_DOWN_TAINT"]
