"""How the controller repairs things on the platform it runs on: restart a worker, add or remove
a node.

The controller decides *when* (resilience.controller); this module only knows *how*, so the same
controller runs in the embedded cluster and on Kubernetes:

- `SupervisorRemediation`: the embedded cluster's supervisor does it over HTTP
  (`POST /processes/{name}/restart`, `POST /nodes`, `DELETE /nodes/{node}`, docs/internals.md).
- `KubernetesRemediation`: a worker restart is the deletion of its pod (its StatefulSet creates
  it again, as the kubelet's restart would); nodes are a cluster autoscaler's business, so adding
  or removing one answers "not available" instead of pretending.

Every call answers an `Outcome` and never raises for a failure of the platform: a refused,
missing or silent API becomes `ok=False` with a one-line `detail` the controller records.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("resilience.remediation")

NODES_ON_KUBERNETES = "not available on Kubernetes (a cluster autoscaler {verb} nodes)"


@dataclass(frozen=True)
class Outcome:
    """What one remediation call achieved, in the terms the controller records as an event."""

    ok: bool
    detail: Any = None  # why it failed: the supervisor's answer, or the API's refusal, in words
    node: str | None = None  # add_node: the node that was added
    available: bool = True  # False: this platform cannot do it at all, asking again won't help


class Remediation(Protocol):
    """The three repairs the controller asks for; `name` is what `--remediation` selects."""

    name: str

    async def restart_worker(self, worker: str) -> Outcome: ...

    async def add_node(self, gpus: int) -> Outcome: ...

    async def remove_node(self, node: str) -> Outcome: ...

    async def close(self) -> None: ...


class SupervisorRemediation:
    """The embedded cluster's supervisor does the work (the wire calls the controller always
    made; a restart answers once the new process runs, an added node once its workers are
    ready)."""

    name = "supervisor"

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any, timeout_s: float) -> tuple[int, Any]:
        if self._session is None:  # created here: a session belongs to the running loop
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.request(
            method, f"{self.url}{path}", json=body, timeout=timeout
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except ValueError:
                return r.status, text

    async def restart_worker(self, worker: str) -> Outcome:
        try:
            status, body = await self._call("POST", f"/processes/{worker}/restart", {}, 3.0)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Outcome(False, str(exc) or type(exc).__name__)
        return Outcome(True) if status == 200 else Outcome(False, body)

    async def add_node(self, gpus: int) -> Outcome:
        try:
            status, body = await self._call("POST", "/nodes", {"gpus": gpus}, 30.0)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Outcome(False, str(exc) or type(exc).__name__)
        node = body.get("node") if isinstance(body, dict) else None
        return Outcome(True, node=node) if status == 200 else Outcome(False, body, node=node)

    async def remove_node(self, node: str) -> Outcome:
        try:
            status, body = await self._call("DELETE", f"/nodes/{node}", None, 10.0)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Outcome(False, str(exc) or type(exc).__name__, node=node)
        return Outcome(status == 200, None if status == 200 else body, node=node)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class KubernetesRemediation:
    """Restart a worker by deleting its pod through the official client; its controller
    (StatefulSet) creates it again. The worker's name in cluster.json is its pod's name.

    Credentials: the pod's ServiceAccount (in-cluster) unless `kubeconfig` names a file. They
    are loaded on first use, so a controller without them still migrates tasks and records each
    restart it could not do. The client is synchronous: calls run in a thread."""

    name = "kubernetes"

    def __init__(
        self, namespace: str, kubeconfig: str | Path | None = None, timeout_s: float = 5.0
    ) -> None:
        if not namespace:
            raise ValueError("KubernetesRemediation needs the workers' namespace")
        self.namespace = namespace
        self.kubeconfig = Path(kubeconfig) if kubeconfig else None
        self.timeout_s = timeout_s
        self._api: Any = None  # kubernetes.client.ApiClient, made on first use
        self._lock = asyncio.Lock()

    def _core(self) -> Any:
        """CoreV1Api over one ApiClient of our own (the client's global default stays
        untouched); one retry for a stale pooled connection, no more. Imported here: the
        embedded cluster's controllers never pay for loading the client."""
        from kubernetes import client, config

        if self._api is None:
            configuration = client.Configuration()
            if self.kubeconfig is not None:
                config.load_kube_config(
                    config_file=str(self.kubeconfig),
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                config.load_incluster_config(client_configuration=configuration)
            configuration.retries = 1
            self._api = client.ApiClient(configuration)
        return client.CoreV1Api(self._api)

    async def restart_worker(self, worker: str) -> Outcome:
        async with self._lock:  # one at a time: the client is made on first use, in the thread
            return await asyncio.to_thread(self._delete_pod, worker)

    def _delete_pod(self, pod: str) -> Outcome:
        """Read the pod, refuse one that nothing would recreate, delete exactly that one.

        The pod's own grace period applies: a forced deletion (0 s) would let the StatefulSet
        start a second pod of the same identity while the first still runs on its node."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
        from urllib3.exceptions import HTTPError

        where = f"pod {pod} in namespace {self.namespace}"
        try:
            core = self._core()
            found = core.read_namespaced_pod(pod, self.namespace, _request_timeout=self.timeout_s)
            owners = [o for o in found.metadata.owner_references or [] if o.controller]
            if not owners:
                return Outcome(False, f"{where} has no controller to recreate it: not deleted")
            core.delete_namespaced_pod(
                pod,
                self.namespace,
                body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(uid=found.metadata.uid)
                ),
                _request_timeout=self.timeout_s,
            )
        except ApiException as exc:
            return Outcome(False, _api_error(exc, where))
        except ConfigException as exc:
            return Outcome(False, f"no Kubernetes credentials: {exc}")
        except (HTTPError, OSError) as exc:
            return Outcome(False, f"the Kubernetes API does not answer: {type(exc).__name__}")
        owner = owners[0]
        log.info("deleted %s; its %s %s creates it again", where, owner.kind, owner.name)
        return Outcome(True)

    async def add_node(self, gpus: int) -> Outcome:
        return Outcome(False, NODES_ON_KUBERNETES.format(verb="adds"), available=False)

    async def remove_node(self, node: str) -> Outcome:
        detail = NODES_ON_KUBERNETES.format(verb="removes")
        return Outcome(False, detail, node=node, available=False)

    async def close(self) -> None:
        if self._api is not None:
            await asyncio.to_thread(self._api.close)
            self._api = None


def _api_error(exc: Any, where: str) -> str:
    """One line for an API refusal: what, and what to do where there is something to do."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    message = " ".join(str(message or exc.reason or "").split())
    if exc.status == 403:
        return f"RBAC denied on {where}: {message} (the controller needs get and delete on pods)"
    if exc.status == 404:
        return f"{where} not found: gone already, or not named as in cluster.json"
    if exc.status == 409:
        return f"{where} was replaced meanwhile, not deleted: {message}"
    return f"{where}: HTTP {exc.status}: {message}"
