"""The supervisor of the embedded cluster: starts every process, restarts what dies, stops all.

It plays the part of the kubelet: a killed worker comes back after a delay unless a fault
holds it down, and `down` leaves no process behind. Children get PR_SET_PDEATHSIG so they die
with the supervisor even when it is killed with SIGKILL. It also plays the cloud: nodes can be
added and removed at run time (`POST /nodes`, `DELETE /nodes/{node}`). With tasks the
controllers own the routing table; without, the supervisor routes to every worker itself.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from resilience import routing_table
from resilience import state as state_mod
from resilience.ports import free_ports
from resilience.prometheus import find_prometheus, render_config
from resilience.topology import (
    ClusterSpec,
    Link,
    ProcessSpec,
    Topology,
    build_topology,
    cluster_document,
    node_workers,
    raft_endpoints,
    scrape_targets,
    upstreams_for_gateway,
)

log = logging.getLogger("resilience.supervisor")
PR_SET_PDEATHSIG = 1
MAX_NODE_GPUS = 64


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the supervisor goes away."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Managed:
    """A supervised process and its restart bookkeeping."""

    spec: ProcessSpec
    proc: subprocess.Popen | None = None
    restarts: int = 0
    hold_until: float | None = None  # do not restart before then
    held: bool = False  # held with no end: only a release restarts it
    died_at: float | None = None
    log_path: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, spec: ClusterSpec, run_dir: Path, restart_delay: float = 1.0) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.restart_delay = restart_delay
        self.topology: Topology | None = None
        self.managed: dict[str, Managed] = {}
        self.control_port = 0
        self.ready = False
        self.started_at = time.time()
        self.stopping = asyncio.Event()
        self.routing_published: bool | None = None
        self.initial_nodes = {f"node-{n}" for n in range(spec.nodes)}
        self.added_nodes: dict[str, list[str]] = {}  # node -> its workers
        self.next_node_index = spec.nodes  # node names are never reused within a run
        self.node_ready_timeout = 15.0
        self.nodes_lock = asyncio.Lock()  # one node change at a time

    # -- layout -----------------------------------------------------------------------------
    def prepare(self) -> None:
        prom = find_prometheus() if self.spec.prometheus else None
        ports = free_ports(self.spec.port_count() + 1)
        self.control_port = ports.pop()  # first: the controllers' command line names it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for old in self.run_dir.glob("raft-*"):  # a new cluster starts with an empty store
            shutil.rmtree(old, ignore_errors=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        topo = build_topology(
            self.spec, ports, str(self.run_dir), prom, supervisor_url=self.control_url
        )
        self.topology = topo
        _write_json(self.run_dir / "upstreams.json", upstreams_for_gateway(topo))
        (self.run_dir / "targets").mkdir(exist_ok=True)
        self.write_layout()
        (self.run_dir / "prometheus.yml").write_text(render_config(self.run_dir / "targets"))
        for p in topo.processes:
            self.add_managed(p)

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def add_managed(self, spec: ProcessSpec) -> Managed:
        m = Managed(spec=spec, log_path=self.run_dir / "logs" / f"{spec.name}.log")
        self.managed[spec.name] = m
        return m

    def write_layout(self) -> None:
        """The files others read the layout from: the proxy's links (read again if it
        restarts), Prometheus targets and the controllers' cluster.json. Atomic, because
        Prometheus and the controllers re-read them while the cluster runs."""
        assert self.topology is not None
        topo = self.topology
        _write_json(self.run_dir / "links.json", [link.to_json() for link in topo.links])
        _write_json(self.run_dir / "targets" / "cluster.json", scrape_targets(topo))
        _write_json(
            self.run_dir / "cluster.json", cluster_document(topo, added=set(self.added_nodes))
        )

    # -- processes --------------------------------------------------------------------------
    def spawn(self, m: Managed) -> None:
        with open(m.log_path, "ab") as logf:
            m.proc = subprocess.Popen(
                m.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        m.died_at = None
        m.history.append({"event": "started", "pid": m.proc.pid, "at": time.time()})

    async def wait_ready(self, names: list[str], timeout: float) -> None:
        """Poll every process's ready URL until all answer 200 or one dies."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
            while pending:
                for name in list(pending):
                    m = self.managed[name]
                    if not m.alive():
                        raise RuntimeError(
                            f"{name} exited during start-up (see {m.log_path}): {_tail(m.log_path)}"
                        )
                    try:
                        async with session.get(m.spec.ready_url) as r:
                            if r.status == 200:
                                pending.discard(name)
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready after {timeout:.0f}s: {sorted(pending)}")
                await asyncio.sleep(0.05)

    async def monitor(self) -> None:
        """Restart processes that died, after the restart delay or their hold."""
        while not self.stopping.is_set():
            changed = False
            now = time.time()
            for m in self.managed.values():
                if m.proc is None or m.alive():
                    continue
                if m.died_at is None:
                    m.died_at = now
                    m.history.append(
                        {"event": "died", "pid": m.proc.pid, "code": m.proc.returncode, "at": now}
                    )
                    changed = True
                if m.held:
                    continue
                due = max(m.died_at + self.restart_delay, m.hold_until or 0)
                if now >= due:
                    m.hold_until = None
                    m.restarts += 1
                    self.spawn(m)
                    changed = True
            if changed:
                self.write_state()
            await asyncio.sleep(0.05)

    def write_state(self) -> None:
        assert self.topology is not None
        procs = []
        for m in self.managed.values():
            procs.append(
                {
                    "name": m.spec.name,
                    "kind": m.spec.kind,
                    "pid": m.pid,
                    "status": "running" if m.alive() else "dead",
                    "ports": m.spec.ports,
                    "labels": m.spec.labels,
                    "restarts": m.restarts,
                    "held": m.held or (m.hold_until is not None),
                    "log": str(m.log_path),
                }
            )
        ports = {m.spec.name: m.spec.ports for m in self.managed.values()}
        st: dict[str, Any] = {
            "supervisor": {"pid": os.getpid(), "control_url": self.control_url},
            "ready": self.ready,
            "started_at": self.started_at,
            "run_dir": str(self.run_dir),
            "nodes": self.spec.nodes,
            "gpus_per_node": self.spec.gpus_per_node,
            "gateway_url": f"http://127.0.0.1:{ports['gateway']['http']}",
            "proxy_control_url": f"http://127.0.0.1:{ports['faultproxy']['control']}",
            "prometheus_url": (
                f"http://127.0.0.1:{ports['prometheus']['http']}" if "prometheus" in ports else None
            ),
            "prometheus_targets_dir": str(self.run_dir / "targets"),
            "raft_endpoints": raft_endpoints(self.topology),
            "store": self.spec.store,
            "routing_table_published": self.routing_published,
            "tasks": self.spec.tasks,
            "task_gpus": self.spec.task_gpus,
            "cluster_file": str(self.run_dir / "cluster.json"),
            "added_nodes": sorted(self.added_nodes),
            "processes": procs,
            "links": [link.to_json() for link in self.topology.links],
        }
        state_mod.write_state(st)

    async def publish_routing_table(self) -> None:
        """Put the gateway's routing table into the metadata store once it has a leader."""
        assert self.topology is not None
        endpoints = raft_endpoints(self.topology)
        if not endpoints:
            return
        if self.spec.store == "etcd":
            await self.wait_for_etcd_leader(endpoints)
            return
        ok = await asyncio.to_thread(
            routing_table.publish, endpoints, upstreams_for_gateway(self.topology)
        )
        self.routing_published = ok
        if not ok:
            raise RuntimeError("the metadata store elected no leader: routing table not published")

    async def wait_for_etcd_leader(self, endpoints: list[str], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
            while time.monotonic() < deadline:
                for endpoint in endpoints:
                    try:
                        async with session.post(f"{endpoint}/v3/maintenance/status", json={}) as r:
                            if r.status == 200 and (await r.json()).get("leader"):
                                return
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        pass
                await asyncio.sleep(0.05)
        raise RuntimeError("etcd elected no leader")

    async def stop_all(self) -> None:
        await self.stop(list(self.managed.values()))

    async def stop(self, managed: list[Managed]) -> None:
        """SIGCONT (a paused process cannot exit), SIGTERM, then SIGKILL what is left."""
        procs = [m.proc for m in managed if m.proc is not None and m.alive()]
        for p in procs:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            await asyncio.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # -- control API ------------------------------------------------------------------------
    def _managed_or_404(self, request: web.Request) -> Managed:
        name = request.match_info["name"]
        if name not in self.managed:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no process named {name!r}"}),
                content_type="application/json",
            )
        return self.managed[name]

    async def handle_state(self, request: web.Request) -> web.Response:
        self.write_state()
        return web.json_response(state_mod.read_state())

    async def handle_hold(self, request: web.Request) -> web.Response:
        m = self._managed_or_404(request)
        body = await request.json() if request.can_read_body else {}
        until = body.get("until")
        if until is None:
            m.held = True
        else:
            m.hold_until = float(until)
        self.write_state()
        return web.json_response({"name": m.spec.name, "held": m.held, "hold_until": m.hold_until})

    async def handle_release(self, request: web.Request) -> web.Response:
        """End a hold and restart the process at once if it is dead."""
        m = self._managed_or_404(request)
        m.held = False
        m.hold_until = None
        restarted = False
        if m.proc is not None and not m.alive():
            m.restarts += 1
            self.spawn(m)
            restarted = True
        self.write_state()
        return web.json_response({"name": m.spec.name, "restarted": restarted, "pid": m.pid})

    async def handle_restart(self, request: web.Request) -> web.Response:
        """What deleting a pod does: SIGKILL now and start a fresh process at once; any hold
        ends (a restart is a deliberate act)."""
        m = self._managed_or_404(request)
        previous = m.pid
        if m.alive():
            assert m.proc is not None
            m.held = True  # the monitor must not restart it behind our back meanwhile
            m.proc.kill()
            deadline = time.monotonic() + 5.0
            while m.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            m.history.append({"event": "killed", "pid": previous, "at": time.time()})
        m.held = False
        m.hold_until = None
        m.restarts += 1
        self.spawn(m)
        self.write_state()
        return web.json_response({"name": m.spec.name, "pid": m.pid, "previous_pid": previous})

    async def handle_shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True})

    # -- nodes at run time ------------------------------------------------------------------
    async def handle_add_node(self, request: web.Request) -> web.Response:
        """A new node with `gpus` workers, each behind a new proxy link; answers once every
        worker is ready (and, without tasks, once the gateway routes to them)."""
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            return _error(400, "the body must be a JSON object")
        gpus = body.get("gpus", self.spec.gpus_per_node) if isinstance(body, dict) else None
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_NODE_GPUS:
            return _error(400, f"gpus must be an integer from 1 to {MAX_NODE_GPUS}, got {gpus!r}")
        async with self.nodes_lock:
            assert self.topology is not None
            index = self.next_node_index
            self.next_node_index += 1
            node = f"node-{index}"
            processes, links = node_workers(
                self.spec, index, gpus, iter(self.fresh_ports(2 * gpus))
            )
            names = [p.name for p in processes]
            try:
                await self.add_links(links)
                self.topology.links += links
                _write_json(  # a proxy that restarts from now on opens them too
                    self.run_dir / "links.json", [link.to_json() for link in self.topology.links]
                )
                self.topology.processes += processes
                self.added_nodes[node] = names
                for p in processes:
                    self.spawn(self.add_managed(p))
                self.write_state()
                await self.wait_ready(names, self.node_ready_timeout)
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                log.error("adding %s failed: %s", node, exc)
                await self.forget_node(node, processes, links)
                return _error(502, f"could not add {node}: {exc}")
            self.write_layout()  # the controllers see the node once its workers answer
            if self.spec.tasks == 0:
                await self.route_to_every_worker()
            self.write_state()
            log.info("added %s with %d GPUs", node, gpus)
        return web.json_response(
            {"node": node, "zone": self.spec.zone(index), "gpus": gpus, "workers": names}
        )

    async def handle_remove_node(self, request: web.Request) -> web.Response:
        """Take away a node added at run time: out of the routing table first (without tasks),
        then its links, then its workers (SIGTERM, SIGKILL after 3 s)."""
        node = request.match_info["node"]
        if node in self.initial_nodes:
            return _error(409, f"{node} is one of the cluster's initial nodes; only added nodes go")
        async with self.nodes_lock:
            if node not in self.added_nodes:
                return _error(404, f"no node named {node!r} was added")
            assert self.topology is not None
            names = set(self.added_nodes[node])
            processes = [p for p in self.topology.processes if p.name in names]
            links = [link for link in self.topology.links if link.target in names]
            pids = [self.managed[n].pid for n in sorted(names)]
            await self.forget_node(node, processes, links)
            log.info("removed %s", node)
        return web.json_response({"node": node, "removed": sorted(names), "pids": pids})

    async def forget_node(self, node: str, processes: list[ProcessSpec], links: list[Link]) -> None:
        """Undo a node, in the order that hurts no request: routing, links, processes, files."""
        assert self.topology is not None
        names = {p.name for p in processes}
        routed = any(link in self.topology.links for link in links)
        self.topology.processes = [p for p in self.topology.processes if p.name not in names]
        self.topology.links = [link for link in self.topology.links if link not in links]
        self.added_nodes.pop(node, None)
        if routed and self.spec.tasks == 0:
            await self.route_to_every_worker()
        for link in links:
            try:
                await self.proxy_call("DELETE", f"/links/{link.name}", missing_ok=True)
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                log.error("could not close link %s: %s", link.name, exc)
        await self.stop([self.managed.pop(n) for n in sorted(names) if n in self.managed])
        self.write_layout()
        self.write_state()

    def fresh_ports(self, count: int) -> list[int]:
        """Free ports that no process or link of the cluster owns (a held-down process's port
        is free for the kernel but still taken)."""
        assert self.topology is not None
        taken = {self.control_port, *(link.listen_port for link in self.topology.links)}
        taken |= {port for p in self.topology.processes for port in p.ports.values()}
        for _ in range(20):
            ports = [port for port in free_ports(count + len(taken)) if port not in taken]
            if len(ports) >= count:
                return ports[:count]
        raise RuntimeError("no free ports left on 127.0.0.1")

    @property
    def proxy_control_url(self) -> str:
        assert self.topology is not None
        return f"http://127.0.0.1:{self.topology.process('faultproxy').ports['control']}"

    async def add_links(self, links: list[Link]) -> None:
        """Open the new links in the running proxy; links.json follows, should it restart."""
        for link in links:
            await self.proxy_call("PUT", f"/links/{link.name}", link.to_json())

    async def proxy_call(
        self, method: str, path: str, body: dict[str, Any] | None = None, missing_ok: bool = False
    ) -> None:
        url = self.proxy_control_url + path
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(method, url, json=body) as r:
                if r.status == 404 and missing_ok:
                    return
                if r.status >= 400:
                    text = (await r.text())[:200]
                    raise RuntimeError(
                        f"the fault proxy refused {method} {path}: {r.status} {text}"
                    )

    async def route_to_every_worker(self) -> None:
        """Without tasks the supervisor routes to every worker: the upstreams file, the store's
        routing table (or a SIGHUP when the gateway has no store), then wait for the gateway."""
        assert self.topology is not None
        upstreams = upstreams_for_gateway(self.topology)
        _write_json(self.run_dir / "upstreams.json", upstreams)
        endpoints = raft_endpoints(self.topology)
        if endpoints and self.spec.store == "ours":
            self.routing_published = await asyncio.to_thread(
                routing_table.publish, endpoints, upstreams, 5.0
            )
        else:
            gateway = self.managed.get("gateway")
            if gateway and gateway.alive() and gateway.proc is not None:
                gateway.proc.send_signal(signal.SIGHUP)
        wanted = {u["name"] for u in upstreams}
        if not await self.gateway_follows(wanted, timeout=3.0):
            log.warning("the gateway has not taken the new routing table yet")

    async def gateway_follows(self, names: set[str], timeout: float) -> bool:
        """True once the gateway's upstreams are exactly `names` (it reads the table every
        `routing_interval_s`), False if that did not happen within `timeout`."""
        gateway = self.managed.get("gateway")
        if gateway is None:
            return False
        url = f"http://127.0.0.1:{gateway.spec.ports['http']}/upstreams"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(url) as r:
                        if r.status == 200 and set(await r.json()) == names:
                            return True
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                await asyncio.sleep(0.05)
        return False

    # -- controllers --------------------------------------------------------------------------
    async def wait_for_settled_controller(self, deadline: float) -> None:
        """With tasks, ready means a controller leads and every task serves, and the gateway
        routes by the table that controller published."""
        controllers = [m for m in self.managed.values() if m.spec.kind == "controller"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
            while True:
                for m in controllers:
                    try:
                        async with session.get(m.spec.ready_url) as r:
                            status = await r.json() if r.status == 200 else {}
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        continue
                    if status.get("role") == "leader" and status.get("settled") is True:
                        log.info("%s leads, every task serves", m.spec.name)
                        await self.wait_gateway_takes_table(session, deadline)
                        log.info("the gateway routes by the controllers' table")
                        return
                if time.monotonic() > deadline:
                    logs = ", ".join(str(m.log_path) for m in controllers)
                    raise RuntimeError(
                        f"no controller led with every task serving in time (see {logs})"
                    )
                await asyncio.sleep(0.05)

    async def wait_gateway_takes_table(
        self, session: aiohttp.ClientSession, deadline: float
    ) -> None:
        assert self.topology is not None
        table = await routing_table.fetch(session, raft_endpoints(self.topology))
        names = {u["name"] for u in table or []}
        if not names:
            raise RuntimeError("the leading controller published no routing table")
        if not await self.gateway_follows(names, max(0.5, deadline - time.monotonic())):
            raise RuntimeError(
                f"the gateway did not take the controllers' routing table {sorted(names)}"
            )

    # -- main -------------------------------------------------------------------------------
    async def run(self, ready_timeout: float) -> int:
        self.prepare()
        app = web.Application()
        app.router.add_get("/state", self.handle_state)
        app.router.add_post("/processes/{name}/hold", self.handle_hold)
        app.router.add_post("/processes/{name}/release", self.handle_release)
        app.router.add_post("/processes/{name}/restart", self.handle_restart)
        app.router.add_post("/nodes", self.handle_add_node)
        app.router.add_delete("/nodes/{node}", self.handle_remove_node)
        app.router.add_post("/shutdown", self.handle_shutdown)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.control_port).start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        code = 0
        try:
            for m in self.managed.values():
                self.spawn(m)
            self.write_state()
            deadline = time.monotonic() + ready_timeout
            await self.wait_ready(list(self.managed), ready_timeout)
            log.info("every process ready in %.2fs", time.time() - self.started_at)
            if self.spec.tasks > 0:  # the controllers place the tasks and route to them
                await self.wait_for_settled_controller(deadline)
            else:  # ready means the store has a leader too: experiments select it by raft-role
                await self.publish_routing_table()
            self.ready = True
            self.write_state()
            log.info("cluster ready in %.2fs", time.time() - self.started_at)
            monitor = asyncio.create_task(self.monitor())
            await self.stopping.wait()
            monitor.cancel()
        except Exception as exc:  # start-up failed: say why in the state, then clean up
            log.error("%s", exc)
            st = state_mod.read_state() or {}
            st["error"] = str(exc)
            state_mod.write_state(st)
            code = 1
        finally:
            await self.stop_all()
            await runner.cleanup()
            if code == 0:
                state_mod.remove_state()
            shutil.rmtree(self.run_dir / "prometheus-data", ignore_errors=True)
            for data in self.run_dir.glob("raft-*"):
                shutil.rmtree(data, ignore_errors=True)
        return code


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _write_json(path: Path, data: Any) -> None:
    """Write whole or not at all: readers (Prometheus, the controllers) never see half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _tail(path: Path | None, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines() if path else []
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=2)
    p.add_argument("--worker-config", default="{}")
    p.add_argument("--gateway-config", default="{}")
    p.add_argument("--restart-delay", type=float, default=1.0)
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--no-prometheus", action="store_true")
    p.add_argument("--raft-replicas", type=int, default=3)
    p.add_argument("--raft-config", default="{}")
    p.add_argument("--store", choices=["ours", "etcd"], default="ours")
    p.add_argument("--tasks", type=int, default=0)
    p.add_argument("--task-gpus", type=int, default=1)
    p.add_argument("--controllers", type=int, default=2)
    p.add_argument("--controller-config", default="{}")
    p.add_argument("--run-dir", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = ClusterSpec(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        worker_config=json.loads(args.worker_config),
        gateway_config=json.loads(args.gateway_config),
        prometheus=not args.no_prometheus,
        raft_replicas=args.raft_replicas,
        raft_config=json.loads(args.raft_config),
        store=args.store,
        tasks=args.tasks,
        task_gpus=args.task_gpus,
        controllers=args.controllers,
        controller_config=json.loads(args.controller_config),
    )
    try:
        spec.validate()
    except ValueError as exc:
        p.error(str(exc))
    if platform.machine() not in ("x86_64", "AMD64", "ppc64le"):
        os.environ.setdefault("ETCD_UNSUPPORTED_ARCH", "arm64")  # etcd 3.4 asks to be told
    run_dir = Path(args.run_dir) if args.run_dir else state_mod.home() / "cluster"
    sup = Supervisor(spec, run_dir, restart_delay=args.restart_delay)
    return asyncio.run(sup.run(args.ready_timeout))


if __name__ == "__main__":
    sys.exit(main())
