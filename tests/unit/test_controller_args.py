"""The controller's command line: `--remediation` picks the supervisor (the embedded cluster,
unchanged) or Kubernetes (pod deletion, namespace from $POD_NAMESPACE), and refuses half-given
choices at start rather than at the first restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from resilience.controller import parse_args, remediation_from_args
from resilience.remediation import KubernetesRemediation, SupervisorRemediation
from resilience.topology import ClusterSpec, build_topology

BASE = ["--id", "controller-0", "--port", "8080", "--store", "http://s:7000", "--cluster", "c.json"]


@pytest.fixture(autouse=True)
def no_pod_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)


def test_the_default_is_the_supervisor_at_the_given_url() -> None:
    args = parse_args(BASE + ["--supervisor", "http://127.0.0.1:9000/"])
    remediation = remediation_from_args(args)
    assert isinstance(remediation, SupervisorRemediation)
    assert remediation.url == "http://127.0.0.1:9000"


def test_the_embedded_clusters_command_line_still_parses() -> None:
    """resilience/topology.py starts the controllers with --supervisor and no --remediation."""
    spec = ClusterSpec(nodes=2, gpus_per_node=2, tasks=2)
    ports = list(range(21000, 21000 + spec.port_count()))
    topology = build_topology(
        spec, ports, "/tmp/run", "/usr/bin/prometheus", "http://127.0.0.1:20999"
    )
    argv = topology.process("controller-0").argv
    assert argv[1:3] == ["-m", "resilience.controller"]
    remediation = remediation_from_args(parse_args(argv[3:]))
    assert isinstance(remediation, SupervisorRemediation)
    assert remediation.url == "http://127.0.0.1:20999"


def test_the_supervisor_needs_its_url() -> None:
    with pytest.raises(SystemExit):
        parse_args(BASE)
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--remediation", "supervisor"])


def test_kubernetes_takes_the_namespace_from_the_downward_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "inference")
    remediation = remediation_from_args(parse_args(BASE + ["--remediation", "kubernetes"]))
    assert isinstance(remediation, KubernetesRemediation)
    assert remediation.namespace == "inference"
    assert remediation.kubeconfig is None  # the pod's in-cluster credentials


def test_an_explicit_namespace_and_kubeconfig_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "inference")
    args = parse_args(
        BASE + ["--remediation", "kubernetes", "--namespace", "serving", "--kubeconfig", "k.yaml"]
    )
    remediation = remediation_from_args(args)
    assert isinstance(remediation, KubernetesRemediation)
    assert (remediation.namespace, remediation.kubeconfig) == ("serving", Path("k.yaml"))


@pytest.mark.parametrize(
    "extra",
    [
        ["--remediation", "kubernetes"],  # no namespace anywhere
        ["--remediation", "kubernetes", "--namespace", "x", "--supervisor", "http://s"],
        ["--supervisor", "http://s", "--kubeconfig", "k.yaml"],  # a kubeconfig the run ignores
        ["--remediation", "ssh", "--supervisor", "http://s"],
    ],
)
def test_half_given_choices_are_refused(extra: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(BASE + extra)


def test_nodes_are_not_available_on_kubernetes_and_say_why() -> None:
    remediation = KubernetesRemediation("inference")
    added = asyncio.run(remediation.add_node(2))
    removed = asyncio.run(remediation.remove_node("node-4"))
    assert not added.ok and not added.available
    assert "cluster autoscaler adds nodes" in added.detail
    assert not removed.ok and not removed.available and removed.node == "node-4"
    assert "cluster autoscaler removes nodes" in removed.detail
