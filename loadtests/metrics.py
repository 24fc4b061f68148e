"""Client-side load metrics for Prometheus.

Client outcomes are the authoritative SLI: server metrics miss requests that never connected.
The Locust process exports them so dashboards and PromQL see what users saw, as it happens.
Each instance has its own registry, so several can live in one test process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import start_http_server

from loadtests.records import LoadRecord

# Fine at the low end: the embedded cluster's first token comes within tens of milliseconds.
TTFT_BUCKETS = (
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0, 40.0, 60.0, 120.0,
)  # fmt: skip


class LoadgenMetrics:
    """`loadgen_*` metrics fed one record at a time.

    `loadgen_requests_total{outcome}` has outcome "ok" or "error", so availability is
    `sum(rate(loadgen_requests_total{outcome="ok"}[w])) / sum(rate(loadgen_requests_total[w]))`.
    TTFT and E2E histograms count successful requests only, as the records summary does.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "loadgen_requests",
            "Requests finished, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "error"):
            self.requests.labels(outcome)  # export zeros so rate() works from the start
        self.ttft = Histogram(
            "loadgen_time_to_first_token_seconds",
            "Time to first token seen by the client.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "loadgen_e2e_seconds",
            "End-to-end request latency seen by the client.",
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self.output_tokens = Counter(
            "loadgen_output_tokens", "Output tokens received.", registry=self.registry
        )

    def observe(self, record: LoadRecord) -> None:
        self.requests.labels("ok" if record.ok else "error").inc()
        self.output_tokens.inc(record.output_tokens)
        if record.ok:
            if record.ttft is not None:
                self.ttft.observe(record.ttft)
            if record.e2e is not None:
                self.e2e.observe(record.e2e)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve /metrics on addr:port from a daemon thread (a greenlet under gevent)."""
        start_http_server(port, addr=addr, registry=self.registry)
