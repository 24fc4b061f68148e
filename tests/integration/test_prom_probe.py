"""The Prometheus probes against the real Prometheus binary, and against servers that fail.

One Prometheus (scrape interval 1 s) scrapes itself and a small exporter in this process
whose gateway and load-generator counters grow at known rates while the tests run.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import yaml
from chaoslib.exceptions import ActivityFailed
from prometheus_client import CollectorRegistry, Counter, start_http_server

from probes import prom

pytestmark = pytest.mark.integration

PROMETHEUS = "/usr/bin/prometheus"
GOOD_PER_TICK, BAD_PER_TICK, TICK_S = 20, 1, 0.1  # 200 good and 10 failed requests per second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    """Counters named as the gateway and the load generator export them, growing steadily."""
    registry = CollectorRegistry()
    gateway = Counter("gateway_requests", "requests", ["status", "worker"], registry=registry)
    loadgen = Counter("loadgen_requests", "requests", ["outcome"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(TICK_S):
            gateway.labels(status="200", worker="w0").inc(GOOD_PER_TICK)
            gateway.labels(status="503", worker="w0").inc(BAD_PER_TICK)
            loadgen.labels(outcome="ok").inc(GOOD_PER_TICK)

    ticker = threading.Thread(target=traffic, daemon=True)
    ticker.start()
    yield f"127.0.0.1:{port}"
    stop.set()
    ticker.join(timeout=2)
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory, exporter) -> Iterator[str]:
    if not shutil.which(PROMETHEUS):
        pytest.skip("the Debian prometheus package is not installed")
    workdir = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
            {"job_name": "exporter", "static_configs": [{"targets": [exporter]}]},
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=1).ok, 15, "Prometheus ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def has_samples(url: str, promql: str, at_least: int = 1) -> bool:
    reply = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=1).json()
    result = reply["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) >= at_least


@pytest.fixture
def failing_server() -> Iterator[tuple[str, list[str], dict]]:
    """An HTTP server whose status is set per test; it records each path it was asked for."""
    hits: list[str] = []
    answer = {"status": 503, "body": b"overloaded"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            hits.append(self.path)
            self.send_response(answer["status"])
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits, answer
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)


# --- against the real Prometheus ------------------------------------------------------


def test_prometheus_up(prometheus_url):
    result = prom.prometheus_up(url=prometheus_url)
    assert result["ok"] is True and result["checked"] == "/-/ready"
    assert result["url"] == prometheus_url
    json.dumps(result, allow_nan=False)


def test_query_value(prometheus_url):
    wait_until(lambda: has_samples(prometheus_url, 'up{job="prometheus"}'), 10, "a self-scrape")
    assert prom.query_value('up{job="prometheus"}', url=prometheus_url) == 1.0
    assert prom.query_value("vector(42)", url=prometheus_url) == 42.0
    assert prom.query_value("3 * 2", url=prometheus_url) == 6.0  # a scalar result


def test_query_value_without_data(prometheus_url):
    with pytest.raises(ActivityFailed, match="returned no data"):
        prom.query_value("no_such_metric_at_all", url=prometheus_url)
    assert prom.query_value("no_such_metric_at_all", url=prometheus_url, default=0) == 0.0
    with pytest.raises(ActivityFailed, match="returned NaN"):
        prom.query_value("vector(0) / vector(0)", url=prometheus_url)


def test_query_value_refuses_several_series(prometheus_url):
    wait_until(lambda: has_samples(prometheus_url, "count(up)", 2), 10, "both targets scraped")
    with pytest.raises(ActivityFailed, match="returned 2 series"):
        prom.query_value("up", url=prometheus_url)


def test_bad_promql_fails_at_once_with_prometheus_reason(prometheus_url):
    started = time.monotonic()
    with pytest.raises(ActivityFailed) as failure:
        prom.query_value("sum(", url=prometheus_url)
    assert time.monotonic() - started < 1.0  # a 400 is not retried
    message = str(failure.value)
    assert prometheus_url in message and "HTTP 400" in message and "\n" not in message


def test_url_from_configuration_and_state_file(prometheus_url, tmp_path, monkeypatch):
    assert prom.prometheus_up(configuration={"prometheus_url": prometheus_url})["ok"]
    monkeypatch.setenv("INFERENCE_CHAOS_HOME", str(tmp_path))
    (tmp_path / "state.json").write_text(json.dumps({"prometheus_url": prometheus_url}))
    assert prom.prometheus_up()["url"] == prometheus_url


def test_range_series(prometheus_url):
    history = 'count_over_time(up{job="prometheus"}[10s])'
    wait_until(lambda: has_samples(prometheus_url, history, 4), 15, "four self-scrapes")
    end = time.time()
    series = prom.range_series('up{job="prometheus"}', end - 3, end, step=1, url=prometheus_url)
    assert len(series) == 1 and series[0]["metric"]["job"] == "prometheus"
    values = series[0]["values"]
    assert len(values) >= 2
    assert all(isinstance(t, float) and v == 1.0 for t, v in values)
    json.dumps(series, allow_nan=False)


def test_availability_from_prometheus(prometheus_url):
    enough = "sum(increase(loadgen_requests_total[5s]))"
    wait_until(lambda: has_samples(prometheus_url, enough, 500), 15, "five seconds of counters")
    result = prom.availability_from_prometheus(5, target=0.999, url=prometheus_url)
    json.dumps(result, allow_nan=False)
    assert result["source"] == "prometheus" and result["url"] == prometheus_url
    # the client-side counter, when present, decides: it saw no failure
    assert result["counter"] == "loadgen_requests_total"
    assert result["errors"] == 0 and result["total"] > 500
    assert result["verdict"] in ("inconclusive", "pass") and result["ok"] is True
    gateway = result["by_counter"]["gateway_requests_total"]
    assert 0.03 < 1 - gateway["good"] / gateway["total"] < 0.07  # 1 in 21 answered 503
    assert "loadgen_requests_total" in result["promql"]["total"]


def test_availability_from_gateway_counter_alone(prometheus_url, monkeypatch):
    """With only the gateway's counter, its 503s make the SLO fail."""
    wait_until(
        lambda: has_samples(prometheus_url, "sum(increase(gateway_requests_total[5s]))", 500),
        15,
        "five seconds of counters",
    )
    monkeypatch.setattr(prom, "LOADGEN_COUNTER", "loadgen_absent_total")
    result = prom.availability_from_prometheus(5, target=0.999, url=prometheus_url)
    assert result["counter"] == "gateway_requests_total"
    assert result["verdict"] == "fail" and result["ok"] is False
    assert 0.93 < result["sli"] < 0.97
    assert result["burn_rate"] > 10


def test_availability_without_traffic_fails(prometheus_url):
    with pytest.raises(ActivityFailed, match="no requests counted"):
        prom.availability_from_prometheus(5, url=prometheus_url, at=time.time() - 3600)


# --- against servers that fail --------------------------------------------------------


def test_closed_port_fails_fast_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    for probe in (
        lambda: prom.prometheus_up(url=url),
        lambda: prom.query_value("up", url=url),
        lambda: prom.availability_from_prometheus(60, url=url),
        lambda: prom.range_series("up", time.time() - 60, time.time(), url=url),
    ):
        started = time.monotonic()
        with pytest.raises(ActivityFailed) as failure:
            probe()
        assert time.monotonic() - started < 5.0
        assert url in str(failure.value) and "cannot connect" in str(failure.value)


def test_silent_server_hits_the_deadline():
    """A listener that never answers: the probe gives up at its own deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ActivityFailed, match="timed out|deadline") as failure:
            prom.query_value("up", url=url, timeout_s=1.5)
        elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 3.0
    assert url in str(failure.value)


def test_server_errors_are_retried_then_fail(failing_server):
    url, hits, answer = failing_server
    with pytest.raises(ActivityFailed, match="HTTP 503: overloaded") as failure:
        prom.query_value("up", url=url)
    assert len(hits) == prom.ATTEMPTS
    assert url in str(failure.value)


def test_client_errors_are_not_retried(failing_server):
    url, hits, answer = failing_server
    answer.update(status=400, body=b'{"status":"error","error":"parse error at char 4"}')
    with pytest.raises(ActivityFailed, match="HTTP 400: parse error at char 4"):
        prom.query_value("sum(", url=url)
    assert len(hits) == 1


def test_not_ready_fails_the_up_probe(failing_server):
    url, hits, answer = failing_server
    answer.update(status=503, body=b"Service Unavailable")
    with pytest.raises(ActivityFailed, match="readiness check: HTTP 503"):
        prom.prometheus_up(url=url)
    assert hits == ["/-/ready"] * prom.ATTEMPTS


def test_non_prometheus_reply_fails_cleanly(failing_server):
    url, hits, answer = failing_server
    answer.update(status=200, body=b"<html>hello</html>")
    with pytest.raises(ActivityFailed, match="not a Prometheus API reply"):
        prom.query_value("up", url=url)
