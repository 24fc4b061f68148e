"""GPU probes: the PromQL they build and how they judge what Prometheus answers.

A fake stands in for `PrometheusProbe` (the seam every probe talks through): it answers each
PromQL string from a table and records what it was asked, so no server is needed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from chaoslib.exceptions import ActivityFailed

from probes import gpu
from resilience.prometheus import ALERT_RULES, render_config

URL = "http://prom.test:9090"


def dcgm(node: str, index: str, **extra: str) -> dict[str, str]:
    """Labels as Prometheus stores a worker's DCGM series in the embedded cluster."""
    return {
        "job": "worker",
        "instance_name": f"{node}-w{index}",
        "node": node,
        "gpu": index,
        "exported_gpu": index,
        "UUID": f"GPU-{node}-{index}",
        "Hostname": node,
        **extra,
    }


class FakeProm:
    """Answers instant queries from `answers`; unknown queries yield no series."""

    def __init__(self, answers: dict[str, list[tuple[dict, float]]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, float | None]] = []
        self.url = URL

    def __call__(self, url: str, timeout_s: float) -> FakeProm:
        assert url == URL
        return self

    def __enter__(self) -> FakeProm:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def instant(self, promql: str, at: float | None = None) -> list[tuple[dict, float]]:
        self.asked.append((promql, at))
        return self.answers.get(promql, [])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    def install(answers: dict[str, list[tuple[dict, float]]]) -> FakeProm:
        prom = FakeProm(answers)
        monkeypatch.setattr(gpu, "PrometheusProbe", prom)
        return prom

    return install


def run(probe, **kwargs: Any) -> dict[str, Any]:
    result = probe(configuration={"prometheus_url": URL}, **kwargs)
    json.dumps(result, allow_nan=False)  # plain, strict JSON
    assert result["check"] and "\n" not in result["summary"]
    return result


# --- PromQL --------------------------------------------------------------------------------


def test_xid_promql_any_and_given_codes() -> None:
    assert gpu.xid_promql([], 60) == "max_over_time(DCGM_FI_DEV_XID_ERRORS[60s])"
    assert gpu.xid_promql([48, 79], 30, 'app="w"') == (
        'max_over_time((DCGM_FI_DEV_XID_ERRORS{app="w"} == 48 or '
        'DCGM_FI_DEV_XID_ERRORS{app="w"} == 79)[30s:])'
    )


def test_latency_and_throughput_promql_with_offset() -> None:
    assert gpu.latency_promql("e2e", 0.95, 60, 300) == (
        "histogram_quantile(0.95, sum by (le) "
        "(rate(vllm:e2e_request_latency_seconds_bucket[60s] offset 300s)))"
    )
    assert gpu.latency_promql("ttft", 0.5, 30).startswith(
        "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[30s])"
    )
    assert gpu.throughput_promql(60, 300, "{node='n1'}") == (
        "sum(rate(vllm:generation_tokens_total{node='n1'}[60s] offset 300s))"
    )
    with pytest.raises(ActivityFailed, match="metric must be one of"):
        gpu.latency_promql("itl", 0.95, 60)


def test_identity_prefers_exporter_gpu_over_target_label() -> None:
    ident = gpu.gpu_identity({"gpu": "target", "exported_gpu": "3", "Hostname": "h1"})
    assert ident == {"node": "h1", "gpu": "3", "uuid": None, "instance": None}


# --- xid_seen ------------------------------------------------------------------------------


def test_xid_seen_any_names_the_gpu_and_fails(fake) -> None:
    prom = fake(
        {
            "max_over_time(DCGM_FI_DEV_XID_ERRORS[60s])": [
                (dcgm("node-0", "0"), 0.0),
                (dcgm("node-1", "0"), 79.0),
            ]
        }
    )
    result = run(gpu.xid_seen, at=1000.0)
    assert result["ok"] is False
    assert result["seen"] == [
        {"node": "node-1", "gpu": "0", "uuid": "GPU-node-1-0", "instance": "node-1-w0", "xid": 79}
    ]
    assert result["fatal"] == [79] and result["gpus_watched"] == 2
    assert "node-1/gpu0 (XID 79)" in result["summary"]
    assert prom.asked == [("max_over_time(DCGM_FI_DEV_XID_ERRORS[60s])", 1000.0)]


def test_xid_seen_expected_code_passes_and_node_filter(fake) -> None:
    every = "max_over_time(DCGM_FI_DEV_XID_ERRORS[30s])"
    codes = "max_over_time((DCGM_FI_DEV_XID_ERRORS == 79)[30s:])"
    fake(
        {
            every: [(dcgm("node-0", "0"), 79.0), (dcgm("node-1", "0"), 79.0)],
            codes: [(dcgm("node-0", "0"), 79.0), (dcgm("node-1", "0"), 79.0)],
        }
    )
    result = run(gpu.xid_seen, xid=79, node="node-1", within_s=30, expect=True)
    assert result["ok"] is True
    assert [g["node"] for g in result["seen"]] == ["node-1"]
    assert result["gpus_watched"] == 1 and result["promql"] == codes


def test_xid_seen_other_code_is_not_the_one_asked(fake) -> None:
    fake({"max_over_time(DCGM_FI_DEV_XID_ERRORS[60s])": [(dcgm("node-0", "0"), 13.0)]})
    result = run(gpu.xid_seen, xid=[79, 48])
    assert result["ok"] is True and result["seen"] == []
    assert "none of 1 GPUs reported XID 48/79" in result["summary"]


def test_xid_seen_without_any_gpu_series_cannot_measure(fake) -> None:
    fake({"max_over_time(DCGM_FI_DEV_XID_ERRORS[60s])": [(dcgm("node-0", "0"), 0.0)]})
    with pytest.raises(ActivityFailed, match="no GPU series on node 'node-9'"):
        gpu.xid_seen(node="node-9", url=URL)
    with pytest.raises(ActivityFailed, match="positive"):
        gpu.xid_seen(xid=0, url=URL)


# --- throttling, memory, utilisation -------------------------------------------------------------


def test_gpu_throttled_by_clock_or_temperature(fake) -> None:
    fake(
        {
            "min_over_time(DCGM_FI_DEV_SM_CLOCK[60s])": [
                (dcgm("node-0", "0"), 1980.0),
                (dcgm("node-0", "1"), 800.0),
                (dcgm("node-1", "0"), 1980.0),
            ],
            "max_over_time(DCGM_FI_DEV_GPU_TEMP[60s])": [
                (dcgm("node-0", "0"), 60.0),
                (dcgm("node-0", "1"), 60.0),
                (dcgm("node-1", "0"), 91.0),
            ],
        }
    )
    result = run(gpu.gpu_throttled)
    assert result["ok"] is False
    reasons = {f"{g['node']}/{g['gpu']}": g["reasons"] for g in result["throttled"]}
    assert reasons == {"node-0/1": ["SM clock 800 MHz < 1400"], "node-1/0": ["91 C > 85"]}
    assert len(result["gpus"]) == 3


def test_gpu_throttled_passes_when_all_fast_and_cool(fake) -> None:
    fake(
        {
            "min_over_time(DCGM_FI_DEV_SM_CLOCK[60s])": [(dcgm("node-0", "0"), 1980.0)],
            "max_over_time(DCGM_FI_DEV_GPU_TEMP[60s])": [(dcgm("node-0", "0"), 84.0)],
        }
    )
    assert run(gpu.gpu_throttled)["ok"] is True


def test_gpu_memory_share_per_gpu(fake) -> None:
    promql = "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)"
    fake({promql: [(dcgm("node-0", "0"), 0.9), (dcgm("node-0", "1"), 0.99)]})
    result = run(gpu.gpu_memory)
    assert result["ok"] is False and [g["gpu"] for g in result["over"]] == ["1"]
    assert "highest node-0/gpu1 at 99.0%" in result["summary"]
    assert run(gpu.gpu_memory, max_used_share=0.995)["ok"] is True


def test_gpu_util_high_is_sustained_minimum(fake) -> None:
    promql = "min_over_time(DCGM_FI_DEV_GPU_UTIL[120s])"
    prom = fake({promql: [(dcgm("node-0", "0"), 86.0), (dcgm("node-1", "0"), 85.0)]})
    result = run(gpu.gpu_util_high, for_s=120)
    assert result["ok"] is False and [g["node"] for g in result["hot"]] == ["node-0"]
    assert prom.asked[0][0] == promql
    assert run(gpu.gpu_util_high, for_s=120, threshold=90)["ok"] is True


def test_nan_values_are_not_judged(fake) -> None:
    fake({"min_over_time(DCGM_FI_DEV_GPU_UTIL[60s])": [(dcgm("node-0", "0"), float("nan"))]})
    with pytest.raises(ActivityFailed, match="no GPU series"):
        gpu.gpu_util_high(url=URL)


# --- regressions against the baseline ------------------------------------------------------------


def latency_answers(now: float | None, baseline: float | None) -> dict:
    answers = {}
    if now is not None:
        answers[gpu.latency_promql("e2e", 0.95, 60)] = [({}, now)]
    if baseline is not None:
        answers[gpu.latency_promql("e2e", 0.95, 60, 300)] = [({}, baseline)]
    return answers


@pytest.mark.parametrize(
    ("now", "baseline", "ok"),
    [(1.19, 1.0, True), (1.2, 1.0, True), (1.21, 1.0, False), (0.5, 1.0, True)],
)
def test_latency_regression_limit_is_twenty_percent(fake, now, baseline, ok) -> None:
    fake(latency_answers(now, baseline))
    result = run(gpu.latency_regression)
    assert result["ok"] is ok
    assert result["change_percent"] == pytest.approx((now / baseline - 1) * 100)


def test_latency_regression_without_requests_cannot_measure(fake) -> None:
    fake(latency_answers(float("nan"), 1.0))
    with pytest.raises(ActivityFailed, match="no e2e latency now"):
        gpu.latency_regression(url=URL)
    fake(latency_answers(1.0, None))
    with pytest.raises(ActivityFailed, match="no e2e latency baseline"):
        gpu.latency_regression(url=URL)


@pytest.mark.parametrize(
    ("now", "ok"), [(96.0, True), (95.0, True), (94.9, False), (None, False), (150.0, True)]
)
def test_throughput_drop_limit_is_five_percent(fake, now, ok) -> None:
    answers = {gpu.throughput_promql(60, 300): [({}, 100.0)]}
    if now is not None:
        answers[gpu.throughput_promql(60)] = [({}, now)]
    fake(answers)
    result = run(gpu.throughput_drop)
    assert result["ok"] is ok
    assert result["now_tokens_per_s"] == (now or 0.0)


def test_throughput_drop_without_baseline_cannot_measure(fake) -> None:
    fake({gpu.throughput_promql(60, 300): [({}, 0.0)], gpu.throughput_promql(60): [({}, 5.0)]})
    with pytest.raises(ActivityFailed, match="no baseline throughput"):
        gpu.throughput_drop(url=URL)


# --- the rules file in the generated config ----------------------------------------------------


def test_render_config_loads_the_packaged_rules(tmp_path) -> None:
    import yaml

    config = yaml.safe_load(render_config(tmp_path))
    assert config["rule_files"] == [str(ALERT_RULES)]
    assert ALERT_RULES.is_absolute() and ALERT_RULES.is_file()
    rules = yaml.safe_load(ALERT_RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"GPUUtilHigh", "XIDFatal", "GPUThermalThrottle"} <= set(alerts)
    assert all(r["labels"]["severity"] and r["annotations"]["summary"] for r in alerts.values())
    assert alerts["GPUUtilHigh"]["for"] == "5m" and "> 85" in alerts["GPUUtilHigh"]["expr"]
    for code in gpu.FATAL_XIDS:
        assert f"== {code}" in alerts["XIDFatal"]["expr"]
