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
    assert {link.target for link in t.links} == {w.name for w in workers}


def test_ports_are_all_distinct():
    _, t = topo(4, 2)
    ports = [port for p in t.processes for port in p.ports.values()]
    ports += [link.listen_port for link in t.links]
    assert len(ports) == len(set(ports)) == 4 * 2 * 2 + 3


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
