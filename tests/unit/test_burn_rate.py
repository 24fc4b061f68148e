"""Burn-rate arithmetic, its PromQL, and the validation of an experiment's stop condition."""

from __future__ import annotations

import math

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments.stop_condition import StopCondition, parse
from probes import burn_rate as br


def test_burn_rate_is_the_error_ratio_over_the_budget():
    assert br.error_budget(0.999) == pytest.approx(0.001)
    assert br.burn_rate(10, 1000, 0.999) == pytest.approx(10.0)  # 1% errors, 0.1% budget
    assert br.burn_rate(1000, 1000, 0.999) == pytest.approx(1000.0)
    assert br.burn_rate(0, 50, 0.99) == 0.0
    assert br.burn_rate(3, 0, 0.999) is None
    assert br.burn_rate(12, 10, 0.9) == pytest.approx(10.0), "errors never exceed requests"
    with pytest.raises(ValueError, match="slo"):
        br.error_budget(1.0)


def test_judge_needs_the_minimum_and_breaches_only_above_the_limit():
    quiet = br.judge(errors=5, requests=10, slo=0.999, max_burn_rate=14.4, min_requests=20)
    assert quiet["burn_rate"] == pytest.approx(500.0) and not quiet["judged"]
    assert not quiet["breached"]
    at_limit = br.judge(errors=144, requests=10_000, slo=0.999, max_burn_rate=14.4, min_requests=20)
    assert at_limit["burn_rate"] == pytest.approx(14.4) and not at_limit["breached"]
    above = br.judge(errors=145, requests=10_000, slo=0.999, max_burn_rate=14.4, min_requests=20)
    assert above["breached"] and above["error_ratio"] == pytest.approx(0.0145)


def test_judge_rounds_extrapolated_counts_to_whole_requests():
    result = br.judge(errors=2.4, requests=39.6, slo=0.99, max_burn_rate=1, min_requests=1)
    assert (result["errors"], result["requests"]) == (2, 40)
    assert result["error_ratio"] == pytest.approx(0.05)
    none = br.judge(errors=0.0, requests=0.3, slo=0.99, max_burn_rate=1, min_requests=1)
    assert none["burn_rate"] is None and none["error_ratio"] is None and not none["judged"]


def test_prom_range_reads_as_prometheus_durations():
    assert br.prom_range(30) == "30s"
    assert br.prom_range(2.0) == "2s"
    assert br.prom_range(1.5) == "1500ms"
    with pytest.raises(ValueError):
        br.prom_range(0)


def test_queries_count_every_non_2xx_outcome_of_the_gateway_with_increase():
    queries = br.burn_rate_queries(30)
    assert queries == {
        "errors": 'sum(increase(gateway_requests_total{status!~"2.."}[30s]))',
        "requests": "sum(increase(gateway_requests_total[30s]))",
    }


class FakeProbe:
    """Stands in for probes.prom.PrometheusProbe: answers from a dict of query -> value."""

    answers: dict[str, list] = {}
    asked: list[tuple[str, float | None]] = []

    def __init__(self, url, timeout_s):
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def instant(self, promql, at=None):
        FakeProbe.asked.append((promql, at))
        return FakeProbe.answers.get(promql, [])


@pytest.fixture
def fake_prometheus(monkeypatch):
    monkeypatch.setattr(br, "PrometheusProbe", FakeProbe)
    FakeProbe.asked = []
    return FakeProbe


def test_measure_asks_both_queries_at_one_instant_and_judges(fake_prometheus):
    queries = br.burn_rate_queries(10)
    fake_prometheus.answers = {
        queries["requests"]: [({}, 400.4)],
        queries["errors"]: [({}, 20.2)],
    }
    result = br.measure_burn_rate(10, 0.999, 14.4, 20, url="http://p", at=1000.0)
    assert [a for _, a in fake_prometheus.asked] == [1000.0, 1000.0]
    assert {q for q, _ in fake_prometheus.asked} == set(queries.values())
    assert (result["requests"], result["errors"]) == (400, 20)
    assert result["burn_rate"] == pytest.approx(50.0)
    assert result["breached"] and result["ok"] is False and result["check"] == "burn-rate"
    assert result["summary"] == "burn rate 50.0x > 14.4x over 10s (20/400 failed)"


def test_measure_without_error_series_or_traffic_counts_zero(fake_prometheus):
    queries = br.burn_rate_queries(30)
    fake_prometheus.answers = {queries["requests"]: [({}, 300.0)]}
    clean = br.measure_burn_rate(30, url="http://p", at=5.0)
    assert clean["burn_rate"] == 0.0 and clean["ok"] and not clean["breached"]
    fake_prometheus.answers = {queries["requests"]: [({}, math.nan)]}
    idle = br.measure_burn_rate(30, url="http://p", at=5.0)
    assert idle["requests"] == 0 and idle["burn_rate"] is None and not idle["judged"]
    assert len(fake_prometheus.asked) == 3, "no error query when nothing was requested"


def test_measure_refuses_a_bad_slo_before_asking(fake_prometheus):
    with pytest.raises(ActivityFailed, match="slo"):
        br.measure_burn_rate(30, slo=1.5, url="http://p")
    assert fake_prometheus.asked == []


# -- the experiment's stop_condition ------------------------------------------------------


def test_defaults_and_units():
    condition = StopCondition.from_spec({})
    assert condition == StopCondition(0.999, 14.4, 30.0, 20, 1.0)
    assert condition.max_error_ratio == pytest.approx(0.0144)
    given = StopCondition.from_spec(
        {"slo": 0.99, "max_burn_rate": 6, "window": "1m", "min_requests": 5, "poll": "500ms"}
    )
    assert given == StopCondition(0.99, 6.0, 60.0, 5, 0.5)
    assert given.to_json()["promql"]["requests"] == "sum(increase(gateway_requests_total[60s]))"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"slo": 1}, "stop_condition.slo: must be within (0, 1)"),
        ({"slo": "high"}, "stop_condition.slo: 'high' is not a number"),
        ({"max_burn_rate": 0}, "stop_condition.max_burn_rate: must be > 0"),
        ({"max_burn_rate": 2000}, "stop_condition.max_burn_rate: 2000 can never be exceeded"),
        ({"max_burn_rate": True}, "stop_condition.max_burn_rate: True is not a number"),
        ({"window": "1s"}, "stop_condition.window: must be at least 2s"),
        ({"window": "soon"}, "stop_condition.window: cannot read 'soon'"),
        ({"min_requests": 0}, "stop_condition.min_requests: must be a whole number >= 1"),
        ({"min_requests": 2.5}, "stop_condition.min_requests: must be a whole number >= 1"),
        ({"poll": "45s"}, "stop_condition.poll: must be within 0.1s and the window (30s)"),
        ({"poll": "10ms"}, "stop_condition.poll: must be within"),
        ({"windw": "30s"}, "stop_condition: unknown key(s) windw; known: slo,"),
        (["slo"], "stop_condition: expected a mapping"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(spec, message):
    with pytest.raises(ActivityFailed) as caught:
        StopCondition.from_spec(spec)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_fills_placeholders_from_the_configuration_and_absent_is_none():
    experiment = {"stop_condition": {"max_burn_rate": "${burn}", "window": "${w}"}}
    condition = parse(experiment, {"burn": 6, "w": "10s"})
    assert condition is not None
    assert (condition.max_burn_rate, condition.window_s) == (6.0, 10.0)
    assert parse({"title": "no guard"}, {}) is None
    assert parse({"stop_condition": None}, {}) is None
