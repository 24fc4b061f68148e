"""`FakeKube`: a Kubernetes API server on 127.0.0.1 for tests, spoken to by the official client.

It serves the wire protocol (paths, query parameters, JSON bodies, Status errors, the three patch
content types, chunked watch streams) over a stdlib threading HTTP server; REST semantics live in
`api.py`, storage and watches in `store.py`, the emulated controllers in `workloads.py` and
`chaos_mesh.py`. Tests seed it with `add_*`, turn `chaos` knobs, and read back `requests`,
`objects()` and `get()`.
"""

from __future__ import annotations

import json
import logging
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from experiments.kube.crds import default_crd_dir
from experiments.kube.names import GROUP
from tests.fakekube import meta, workloads
from tests.fakekube.api import Api, Denial, Response, WatchResponse
from tests.fakekube.chaos_mesh import ChaosMeshBehaviour, ChaosMeshController, make_admission
from tests.fakekube.meta import ApiError
from tests.fakekube.resources import (
    BATCH,
    CORE,
    CRD_TYPE,
    POLICY,
    chaos_schemas,
    load_chaos_types,
)
from tests.fakekube.scheduler import Scheduler
from tests.fakekube.store import CLOSE, Obj, Store

log = logging.getLogger(__name__)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
WATCH_POLL_S = 0.1


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (query values are the last of each name)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.stopping = False
        self._conn_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections[conn] = threading.current_thread()

    def untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.pop(conn, None)

    def close_connections(self, timeout_s: float = 5.0) -> None:
        """Cut every open connection (idle keep-alives and watch streams) and wait for their
        handler threads, so nothing of the server outlives `stop()`."""
        with self._conn_lock:
            connections = dict(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle and the client's
        # delayed ACK add 40 ms to every response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("fakekube %s", format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type")
        body: Any = None
        decode_error = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                body = raw.decode("utf-8", "replace")
                decode_error = exc
        fake = self.server.fake
        fake.requests.append(RecordedRequest(method, url.path, query, body, content_type))
        try:
            if self.server.stopping:
                raise ApiError(503, "ServiceUnavailable", "the server is shutting down")
            if decode_error is not None and "yaml" not in (content_type or ""):
                raise meta.bad_request(
                    f"the body of the request could not be decoded: {decode_error}"
                )
            result = fake.api.handle(method, url.path, query, body, content_type)
        except ApiError as exc:
            result = Response(exc.code, exc.status)
        except Exception as exc:  # a bug in the fake shows up as the apiserver's 500
            log.exception("fakekube failed on %s %s", method, self.path)
            result = Response(500, ApiError(500, "InternalError", f"fakekube: {exc!r}").status)
        if isinstance(result, WatchResponse):
            self._stream(result)
        else:
            self._send_json(result.code, result.body)

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _stream(self, watch: WatchResponse) -> None:
        """One watch: `{"type", "object"}` lines, one per chunk, until the timeout, the client
        leaving, or the server stopping."""
        store = self.server.fake.store
        deadline = time.monotonic() + watch.timeout_s if watch.timeout_s else None
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            while not self.server.stopping:
                wait = WATCH_POLL_S
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                try:
                    item = watch.watcher.queue.get(timeout=wait)
                except queue.Empty:
                    if self._client_gone():
                        self.close_connection = True
                        return
                    continue
                if item is CLOSE:
                    break
                self._chunk(json.dumps(item).encode() + b"\n")
            self._chunk(b"")
            if self.server.stopping:
                self.close_connection = True
        except OSError:
            self.close_connection = True
        finally:
            store.unwatch(watch.watcher)


class FakeKube:
    """A fake apiserver with an emulated Chaos Mesh; see the module doc and `tests/fakekube`."""

    def __init__(self, crd_dir: Path | None = None) -> None:
        found = crd_dir or default_crd_dir()
        if found is None:
            raise FileNotFoundError("no Chaos Mesh CRD folder: set $INFERENCE_CHAOS_CRDS")
        self.crd_dir = Path(found)
        self.requests: list[RecordedRequest] = []
        self.chaos = ChaosMeshBehaviour()
        self.store = Store()
        self.scheduler = Scheduler()
        chaos_types, self._crd_docs = load_chaos_types(self.crd_dir)
        self.api = Api(self.store, [*CORE, *BATCH, *POLICY, CRD_TYPE, *chaos_types])
        admit_chaos = make_admission(chaos_schemas(self.crd_dir))
        for rt in chaos_types:
            self.api.admissions[rt.plural] = admit_chaos
        self.api.admissions["jobs"] = workloads.admit_job
        self.disruption = workloads.DisruptionController(self.store, self.scheduler)
        self.api.subresource_posts[("pods", "eviction")] = self.disruption.evict
        self.jobs = workloads.JobController(self.store, self.scheduler, self.chaos)
        self.node_taints = workloads.NodeTaintController(self.store, self.scheduler)
        self.chaos_mesh = ChaosMeshController(
            self.store, self.scheduler, self.chaos, {rt.plural for rt in chaos_types}
        )
        for name in DEFAULT_NAMESPACES:
            self.add_namespace(name)
        for doc in self._crd_docs:
            self.store.create("customresourcedefinitions", _established(doc))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeKube is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        """Serve on 127.0.0.1 (a free port) in a background thread; returns the base URL."""
        if self._server is not None:
            return self.base_url
        if self._stopped:
            raise RuntimeError("a stopped FakeKube cannot start again; make a new one")
        self._server = _Server(self)
        self.api.port = self._server.server_address[1]
        self.scheduler.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fakekube-http",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop the controllers, end every watch stream, close every connection, free the port."""
        self._stopped = True
        self.scheduler.stop()
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping = True
        self.store.close_watchers()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeKube:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(
        self, path: Path, context: str = "fake", namespace: str = "default"
    ) -> Path:
        """A kubeconfig whose current context points the official client at this server."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fakekube", "cluster": {"server": self.base_url}}],
            "users": [{"name": meta.FAKE_USER, "user": {"token": "fakekube-token"}}],
            "contexts": [
                {
                    "name": context,
                    "context": {
                        "cluster": "fakekube",
                        "user": meta.FAKE_USER,
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # ---- seeding -----------------------------------------------------------------------------

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A namespace; adding one that exists (say "kube-system", there from the start) merges
        `labels` into it."""
        with self.store.lock:
            existing = self.store.get("namespaces", None, name)
            if existing is None:
                self.store.create("namespaces", workloads.namespace_manifest(name, labels))
            elif labels:
                existing["metadata"]["labels"].update(labels)
                self.store.update("namespaces", existing)

    def add_node(self, name: str, labels: dict | None = None) -> None:
        self.store.create("nodes", workloads.node_manifest(name, labels))

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict | None = None,
        node: str | None = None,
        containers: list[str] | tuple[str, ...] = ("main",),
        owner_kind: str | None = "ReplicaSet",
    ) -> None:
        """A Running, Ready pod (Pending when `node` is None); its namespace is created (without
        labels) if missing."""
        if self.store.get("namespaces", None, namespace) is None:
            self.add_namespace(namespace)
        node_obj = self.store.get("nodes", None, node) if node else None
        host_ip = workloads.node_ip(node_obj) if node_obj else None
        self.store.create(
            "pods",
            workloads.pod_manifest(namespace, name, labels, node, containers, owner_kind, host_ip),
        )

    def add_pdb(
        self,
        namespace: str,
        name: str,
        match_labels: dict,
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
    ) -> None:
        if self.store.get("namespaces", None, namespace) is None:
            self.add_namespace(namespace)
        pdb = workloads.pdb_manifest(namespace, name, match_labels, min_available, max_unavailable)
        pdb["status"] = workloads.pdb_status(pdb, self.store.list("pods", namespace))
        self.store.create("poddisruptionbudgets", pdb)

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """RBAC: answer 403 Forbidden to `verb` on `resource` (a plural such as "pods",
        "networkchaos" or "pods/eviction"; "*" matches any) in `namespace` (None: everywhere)."""
        self.api.denials.append(Denial(verb, resource, namespace))

    def without_chaos_mesh(self) -> None:
        """As if the Chaos Mesh CRDs were not installed: its group is gone from discovery, its
        paths answer 404, its CRD objects are gone."""
        self.api.disabled_groups.add(GROUP)
        self.chaos_mesh.enabled = False
        for crd in self.store.list("customresourcedefinitions"):
            if crd["spec"]["group"] == GROUP:
                self.store.delete("customresourcedefinitions", None, crd["metadata"]["name"])

    # ---- inspection --------------------------------------------------------------------------

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Stored objects of a resource (all namespaces when `namespace` is None)."""
        return self.store.list(plural, namespace)

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        return self.store.get(plural, namespace, name)


def _established(doc: Obj) -> Obj:
    """A CRD document as the apiserver stores it once its names are accepted."""
    crd = json.loads(json.dumps(doc))
    ts = meta.now()
    crd["metadata"].update(uid=meta.new_uid(), creationTimestamp=ts, generation=1)
    crd["status"] = {
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": ts,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": ts,
            },
        ],
    }
    return crd
