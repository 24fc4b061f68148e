"""Runs Locust as a subprocess and hands back what it recorded.

`import locust` monkey-patches the whole process for gevent, so the harness never imports it:
`LoadRun` starts `python -m locust -f loadtests/locustfile.py --headless ...` with the run's
parameters in the environment, stops it by PID (SIGTERM, then SIGKILL), and reads the JSON-lines
records it wrote. The run is bounded three times over: the load shape ends it at `duration`,
`wait()` stops it at a hard deadline, and the Locust process exits by itself past that deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from loadtests.records import LoadRecord, read_records, summarize
from loadtests.settings import LoadSettings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
TARGETS_FILE_NAME = "loadgen.json"

# Seconds granted to in-flight requests when the shape ends or SIGTERM arrives.
STOP_TIMEOUT = 10.0
# Seconds for Locust to import and start, and to print its summary and exit.
STARTUP_GRACE = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LoadRun:
    """One Locust load run against an OpenAI-compatible URL.

    Files in `out_dir`: `records.jsonl` (unless `records_path` is given), `locust.stdout.log`,
    `locust.stderr.log`. If `prometheus_targets_dir` is given, `<dir>/loadgen.json` (a
    Prometheus file_sd target for the client metrics) exists while the run is alive.
    """

    def __init__(
        self,
        url: str,
        out_dir: str | os.PathLike[str],
        settings: LoadSettings | None = None,
        *,
        records_path: str | os.PathLike[str] | None = None,
        prometheus_targets_dir: str | os.PathLike[str] | None = None,
        metrics_port: int | None = None,
        stop_timeout: float = STOP_TIMEOUT,
        locustfile: str | os.PathLike[str] = LOCUSTFILE,
        extra_args: list[str] | None = None,
    ):
        self.url = url
        # Absolute: Locust runs with the output directory as its working directory.
        self.out_dir = Path(out_dir).resolve()
        self.settings = settings or LoadSettings()
        self._records_path = (
            Path(records_path).resolve() if records_path else self.out_dir / "records.jsonl"
        )
        self.prometheus_targets_dir = (
            Path(prometheus_targets_dir).resolve() if prometheus_targets_dir else None
        )
        self.metrics_port = metrics_port
        self.stop_timeout = stop_timeout
        self.locustfile = Path(locustfile).resolve()
        self.extra_args = list(extra_args or [])
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.was_stopped = False  # True when stop() had to signal a still running Locust
        self._process: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    # Paths and state

    @property
    def records_path(self) -> Path:
        return self._records_path

    @property
    def stdout_path(self) -> Path:
        return self.out_dir / "locust.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.out_dir / "locust.stderr.log"

    @property
    def targets_path(self) -> Path | None:
        if self.prometheus_targets_dir is None:
            return None
        return self.prometheus_targets_dir / TARGETS_FILE_NAME

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    @property
    def hard_deadline(self) -> float | None:
        """Unix time by which the run must be over, stop included."""
        if self.started_at is None:
            return None
        return self.started_at + self.settings.duration + self.stop_timeout + STARTUP_GRACE

    # Life cycle

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(self.locustfile),
            "--headless",
            "--host",
            self.url,
            "--only-summary",
            "--stop-timeout",
            f"{self.stop_timeout:g}",
            "--exit-code-on-error",
            "0",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        settings = dataclasses.replace(
            self.settings,
            records_path=str(self.records_path),
            metrics_port=self.metrics_port,
            # The Locust process exits by itself a little after the runner would stop it.
            deadline=(self.hard_deadline or time.time()) + self.stop_timeout,
        )
        package_root = str(Path(__file__).resolve().parent.parent)
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, **settings.to_env(), "PYTHONPATH": python_path}

    def start(self) -> LoadRun:
        if self._process is not None:
            raise RuntimeError("this load run was already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        self.records_path.write_text("")  # a fresh run starts with an empty records file
        if self.metrics_port is None:
            self.metrics_port = free_port()
        self.started_at = time.time()
        stdout = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in _reap
        stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        self._logs = [stdout, stderr]
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.environment(),
                cwd=self.out_dir,
                start_new_session=True,  # a Ctrl-C in the harness's terminal is ours to forward
            )
        except OSError:
            self._close_logs()
            raise
        self._write_targets()
        return self

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the run to end; returns its exit code, or None if still running.

        Without a timeout, waits until the hard deadline and then stops the run, so a call to
        `wait()` always returns with the process gone.
        """
        if self._process is None:
            return None
        if timeout is None:
            remaining = max(0.0, (self.hard_deadline or time.time()) - time.time())
            try:
                self._process.wait(remaining)
            except subprocess.TimeoutExpired:
                return self.stop()
        else:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self._reap()
        return self._process.returncode

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM (Locust lets in-flight requests finish), then SIGKILL; always reaps."""
        if self._process is None:
            return None
        grace = self.stop_timeout + 5.0 if grace is None else grace
        if self._process.poll() is None:
            self.was_stopped = True
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                self._process.wait()
        self._reap()
        return self._process.returncode

    def _reap(self) -> None:
        if self.ended_at is None:
            self.ended_at = time.time()
        self._close_logs()
        self._remove_targets()

    def _close_logs(self) -> None:
        for handle in self._logs:
            handle.close()
        self._logs = []

    # Prometheus file_sd target

    def _write_targets(self) -> None:
        path = self.targets_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        targets = [{"targets": [f"127.0.0.1:{self.metrics_port}"], "labels": {"job": "loadgen"}}]
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(targets))
        temporary.replace(path)  # atomic: Prometheus never reads half a file

    def _remove_targets(self) -> None:
        if self.targets_path is not None:
            self.targets_path.unlink(missing_ok=True)

    # Results

    def records(self) -> list[LoadRecord]:
        return read_records(self.records_path)

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        return summarize(self.records(), start, end)

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LoadRun:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
