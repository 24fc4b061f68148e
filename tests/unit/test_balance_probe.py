"""Load balance: the max/mean - 1 figure, who counts, and the probe's PromQL glue."""

import pytest
from chaoslib.exceptions import ActivityFailed

from probes import balance


def entry(name, task=None, node=None):
    labels = {"role": "worker"}
    if task:
        labels["task"] = task
    if node:
        labels["node"] = node
    return {"name": name, "url": "http://127.0.0.1:1", "labels": labels}


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 100, "b": 100}, 0.0),
        ({"a": 110, "b": 90, "c": 100}, 0.1),
        ({"a": 300, "b": 0, "c": 0}, 2.0),
        ({"a": 7}, 0.0),
    ],
)
def test_max_over_mean_minus_1(counts, expected):
    assert balance.max_over_mean_minus_1(counts) == pytest.approx(expected)


@pytest.mark.parametrize("counts", [{}, {"a": 0, "b": 0}])
def test_nothing_counted_has_no_figure(counts):
    assert balance.max_over_mean_minus_1(counts) is None


def test_only_workers_serving_a_task_count():
    routing = [
        entry("worker-n0-g0", task="task-0"),
        entry("worker-n1-g0", task="task-1"),
        entry("worker-n1-g1"),  # idle capacity, routed for nothing
    ]
    assert balance.routed_members(routing) == {"worker-n0-g0": "node-0", "worker-n1-g0": "node-1"}
    # without controllers nothing carries a task: every routed worker counts
    plain = [entry("worker-n0-g0"), entry("w-x", node="node-4")]
    assert balance.routed_members(plain) == {"worker-n0-g0": "node-0", "w-x": "node-4"}


def test_a_routed_worker_without_requests_counts_as_zero_and_nodes_sum():
    members = {"worker-n0-g0": "node-0", "worker-n0-g1": "node-0", "worker-n1-g0": "node-1"}
    served = {"worker-n0-g0": 50.0, "worker-n1-g0": 100.0, "worker-n9-g9": 40.0}
    assert balance.per_member(served, members) == {
        "worker-n0-g0": 50.0,
        "worker-n0-g1": 0.0,
        "worker-n1-g0": 100.0,
    }
    assert balance.per_member(served, members, by="node") == {"node-0": 50.0, "node-1": 100.0}
    with pytest.raises(ValueError, match="by must be"):
        balance.per_member(served, members, by="rack")


def test_judge_balance_against_the_bound():
    members = {"w0": "node-0", "w1": "node-1"}
    tight = balance.judge_balance({"w0": 102, "w1": 98, "stray": 5}, members, bound=0.05)
    assert tight["ok"] and tight["check"] == "load-balance"
    assert tight["max_over_mean_minus_1"] == pytest.approx(0.02)
    assert tight["ignored"] == ["stray"]
    skewed = balance.judge_balance({"w0": 130, "w1": 70}, members, bound=0.05)
    assert not skewed["ok"] and skewed["max_over_mean_minus_1"] == pytest.approx(0.3)
    assert "busiest w0" in skewed["summary"]
    idle = balance.judge_balance({}, members, bound=0.05)
    assert not idle["ok"] and idle["max_over_mean_minus_1"] is None


class FakeStore:
    def __init__(self, data):
        self.data = data

    def get(self, key):
        return self.data.get(key)


class FakeProm:
    """Stands in for PrometheusProbe: answers the one instant query the probe makes."""

    queries = []

    def __init__(self, url, timeout_s):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def instant(self, promql, at=None):
        FakeProm.queries.append(promql)
        return [
            ({"worker": "worker-n0-g0"}, 120.0),
            ({"worker": "worker-n1-g0"}, 80.0),
            ({"worker": "worker-n1-g1"}, float("nan")),
        ]


@pytest.fixture
def wired(monkeypatch):
    routing = [entry("worker-n0-g0", task="task-0"), entry("worker-n1-g0", task="task-1")]
    monkeypatch.setattr(
        balance, "store_for", lambda configuration: FakeStore({"routing.upstreams": routing})
    )
    monkeypatch.setattr(balance, "PrometheusProbe", FakeProm)
    FakeProm.queries = []


def test_load_balance_queries_the_window_and_judges(wired):
    out = balance.load_balance(
        window_s=20, bound=0.25, configuration={"prometheus_url": "http://p"}
    )
    assert FakeProm.queries == [
        'sum by (worker) (increase(gateway_requests_total{status=~"2.."}[20s]))'
    ]
    assert out["per_member"] == {"worker-n0-g0": 120.0, "worker-n1-g0": 80.0}
    assert out["max_over_mean_minus_1"] == pytest.approx(0.2) and out["ok"]
    by_node = balance.load_balance(by="node", configuration={"prometheus_url": "http://p"})
    assert by_node["per_member"] == {"node-0": 120.0, "node-1": 80.0} and not by_node["ok"]


def test_load_balance_refuses_what_it_cannot_measure(wired, monkeypatch):
    cfg = {"prometheus_url": "http://p"}
    with pytest.raises(ActivityFailed, match="by: 'rack'"):
        balance.load_balance(by="rack", configuration=cfg)
    with pytest.raises(ActivityFailed, match="at least 1 second"):
        balance.load_balance(window_s=0.2, configuration=cfg)
    monkeypatch.setattr(balance, "store_for", lambda configuration: FakeStore({}))
    with pytest.raises(ActivityFailed, match="lists no worker"):
        balance.load_balance(configuration=cfg)
