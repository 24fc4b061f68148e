"""Which GPUs the controller must treat as failed: the pure decision behind its health polls.

The controller probes every worker each round (`GET /health`, and `DCGM_FI_DEV_XID_ERRORS` from
`GET /metrics`) and feeds the outcomes here; this module turns them into transitions, each
reported once. It holds no clock and does no I/O, so tests drive it with made-up times and a
new leader builds the same judgement from the same probes.

Why these rules:

- DCGM's `DCGM_FI_DEV_XID_ERRORS` is a gauge holding the *last* Xid the driver logged, not a
  count, so a non-zero value persists until the GPU or its process is reset. Xid 48 (double-bit
  ECC), 79 (fallen off the bus) and 95 (uncontained ECC) leave the GPU unusable until a reset
  ("reboot"): the GPU is failed. Xid 13, 31, 43 and 94 are application faults (an engine
  exception, a page fault, a stopped kernel, a contained ECC error): the driver kills the CUDA
  contexts but the GPU itself is fine, so restarting the process cures them and moving the task
  would be wasted work. The worker answers `/health` 503 for 13 and 31 too, which is why an
  application Xid takes precedence over the 503.
- A refused connection means the process is gone; one refusal can be a restart's race, two in
  a row are not.
- A paused (SIGSTOP) or network-isolated process never refuses: the kernel, or the black hole,
  just swallows the probe. Only a missing heartbeat (no answer, healthy or not, for
  `heartbeat_timeout_s`) catches those.
- A failed GPU comes back only after `recovery_probes` clean answers in a row (ok, Xid 0), so a
  flapping worker does not get tasks placed on it between two failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FATAL_XIDS = frozenset({48, 79, 95})
APP_XIDS = frozenset({13, 31, 43, 94})

Outcome = Literal["ok", "unhealthy", "refused", "timeout"]
DetectedState = Literal["failed", "app_fault", "recovered"]


@dataclass(frozen=True)
class Probe:
    """One round's view of a worker.

    `outcome` is what `GET /health` gave: 200 ("ok"), 503 ("unhealthy"), connection refused, or
    no answer in time. `xid` is `DCGM_FI_DEV_XID_ERRORS` read from `/metrics` in the same round,
    0 when none or unknown (e.g. the scrape failed too).
    """

    worker: str
    at: float
    outcome: Outcome
    xid: int = 0


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds; the defaults are the contract's (docs/internals.md)."""

    heartbeat_timeout_s: float = 0.75
    refused_threshold: int = 2
    recovery_probes: int = 3

    def __post_init__(self) -> None:
        if self.heartbeat_timeout_s <= 0:
            raise ValueError("heartbeat_timeout_s must be > 0")
        if self.refused_threshold < 1 or self.recovery_probes < 1:
            raise ValueError("refused_threshold and recovery_probes must be at least 1")


@dataclass(frozen=True)
class Detection:
    """A change of a worker's state, reported once.

    `reason` is one of "xid N", "connection refused", "heartbeat timeout", "health 503",
    "xid N (application)", "recovered". `xid` is the Xid behind it: the code for Xid reasons, the
    probe's non-zero Xid for "health 503" (one the detector does not classify), else None.
    """

    worker: str
    at: float
    state: DetectedState
    reason: str
    xid: int | None


@dataclass
class _Worker:
    state: str = "unknown"
    clock: float | None = None  # last ok/503 answer; the first probe's time until one comes
    refusals: int = 0  # since the last answer; a timeout neither counts nor resets
    clean: int = 0  # consecutive ok probes with Xid 0, for recovery
    remediation_until: float | None = None


class Detector:
    """Per-worker failure state from a stream of probes; see the module docstring for why."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._workers: dict[str, _Worker] = {}

    # -- queries ---------------------------------------------------------------------------------

    def state(self, worker: str) -> str:
        """One of healthy, failed, app_fault, or unknown (no probe seen since start or forget)."""
        record = self._workers.get(worker)
        return "unknown" if record is None else record.state

    def failed(self) -> set[str]:
        """Workers whose GPUs placement must avoid (app faults keep their task: not in here)."""
        return {name for name, record in self._workers.items() if record.state == "failed"}

    # -- inputs ----------------------------------------------------------------------------------

    def remediating(self, worker: str, until: float) -> None:
        """The controller is restarting `worker` until `until` at the latest.

        Until then refusals, timeouts and 503s are the restart itself, not a failure; the
        heartbeat clock counts from `until`. Remediation ends early at the first ok answer with
        Xid 0 (the new process is up), which also clears an application fault at once.
        """
        record = self._workers.setdefault(worker, _Worker())
        record.remediation_until = until
        record.refusals = 0

    def forget(self, worker: str) -> None:
        """Drop a worker that left the cluster; a later probe starts it afresh."""
        self._workers.pop(worker, None)

    def observe(self, probe: Probe) -> Detection | None:
        """Take one probe; return the transition it causes, if any."""
        record = self._workers.setdefault(probe.worker, _Worker())
        if record.state == "unknown":
            record.state = "healthy"
        if record.clock is None:
            record.clock = probe.at
        if probe.outcome in ("ok", "unhealthy"):
            record.clock = max(record.clock, probe.at)
            record.refusals = 0
        elif probe.outcome == "refused":
            record.refusals += 1
        remediating = self._remediating(record, probe.at)
        xid = probe.xid
        if probe.outcome != "ok" or xid != 0:
            record.clean = 0  # recovery needs clean answers in a row

        if xid in FATAL_XIDS:  # hardware: a restart does not cure it, remediation or not
            return self._fail(probe.worker, record, probe.at, f"xid {xid}", xid)
        if record.state == "failed":
            return self._recover(probe, record)
        if xid in APP_XIDS:
            if record.state == "healthy":
                record.state = "app_fault"
                return Detection(
                    probe.worker, probe.at, "app_fault", f"xid {xid} (application)", xid
                )
            if probe.outcome == "unhealthy":
                return None  # the 503 is the application fault itself
        if probe.outcome == "ok":
            return self._ok(probe, record, remediating)
        if remediating:
            return None
        if probe.outcome == "unhealthy":
            return self._fail(probe.worker, record, probe.at, "health 503", xid or None)
        if probe.outcome == "refused" and record.refusals >= self.config.refused_threshold:
            return self._fail(probe.worker, record, probe.at, "connection refused", None)
        if self._silent_too_long(record, probe.at):
            return self._fail(probe.worker, record, probe.at, "heartbeat timeout", None)
        return None

    def tick(self, now: float) -> list[Detection]:
        """Heartbeat timeouts at `now`: every worker not failed and not being restarted whose
        last answer (ok or 503) is older than `heartbeat_timeout_s`."""
        detections = []
        for name, record in sorted(self._workers.items()):
            if record.state in ("failed", "unknown"):
                continue  # (a restart's deadline is in the clock, see _silent_too_long)
            if self._silent_too_long(record, now):
                detection = self._fail(name, record, now, "heartbeat timeout", None)
                if detection is not None:
                    detections.append(detection)
        return detections

    # -- rules -----------------------------------------------------------------------------------

    @staticmethod
    def _remediating(record: _Worker, at: float) -> bool:
        return record.remediation_until is not None and at < record.remediation_until

    def _silent_too_long(self, record: _Worker, now: float) -> bool:
        if record.clock is None:
            return False  # the clock starts at the first probe
        since = record.clock
        if record.remediation_until is not None:
            since = max(since, record.remediation_until)
        return now - since > self.config.heartbeat_timeout_s

    @staticmethod
    def _fail(
        worker: str, record: _Worker, at: float, reason: str, xid: int | None
    ) -> Detection | None:
        record.clean = 0
        if record.state == "failed":
            return None  # once per transition, whatever the later reasons
        record.state = "failed"
        return Detection(worker, at, "failed", reason, xid)

    def _recover(self, probe: Probe, record: _Worker) -> Detection | None:
        if probe.outcome != "ok" or probe.xid != 0:
            return None
        record.clean += 1
        if record.clean < self.config.recovery_probes:
            return None
        record.state, record.clean, record.remediation_until = "healthy", 0, None
        return Detection(probe.worker, probe.at, "recovered", "recovered", None)

    def _ok(self, probe: Probe, record: _Worker, remediating: bool) -> Detection | None:
        if probe.xid != 0:
            return None  # an Xid we do not classify, on a GPU that answers: not a failure
        if remediating:
            record.remediation_until = None  # the restarted process is up
            if record.state == "app_fault":
                record.state, record.clean = "healthy", 0
                return Detection(probe.worker, probe.at, "recovered", "recovered", None)
            return None
        if record.state == "app_fault":
            # Cleared without a restart (the Xid gauge went back to 0): as strict as a failure.
            return self._recover(probe, record)
        return None
