"""The supervisor of the embedded cluster: starts every process, restarts what dies, stops all.

It plays the part of the kubelet: a killed worker comes back after a delay unless a fault
holds it down, and `down` leaves no process behind. Children get PR_SET_PDEATHSIG so they die
with the supervisor even when it is killed with SIGKILL.
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

from resilience import state as state_mod
from resilience.ports import free_ports
from resilience.prometheus import find_prometheus, render_config
from resilience.topology import (
    ClusterSpec,
    ProcessSpec,
    Topology,
    build_topology,
    raft_endpoints,
    scrape_targets,
    upstreams_for_gateway,
)

log = logging.getLogger("resilience.supervisor")
PR_SET_PDEATHSIG = 1


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

    # -- layout -----------------------------------------------------------------------------
    def prepare(self) -> None:
        prom = find_prometheus() if self.spec.prometheus else None
        ports = free_ports(self.spec.port_count() + 1)
        self.control_port = ports.pop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for old in self.run_dir.glob("raft-*"):  # a new cluster starts with an empty store
            shutil.rmtree(old, ignore_errors=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        topo = build_topology(self.spec, ports, str(self.run_dir), prom)
        self.topology = topo
        (self.run_dir / "links.json").write_text(
            json.dumps([link.to_json() for link in topo.links], indent=2)
        )
        (self.run_dir / "upstreams.json").write_text(
            json.dumps(upstreams_for_gateway(topo), indent=2)
        )
        targets = self.run_dir / "targets"
        targets.mkdir(exist_ok=True)
        (targets / "cluster.json").write_text(json.dumps(scrape_targets(topo), indent=2))
        (self.run_dir / "prometheus.yml").write_text(render_config(targets))
        for p in topo.processes:
            self.managed[p.name] = Managed(spec=p, log_path=self.run_dir / "logs" / f"{p.name}.log")

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
            "supervisor": {
                "pid": os.getpid(),
                "control_url": f"http://127.0.0.1:{self.control_port}",
            },
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
        from resilience import routing_table

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
        """SIGCONT (a paused process cannot exit), SIGTERM, then SIGKILL what is left."""
        procs = [m.proc for m in self.managed.values() if m.alive()]
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

    async def handle_shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"stopping": True})

    # -- main -------------------------------------------------------------------------------
    async def run(self, ready_timeout: float) -> int:
        self.prepare()
        app = web.Application()
        app.router.add_get("/state", self.handle_state)
        app.router.add_post("/processes/{name}/hold", self.handle_hold)
        app.router.add_post("/processes/{name}/release", self.handle_release)
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
            await self.wait_ready(list(self.managed), ready_timeout)
            # ready means the store has a leader too: experiments select it by raft-role
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
    )
    if platform.machine() not in ("x86_64", "AMD64", "ppc64le"):
        os.environ.setdefault("ETCD_UNSUPPORTED_ARCH", "arm64")  # etcd 3.4 asks to be told
    run_dir = Path(args.run_dir) if args.run_dir else state_mod.home() / "cluster"
    sup = Supervisor(spec, run_dir, restart_delay=args.restart_delay)
    return asyncio.run(sup.run(args.ready_timeout))


if __name__ == "__main__":
    sys.exit(main())
