"""Probes that ask Prometheus, through prometheus-api-client, with a deadline of their own.

The library's default retry waits up to seconds between connection attempts and knows no
overall deadline, so a dead Prometheus would stall a run. Here the library does no retries
and every request gets a short timeout; tenacity retries transient failures (no connection,
timeout, 429, 5xx) a few times within one total deadline. Whatever goes wrong becomes an
ActivityFailed naming the URL and the problem: a probe that cannot measure never passes.

The URL comes from the `url` argument, else `configuration["prometheus_url"]`, else the
current run, else the embedded cluster's state file.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import requests
from chaoslib.exceptions import ActivityFailed
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential,
)
from urllib3.util.retry import Retry

from probes.slo import availability_summary

__all__ = ["prometheus_up", "query_value", "availability_from_prometheus", "range_series"]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
ATTEMPT_TIMEOUT_S = 2.0
ATTEMPTS = 3
_MESSAGE_LIMIT = 300

LOADGEN_COUNTER = "loadgen_requests_total"
LOADGEN_GOOD = 'outcome="ok"'
GATEWAY_COUNTER = "gateway_requests_total"
GATEWAY_GOOD = 'status=~"2.."'


# No retries inside urllib3 (ours are outside, under the deadline). read=False makes a read
# timeout surface as requests.ReadTimeout instead of a generic ConnectionError.
_NO_RETRY = Retry(total=0, read=False)


class _HttpStatus(Exception):
    """Prometheus answered, with a status that is not 200."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
        self.status = status


class _DeadlineExceeded(Exception):
    pass


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _HttpStatus):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


class PrometheusProbe:
    """One probe call's view of a Prometheus server: one session, one deadline."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._expires = time.monotonic() + timeout_s
        self.session = requests.Session()
        self.client = PrometheusConnect(url=self.url, session=self.session, retry=_NO_RETRY)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PrometheusProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remaining(self) -> float:
        return self._expires - time.monotonic()

    def _timeouts(self) -> tuple[float, float]:
        remaining = self._remaining()
        if remaining <= 0:
            raise _DeadlineExceeded()
        return min(CONNECT_TIMEOUT_S, remaining), min(ATTEMPT_TIMEOUT_S, remaining)

    def _out_of_time(self, state: RetryCallState) -> bool:
        """Stop retrying near the deadline, so the last real error is the one reported."""
        return self._remaining() < 0.05

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential(multiplier=0.1, max=1.0)(state)
        return max(0.0, min(backoff, self._remaining()))

    def call(self, doing: str, request: Callable[[tuple[float, float]], T]) -> T:
        """Run request(timeouts) with retries; any failure becomes a one-line ActivityFailed."""
        retrying = Retrying(
            stop=stop_any(stop_after_attempt(ATTEMPTS), self._out_of_time),
            wait=self._wait,
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        try:
            return retrying(lambda: _translate(lambda: request(self._timeouts())))
        except _DeadlineExceeded:
            problem = f"no answer within the probe's deadline of {self.timeout_s:g}s"
        except requests.Timeout:
            problem = f"timed out (deadline {self.timeout_s:g}s)"
        except requests.ConnectionError as exc:
            problem = f"cannot connect ({_root_cause(exc)})"
        except _HttpStatus as exc:
            problem = str(exc)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            problem = f"answer is not a Prometheus API reply ({type(exc).__name__}: {exc})"
        except requests.RequestException as exc:
            problem = f"request failed ({_root_cause(exc)})"
        raise ActivityFailed(_one_line(f"Prometheus at {self.url}: {doing}: {problem}"))

    def ready(self) -> str:
        """How readiness was confirmed: /-/ready, or a trivial query where that is missing."""

        def get_ready(timeouts: tuple[float, float]) -> int:
            reply = self.session.get(f"{self.url}/-/ready", timeout=timeouts)
            if reply.status_code not in (200, 404):
                raise _HttpStatus(reply.status_code, reply.text.strip())
            return reply.status_code

        if self.call("readiness check", get_ready) == 200:
            return "/-/ready"
        self.instant("vector(1)")
        return "query vector(1)"

    def instant(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each series an instant query yields, at `at` or now."""
        params = {"time": f"{at:.3f}"} if at is not None else None
        return self.call(
            f"query {promql!r}",
            lambda timeouts: _instant_values(
                self.client.custom_query(promql, params=params, timeout=timeouts)
            ),
        )

    def series(self, promql: str, start: float, end: float, step: str) -> list[dict[str, Any]]:
        """Each series of a range query as {"metric": labels, "values": [[t, value], ...]}."""
        return self.call(
            f"range query {promql!r}",
            lambda timeouts: _range_values(
                self.client.custom_query_range(
                    promql,
                    start_time=datetime.fromtimestamp(start, tz=UTC),
                    end_time=datetime.fromtimestamp(end, tz=UTC),
                    step=step,
                    timeout=timeouts,
                )
            ),
        )


def _translate(request: Callable[[], T]) -> T:
    """Turn the library's status exception into one that carries the status code."""
    try:
        return request()
    except PrometheusApiClientException as exc:
        raise _status_from_library(exc) from None


def _status_from_library(exc: PrometheusApiClientException) -> Exception:
    match = re.match(r"HTTP Status Code (\d+) \((.*)\)$", str(exc), re.DOTALL)
    if not match:
        return ValueError(str(exc))
    status, body = int(match.group(1)), match.group(2)
    try:
        raw = ast.literal_eval(body)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    except (ValueError, SyntaxError):
        text = body
    try:
        text = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        pass
    return _HttpStatus(status, str(text).strip())


def _root_cause(exc: Exception) -> str:
    """The short reason inside a requests error, e.g. "[Errno 111] Connection refused"."""
    match = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
    if match:
        return match.group(0).strip()
    inner = exc.args[0] if exc.args else None
    return type(getattr(inner, "reason", None) or inner or exc).__name__


def _one_line(message: str) -> str:
    flat = " ".join(message.split())
    return flat if len(flat) <= _MESSAGE_LIMIT else flat[: _MESSAGE_LIMIT - 3] + "..."


def _resolve_url(url: str | None, configuration: Mapping | None) -> str:
    if url:
        return url
    configured = (configuration or {}).get("prometheus_url")
    if configured:
        return configured
    found = _url_from_run() or _url_from_state()
    if found:
        return found
    raise ActivityFailed(
        "no Prometheus URL: pass url, set configuration['prometheus_url'], "
        "or start the embedded cluster"
    )


def _url_from_run() -> str | None:
    try:
        from experiments.context import current_run
    except ImportError:
        return None
    run = current_run()
    return getattr(run, "prometheus_url", None) if run is not None else None


def _url_from_state() -> str | None:
    try:
        from resilience.state import read_state
    except ImportError:
        return None
    state = read_state() or {}
    return state.get("prometheus_url")


def _sample_value(sample: Any) -> float:
    """The float in a [timestamp, "value"] pair; NaN and +-Inf stay floats here."""
    return float(sample[1])


def _instant_values(result: list[Any]) -> list[tuple[dict[str, str], float]]:
    """(labels, value) for each series of an instant result; a scalar is one unlabelled value."""
    if len(result) == 2 and not isinstance(result[0], dict):
        return [({}, _sample_value(result))]
    return [(dict(item.get("metric", {})), _sample_value(item["value"])) for item in result]


def _range_values(result: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "metric": dict(series.get("metric", {})),
            "values": [[float(t), _json_number(float(v))] for t, v in series.get("values", [])],
        }
        for series in result
    ]


def _json_number(value: float) -> float | None:
    """Charts and journals need strict JSON: NaN and infinities become null."""
    return value if math.isfinite(value) else None


def _step_text(step: float | str) -> str:
    if isinstance(step, str):
        return step
    if step <= 0:
        raise ActivityFailed(f"range step must be positive, got {step}")
    return f"{step:g}"


# --- Probes ---------------------------------------------------------------------------


def prometheus_up(
    url: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Prometheus answers and is ready; ActivityFailed when it is not."""
    url = _resolve_url(url, configuration)
    started = time.monotonic()
    with PrometheusProbe(url, timeout_s) as prom:
        checked = prom.ready()
    return {
        "ok": True,
        "url": prom.url,
        "checked": checked,
        "latency_s": time.monotonic() - started,
    }


def query_value(
    query: str,
    url: str | None = None,
    default: float | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> float:
    """The single number an instant query yields, at `at` (Unix seconds) or now.

    No data, NaN or an infinity give `default` when one is set, else ActivityFailed;
    several series always fail (aggregate them in the query: sum(), max()).
    """
    url = _resolve_url(url, configuration)
    with PrometheusProbe(url, timeout_s) as prom:
        values = prom.instant(query, at)
    if len(values) > 1:
        raise ActivityFailed(
            _one_line(
                f"Prometheus at {prom.url}: query {query!r} returned {len(values)} series, "
                "expected one (aggregate it with sum() or max())"
            )
        )
    value = values[0][1] if values else None
    if value is not None and math.isfinite(value):
        return value
    if default is not None:
        return float(default)
    problem = "no data" if value is None else ("NaN" if math.isnan(value) else f"{value:+}")
    raise ActivityFailed(_one_line(f"Prometheus at {prom.url}: query {query!r} returned {problem}"))


def _counted(prom: PrometheusProbe, promql: str, at: float) -> float | None:
    values = prom.instant(promql, at)
    if not values or not math.isfinite(values[0][1]):
        return None
    return values[0][1]


def availability_from_prometheus(
    window_s: float,
    target: float = 0.999,
    confidence: float = 0.95,
    url: str | None = None,
    at: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Availability over the `window_s` seconds before `at` (default now), from counters.

    The load generator's client-side counter decides when it counted anything (it also sees
    requests that never reached the gateway); else the gateway's. increase() extrapolates, so
    counts are rounded to whole requests.
    """
    if not 0.0 < target < 1.0 or not 0.0 < confidence < 1.0:
        raise ActivityFailed(f"target and confidence must be within (0, 1): {target}, {confidence}")
    seconds = int(round(window_s))
    if seconds < 1:
        raise ActivityFailed(f"window_s must be at least 1 second, got {window_s}")
    url = _resolve_url(url, configuration)
    at = time.time() if at is None else float(at)
    by_counter: dict[str, dict[str, Any]] = {}
    with PrometheusProbe(url, timeout_s) as prom:
        for counter, good_selector in (
            (LOADGEN_COUNTER, LOADGEN_GOOD),
            (GATEWAY_COUNTER, GATEWAY_GOOD),
        ):
            promql = {
                "good": f"sum(increase({counter}{{{good_selector}}}[{seconds}s]))",
                "total": f"sum(increase({counter}[{seconds}s]))",
            }
            total = _counted(prom, promql["total"], at)
            good = _counted(prom, promql["good"], at) if total else None
            total_n = int(round(total or 0.0))
            good_n = min(int(round(good or 0.0)), total_n)
            by_counter[counter] = {"good": good_n, "total": total_n, "promql": promql}
    chosen = next((name for name, c in by_counter.items() if c["total"] > 0), None)
    if chosen is None:
        raise ActivityFailed(
            f"Prometheus at {prom.url}: no requests counted by {LOADGEN_COUNTER} or "
            f"{GATEWAY_COUNTER} in the {seconds}s before {at:.0f}"
        )
    counts = by_counter[chosen]
    result = availability_summary(counts["good"], counts["total"], target, confidence)
    result.update(
        source="prometheus",
        counter=chosen,
        promql=counts["promql"],
        by_counter={
            name: {"good": c["good"], "total": c["total"]} for name, c in by_counter.items()
        },
        url=prom.url,
        window=f"last {seconds}s",
        window_s=seconds,
        window_start=at - seconds,
        window_end=at,
    )
    return result


def range_series(
    query: str,
    start: float,
    end: float,
    step: float | str = 1.0,
    url: str | None = None,
    timeout_s: float = 10.0,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> list[dict[str, Any]]:
    """Each series of a range query as {"metric": labels, "values": [[t, value], ...]}.

    Values that are NaN or infinite become null so charts show a gap and JSON stays strict.
    """
    if end < start:
        raise ActivityFailed(f"range end {end} is before start {start}")
    url = _resolve_url(url, configuration)
    with PrometheusProbe(url, timeout_s) as prom:
        return prom.series(query, float(start), float(end), _step_text(step))
