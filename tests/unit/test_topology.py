import json

import pytest

from resilience.topology import (
    ClusterSpec,
    build_topology,
    cluster_document,
    node_workers,
    scrape_targets,
    upstreams_for_gateway,
)

SUPERVISOR = "http://127.0.0.1:19999"


def topo(nodes=2, gpus=2, **kwargs):
    spec = ClusterSpec(nodes=nodes, gpus_per_node=gpus, **kwargs)
    ports = list(range(20000, 20000 + spec.port_count()))
    return spec, build_topology(spec, ports, "/tmp/run", "/usr/bin/prometheus", SUPERVISOR)


def all_ports(t):
    return [port for p in t.processes for port in p.ports.values()] + [
        link.listen_port for link in t.links
    ]


def test_every_worker_has_pod_like_labels_and_a_proxied_link():
    spec, t = topo()
    workers = [p for p in t.processes if p.kind == "worker"]
    assert [w.name for w in workers] == spec.worker_names()
    assert workers[3].labels == {
        "app": "inference-worker",
        "role": "worker",
        "node": "node-1",
        "gpu": "1",
        "model": "deepseek-sim",
        "zone": "zone-b",
    }
    gateway_links = {link.target for link in t.links if link.source == "gateway"}
    assert gateway_links == {w.name for w in workers}


def test_ports_are_all_distinct():
    _, t = topo(4, 2)
    ports = [port for p in t.processes for port in p.ports.values()]
    ports += [link.listen_port for link in t.links]
    assert len(ports) == len(set(ports)) == 4 * 2 * 2 + 3 + 3 * 2 + 3 * 2


def test_gateway_reaches_workers_only_through_the_proxy():
    _, t = topo()
    by_name = {p.name: p for p in t.processes}
    for up in upstreams_for_gateway(t):
        port = int(up["url"].rsplit(":", 1)[1])
        assert port != by_name[up["name"]].ports["http"]
        assert port in {link.listen_port for link in t.links}


def test_prometheus_scrapes_every_other_process_with_its_labels():
    _, t = topo()
    groups = scrape_targets(t)
    assert len(groups) == len(t.processes) - 1
    assert all(g["labels"]["job"] for g in groups)


def test_every_replica_reaches_every_other_through_its_own_link():
    _, t = topo()
    replicas = [p for p in t.processes if p.kind == "raft"]
    assert [r.name for r in replicas] == ["raft-0", "raft-1", "raft-2"]
    raft_links = {(link.source, link.target) for link in t.links if link.source.startswith("raft")}
    assert raft_links == {
        (a, b)
        for a in ("raft-0", "raft-1", "raft-2")
        for b in ("raft-0", "raft-1", "raft-2")
        if a != b
    }
    argv = replicas[0].argv
    peers = json.loads(argv[argv.index("--peers") + 1])
    by_pair = {(link.source, link.target): link.listen_port for link in t.links}
    assert peers == {
        "1": f"http://127.0.0.1:{by_pair[('raft-0', 'raft-1')]}",
        "2": f"http://127.0.0.1:{by_pair[('raft-0', 'raft-2')]}",
    }


def test_a_store_of_two_replicas_is_refused():
    spec = ClusterSpec(nodes=1, gpus_per_node=1, raft_replicas=2)
    with pytest.raises(ValueError, match="at least 3"):
        build_topology(spec, list(range(30000, 30000 + spec.port_count())), "/tmp/r", "/x")


# -- tasks, controllers and zones -----------------------------------------------------------


def test_without_tasks_there_are_no_controllers():
    spec, t = topo(3, 2)
    assert not [p for p in t.processes if p.kind == "controller"]
    assert spec.port_count() == len(all_ports(t))


def test_zones_split_the_nodes_with_the_first_half_rounded_up():
    spec, t = topo(5, 1, tasks=2)
    zones = {p.labels["node"]: p.labels["zone"] for p in t.processes if p.kind == "worker"}
    assert zones == {
        "node-0": "zone-a",
        "node-1": "zone-a",
        "node-2": "zone-a",
        "node-3": "zone-b",
        "node-4": "zone-b",
    }
    for replica in (p for p in t.processes if p.kind == "raft"):
        assert replica.labels["zone"] == zones[replica.labels["node"]]
    # the gateway, the proxy and Prometheus sit on node-0 but carry no zone to be selected by
    assert all("zone" not in t.process(n).labels for n in ("gateway", "faultproxy", "prometheus"))
    assert spec.zone(7) == "zone-b"  # a node added at run time


def test_controllers_sit_on_the_first_and_the_last_node_with_their_own_ports():
    spec, t = topo(3, 2, tasks=4)
    controllers = [p for p in t.processes if p.kind == "controller"]
    assert [c.name for c in controllers] == ["controller-0", "controller-1"]
    assert [c.labels for c in controllers] == [
        {"app": "inference-controller", "role": "controller", "node": "node-0", "zone": "zone-a"},
        {"app": "inference-controller", "role": "controller", "node": "node-2", "zone": "zone-b"},
    ]
    assert all(c.ready_path == "/status" for c in controllers)
    ports = all_ports(t)
    assert len(ports) == len(set(ports)) == spec.port_count() == 3 * 2 * 2 + 3 + 3 * 2 + 6 + 2


def test_controller_command_line_follows_the_contract():
    spec, t = topo(2, 2, tasks=3, controller_config={"probe_interval_s": 0.1})
    argv = t.process("controller-1").argv
    assert argv[1:3] == ["-m", "resilience.controller"]

    def arg(flag):
        return argv[argv.index(flag) + 1]

    assert arg("--id") == "controller-1"
    assert int(arg("--port")) == t.process("controller-1").ports["http"]
    replicas = [p for p in t.processes if p.kind == "raft"]
    # direct client ports of the replicas, in id order, never the proxy's links
    assert arg("--store").split(",") == [f"http://127.0.0.1:{r.ports['http']}" for r in replicas]
    assert arg("--supervisor") == SUPERVISOR
    assert arg("--cluster") == "/tmp/run/cluster.json"
    assert (arg("--tasks"), arg("--task-gpus")) == ("3", "1")
    assert json.loads(arg("--config")) == {"probe_interval_s": 0.1}
    _, bare = topo(2, 2, tasks=3)
    assert "--config" not in bare.process("controller-0").argv


def test_prometheus_scrapes_the_controllers():
    _, t = topo(2, 2, tasks=1)
    by_name = {g["labels"]["instance_name"]: g for g in scrape_targets(t)}
    group = by_name["controller-0"]
    assert group["targets"] == [f"127.0.0.1:{t.process('controller-0').ports['http']}"]
    assert group["labels"]["job"] == "controller" and group["labels"]["role"] == "controller"


def test_cluster_document_names_every_worker_with_its_own_and_its_link_url():
    _, t = topo(2, 2, tasks=2)
    doc = cluster_document(t)
    assert list(doc["nodes"]) == ["node-0", "node-1"]
    node1 = doc["nodes"]["node-1"]
    assert (node1["gpus"], node1["zone"], sorted(node1["workers"])) == (2, "zone-b", ["0", "1"])
    entry = node1["workers"]["1"]
    worker = t.process("worker-n1-g1")
    link = next(link for link in t.links if link.target == "worker-n1-g1")
    assert entry == {
        "name": "worker-n1-g1",
        "url": f"http://127.0.0.1:{worker.ports['http']}",
        "link_url": f"http://127.0.0.1:{link.listen_port}",
    }


def test_a_node_added_at_run_time_has_the_same_shape_as_the_initial_ones():
    spec, t = topo(2, 2)
    processes, links = node_workers(spec, 5, 3, iter(range(40000, 40006)))
    assert [p.name for p in processes] == ["worker-n5-g0", "worker-n5-g1", "worker-n5-g2"]
    assert processes[2].labels["node"] == "node-5" and processes[2].labels["zone"] == "zone-b"
    assert [(link.source, link.target) for link in links] == [
        ("gateway", p.name) for p in processes
    ]
    assert {link.upstream_port for link in links} == {p.ports["http"] for p in processes}
    t.processes += processes
    t.links += links
    assert cluster_document(t)["nodes"]["node-5"]["gpus"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"tasks": 5, "nodes": 2, "gpus_per_node": 2},
            r"5 tasks of 1 GPU do not fit on 2 node\(s\) of 2 GPUs \(at most 4\)",
        ),
        ({"tasks": 3, "task_gpus": 2, "nodes": 2, "gpus_per_node": 3}, "at most 2"),
        ({"tasks": 1, "task_gpus": 4, "gpus_per_node": 2}, "task of 4 GPUs does not fit"),
        ({"tasks": 1, "task_gpus": 0}, "at least one GPU"),
        ({"tasks": -1}, "tasks must be 0 or more"),
        ({"tasks": 1, "store": "etcd"}, "controllers need our store; use --store ours"),
        ({"tasks": 1, "raft_replicas": 0}, "controllers need the metadata store"),
        ({"tasks": 1, "controllers": 0}, "at least one controller"),
    ],
)
def test_a_cluster_that_cannot_hold_its_tasks_is_refused_in_one_line(kwargs, message):
    spec = ClusterSpec(**kwargs)
    with pytest.raises(ValueError, match=message) as caught:
        spec.validate()
    assert "\n" not in str(caught.value)


def test_every_task_that_fits_is_accepted():
    odd = ClusterSpec(nodes=2, gpus_per_node=3, tasks=2, task_gpus=2)
    odd.validate()  # one GPU stays idle on each node
    assert odd.task_capacity() == 2
    full = ClusterSpec(nodes=4, gpus_per_node=2, tasks=8)
    full.validate()
    assert full.task_capacity() == 8
    ClusterSpec(store="etcd").validate()  # etcd is fine without tasks


def test_tasks_need_the_supervisor_url():
    spec = ClusterSpec(nodes=1, gpus_per_node=1, tasks=1)
    with pytest.raises(ValueError, match="supervisor"):
        build_topology(spec, list(range(30000, 30000 + spec.port_count())), "/tmp/r", "/x")
