"""The controller experiments end to end through Chaos Toolkit on one cluster with tasks: each
must pass with its checks judged, and leave no fault, hold or cordon behind for the next."""

from __future__ import annotations

import time

import httpx
import pytest

from resilience.state import read_state
from resilience.store_client import Store
from tests.integration.cluster_fixtures import chaos_home, running_cluster
from tests.integration.test_experiments import ROOT, Run, assert_cluster_whole, proxy_faults

pytestmark = pytest.mark.integration
QUICK = {
    "nodes": 4,
    "gpus_per_node": 2,
    "tasks": 4,
    "load_users": 8,
    "load_duration": 20,
    "warmup_s": 4,
    "prometheus_window_s": 30,
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("chaos-home")
    with running_cluster(home, nodes=4, gpus=2, tasks=4) as state:
        yield home, state


def leader_settled(state: dict) -> bool:
    for p in state["processes"]:
        if p["labels"]["role"] != "controller":
            continue
        try:
            s = httpx.get(f"http://127.0.0.1:{p['ports']['http']}/status", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            continue
        if s["role"] == "leader":
            return bool(s["settled"]) and not s["cordoned"]
    return False


def assert_clean(home, state: dict) -> None:
    """No fault in the proxy or ledger, no process held, one leader settled, nothing cordoned."""
    assert proxy_faults(state) == []
    deadline = time.monotonic() + 20
    while not leader_settled(state):
        assert time.monotonic() < deadline, "the controllers did not settle after the run"
        time.sleep(0.2)
    with chaos_home(home):
        current = read_state()
    assert not any(p["held"] for p in current["processes"])
    assert not (Store(state["raft_endpoints"]).get("nodes.schedule") or {})
    assert_cluster_whole(home)


# node-drain judges the balance at the end of the load, after the drain: it needs the real load
# (16 users; fewer leave too few requests per worker for a 5% bound) and time after the drain
# The 5% target itself is judged by the experiment and the nightly run: over a window of a
# few seconds the figure swings by several points, too much for a test that must not flake.
# Here 25% still tells balancing from plain hashing (which puts 50% and more on one worker).
DRAIN = {"load_users": 16, "load_duration": 30, "balance_window_s": 12, "balance_bound": 0.25}


@pytest.mark.parametrize(
    ("experiment", "checks", "overrides"),
    [
        ("gpu-xid79-migration", {"task-migration", "remediation-cordon"}, {}),
        ("node-drain", {"task-migration", "load-balance"}, DRAIN),
        ("zone-failover", {"task-migration", "rto", "rpo"}, {}),
        ("controller-leader-kill", {"controller-failover", "task-migration"}, {}),
    ],
)
def test_controller_experiment_passes_and_cleans_up(
    cluster, tmp_path, experiment, checks, overrides
):
    home, state = cluster
    path = str(ROOT / "experiments" / f"{experiment}.yaml")
    run = Run(tmp_path, home, path, {**QUICK, **overrides})
    code = run.wait(180)
    verdict = run.journal()["inference_chaos"]
    assert verdict["verdict"] == "passed", (verdict["reasons"], run.stderr()[-2000:])
    assert code == 0
    judged = {s.get("check"): s for s in verdict["slos"] if s.get("check")}
    assert checks <= set(judged)
    assert all(judged[c]["ok"] for c in checks)
    migration = judged["task-migration"]
    assert not migration["lost"] and not migration["duplicated"]
    assert "Tasks: where they ran" in (run.run_dir() / "report.html").read_text()
    assert_clean(home, state)
