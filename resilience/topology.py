"""What the embedded cluster is made of: every process, its labels, ports and links.

Pure data, no processes: the supervisor turns it into running processes, the fault backend
reads the same names and labels back from the state file. Labels follow the pods of a real
deployment (`app`, `role`, `node`, `gpu`) so one experiment file selects the same victims
locally and on Kubernetes.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# With tasks the gateway balances what each task serves over time, not only what is in flight:
# DESIGN's < 5% max/mean - 1 on Zipf sessions (1.02: room for the edges of a probe's window).
TASK_GATEWAY_DEFAULTS = {"load_factor": 1.02, "balance_window_s": 10.0}


@dataclass
class ProcessSpec:
    """One process of the cluster, as the supervisor starts it."""

    name: str
    kind: str  # worker | gateway | faultproxy | prometheus | raft | etcd | controller
    argv: list[str]
    ports: dict[str, int]
    labels: dict[str, str]
    ready_path: str

    @property
    def ready_url(self) -> str:
        port = self.ports.get("http") or self.ports.get("control")
        return f"http://127.0.0.1:{port}{self.ready_path}"


@dataclass
class Link:
    """A TCP link from `source` to `target` that passes through the fault proxy."""

    name: str
    source: str
    target: str
    listen_port: int
    upstream_host: str
    upstream_port: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ClusterSpec:
    nodes: int = 4
    gpus_per_node: int = 2
    model: str = "deepseek-sim"
    worker_config: dict[str, Any] = field(default_factory=dict)
    gateway_config: dict[str, Any] = field(default_factory=dict)
    prometheus: bool = True
    raft_replicas: int = 3
    raft_config: dict[str, Any] = field(default_factory=dict)
    store: str = "ours"  # or "etcd": the same replicas, labels and probes, a real etcd
    tasks: int = 0  # model replicas placed by the controllers; 0 = no controllers
    task_gpus: int = 1  # GPUs of one task, all on one node
    controllers: int = 2  # controller processes, only when tasks > 0
    controller_config: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError with a one-line reason when this cluster cannot be laid out."""
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("a cluster needs at least one node with one GPU")
        if self.store not in ("ours", "etcd"):
            raise ValueError(f"unknown store {self.store!r}; expected 'ours' or 'etcd'")
        if self.raft_replicas != 0 and self.raft_replicas < 3:
            raise ValueError("the metadata store needs at least 3 replicas (or 0 for none)")
        if self.tasks < 0:
            raise ValueError(f"tasks must be 0 or more, got {self.tasks}")
        if self.tasks == 0:
            return
        if self.task_gpus < 1:
            raise ValueError(f"a task needs at least one GPU, got task_gpus {self.task_gpus}")
        if self.task_gpus > self.gpus_per_node:
            raise ValueError(
                f"a task of {_gpus(self.task_gpus)} does not fit on a node of "
                f"{_gpus(self.gpus_per_node)} (task_gpus <= gpus_per_node)"
            )
        capacity = self.task_capacity()
        if self.tasks > capacity:
            raise ValueError(
                f"{self.tasks} tasks of {_gpus(self.task_gpus)} do not fit on {self.nodes} "
                f"node(s) of {_gpus(self.gpus_per_node)} (at most {capacity})"
            )
        if self.store != "ours":
            raise ValueError("controllers need our store; use --store ours")
        if self.raft_replicas == 0:
            raise ValueError("controllers need the metadata store; use --raft-replicas 3")
        if self.controllers < 1:
            raise ValueError("a cluster with tasks needs at least one controller")

    def task_capacity(self) -> int:
        """How many tasks fit: a task's GPUs sit on one node, so leftovers per node are idle."""
        return self.nodes * (self.gpus_per_node // max(1, self.task_gpus))

    def controller_names(self) -> list[str]:
        return [f"controller-{i}" for i in range(self.controllers)] if self.tasks > 0 else []

    def worker_names(self) -> list[str]:
        return [f"worker-n{n}-g{g}" for n in range(self.nodes) for g in range(self.gpus_per_node)]

    def raft_names(self) -> list[str]:
        return [f"raft-{i}" for i in range(self.raft_replicas)]

    def zone(self, node_index: int) -> str:
        """zone-a for the first half of the initial nodes (rounded up), zone-b for the rest and
        for nodes added at run time; node 0 (gateway, proxy, Prometheus) is always zone-a."""
        return "zone-a" if node_index < math.ceil(self.nodes / 2) else "zone-b"

    def port_count(self) -> int:
        # each worker: its own port + its link's proxy port; gateway; proxy control; prometheus;
        # each replica: client and peer port, plus one proxied link to every other replica
        # (etcd members reach each other directly: see _etcd_layout); one per controller
        n = self.raft_replicas
        links = n * (n - 1) if self.store == "ours" else 0
        return 2 * len(self.worker_names()) + 3 + 2 * n + links + len(self.controller_names())


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


@dataclass
class Topology:
    processes: list[ProcessSpec]
    links: list[Link]

    def process(self, name: str) -> ProcessSpec:
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(name)


def build_topology(
    spec: ClusterSpec,
    ports: list[int],
    run_dir: str,
    prometheus_binary: str | None,
    supervisor_url: str | None = None,
) -> Topology:
    """Lay out the cluster on the given free ports; files it needs go into `run_dir`.

    `supervisor_url` is the supervisor's control URL, which the controllers call (restart a
    worker); it is needed only when the cluster runs tasks."""
    spec.validate()
    if len(ports) < spec.port_count():
        raise ValueError(f"need {spec.port_count()} ports, got {len(ports)}")
    if spec.tasks > 0 and not supervisor_url:
        raise ValueError("a cluster with tasks needs the supervisor's control URL")
    it = iter(ports)
    py = sys.executable
    processes: list[ProcessSpec] = []
    links: list[Link] = []
    for n in range(spec.nodes):
        node_processes, node_links = node_workers(spec, n, spec.gpus_per_node, it)
        processes += node_processes
        links += node_links
    raft_processes, raft_links = _raft_layout(spec, it, run_dir)
    processes += raft_processes
    links += raft_links
    gateway_port, proxy_port, prom_port = next(it), next(it), next(it)
    proxy_argv = [
        py,
        "-m",
        "resilience.faultproxy",
        "--host",
        "127.0.0.1",
        "--control-port",
        str(proxy_port),
        "--links",
        f"{run_dir}/links.json",
    ]
    processes.append(
        ProcessSpec(
            name="faultproxy",
            kind="faultproxy",
            argv=proxy_argv,
            ports={"control": proxy_port},
            labels={"app": "fault-proxy", "role": "proxy", "node": "node-0"},
            ready_path="/links",
        )
    )
    gw_argv = [
        py,
        "-m",
        "resilience.gateway",
        "--host",
        "127.0.0.1",
        "--port",
        str(gateway_port),
        "--upstreams",
        f"{run_dir}/upstreams.json",
    ]
    gateway_config = {**(TASK_GATEWAY_DEFAULTS if spec.tasks else {}), **spec.gateway_config}
    if gateway_config:
        gw_argv += ["--config", json.dumps(gateway_config)]
    if raft_processes and spec.store == "ours":  # the gateway follows its routing table
        gw_argv += [
            "--store",
            ",".join(f"http://127.0.0.1:{p.ports['http']}" for p in raft_processes),
        ]
    processes.append(
        ProcessSpec(
            name="gateway",
            kind="gateway",
            argv=gw_argv,
            ports={"http": gateway_port},
            labels={"app": "inference-gateway", "role": "gateway", "node": "node-0"},
            ready_path="/health",
        )
    )
    if spec.prometheus:
        if not prometheus_binary:
            raise ValueError("prometheus binary is required when prometheus is enabled")
        from resilience.prometheus import prometheus_argv

        processes.append(
            ProcessSpec(
                name="prometheus",
                kind="prometheus",
                argv=prometheus_argv(prometheus_binary, prom_port, run_dir),
                ports={"http": prom_port},
                labels={"app": "prometheus", "role": "monitoring", "node": "node-0"},
                ready_path="/-/ready",
            )
        )
    processes += _controller_layout(spec, it, run_dir, raft_processes, supervisor_url or "")
    return Topology(processes=processes, links=links)


def node_workers(
    spec: ClusterSpec, node_index: int, gpus: int, ports: Iterator[int]
) -> tuple[list[ProcessSpec], list[Link]]:
    """The workers of one node and the gateway's proxied link to each (two ports per GPU);
    used for the initial nodes and for a node the supervisor adds at run time."""
    node = f"node-{node_index}"
    processes: list[ProcessSpec] = []
    links: list[Link] = []
    for g in range(gpus):
        name = f"worker-n{node_index}-g{g}"
        port = next(ports)
        argv = [
            sys.executable,
            "-m",
            "resilience.worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--name",
            name,
            "--node",
            node,
            "--gpu",
            str(g),
            "--model",
            spec.model,
        ]
        if spec.worker_config:
            argv += ["--config", json.dumps(spec.worker_config)]
        processes.append(
            ProcessSpec(
                name=name,
                kind="worker",
                argv=argv,
                ports={"http": port},
                labels={
                    "app": "inference-worker",
                    "role": "worker",
                    "node": node,
                    "gpu": str(g),
                    "model": spec.model,
                    "zone": spec.zone(node_index),
                },
                ready_path="/health",
            )
        )
        links.append(
            Link(
                name=f"gateway->{name}",
                source="gateway",
                target=name,
                listen_port=next(ports),
                upstream_host="127.0.0.1",
                upstream_port=port,
            )
        )
    return processes, links


def controller_nodes(spec: ClusterSpec) -> list[int]:
    """Node index of each controller: spread from the first node to the last, so that losing
    one node (or zone-b) leaves a controller standing."""
    count = len(spec.controller_names())
    if count <= 1:
        return [0] * count
    return [round(i * (spec.nodes - 1) / (count - 1)) for i in range(count)]


def _controller_layout(
    spec: ClusterSpec,
    ports: Iterator[int],
    run_dir: str,
    replicas: list[ProcessSpec],
    supervisor_url: str,
) -> list[ProcessSpec]:
    """The controllers (docs/internals.md "Tasks and the controllers"); they reach the store
    directly, not through the proxy, and learn the workers from cluster.json."""
    store = ",".join(f"http://127.0.0.1:{p.ports['http']}" for p in replicas)
    processes = []
    for name, node_index in zip(spec.controller_names(), controller_nodes(spec), strict=True):
        port = next(ports)
        argv = [
            sys.executable,
            "-m",
            "resilience.controller",
            "--id",
            name,
            "--port",
            str(port),
            "--store",
            store,
            "--supervisor",
            supervisor_url,
            "--cluster",
            f"{run_dir}/cluster.json",
            "--tasks",
            str(spec.tasks),
            "--task-gpus",
            str(spec.task_gpus),
        ]
        if spec.controller_config:
            argv += ["--config", json.dumps(spec.controller_config)]
        processes.append(
            ProcessSpec(
                name=name,
                kind="controller",
                argv=argv,
                ports={"http": port},
                labels={
                    "app": "inference-controller",
                    "role": "controller",
                    "node": f"node-{node_index}",
                    "zone": spec.zone(node_index),
                },
                ready_path="/status",
            )
        )
    return processes


def upstreams_for_gateway(topology: Topology) -> list[dict[str, Any]]:
    """The gateway reaches every worker through its link in the fault proxy."""
    out = []
    for link in topology.links:
        if link.source != "gateway":
            continue
        worker = topology.process(link.target)
        out.append(
            {
                "name": worker.name,
                "url": f"http://127.0.0.1:{link.listen_port}",
                "labels": worker.labels,
            }
        )
    return out


def cluster_document(topology: Topology, added: set[str] | None = None) -> dict[str, Any]:
    """cluster.json for the controllers: every node's GPUs, zone and workers, each with its own
    URL (health and DCGM polls) and the gateway's proxied link (the routing table's URL).
    Nodes in `added` came at run time (`initial: false`): the autoscaler may remove them."""
    link_port = {
        link.target: link.listen_port for link in topology.links if link.source == "gateway"
    }
    nodes: dict[str, dict[str, Any]] = {}
    workers = [p for p in topology.processes if p.kind == "worker"]
    workers.sort(key=lambda p: (_node_index(p.labels["node"]), int(p.labels["gpu"])))
    for p in workers:
        node = nodes.setdefault(
            p.labels["node"],
            {
                "gpus": 0,
                "zone": p.labels.get("zone", ""),
                "initial": p.labels["node"] not in (added or set()),
                "workers": {},
            },
        )
        node["gpus"] += 1
        node["workers"][p.labels["gpu"]] = {
            "name": p.name,
            "url": f"http://127.0.0.1:{p.ports['http']}",
            "link_url": f"http://127.0.0.1:{link_port[p.name]}",
        }
    return {"nodes": nodes}


def _node_index(node: str) -> int:
    return int(node.rsplit("-", 1)[1])


def scrape_targets(topology: Topology) -> list[dict[str, Any]]:
    """Prometheus file_sd groups: one per process that serves /metrics (direct, not proxied)."""
    groups = []
    for p in topology.processes:
        if p.kind == "prometheus":
            continue
        port = p.ports.get("http") or p.ports.get("control")
        labels = {"job": p.kind, "instance_name": p.name, **p.labels}
        groups.append({"targets": [f"127.0.0.1:{port}"], "labels": labels})
    return groups


def _raft_layout(
    spec: ClusterSpec, ports: Iterator[int], run_dir: str
) -> tuple[list[ProcessSpec], list[Link]]:
    """The metadata store's replicas; every replica reaches every other through its own
    proxied link `raft-I->raft-J`, so a partition between any two is one proxy rule."""
    if spec.raft_replicas == 0:
        return [], []
    if spec.raft_replicas < 3:
        raise ValueError("the metadata store needs at least 3 replicas (or 0 for none)")
    if spec.store == "etcd":
        return _etcd_layout(spec, ports, run_dir), []
    if spec.store != "ours":
        raise ValueError(f"unknown store {spec.store!r}; expected 'ours' or 'etcd'")
    names = spec.raft_names()
    client = {name: next(ports) for name in names}
    peer = {name: next(ports) for name in names}
    links = [
        Link(
            name=f"{a}->{b}",
            source=a,
            target=b,
            listen_port=next(ports),
            upstream_host="127.0.0.1",
            upstream_port=peer[b],
        )
        for a in names
        for b in names
        if a != b
    ]
    processes = []
    for i, name in enumerate(names):
        peers = {
            str(j): f"http://127.0.0.1:{link.listen_port}"
            for j, other in enumerate(names)
            for link in links
            if link.source == name and link.target == other
        }
        argv = [
            sys.executable,
            "-m",
            "resilience.raft",
            "--id",
            str(i),
            "--host",
            "127.0.0.1",
            "--client-port",
            str(client[name]),
            "--peer-port",
            str(peer[name]),
            "--peers",
            json.dumps(peers),
            "--data-dir",
            f"{run_dir}/{name}",
        ]
        if spec.raft_config:
            argv += ["--config", json.dumps(spec.raft_config)]
        processes.append(
            ProcessSpec(
                name=name,
                kind="raft",
                argv=argv,
                ports={"http": client[name], "peer": peer[name]},
                labels={
                    "app": "metadata-store",
                    "role": "raft",
                    "node": f"node-{i % spec.nodes}",
                    "zone": spec.zone(i % spec.nodes),
                },
                ready_path="/status",
            )
        )
    return processes, links


def _etcd_layout(spec: ClusterSpec, ports: Iterator[int], run_dir: str) -> list[ProcessSpec]:
    """A real etcd (Debian's etcd-server) in place of our store, with the same names and
    labels, so the Raft experiments and probes run unchanged against it. Its members reach
    each other directly (an etcd member advertises one peer URL to all), so process faults
    work on it but the fault proxy cannot partition it."""
    import shutil

    binary = shutil.which("etcd")
    if not binary:
        raise ValueError(
            "etcd binary not found on PATH: install the Debian package "
            "'etcd-server' (apt-get install etcd-server)"
        )
    names = spec.raft_names()
    client = {name: next(ports) for name in names}
    peer = {name: next(ports) for name in names}
    cluster = ",".join(f"{n}=http://127.0.0.1:{peer[n]}" for n in names)
    heartbeat = int(float(spec.raft_config.get("heartbeat_interval_s", 0.05)) * 1000)
    # etcd wants an election timeout of at least 5 heartbeats (it randomizes it up to 2x)
    election = max(
        int(float(spec.raft_config.get("election_timeout_min_s", 0.15)) * 1000), 5 * heartbeat
    )
    processes = []
    for i, name in enumerate(names):
        argv = [
            binary,
            "--name",
            name,
            "--data-dir",
            f"{run_dir}/{name}",
            "--listen-client-urls",
            f"http://127.0.0.1:{client[name]}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client[name]}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer[name]}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer[name]}",
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            str(heartbeat),
            "--election-timeout",
            str(election),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        processes.append(
            ProcessSpec(
                name=name,
                kind="etcd",
                argv=argv,
                ports={"http": client[name], "peer": peer[name]},
                labels={
                    "app": "metadata-store",
                    "role": "raft",
                    "node": f"node-{i % spec.nodes}",
                    "zone": spec.zone(i % spec.nodes),
                    "store": "etcd",
                },
                ready_path="/version",
            )
        )
    return processes


def raft_endpoints(topology: Topology) -> list[str]:
    """Client URLs of the store's replicas, in id order."""
    return [
        f"http://127.0.0.1:{p.ports['http']}"
        for p in topology.processes
        if p.kind in ("raft", "etcd")
    ]
