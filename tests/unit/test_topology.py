import json

from resilience.topology import ClusterSpec, build_topology, scrape_targets, upstreams_for_gateway


def topo(nodes=2, gpus=2):
    spec = ClusterSpec(nodes=nodes, gpus_per_node=gpus)
    ports = list(range(20000, 20000 + spec.port_count()))
    return spec, build_topology(spec, ports, "/tmp/run", "/usr/bin/prometheus")


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
    import pytest

    spec = ClusterSpec(nodes=1, gpus_per_node=1, raft_replicas=2)
    with pytest.raises(ValueError, match="at least 3"):
        build_topology(spec, list(range(30000, 30000 + spec.port_count())), "/tmp/r", "/x")
