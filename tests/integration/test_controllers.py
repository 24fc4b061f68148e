"""The controllers on the real embedded cluster: tasks move off failed GPUs and nodes, a
standby takes over from a killed leader, a flood scales the tasks out and back in, and every
fault and cordon is gone afterwards."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from experiments import context, faults, scaling
from loadtests.runner import LoadRun
from loadtests.settings import LoadSettings
from resilience import launcher
from resilience.store_client import Store
from tests.integration.cluster_fixtures import running_cluster

pytestmark = pytest.mark.integration
SERVING = {"labelSelectors": {"role": "worker", "task-state": "serving"}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("chaos-home")
    with running_cluster(
        home, nodes=4, gpus=2, tasks=4, restart_delay=0.2, prometheus=False
    ) as state:
        yield state


@pytest.fixture
def store(cluster) -> Store:
    return Store(cluster["raft_endpoints"])


@pytest.fixture
def run(cluster, tmp_path):
    ctx = context.start_run("controllers", tmp_path)
    configuration = {"raft_endpoints": cluster["raft_endpoints"]}
    yield ctx
    try:
        faults.recover_all(configuration=configuration)
    finally:
        context.end_run()
    # every fault removed, and the cluster back where it started for the next test
    assert httpx.get(cluster["proxy_control_url"] + "/faults", timeout=2).json() == []
    wait_for(lambda: leader_status()["settled"] and not leader_status()["cordoned"], "settled")
    assert not any(p["held"] for p in launcher.status()["processes"])


def controllers() -> list[dict[str, Any]]:
    state = launcher.status()
    return [p for p in state["processes"] if p["labels"]["role"] == "controller"]


def status_of(process: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return httpx.get(
            f"http://127.0.0.1:{process['ports']['http']}/status", timeout=1, trust_env=False
        ).json()
    except (httpx.HTTPError, ValueError):
        return None


def leader_status() -> dict[str, Any]:
    for p in controllers():
        s = status_of(p)
        if s and s["role"] == "leader":
            return s
    return {"settled": False, "cordoned": ["no leader"]}


def wait_for(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def store_leader_node() -> str | None:
    for p in launcher.status()["processes"]:
        if p["labels"]["role"] != "raft":
            continue
        try:
            url = f"http://127.0.0.1:{p['ports']['http']}/status"
            if httpx.get(url, timeout=1).json().get("role") == "leader":
                return p["labels"]["node"]
        except (httpx.HTTPError, ValueError):
            continue
    return None


def worker_task(name: str) -> dict[str, Any]:
    p = next(p for p in launcher.status()["processes"] if p["name"] == name)
    try:
        return httpx.get(f"http://127.0.0.1:{p['ports']['http']}/task", timeout=2).json()
    except httpx.HTTPError:  # restarting
        return {}


def events_since(store: Store, since: float, kind: str) -> list[dict[str, Any]]:
    events = store.get("controller.events") or []
    return [e for e in events if e["kind"] == kind and e.get("at", e.get("assigned_at")) >= since]


def migrations_done(store: Store, since: float, count: int) -> list[dict[str, Any]]:
    moved = [e for e in events_since(store, since, "migration") if e.get("routed_at")]
    return moved if len(moved) >= count else []


def placements(store: Store) -> dict[str, dict[str, Any]]:
    return store.get("tasks.assignment")["placements"]


def assert_whole(store: Store, tasks: int) -> None:
    """Every task placed exactly once, on distinct GPUs, serving there and routed."""
    placed = placements(store)
    assert len(placed) == tasks
    gpus = [(p["node"], g) for p in placed.values() for g in p["gpus"]]
    assert len(gpus) == len(set(gpus))
    routed = {u["labels"]["task"]: u["name"] for u in store.get("routing.upstreams")}
    assert set(routed) == set(placed)
    for task, worker in routed.items():
        assert worker_task(worker) == {**worker_task(worker), "id": task, "state": "serving"}


def test_initial_placement_serves_every_task(cluster, store):
    wait_for(lambda: leader_status()["settled"], "the first placement")
    assert_whole(store, 4)
    roles = sorted(status_of(p)["role"] for p in controllers())
    assert roles == ["leader", "standby"]
    # the gateway routes only to the workers that serve a task
    upstreams = httpx.get(cluster["gateway_url"] + "/upstreams", timeout=2).json()
    assert set(upstreams) == {u["name"] for u in store.get("routing.upstreams")}


def test_xid79_moves_the_task_within_a_second_and_cordons_the_node(cluster, store, run):
    wait_for(lambda: leader_status()["settled"], "settled")
    record = faults.gpu_xid(79, selector=SERVING, mode="one")
    victim = record["victims"][0]
    moved = []
    wait_for(
        lambda: moved.extend(migrations_done(store, record["injected_at"], 1)) or moved, "move"
    )
    event = moved[0]
    assert event["reason"] == "xid 79"
    assert event["detected_at"] - record["injected_at"] < 1.0
    assert event["routed_at"] - event["detected_at"] < 1.0
    node = victim.split("-")[1].replace("n", "node-")
    assert event["from"]["node"] == node and event["to"] != event["from"]
    assert leader_status()["cordoned"] == [node]
    assert_whole(store, 4)
    assert victim not in {u["name"] for u in store.get("routing.upstreams")}
    faults.recover_all()
    # after the "reboot" the node is schedulable again, the task does not move back
    wait_for(lambda: not leader_status()["cordoned"], "uncordon")
    assert any(
        e["action"] == "uncordon" for e in events_since(store, record["injected_at"], "remediation")
    )


def test_node_crash_moves_every_task_of_the_node(cluster, store, run):
    wait_for(lambda: leader_status()["settled"], "settled")
    before = placements(store)
    # not node-0 (gateway, proxy) and not the store leader's node: a crash that also takes the
    # store's leader adds the store's failover to the migration (raft-failover judges that)
    spared = {"node-0", store_leader_node()}
    node = next(p["node"] for p in sorted(before.values(), key=str) if p["node"] not in spared)
    on_node = sorted(t for t, p in before.items() if p["node"] == node)
    record = faults.node_crash(node=node)
    moved: list[dict[str, Any]] = []

    def all_moved() -> bool:
        moved[:] = migrations_done(store, record["injected_at"], len(on_node))
        return bool(moved)

    wait_for(all_moved, f"every task of {node} to move")
    assert sorted(e["task"] for e in moved) == on_node
    assert all(e["routed_at"] - e["detected_at"] < 1.0 for e in moved)
    assert all(p["node"] != node for p in placements(store).values())
    assert_whole(store, 4)


def test_app_xid_restarts_the_worker_and_the_task_stays(cluster, store, run):
    wait_for(lambda: leader_status()["settled"], "settled")
    record = faults.gpu_xid(13, selector=SERVING, mode="one")
    victim = record["victims"][0]
    task = worker_task(victim)["id"]
    wait_for(
        lambda: any(
            e["action"] == "restart" and e["worker"] == victim
            for e in events_since(store, record["injected_at"], "remediation")
        ),
        "a restart",
    )
    wait_for(lambda: worker_task(victim).get("state") == "serving", "the task loaded again")
    assert worker_task(victim)["id"] == task
    assert not events_since(store, record["injected_at"], "migration")


def test_killed_leader_is_replaced_and_the_new_one_migrates(cluster, store, run):
    wait_for(lambda: leader_status()["settled"], "settled")
    old = leader_status()["id"]
    record = faults.pod_kill(
        selector={"labelSelectors": {"role": "controller", "controller-role": "leader"}},
        mode="one",
        restart_after=None,
    )
    assert record["victims"] == [old]
    wait_for(lambda: leader_status().get("id") not in (None, old), "a new leader", timeout=5)
    leaders = events_since(store, record["injected_at"], "leader")
    assert leaders and leaders[0]["at"] - record["injected_at"] < 3.0
    xid = faults.gpu_xid(79, selector=SERVING, mode="one")
    wait_for(lambda: migrations_done(store, xid["injected_at"], 1), "the new leader migrates")
    assert_whole(store, 4)


def test_a_flood_scales_tasks_out_ahead_and_back_in(cluster, store, run, tmp_path):
    wait_for(lambda: leader_status()["settled"], "settled")
    configuration = {"raft_endpoints": cluster["raft_endpoints"]}
    scaling.enable_autoscaler(
        target_qps_per_replica=4,
        min_replicas=2,
        max_replicas=10,  # more than the 8 GPUs: the controller must ask for a node
        scale_in_cooldown_s=4,
        forecast_horizon_s=4,
        configuration=configuration,
    )
    try:
        started = time.time()
        settings = LoadSettings(
            users=2, duration=24, shape="spike", spike_users=24, spike_at=4, spike_duration=10,
            max_tokens=8,
        )  # fmt: skip
        load = LoadRun(cluster["gateway_url"], tmp_path / "load", settings)
        load.start()
        # during the flood: more tasks than the 8 GPUs hold, so a node is added and used
        wait_for(lambda: len(placements(store)) > 8, "tasks placed on an added node", 25)
        load.wait(60)
        scales = events_since(store, started, "scale")
        peak = max((e.get("to", 0) for e in scales), default=0)
        assert peak > 8, scales
        added = [e for e in scales if e.get("action") == "add-node"]
        assert added and added[0]["ok"], scales
        first_out = min(e["at"] for e in scales if e.get("to", 0) > 4)
        assert first_out < started + 4 + 10  # scaled out while the flood still ran
        wait_for(lambda: len(store.get("tasks.spec")["tasks"]) < peak, "scale-in", timeout=20)
    finally:
        scaling.disable_autoscaler(configuration=configuration)
    store.put("tasks.spec", {"tasks": [{"id": f"task-{i}", "gpus": 1} for i in range(4)]})
    wait_for(lambda: len(placements(store)) == 4 and leader_status()["settled"], "4 tasks again")
    # with no policy left, a node added for the flood goes again once it carries no task
    wait_for(lambda: not launcher.status().get("added_nodes"), "the added node removed")
