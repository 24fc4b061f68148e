"""`inference-chaos run|validate|cleanup` on the Kubernetes target, against the fake API server.

A real `chaos run` subprocess talks to the fake over loopback: a fault is a Chaos Mesh object
that SIGTERM removes; `validate` prints manifests and creates nothing; `cleanup` finds a run's
leftovers by label and removes them, and only them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from experiments import context, faults
from experiments.backends import forget_connections
from experiments.kube.names import GPU_FAULT_TAINT, OPT_IN_LABEL, RUN_LABEL
from inference_chaos.cli import main
from tests.fakekube import FakeKube

pytestmark = pytest.mark.integration
NS = "inference"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    forget_connections()
    server = FakeKube()
    server.start()
    server.add_namespace(NS, {OPT_IN_LABEL: "enabled"})
    for i in range(3):
        server.add_node(f"node-{i}")
        server.add_pod(NS, f"worker-{i}", {"role": "worker"}, node=f"node-{i}")
        server.add_pod(NS, f"raft-{i}", {"role": "raft"}, node=f"node-{i}")
    server.kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    yield server
    forget_connections()
    server.stop()


def experiment(tmp_path: Path, fake: FakeKube, method: list[dict[str, Any]]) -> Path:
    path = tmp_path / "experiment.yaml"
    doc = {
        "version": "1.0.0",
        "title": "a fault on kubernetes",
        "description": "written by the test",
        "configuration": {
            "target": "kubernetes",
            "kubeconfig": str(fake.kubeconfig),
            "namespace": NS,
            "inject_timeout": "3s",
            "recover_timeout": "3s",
        },
        "controls": [
            {
                "name": "inference-chaos",
                "provider": {"type": "python", "module": "experiments.control"},
            }
        ],
        "method": method,
        "rollbacks": [
            {
                "name": "remove-every-fault",
                "type": "action",
                "provider": {
                    "type": "python",
                    "module": "experiments.faults",
                    "func": "recover_all",
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def fault(func: str, **arguments: Any) -> dict[str, Any]:
    return {
        "name": func.replace("_", "-"),
        "type": "action",
        "provider": {
            "type": "python",
            "module": "experiments.faults",
            "func": func,
            "arguments": arguments,
        },
    }


def chaos_objects(fake: FakeKube) -> list[dict[str, Any]]:
    kinds = ("podchaos", "networkchaos", "stresschaos", "iochaos", "httpchaos", "timechaos")
    return [o for plural in kinds for o in fake.objects(plural)]


def test_sigterm_during_a_run_removes_the_chaos_mesh_object(fake, tmp_path):
    path = experiment(
        tmp_path,
        fake,
        [fault("pod_failure", selector={"labelSelectors": {"role": "worker"}}, duration="60s")],
    )
    env = {**os.environ, "INFERENCE_CHAOS_OUT": str(tmp_path / "runs")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_chaos.cli", "run", str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not chaos_objects(fake):
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        assert chaos_objects(fake), "the fault was never created"
        time.sleep(0.5)  # injected and holding
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "SIGTERM received, removing every fault" in output
    assert chaos_objects(fake) == []
    deletes = [r for r in fake.requests if r.method == "DELETE" and "/podchaos/" in r.path]
    assert deletes


def test_a_run_that_ends_removes_its_fault_and_journals_the_manifest(fake, tmp_path):
    path = experiment(
        tmp_path,
        fake,
        [fault("network_delay", selector={"labelSelectors": {"role": "raft"}}, mode="all",
               latency="200ms", duration="1s")],
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "inference_chaos.cli", "run", str(path)],
        cwd=tmp_path,
        env={**os.environ, "INFERENCE_CHAOS_OUT": str(tmp_path / "runs")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert chaos_objects(fake) == []
    journal = next((tmp_path / "runs").glob("*/journal.json"))
    import json

    faults_run = json.loads(journal.read_text())["inference_chaos"]["faults"]
    manifest = faults_run[0]["details"]["manifests"][0]
    assert manifest["kind"] == "NetworkChaos"
    assert manifest["spec"]["action"] == "delay"
    report = (journal.parent / "report.html").read_text()
    assert "NetworkChaos" in report and "what was created on the cluster" in report


def test_a_namespace_not_opted_in_stops_the_run_before_anything(fake, tmp_path):
    fake.add_namespace("plain")
    path = experiment(tmp_path, fake, [fault("pod_failure", duration="1s")])
    doc = yaml.safe_load(path.read_text())
    doc["configuration"]["namespace"] = "plain"
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        [sys.executable, "-m", "inference_chaos.cli", "run", str(path)],
        cwd=tmp_path,
        env={**os.environ, "INFERENCE_CHAOS_OUT": str(tmp_path / "runs")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "namespace plain is not opted in" in done.stderr
    assert not [r for r in fake.requests if r.method == "POST"]


def test_validate_prints_the_manifests_and_creates_nothing(fake, tmp_path, capsys):
    path = experiment(
        tmp_path,
        fake,
        [
            fault("stress", cpu_workers=2, cpu_load=80,
                  selector={"labelSelectors": {"role": "worker"}}),
            fault("http_abort", port=8000, selector={"labelSelectors": {"role": "raft"}}),
        ],
    )  # fmt: skip
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    docs = list(yaml.safe_load_all(out))
    kinds = [d.get("kind") for d in docs if "kind" in d]
    assert kinds == ["StressChaos", "HTTPChaos"]
    stress = next(d for d in docs if d.get("kind") == "StressChaos")
    assert stress["spec"]["stressors"]["cpu"] == {"workers": 2, "load": 80}
    assert not [r for r in fake.requests if r.method in ("POST", "PATCH", "DELETE")]


def test_validate_reports_a_selector_matching_nothing_in_one_line(fake, tmp_path, capsys):
    path = experiment(
        tmp_path, fake, [fault("pod_kill", selector={"labelSelectors": {"role": "tokenizer"}})]
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matches nothing" in err and "pod-kill" in err


def test_cleanup_removes_one_runs_leftovers_then_every_runs(fake, tmp_path, capsys):
    cfg = {"target": "kubernetes", "kubeconfig": str(fake.kubeconfig), "namespace": NS}
    runs = []
    for title in ("first run", "second run"):
        run = context.start_run(title, tmp_path / "runs")
        faults.pod_failure(selector={"labelSelectors": {"role": "worker"}}, configuration=cfg)
        faults.gpu_xid(xid=79, selector={"pods": {NS: [f"worker-{len(runs)}"]}},
                       configuration=cfg)  # fmt: skip
        runs.append(run.run_id)
        context.end_run()  # "crashed": nothing recovered
    assert len(chaos_objects(fake)) == 4
    node_taints = [t for n in fake.objects("nodes") for t in n["spec"].get("taints") or []]
    assert [t["key"] for t in node_taints] == [GPU_FAULT_TAINT, GPU_FAULT_TAINT]

    assert main(["cleanup"]) == 2  # neither --run nor --all
    assert "give --run ID" in capsys.readouterr().err

    assert main(["cleanup", "--run", runs[0], "--kubeconfig", str(fake.kubeconfig)]) == 0
    left = chaos_objects(fake)
    assert len(left) == 2
    assert {o["metadata"]["labels"][RUN_LABEL] for o in left} != {runs[0]}
    assert len([t for n in fake.objects("nodes") for t in n["spec"].get("taints") or []]) == 1

    assert main(["cleanup", "--all", "--kubeconfig", str(fake.kubeconfig)]) == 0
    assert chaos_objects(fake) == []
    assert fake.objects("jobs") == []
    assert not [t for n in fake.objects("nodes") for t in n["spec"].get("taints") or []]
    capsys.readouterr()
    assert main(["cleanup", "--all", "--kubeconfig", str(fake.kubeconfig)]) == 0
    assert "nothing to clean up" in capsys.readouterr().out


def test_cleanup_with_a_missing_kubeconfig_is_one_line(tmp_path, capsys):
    assert main(["cleanup", "--all", "--kubeconfig", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def crashed_run(fake: FakeKube, tmp_path: Path, title: str) -> str:
    """A run that injected a fault and died without removing it."""
    cfg = {"target": "kubernetes", "kubeconfig": str(fake.kubeconfig), "namespace": NS}
    run = context.start_run(title, tmp_path / "runs")
    faults.pod_failure(selector={"labelSelectors": {"role": "worker"}}, configuration=cfg)
    context.end_run()
    return run.run_id


def test_recover_reaches_the_cluster_from_a_crashed_runs_ledger(fake, tmp_path, capsys):
    crashed_run(fake, tmp_path, "crashed")
    assert len(chaos_objects(fake)) == 1
    forget_connections()
    assert main(["recover"]) == 0
    assert "removed 1 leftover fault(s)" in capsys.readouterr().out
    assert chaos_objects(fake) == []


def test_nightly_on_kubernetes_removes_old_leftovers_and_runs_the_files(fake, tmp_path, capsys):
    crashed_run(fake, tmp_path, "an earlier night")
    path = experiment(
        tmp_path,
        fake,
        [fault("http_delay", delay="2s", selector={"labelSelectors": {"role": "worker"}},
               duration="1s")],
    )  # fmt: skip
    out = tmp_path / "night"
    code = main(
        ["nightly", "--target", "kubernetes", str(path), "--out", str(out),
         "--var", f"kubeconfig={fake.kubeconfig}", "--var", f"namespace={NS}"]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "removed leftovers of earlier runs: PodChaos" in printed.out + printed.err
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert [e["verdict"] for e in summary["experiments"]] == ["passed"]
    assert summary["target"] == "kubernetes"
    assert (out / "junit.xml").is_file()
    created = [r.body["kind"] for r in fake.requests if r.method == "POST" and r.body]
    assert "HTTPChaos" in created
    assert chaos_objects(fake) == []
