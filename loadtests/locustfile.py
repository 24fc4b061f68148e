"""The Locust side of a load run: streaming chat users, their records, metrics and shape.

Started by `loadtests.runner.LoadRun` as `python -m locust -f loadtests/locustfile.py ...`;
every parameter comes from the environment (`loadtests.settings`). Importing Locust
monkey-patches the process for gevent, so nothing in the harness imports this file.

Each request is timed chunk by chunk by `loadtests.sse`, appended as one JSON line to
`$INFERENCE_CHAOS_RECORDS`, counted in the client-side Prometheus metrics served on
`$INFERENCE_CHAOS_METRICS_PORT`, and reported to Locust's own stats (display only).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import Any

import gevent
from locust import User, between, constant, events, task

from loadtests.metrics import LoadgenMetrics
from loadtests.records import LoadRecord
from loadtests.settings import LoadSettings
from loadtests.shapes import request_stop, shape_class_for
from loadtests.sink import RecordSink
from loadtests.sse import CHAT_PATH, ChatStreamer

logger = logging.getLogger("loadtests")
# httpx logs every request at INFO: thousands of lines a minute in the run's stderr log.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

SETTINGS = LoadSettings.from_env()
# The one shape Locust finds in this module: chosen by $INFERENCE_CHAOS_SHAPE.
LoadShape = shape_class_for(SETTINGS)

SINK: RecordSink | None = RecordSink(SETTINGS.records_path) if SETTINGS.records_path else None
METRICS = LoadgenMetrics()


class RequestFailed(Exception):
    """What Locust's error table shows for a failed request (the record's error string)."""


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    # Until the shape ends, headless Locust has no SIGTERM handler and would die mid-request.
    gevent.signal_handler(signal.SIGTERM, request_stop)
    if SETTINGS.metrics_port:
        METRICS.serve(SETTINGS.metrics_port)
    if SETTINGS.deadline:
        gevent.spawn_later(max(0.0, SETTINGS.deadline - time.time()), _deadline_reached)
    if SINK is None:
        logger.warning("INFERENCE_CHAOS_RECORDS is not set: requests are not recorded")
    # Move the start-up heap (Locust, gevent, httpx) out of the collector's sight: a full
    # collection otherwise stalls every stream in the process for tens of milliseconds.
    gc.collect()
    gc.freeze()


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    # Not on `quitting`: that fires before users finish their in-flight requests.
    if SINK is not None:
        SINK.close()


def _deadline_reached() -> None:
    """Last guard: whatever Locust is doing, the load generator does not outlive its run."""
    logger.error("load run deadline reached; exiting")
    if SINK is not None:
        SINK.close()
    os._exit(3)


def _wait_time() -> Any:
    if SETTINGS.think_time > 0:
        # Jitter around the mean so users do not fall into lock-step.
        return between(SETTINGS.think_time * 0.5, SETTINGS.think_time * 1.5)
    return constant(0)


class ChatStreamUser(User):
    """One client sending streaming chat completions back to back on a keep-alive connection.

    A plain `User` (not HttpUser): the timing is ours, chunk by chunk, not Locust's.
    """

    wait_time = _wait_time()

    def on_start(self) -> None:
        self.streamer = ChatStreamer(
            self.host or "",
            model=SETTINGS.model,
            max_tokens=SETTINGS.max_tokens,
            sessions=SETTINGS.sessions,
            session_skew=SETTINGS.session_skew,
            timeout=SETTINGS.timeout,
        )

    def on_stop(self) -> None:
        self.streamer.close()

    @task
    def chat(self) -> None:
        record = self.streamer.send()
        if SINK is not None:
            SINK.append(record)
        METRICS.observe(record)
        self._report(record)

    def _report(self, record: LoadRecord) -> None:
        e2e = record.e2e or 0.0
        self.environment.events.request.fire(
            request_type="POST",
            name=CHAT_PATH,
            response_time=e2e * 1000.0,
            response_length=self.streamer.last_response_bytes,
            response=None,
            context={},
            exception=None if record.ok else RequestFailed(record.error or "failed"),
            start_time=record.sent_at,
            url=self.streamer.endpoint,
        )
