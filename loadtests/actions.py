"""Chaos Toolkit actions that start, await and stop background inference load.

Use from an experiment's method (the load runs in the background while faults are injected):

```yaml
- type: action
  name: start-load
  provider: {type: python, module: loadtests.actions, func: start_load,
             arguments: {users: 16, duration: 60, shape: ramp, ramp: 10}}
  background: false          # start_load returns at once; Locust runs as a subprocess
- ...fault actions and probes...
- type: action
  name: wait-for-load
  provider: {type: python, module: loadtests.actions, func: wait_for_load}
```

and put `stop_load` in the rollbacks so a failed run never leaves load behind.

Arguments fall back to the experiment's `configuration`: `url` to `gateway_url`, `out_dir` to
`out_dir`, `prometheus_targets_dir` to `prometheus_targets_dir` (where the embedded cluster's
Prometheus discovers the client metrics). Without an `out_dir`, a temporary directory is used.

One run per process: a module-level registry holds the current `LoadRun`; starting a new run
stops the previous one. The run is also stopped when the Python process exits. The records
(`records_path` in every result) are JSON lines as described in docs/internals.md, which the
probes read for exact percentiles over exact windows.
"""

from __future__ import annotations

import atexit
import logging
import tempfile
import threading
import time
from typing import Any

from chaoslib.exceptions import ActivityFailed

from loadtests.runner import LoadRun
from loadtests.settings import LoadSettings

__all__ = ["start_load", "wait_for_load", "stop_load"]

logger = logging.getLogger("loadtests")

_lock = threading.Lock()
_current: LoadRun | None = None


def current_run() -> LoadRun | None:
    """The run this process started last (running or finished), for other harness code."""
    return _current


def _fallback(value: Any, configuration: dict | None, key: str) -> Any:
    if value not in (None, ""):
        return value
    return (configuration or {}).get(key) or None


def _run_info(run: LoadRun) -> dict[str, Any]:
    return {
        "pid": run.pid,
        "url": run.url,
        "records_path": str(run.records_path),
        "out_dir": str(run.out_dir),
        "started_at": run.started_at,
        "metrics_port": run.metrics_port,
        "users": run.settings.users,
        "duration": run.settings.duration,
        "shape": run.settings.shape,
    }


def _result(run: LoadRun, exit_code: int | None, strict: bool, **extra: Any) -> dict[str, Any]:
    """The run's summary; when `strict`, a generator that crashed without a record fails."""
    summary = run.summary()
    problem = None
    if exit_code not in (0, None) and not run.was_stopped and summary["requests"] == 0:
        problem = (
            f"the load generator exited with code {exit_code} and recorded nothing: "
            f"{run.stderr_tail(5)}"
        )
        if strict:
            raise ActivityFailed(problem)
    info = {**_run_info(run), "exit_code": exit_code, "ended_at": run.ended_at, "error": problem}
    return {**info, **extra, **summary}


def start_load(
    url: str | None = None,
    users: int = 16,
    duration: float = 60,
    shape: str = "constant",
    ramp: float = 0,
    max_tokens: int = 32,
    sessions: int = 200,
    spike_users: int = 0,
    spike_at: float = 0,
    spike_duration: float = 0,
    out_dir: str | None = None,
    prometheus_targets_dir: str | None = None,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Start streaming chat load against `url` in the background; returns at once.

    Returns plain data: `pid`, `records_path`, `started_at` (Unix seconds), `out_dir`,
    `metrics_port` and the run's parameters.
    """
    global _current
    target = _fallback(url, configuration, "gateway_url")
    if not target:
        raise ActivityFailed("start_load needs a url (or configuration gateway_url)")
    directory = _fallback(out_dir, configuration, "out_dir") or tempfile.mkdtemp(
        prefix="inference-chaos-load-"
    )
    try:
        settings = LoadSettings(
            users=int(users),
            duration=float(duration),
            shape=str(shape),
            ramp=float(ramp),
            max_tokens=int(max_tokens),
            sessions=int(sessions),
            spike_users=int(spike_users),
            spike_at=float(spike_at),
            spike_duration=float(spike_duration),
        )
    except (TypeError, ValueError) as exc:
        raise ActivityFailed(f"start_load: {exc}") from exc
    run = LoadRun(
        str(target),
        directory,
        settings,
        prometheus_targets_dir=_fallback(
            prometheus_targets_dir, configuration, "prometheus_targets_dir"
        ),
    )
    with _lock:
        if _current is not None and _current.is_running:
            logger.warning("stopping the previous load run (pid %s)", _current.pid)
            _current.stop()
        try:
            run.start()
        except OSError as exc:
            raise ActivityFailed(f"could not start the load generator: {exc}") from exc
        _current = run
    return _run_info(run)


def wait_for_load(
    timeout: float | None = None,
    configuration: dict | None = None,
    secrets: dict | None = None,
) -> dict[str, Any]:
    """Wait for the current run to end and return its summary (see `records.summarize`).

    `timeout` defaults to the run's own hard deadline. A run still going after `timeout`
    is stopped (an activity must not leave load behind); `finished_on_time` says which happened.
    """
    run = _current
    if run is None:
        raise ActivityFailed("wait_for_load: no load run was started in this process")
    exit_code = run.wait(None if timeout is None else float(timeout))
    if run.is_running:
        exit_code = run.stop()
    return _result(run, exit_code, strict=True, finished_on_time=not run.was_stopped)


def stop_load(configuration: dict | None = None, secrets: dict | None = None) -> dict[str, Any]:
    """Stop the current run (idempotent, so it is safe in rollbacks) and return its summary."""
    run = _current
    if run is None:
        return {"stopped": False, "reason": "no load run was started in this process"}
    was_running = run.is_running
    exit_code = run.stop()
    return _result(run, exit_code, strict=False, stopped=was_running, stopped_at=time.time())


@atexit.register
def _stop_at_exit() -> None:
    if _current is not None and _current.is_running:
        _current.stop(grace=5.0)
