"""Faults on the embedded cluster: real signals to real processes, real delays in the proxy.

Kill and pause are signals sent from here to the victim's pid; the supervisor is told first
whether to bring a killed process back (Chaos Mesh's pod-kill lets the ReplicaSet restart it).
Network faults become fault-proxy rules on every link into or out of a victim. GPU faults go to
the worker's own fault seam (`PUT /fault`, never through the proxy, so they work under a
partition). Node faults are the same kill, pause and partition applied to every process of a node;
a node drain is a cordon written to the controllers' store (`nodes.schedule`), which move the tasks.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from experiments.backends.base import BackendError
from experiments.ledger import FaultRecord
from experiments.selectors import Candidate, Selector
from resilience.state import pid_alive, read_state
from resilience.store_client import Store, StoreUnavailable

NETWORK_KINDS = ("network-delay", "network-loss", "network-bandwidth", "network-partition")
PROCESS_KINDS = ("pod-kill", "pod-pause", "pod-failure")
GPU_KINDS = ("gpu-xid", "gpu-hang", "gpu-throttle", "hbm-pressure")
NODE_KINDS = ("node-crash", "node-pause", "node-isolate", "node-drain")
DRAIN_KINDS = ("node-drain",)  # through the controllers' store, not signals or the proxy
KILL_KINDS = ("pod-kill", "pod-failure", "node-crash")  # pod-failure: held down till recovery
PAUSE_KINDS = ("pod-pause", "node-pause")
PARTITION_KINDS = (*NETWORK_KINDS, "node-isolate")
FLIP = {"to": "from", "from": "to", "both": "both"}
SCHEDULE_KEY = "nodes.schedule"
LIVE_ROLE_LABEL = {"raft": "raft-role", "controller": "controller-role"}  # role -> live label


class LocalBackend:
    name = "local"

    def __init__(
        self, state: dict[str, Any], namespace: str = "default", timeout: float = 2.0
    ) -> None:
        self.state = state
        self.namespace = namespace
        self.timeout = timeout

    @classmethod
    def from_running_cluster(cls, configuration: dict[str, Any]) -> LocalBackend:
        state = read_state()
        if not state or not state.get("ready"):
            raise BackendError(
                "the embedded cluster is not running: start it with 'inference-chaos up'"
            )
        return cls(state, namespace=configuration.get("namespace", "default"))

    def refresh(self) -> None:
        state = read_state()
        if state:
            self.state = state

    def supports(self, kind: str) -> bool:
        return kind in NETWORK_KINDS or kind in PROCESS_KINDS or kind in GPU_KINDS + NODE_KINDS

    def why_unsupported(self, kind: str) -> str:
        return "it needs Chaos Mesh on Kubernetes (target: kubernetes)"

    def admit(self, record: FaultRecord, selector: Selector) -> dict[str, Any]:
        """The embedded cluster is ours to break: no namespace or blast-radius limits."""
        return {}

    def candidates(self) -> list[Candidate]:
        """Processes with their labels, plus live labels read at this moment (all at once):
        store replicas their `raft-role`, controllers their `controller-role`, workers the
        `task` they serve and its `task-state` (idle, loading, serving, unreachable), and
        `serving: "true"` when the gateway routes to them (every worker without tasks). So
        `raft-role: leader` selects whoever leads now, `task-state: serving` a GPU with work."""
        asked = [
            p
            for p in self.state["processes"]
            if p["labels"].get("role") in LIVE_ROLE_LABEL or p["labels"].get("role") == "worker"
        ]
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(asked)))) as pool:
            live = dict(
                zip([p["name"] for p in asked], pool.map(self._live_labels, asked), strict=True)
            )
        routed = self._routed_workers()
        out = []
        for p in self.state["processes"]:
            labels = {**p["labels"], **live.get(p["name"], {})}
            if labels.get("role") == "worker":
                labels["serving"] = "true" if p["name"] in routed else "false"
            out.append(Candidate(name=p["name"], labels=labels, namespace=self.namespace))
        return out

    def _routed_workers(self) -> set[str]:
        """Workers the gateway routes to now (with tasks: those serving one; without: all)."""
        try:
            r = httpx.get(self.state["gateway_url"] + "/upstreams", timeout=1.0, trust_env=False)
            r.raise_for_status()
            return set(r.json())
        except (httpx.HTTPError, ValueError, KeyError):
            return set()

    def _live_labels(self, process: dict[str, Any]) -> dict[str, str]:
        role = process["labels"]["role"]
        if role == "worker":
            return self._worker_task(process)
        if role == "controller":
            return {LIVE_ROLE_LABEL[role]: self._controller_role(process)}
        return {LIVE_ROLE_LABEL[role]: self._raft_role(process)}

    def _worker_task(self, process: dict[str, Any]) -> dict[str, str]:
        """The task a worker serves (GET /task), as the controllers placed it."""
        try:
            r = httpx.get(
                f"http://127.0.0.1:{process['ports']['http']}/task", timeout=1.0, trust_env=False
            )
            r.raise_for_status()
            info = r.json()
            return {
                "task-state": str(info.get("state", "unknown")),
                "task": str(info.get("id") or ""),
            }
        except (httpx.HTTPError, ValueError, KeyError):
            return {"task-state": "unreachable", "task": ""}

    def _controller_role(self, process: dict[str, Any]) -> str:
        """leader / standby as the controller says now; `unreachable` if it cannot say."""
        try:
            r = httpx.get(
                f"http://127.0.0.1:{process['ports']['http']}/status", timeout=1.0, trust_env=False
            )
            r.raise_for_status()
            return str(r.json().get("role", "unknown"))
        except (httpx.HTTPError, ValueError, KeyError):
            return "unreachable"

    def _raft_role(self, process: dict[str, Any]) -> str:
        """leader / follower / candidate as the replica says now; `unreachable` if it cannot."""
        base = f"http://127.0.0.1:{process['ports']['http']}"
        try:
            if process.get("kind") == "etcd":
                r = httpx.post(
                    f"{base}/v3/maintenance/status", json={}, timeout=1.0, trust_env=False
                )
                r.raise_for_status()
                status = r.json()
                leader = status.get("leader")
                if not leader:
                    return "candidate"
                return "leader" if leader == status["header"]["member_id"] else "follower"
            r = httpx.get(f"{base}/status", timeout=1.0, trust_env=False)
            r.raise_for_status()
            return str(r.json().get("role", "unknown"))
        except (httpx.HTTPError, ValueError, KeyError):
            return "unreachable"

    def _process(self, name: str) -> dict[str, Any]:
        for p in self.state["processes"]:
            if p["name"] == name:
                return p
        raise BackendError(f"no process named {name!r} in the embedded cluster")

    def _supervisor(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.state["supervisor"]["control_url"] + path
        try:
            r = httpx.post(url, json=body or {}, timeout=self.timeout)
            r.raise_for_status()
            return r.json()
        except httpx.HTTPError as exc:
            raise BackendError(f"supervisor at {url} did not answer: {exc}") from exc

    def _proxy(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.state["proxy_control_url"] + path
        try:
            r = httpx.request(method, url, json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise BackendError(f"fault proxy at {url} did not answer: {exc}") from exc
        if r.status_code == 404 and method == "DELETE":
            return None
        if r.status_code >= 400:
            raise BackendError(f"fault proxy refused the fault ({r.status_code}): {r.text[:200]}")
        return r.json()

    # -- the three verbs ----------------------------------------------------------------------
    def inject(self, record: FaultRecord) -> dict[str, Any]:
        self.refresh()
        if record.kind in KILL_KINDS:
            return self._kill(record)
        if record.kind in PAUSE_KINDS:
            return self._pause(record)
        if record.kind in PARTITION_KINDS:
            return self._network(record)
        if record.kind in GPU_KINDS:
            return self._gpu(record)
        if record.kind in DRAIN_KINDS:
            return self._drain(record)
        raise BackendError(f"unknown fault kind {record.kind!r} for the local backend")

    def recover(self, record: FaultRecord) -> None:
        self.refresh()
        if record.kind in KILL_KINDS:
            for name in record.victims:
                self._supervisor(f"/processes/{name}/release")
        elif record.kind in PAUSE_KINDS:
            for pid in record.details.get("pids", {}).values():
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass  # died while paused: the supervisor restarts it
        elif record.kind in PARTITION_KINDS:
            for rule in record.details.get("rules") or [{"id": record.id}]:
                self._proxy("DELETE", f"/faults/{rule['id']}")
        elif record.kind in GPU_KINDS:
            for name in record.victims:
                if record.params.get("recovery") == "restart":
                    injected_pid = (record.details.get("pids") or {}).get(name)
                    current_pid = self._process(name).get("pid")
                    if injected_pid and current_pid and current_pid != injected_pid:
                        continue  # restarted since (a controller's remediation): fresh already
                    self._restart(name)
                else:
                    self._worker(name, "DELETE")
        elif record.kind in DRAIN_KINDS:
            self._uncordon(record)

    def describe(self, record: FaultRecord) -> dict[str, Any]:
        return {
            "backend": self.name,
            "kind": record.kind,
            "victims": record.victims,
            "details": record.details,
        }

    # -- kinds --------------------------------------------------------------------------------
    def _kill(self, record: FaultRecord) -> dict[str, Any]:
        restart_after = record.params.get("restart_after")
        pids: dict[str, int] = {}
        for name in record.victims:
            pid = self._process(name).get("pid")
            if not pid or not pid_alive(pid):
                raise BackendError(f"{name} is not running; nothing to kill")
            pids[name] = pid
        until = None if restart_after is None else time.time() + float(restart_after)
        for name in pids:  # held first, so the victims die together (a node crash) and stay dead
            self._supervisor(f"/processes/{name}/hold", {"until": until})
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        for name, pid in pids.items():  # injected means dead, not merely signalled
            _wait_until(lambda pid=pid: not pid_alive(pid), f"{name} (pid {pid}) to die")
        return {"pids": pids, "signal": "SIGKILL", "restart_after": restart_after}

    def _pause(self, record: FaultRecord) -> dict[str, Any]:
        pids: dict[str, int] = {}
        try:
            for name in record.victims:
                pid = self._process(name).get("pid")
                if not pid or not pid_alive(pid):
                    raise BackendError(f"{name} is not running; nothing to pause")
                os.kill(pid, signal.SIGSTOP)
                pids[name] = pid
            for name, pid in pids.items():  # injected means stopped, not merely signalled
                _wait_until(
                    lambda pid=pid: _proc_state(pid) in ("T", "t"), f"{name} (pid {pid}) to stop"
                )
        except Exception:
            for pid in pids.values():
                os.kill(pid, signal.SIGCONT)
            raise
        return {"pids": pids, "signal": "SIGSTOP"}

    def _worker(self, name: str, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fault seam on the worker's own port (not the proxy's link)."""
        proc = self._process(name)
        if proc["labels"].get("role") != "worker":
            raise BackendError(f"{name} is not a worker; GPU faults hit workers only")
        url = f"http://127.0.0.1:{proc['ports']['http']}/fault"
        try:
            r = httpx.request(method, url, json=body, timeout=self.timeout, trust_env=False)
        except httpx.HTTPError as exc:
            raise BackendError(f"worker {name} at {url} did not answer: {exc}") from exc
        if r.status_code >= 400:
            raise BackendError(f"worker {name} refused the GPU fault ({r.status_code}): {r.text}")
        return r.json()

    def _gpu(self, record: FaultRecord) -> dict[str, Any]:
        """PUT the fault's fields on each victim; counters (`add`) go up from their value now."""
        before: dict[str, dict[str, Any]] = {}
        for name in record.victims:
            current = self._worker(name, "GET")
            changes = dict(record.params.get("set", {}))
            for key, amount in (record.params.get("add") or {}).items():
                changes[key] = current.get(key, 0) + amount
            self._worker(name, "PUT", changes)
            before[name] = current
        return {"before": before, "pids": {n: self._process(n).get("pid") for n in before}}

    def _restart(self, name: str) -> None:
        """What clears an application-fatal Xid: the process dies and the supervisor starts a
        fresh one now (pod-kill's hold, kill and release)."""
        pid = self._process(name).get("pid")
        if pid and pid_alive(pid):
            self._supervisor(f"/processes/{name}/hold", {"until": None})
            os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not pid_alive(pid), f"{name} (pid {pid}) to die")
        self._supervisor(f"/processes/{name}/release")

    def _network(self, record: FaultRecord) -> dict[str, Any]:
        """One proxy rule per fault over every link that touches a victim."""
        direction = record.params.get("direction", "to")
        targets = record.params.get("target_names")
        by_direction: dict[str, list[str]] = {}
        for link in self.state["links"]:
            for victim in record.victims:
                other = link["source"] if link["target"] == victim else link["target"]
                if targets is not None and other not in targets:
                    continue
                if link["target"] == victim:
                    by_direction.setdefault(direction, []).append(link["name"])
                elif link["source"] == victim:
                    # the proxy speaks from the link target's side; the victim is the source
                    by_direction.setdefault(FLIP[direction], []).append(link["name"])
        if not by_direction:
            raise BackendError(
                f"no link of the fault proxy touches {record.victims}; "
                "network faults need a proxied process"
            )
        rule = {
            k: v
            for k, v in record.params.items()
            if k in ("delay_ms", "jitter_ms", "correlation", "loss", "rate_bps", "partition")
        }
        installed = []
        try:
            for i, (d, links) in enumerate(sorted(by_direction.items())):
                rule_id = record.id if i == 0 else f"{record.id}-{i}"
                self._proxy("PUT", f"/faults/{rule_id}", {"links": links, "direction": d, **rule})
                installed.append({"id": rule_id, "links": links, "direction": d})
        except Exception:
            for r in installed:
                self._proxy("DELETE", f"/faults/{r['id']}")
            raise
        record.details = {"rules": installed}
        return {"rules": installed}

    def _store(self) -> Store:
        endpoints = self.state.get("raft_endpoints") or []
        if not endpoints:
            raise BackendError("the embedded cluster lists no metadata store (raft_endpoints)")
        return Store(list(endpoints))

    def _drain(self, record: FaultRecord) -> dict[str, Any]:
        """Cordon and drain the nodes in `nodes.schedule`; the controllers move the tasks."""
        nodes = list(record.params.get("nodes") or [])
        at = time.time()
        entry = {"cordoned": True, "draining": True, "reason": _drain_reason(record), "at": at}
        try:
            self._store().update(
                SCHEDULE_KEY, lambda old: {**(old or {}), **{n: dict(entry) for n in nodes}}
            )
        except (StoreUnavailable, httpx.HTTPError) as exc:
            raise BackendError(f"could not write {SCHEDULE_KEY}: {exc}") from exc
        return {"nodes": nodes, "schedule": entry, "started_at": at}

    def _uncordon(self, record: FaultRecord) -> None:
        """Remove the schedule entries this fault wrote; an entry someone else wrote since (the
        controller cordoning a node for a fatal Xid) stays."""
        nodes = set(record.params.get("nodes") or [])
        reason = _drain_reason(record)

        def without_ours(old: dict[str, Any] | None) -> dict[str, Any]:
            return {
                n: e
                for n, e in (old or {}).items()
                if not (n in nodes and (e or {}).get("reason") == reason)
            }

        try:
            self._store().update(SCHEDULE_KEY, without_ours)
        except (StoreUnavailable, httpx.HTTPError) as exc:
            raise BackendError(f"could not uncordon {', '.join(sorted(nodes))}: {exc}") from exc


def _drain_reason(record: FaultRecord) -> str:
    return f"drain (fault {record.id})"


def _proc_state(pid: int) -> str:
    """The kernel's one-letter state of a process (R, S, T, Z, ...), or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _wait_until(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BackendError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.005)
