"""Fault actions that experiments call: `module: experiments.faults`, `func: pod_kill`, ...

Each action resolves its selector against the target, records the fault in the run's ledger,
injects it through the backend the configuration names, and returns the record as plain
data. With a `duration` the action holds the fault that long and removes it before returning
(Chaos Mesh's `duration`); without one the fault stays until `recover` or the rollback
`recover_all`. Parameters use Chaos Mesh's names and units ("500ms", "1mbps").
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from chaoslib.exceptions import ActivityFailed

from experiments.backends import BackendError, FaultBackend, backend_for
from experiments.context import RunContext, ensure_run
from experiments.ledger import FaultRecord
from experiments.selectors import Candidate, Selector, SelectorError

__all__ = [
    "pod_kill",
    "pod_pause",
    "pod_failure",
    "container_kill",
    "network_delay",
    "network_loss",
    "network_duplicate",
    "network_corrupt",
    "network_bandwidth",
    "network_partition",
    "stress",
    "io_latency",
    "io_fault",
    "http_abort",
    "http_delay",
    "time_skew",
    "gpu_xid",
    "gpu_hang",
    "gpu_throttle",
    "hbm_pressure",
    "node_crash",
    "node_pause",
    "node_isolate",
    "node_drain",
    "recover",
    "recover_all",
    "pause_fault",
    "resume_fault",
    "list_faults",
]

log = logging.getLogger("experiments.faults")
REMOVAL_WAIT_S = 300.0  # another thread's recovery of the same fault (Kubernetes: deadlines)
_dry = threading.local()  # set by preflight(): resolve and validate, inject nothing
DIRECTIONS = ("to", "from", "both")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)?\s*$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# tc's rate units, as Chaos Mesh takes them: "bps" is bytes per second, "bit" bits per second.
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)\s*$", re.IGNORECASE)


def parse_seconds(value: Any, what: str) -> float:
    """'500ms', '1.5s', '2m' or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ActivityFailed(f"{what}: cannot read {value!r} as a duration (e.g. '500ms')")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds < 0:
        raise ActivityFailed(f"{what}: must not be negative, got {value!r}")
    return seconds


def parse_rate(value: Any) -> float:
    """A tc rate ('1mbps' = 1 MB/s, '8mbit' = 1 MB/s) in bytes per second."""
    m = _RATE.match(str(value))
    if not m:
        raise ActivityFailed(f"rate: cannot read {value!r} (e.g. '1mbps' or '8mbit')")
    number = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if number <= 0:
        raise ActivityFailed(f"rate: must be positive, got {value!r}")
    return number / 8 if m.group(3).lower() == "bit" else number


def parse_percent(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ActivityFailed(f"{what}: {value!r} is not a number") from None
    if not 0 <= number <= 100:
        raise ActivityFailed(f"{what}: must be within 0-100, got {value!r}")
    return number


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ActivityFailed(f"direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
    return direction


def resolve_victims(
    backend: FaultBackend,
    selector: dict[str, Any] | None,
    mode: str,
    value: Any,
    rng: random.Random | None = None,
) -> tuple[Selector, list[Candidate]]:
    """Victims for a selector; any problem is a one-line ActivityFailed."""
    try:
        sel = Selector.from_spec(selector, mode=mode, value=value)
        return sel, sel.select(backend.candidates(), rng)
    except SelectorError as exc:
        raise ActivityFailed(str(exc)) from None


def _inject(
    kind: str,
    params: dict[str, Any],
    selector: dict[str, Any] | None,
    mode: str,
    value: Any,
    duration: Any,
    configuration: dict[str, Any] | None,
    settle: Callable[[FaultRecord], None] | None = None,
) -> dict[str, Any]:
    """`settle`, when given, runs once the fault is marked injected and before any hold: an
    action that is only done when the cluster reacted (a drain) waits there; its ActivityFailed
    removes the fault again."""
    hold = parse_seconds(duration, "duration") if duration is not None else None
    try:
        backend = backend_for(configuration)
    except BackendError as exc:
        raise ActivityFailed(str(exc)) from None
    if not backend.supports(kind):
        why = getattr(backend, "why_unsupported", lambda _kind: "")(kind)
        raise ActivityFailed(
            f"the {backend.name} backend cannot inject {kind!r}" + (f": {why}" if why else "")
        )
    sel, victims = resolve_victims(backend, selector, mode, value)
    if "target" in params:  # Chaos Mesh's target: only the links between victims and these
        spec = params.pop("target") or {}
        target_mode = spec.get("mode", "all")
        _, targets = resolve_victims(backend, spec.get("selector"), target_mode, spec.get("value"))
        params["target_names"] = sorted({t.name for t in targets} - {v.name for v in victims})
        if not params["target_names"]:
            raise ActivityFailed("target: it matches only the victims themselves")
        params["target_selector"] = {
            "selector": dict(spec.get("selector") or {}),
            "mode": target_mode,
            "value": spec.get("value"),
        }
    record = FaultRecord(
        kind=kind,
        victims=[v.name for v in victims],
        params=params,
        # the selector as written (Chaos Mesh's shape, which the kubernetes backend passes on)
        selector={**dict(selector or {}), "mode": mode, "value": value},
        backend=backend.name,
        target=sel.describe(),
    )
    try:
        admit = getattr(backend, "admit", None)  # optional: only targets that need limits
        plan = admit(record, sel) if admit else {}
    except BackendError as exc:
        raise ActivityFailed(str(exc)) from None
    if getattr(_dry, "on", False):
        return {"kind": kind, "victims": record.victims, "params": params, **plan}
    run = ensure_run()
    if run.interrupted.is_set():
        raise ActivityFailed(f"run interrupted: {kind} not injected")
    run.ledger.add(record)
    try:
        details = backend.inject(record)
    except Exception as exc:
        _safe_recover(backend, record, run, error=f"injection failed: {exc}")
        raise ActivityFailed(f"{kind} on {record.victims} failed: {exc}") from None
    run.ledger.mark_injected(record, details)
    log.info("injected %s on %s", kind, ", ".join(record.victims))
    if settle is not None:
        try:
            settle(record)
        except ActivityFailed as exc:
            _safe_recover(backend, record, run, error=str(exc))
            raise
    if hold:
        _hold(run, hold)
        _safe_recover(backend, record, run)
    return record.to_json()


def _hold(run: RunContext, seconds: float) -> None:
    """Sleep, but wake up at once when the run is interrupted."""
    run.interrupted.wait(seconds)


def _safe_recover(
    backend: FaultBackend, record: FaultRecord, run: RunContext, error: str | None = None
) -> str | None:
    """Remove a fault; a failure is recorded on the fault, never raised (rollbacks go on).
    When another thread is removing it already, wait for that instead of removing it twice."""
    busy = run.ledger.claim_removal(record)
    if busy is not None:
        busy.wait(REMOVAL_WAIT_S)
        return record.error
    problem = error
    try:
        backend.recover(record)
    except Exception as exc:
        problem = f"{error + '; ' if error else ''}recovery failed: {exc}"
        log.error("could not remove fault %s (%s): %s", record.id, record.kind, exc)
    run.ledger.mark_removed(record, error=problem)
    return problem


def pod_kill(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    restart_after: Any = 5.0,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SIGKILL the selected processes. The supervisor restarts them after `restart_after`
    seconds; with `restart_after: null` they stay down until the fault is recovered, which a
    `duration` does by itself (the outage is then exactly the fault window)."""
    after = None if restart_after is None else parse_seconds(restart_after, "restart_after")
    return _inject(
        "pod-kill", {"restart_after": after}, selector, mode, value, duration, configuration
    )


def pod_pause(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SIGSTOP the selected processes; SIGCONT on recovery."""
    return _inject("pod-pause", {}, selector, mode, value, duration, configuration)


def pod_failure(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The selected pods are unavailable until the fault is removed (Chaos Mesh pod-failure;
    on the embedded cluster the processes are killed and held down until recovery)."""
    return _inject("pod-failure", {"restart_after": None}, selector, mode, value, duration,
                   configuration)  # fmt: skip


def container_kill(
    container_names: Any = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Kill named containers of the selected pods; the kubelet restarts them (Chaos Mesh
    container-kill; Kubernetes only: the embedded cluster has no containers)."""
    names = _names(container_names, "container_names")
    if not names:
        raise ActivityFailed("container_names: name at least one container")
    return _inject(
        "container-kill", {"container_names": names}, selector, mode, value, duration,
        configuration,
    )  # fmt: skip


def network_delay(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    latency: Any = "500ms",
    jitter: Any = "0ms",
    correlation: Any = 0,
    direction: str = "to",
    target: dict[str, Any] | None = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Delay traffic on every link into or out of the selected processes (netem-like)."""
    params = {
        "delay_ms": parse_seconds(latency, "latency") * 1000,
        "jitter_ms": parse_seconds(jitter, "jitter") * 1000,
        "correlation": parse_percent(correlation, "correlation"),
        "direction": _direction(direction),
    }
    _add_target(params, target)
    return _inject("network-delay", params, selector, mode, value, duration, configuration)


def network_loss(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    loss: Any = 10,
    correlation: Any = 0,
    direction: str = "to",
    target: dict[str, Any] | None = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lose a share of segments; on TCP links a loss costs a retransmission timeout."""
    params = {
        "loss": parse_percent(loss, "loss"),
        "correlation": parse_percent(correlation, "correlation"),
        "direction": _direction(direction),
    }
    _add_target(params, target)
    return _inject("network-loss", params, selector, mode, value, duration, configuration)


def network_bandwidth(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    rate: Any = "1mbps",
    limit: Any = 20000,
    buffer: Any = 10000,
    direction: str = "to",
    target: dict[str, Any] | None = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cap the throughput of the links of the selected processes. `limit` (bytes queued) and
    `buffer` (token bucket bytes) are tc's, as Chaos Mesh takes them; the embedded cluster's
    proxy shapes by rate alone."""
    params = {
        "rate_bps": parse_rate(rate),
        "limit_bytes": int(_positive(limit, "limit")),
        "buffer_bytes": int(_positive(buffer, "buffer")),
        "direction": _direction(direction),
    }
    _add_target(params, target)
    return _inject("network-bandwidth", params, selector, mode, value, duration, configuration)


def network_partition(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    action: str = "blackhole",
    direction: str = "both",
    target: dict[str, Any] | None = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cut the selected processes off: `blackhole` drops silently, `reset` refuses. With a
    `target` (`{selector: ..., mode: ...}` as in Chaos Mesh) only the links between the victims
    and the target are cut, so a minority keeps talking within itself (a split, not an
    isolation)."""
    if action not in ("blackhole", "reset"):
        raise ActivityFailed(f"action: {action!r} is not 'blackhole' or 'reset'")
    params: dict[str, Any] = {"partition": action, "direction": _direction(direction)}
    _add_target(params, target)
    return _inject("network-partition", params, selector, mode, value, duration, configuration)


def _add_target(params: dict[str, Any], target: dict[str, Any] | None) -> None:
    """Chaos Mesh's `target` of a network fault: only links to these are affected."""
    if target is None:
        return
    if not isinstance(target, dict) or set(target) - {"selector", "mode", "value"}:
        raise ActivityFailed("target: expected {selector: ..., mode: ..., value: ...}")
    params["target"] = target


def _network_rate_fault(
    kind: str,
    field: str,
    amount: Any,
    correlation: Any,
    direction: str,
    target: dict[str, Any] | None,
    selector: dict[str, Any] | None,
    mode: str,
    value: Any,
    duration: Any,
    configuration: dict[str, Any] | None,
) -> dict[str, Any]:
    params = {
        field: parse_percent(amount, field),
        "correlation": parse_percent(correlation, "correlation"),
        "direction": _direction(direction),
    }
    _add_target(params, target)
    return _inject(kind, params, selector, mode, value, duration, configuration)


def network_duplicate(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duplicate: Any = 10,
    correlation: Any = 0,
    direction: str = "to",
    target: dict[str, Any] | None = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Send a share of packets twice (netem duplicate; Kubernetes only)."""
    return _network_rate_fault(
        "network-duplicate", "duplicate", duplicate, correlation, direction, target,
        selector, mode, value, duration, configuration,
    )  # fmt: skip


def network_corrupt(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    corrupt: Any = 10,
    correlation: Any = 0,
    direction: str = "to",
    target: dict[str, Any] | None = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Flip bits in a share of packets (netem corrupt; Kubernetes only)."""
    return _network_rate_fault(
        "network-corrupt", "corrupt", corrupt, correlation, direction, target,
        selector, mode, value, duration, configuration,
    )  # fmt: skip


def _names(values: Any, what: str) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ActivityFailed(f"{what}: expected a list of names, got {values!r}")
    return list(values)


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)


def stress(
    cpu_workers: Any = None,
    cpu_load: Any = 100,
    memory_workers: Any = None,
    memory_size: Any = "256MB",
    container_names: Any = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A noisy neighbour: CPU burners at `cpu_load` percent and/or memory hogs of
    `memory_size` each, inside the selected pods (Chaos Mesh StressChaos; Kubernetes only)."""
    params: dict[str, Any] = {"cpu": None, "memory": None}
    if cpu_workers is not None:
        load = parse_percent(cpu_load, "cpu_load")
        params["cpu"] = {"workers": int(_positive(cpu_workers, "cpu_workers")), "load": int(load)}
    if memory_workers is not None:
        if not _SIZE.match(str(memory_size)):
            raise ActivityFailed(f"memory_size: cannot read {memory_size!r} (e.g. '256MB')")
        workers = int(_positive(memory_workers, "memory_workers"))
        params["memory"] = {"workers": workers, "size": str(memory_size).replace(" ", "")}
    if params["cpu"] is None and params["memory"] is None:
        raise ActivityFailed("stress: give cpu_workers, memory_workers or both")
    params["container_names"] = _names(container_names, "container_names")
    return _inject("stress", params, selector, mode, value, duration, configuration)


IO_METHODS = (
    "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir",
    "symlink", "rename", "link", "open", "read", "write", "statfs", "release", "fsync",
    "setxattr", "getxattr", "listxattr", "removexattr", "flush", "opendir", "readdir",
    "releasedir", "fsyncdir", "access", "create", "getlk", "setlk", "bmap",
)  # fmt: skip


def _io_params(
    volume_path: Any, path: Any, percent: Any, methods: Any, container_names: Any
) -> dict[str, Any]:
    if not isinstance(volume_path, str) or not volume_path.startswith("/"):
        raise ActivityFailed(f"volume_path: expected an absolute mount path, got {volume_path!r}")
    names = _names(methods, "methods")
    unknown = sorted(set(names or []) - set(IO_METHODS))
    if unknown:
        raise ActivityFailed(f"methods: unknown file operation(s) {', '.join(unknown)}")
    return {
        "volume_path": volume_path,
        "path": str(path) if path is not None else f"{volume_path.rstrip('/')}/**/*",
        "percent": int(parse_percent(percent, "percent")),
        "methods": names,
        "container_names": _names(container_names, "container_names"),
    }


def io_latency(
    volume_path: Any = "/models",
    path: Any = None,
    delay: Any = "100ms",
    percent: Any = 100,
    methods: Any = None,
    container_names: Any = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Slow file operations under `volume_path` (model weights loading from a slow volume;
    Chaos Mesh IOChaos latency, Kubernetes only)."""
    params = _io_params(volume_path, path, percent, methods, container_names)
    params["delay_ms"] = parse_seconds(delay, "delay") * 1000
    return _inject("io-latency", params, selector, mode, value, duration, configuration)


def io_fault(
    volume_path: Any = "/models",
    path: Any = None,
    errno: Any = 5,
    percent: Any = 100,
    methods: Any = None,
    container_names: Any = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fail file operations under `volume_path` with `errno` (5 = EIO: a bad disk under the
    weights; Chaos Mesh IOChaos fault, Kubernetes only)."""
    params = _io_params(volume_path, path, percent, methods, container_names)
    number = int(_positive(errno, "errno"))
    if number > 133:
        raise ActivityFailed(f"errno: {errno!r} is not a Linux errno (1-133)")
    params["errno"] = number
    return _inject("io-fault", params, selector, mode, value, duration, configuration)


def _http_params(port: Any, path: Any, method: Any, http_target: Any) -> dict[str, Any]:
    number = int(_positive(port, "port"))
    if number > 65535:
        raise ActivityFailed(f"port: {port!r} is not a TCP port")
    if http_target not in ("Request", "Response"):
        raise ActivityFailed(f"http_target: {http_target!r} is not 'Request' or 'Response'")
    methods = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
    if method is not None and str(method).upper() not in methods:
        raise ActivityFailed(f"method: {method!r} is not an HTTP method")
    return {
        "port": number,
        "path": str(path),
        "method": None if method is None else str(method).upper(),
        "http_target": http_target,
    }


def http_abort(
    port: Any = 8000,
    path: Any = "*",
    method: Any = None,
    http_target: str = "Request",
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Abort HTTP exchanges on the inference port (Chaos Mesh HTTPChaos; Kubernetes only)."""
    params = _http_params(port, path, method, http_target)
    return _inject("http-abort", params, selector, mode, value, duration, configuration)


def http_delay(
    delay: Any = "1s",
    port: Any = 8000,
    path: Any = "*",
    method: Any = None,
    http_target: str = "Request",
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Delay HTTP exchanges on the inference port (Chaos Mesh HTTPChaos; Kubernetes only)."""
    params = _http_params(port, path, method, http_target)
    params["delay_ms"] = parse_seconds(delay, "delay") * 1000
    return _inject("http-delay", params, selector, mode, value, duration, configuration)


CLOCK_IDS = ("CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID",
             "CLOCK_THREAD_CPUTIME_ID", "CLOCK_MONOTONIC_RAW", "CLOCK_REALTIME_COARSE",
             "CLOCK_MONOTONIC_COARSE", "CLOCK_BOOTTIME")  # fmt: skip
_OFFSET = re.compile(r"^\s*([+-])?\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)?\s*$")


def time_skew(
    offset: Any = "-10s",
    clock_ids: Any = None,
    container_names: Any = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Skew the clocks of the selected pods by `offset` ('-10s' runs 10 s behind): leases and
    election timeouts judged on skewed clocks (Chaos Mesh TimeChaos; Kubernetes only)."""
    m = _OFFSET.match(str(offset))
    if not m:
        raise ActivityFailed(f"offset: cannot read {offset!r} as a signed duration (e.g. '-10s')")
    ms = float(m.group(2)) * _UNITS[m.group(3) or "s"] * 1000 * (-1 if m.group(1) == "-" else 1)
    if ms == 0:
        raise ActivityFailed("offset: a zero skew is no fault")
    clocks = _names(clock_ids, "clock_ids") or ["CLOCK_REALTIME"]
    unknown = sorted(set(clocks) - set(CLOCK_IDS))
    if unknown:
        raise ActivityFailed(f"clock_ids: unknown clock(s) {', '.join(unknown)}")
    params = {
        "offset_ms": ms,
        "clock_ids": clocks,
        "container_names": _names(container_names, "container_names"),
    }
    return _inject("time-skew", params, selector, mode, value, duration, configuration)


# -- GPU faults: the worker's fault seam, on workers only ---------------------------------------

WORKER_SELECTOR = {"labelSelectors": {"role": "worker"}}
XID_EFFECTS: dict[int, dict[str, Any]] = {
    # What NVIDIA documents each Xid doing to the GPU and the CUDA contexts on it. `set` goes to
    # PUT /fault, `add` raises a counter, `recovery` says how the fault is undone.
    13: {"meaning": "graphics engine exception", "set": {"healthy": False}, "recovery": "restart"},
    31: {"meaning": "GPU memory page fault", "set": {"healthy": False}, "recovery": "restart"},
    43: {"meaning": "GPU stopped processing", "set": {"hang": True}, "recovery": "reset"},
    48: {
        "meaning": "double-bit ECC error",
        "set": {"healthy": False},
        "add": {"ecc_dbe_volatile": 1},
        "recovery": "reset",
    },
    79: {"meaning": "GPU has fallen off the bus", "set": {"healthy": False}, "recovery": "reset"},
    94: {
        "meaning": "contained ECC error",
        "set": {},
        "add": {"ecc_dbe_volatile": 1},
        "recovery": "reset",
    },
    95: {
        "meaning": "uncontained ECC error",
        "set": {"healthy": False},
        "add": {"ecc_dbe_volatile": 1},
        "recovery": "reset",
    },
}


def _only_workers(
    selector: dict[str, Any] | None, mode: str, configuration: dict[str, Any] | None
) -> dict[str, Any]:
    """A GPU fault's selector (default: the workers); one that matches anything but a worker is
    refused before injection, whatever the mode would have picked, so a run never depends on
    the luck of the draw."""
    if selector is None:
        return WORKER_SELECTOR
    try:
        backend = backend_for(configuration)
        sel = Selector.from_spec(selector, mode=mode)
    except (BackendError, SelectorError) as exc:
        raise ActivityFailed(str(exc)) from None
    others = sorted(
        c.name for c in backend.candidates() if sel.matches(c) and c.labels.get("role") != "worker"
    )
    if others:
        raise ActivityFailed(
            f"GPU faults hit workers only; the selector also matches {', '.join(others)} "
            "(add labelSelectors: {role: worker})"
        )
    return selector


def _gpu_fault(
    kind: str,
    params: dict[str, Any],
    selector: dict[str, Any] | None,
    mode: str,
    value: Any,
    duration: Any,
    configuration: dict[str, Any] | None,
) -> dict[str, Any]:
    selector = _only_workers(selector, mode, configuration)
    params.setdefault("add", {})
    params.setdefault("recovery", "reset")
    return _inject(kind, params, selector, mode, value, duration, configuration)


def gpu_xid(
    xid: Any = 79,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Raise an NVIDIA Xid on the selected workers' GPUs with its consequences: 13/31 fail the
    worker until its process restarts (recovery restarts it), 48/95 are uncorrectable ECC
    (unhealthy), 79 is a GPU off the bus (unhealthy until the node reboots, i.e. recovery),
    94 is a contained ECC error (in-flight requests fail, the GPU stays usable), 43 hangs."""
    try:
        number = int(xid)
    except (TypeError, ValueError):
        number = None
    if isinstance(xid, bool) or number not in XID_EFFECTS:
        supported = ", ".join(f"{n} ({e['meaning']})" for n, e in sorted(XID_EFFECTS.items()))
        raise ActivityFailed(f"xid: {xid!r} is not supported; supported: {supported}")
    effect = XID_EFFECTS[number]
    params = {
        "xid": number,
        "set": {"xid": number, **effect["set"]},
        "add": dict(effect.get("add", {})),
        "recovery": effect["recovery"],
    }
    return _gpu_fault("gpu-xid", params, selector, mode, value, duration, configuration)


def gpu_hang(
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stall the GPU's engine while /health still says ok, as a stuck kernel does."""
    params = {"set": {"hang": True}}
    return _gpu_fault("gpu-hang", params, selector, mode, value, duration, configuration)


def _positive(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ActivityFailed(f"{what}: {value!r} is not a number") from None
    if isinstance(value, bool) or not number > 0:
        raise ActivityFailed(f"{what}: must be > 0, got {value!r}")
    return number


def gpu_throttle(
    slowdown: Any = 2.0,
    sm_clock_mhz: Any = 900,
    temperature_c: Any = 92,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Thermal or power throttling: clocks down, every decode step `slowdown` times longer."""
    factor = _positive(slowdown, "slowdown")
    if factor < 1:
        raise ActivityFailed(f"slowdown: a throttled GPU is not faster, got {slowdown!r}")
    params = {
        "set": {
            "slowdown": factor,
            "sm_clock_mhz": _positive(sm_clock_mhz, "sm_clock_mhz"),
            "temperature_c": _positive(temperature_c, "temperature_c"),
        }
    }
    return _gpu_fault("gpu-throttle", params, selector, mode, value, duration, configuration)


def hbm_pressure(
    kv_capacity_factor: Any = 0.3,
    fb_used_mib: Any = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Something else holds HBM: the KV cache shrinks to `kv_capacity_factor` of its size, so
    requests queue and, once they cannot fit at all, are refused. `fb_used_mib` (if given) is
    what DCGM then reports as used; the worker checks it against the GPU's total."""
    try:
        factor = float(kv_capacity_factor)
    except (TypeError, ValueError):
        raise ActivityFailed(
            f"kv_capacity_factor: {kv_capacity_factor!r} is not a number"
        ) from None
    if not 0 <= factor < 1:
        raise ActivityFailed(f"kv_capacity_factor: must be within [0, 1), got {factor!r}")
    gpu: dict[str, Any] = {"kv_capacity_factor": factor}
    if fb_used_mib is not None:
        gpu["fb_used_mib"] = _positive(fb_used_mib, "fb_used_mib")
    params = {"set": gpu}
    return _gpu_fault("hbm-pressure", params, selector, mode, value, duration, configuration)


# -- node faults: every process of a node at once ----------------------------------------------


def zone_nodes(candidates: list[Candidate], zone: str) -> list[str]:
    """The nodes whose processes carry the label `zone`; none is an error naming the zones."""
    nodes = sorted({c.node for c in candidates if c.node and c.labels.get("zone") == zone})
    if not nodes:
        zones = sorted({c.labels["zone"] for c in candidates if c.labels.get("zone")})
        raise ActivityFailed(f"zone {zone!r} matches no node (zones: {', '.join(zones) or 'none'})")
    return nodes


def _node_fault(
    kind: str,
    params: dict[str, Any],
    node: str | None,
    selector: dict[str, Any] | None,
    mode: str,
    value: Any,
    duration: Any,
    configuration: dict[str, Any] | None,
    zone: str | None = None,
    settle: Callable[[FaultRecord], None] | None = None,
) -> dict[str, Any]:
    """Choose nodes (by `node`, every node of a `zone`, or `selector: {nodes: [...]}` and mode
    among node names), then inject on every process labelled with them."""
    given = [
        n for n, v in (("node", node), ("zone", zone), ("selector", selector)) if v is not None
    ]
    if len(given) > 1:
        raise ActivityFailed(f"give one of node, zone or selector, not both {' and '.join(given)}")
    spec = {"nodes": [node]} if node is not None else (selector or {})
    if not isinstance(spec, dict) or set(spec) - {"nodes"}:
        raise ActivityFailed("a node fault's selector takes only 'nodes' (a list of node names)")
    try:
        backend = backend_for(configuration)
    except BackendError as exc:
        raise ActivityFailed(str(exc)) from None
    candidates = backend.candidates()
    nodes = sorted({c.node for c in candidates if c.node})
    if zone is not None:
        spec = {"nodes": zone_nodes(candidates, str(zone))}
        params["zone"] = str(zone)
    try:
        whole = node is not None or zone is not None
        sel = Selector.from_spec(spec, mode="all" if whole else mode, value=value)
        chosen = sel.select([Candidate(n, {"node": n}) for n in nodes])
    except SelectorError as exc:
        raise ActivityFailed(f"{exc} (nodes: {', '.join(nodes) or 'none'})") from None
    params["nodes"] = [c.name for c in chosen]
    return _inject(
        kind, params, {"nodes": params["nodes"]}, "all", None, duration, configuration, settle
    )


def node_crash(
    node: str | None = None,
    zone: str | None = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    restart_after: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A node dies: SIGKILL every process on it at once. They stay down until the fault is
    recovered (the node is back) or, with `restart_after`, until the supervisor restarts them."""
    after = None if restart_after is None else parse_seconds(restart_after, "restart_after")
    params = {"restart_after": after}
    return _node_fault(
        "node-crash", params, node, selector, mode, value, duration, configuration, zone
    )


def node_pause(
    node: str | None = None,
    zone: str | None = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A node freezes (kernel stall, live migration): SIGSTOP every process on it."""
    return _node_fault("node-pause", {}, node, selector, mode, value, duration, configuration, zone)


def node_isolate(
    node: str | None = None,
    zone: str | None = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A node drops off the network: blackhole every proxy link touching its processes, both
    ways (its processes keep running, as behind a failed top-of-rack switch)."""
    params = {"partition": "blackhole", "direction": "both"}
    return _node_fault(
        "node-isolate", params, node, selector, mode, value, duration, configuration, zone
    )


SCHEDULE_KEY = "nodes.schedule"
ASSIGNMENT_KEY = "tasks.assignment"
SPEC_KEY = "tasks.spec"
DRAIN_POLL_S = 0.05


def tasks_on_nodes(assignment: Mapping[str, Any] | None, nodes: list[str]) -> list[str]:
    """The tasks an assignment still places on any of `nodes`."""
    placements = (assignment or {}).get("placements") or {}
    return sorted(t for t, p in placements.items() if p.get("node") in nodes)


def _controlled_store(configuration: dict[str, Any] | None) -> Any:
    """The store of a cluster that runs controllers; a cluster without them cannot drain."""
    from probes.migration import store_for
    from resilience.store_client import StoreUnavailable

    store = store_for(configuration)
    try:
        spec = store.get(SPEC_KEY)
    except StoreUnavailable as exc:
        raise ActivityFailed(f"node-drain: cannot read {SPEC_KEY}: {exc}") from None
    if spec is None:
        raise ActivityFailed(
            "node-drain needs the task controllers, and this cluster runs none (no tasks.spec "
            "in the store): start it with 'inference-chaos up --tasks N'"
        )
    return store


def _wait_drained(store: Any, nodes: list[str], timeout_s: float) -> None:
    """Until the controllers placed every task elsewhere; ActivityFailed after `timeout_s`."""
    from resilience.store_client import StoreUnavailable

    deadline = time.monotonic() + timeout_s
    left: list[str] = []
    problem = ""
    while True:
        try:
            left = tasks_on_nodes(store.get(ASSIGNMENT_KEY), nodes)
            problem = ""
        except StoreUnavailable as exc:
            problem = f" (the store did not answer: {exc})"
        if not left and not problem:
            return
        if time.monotonic() > deadline:
            what = f"task(s) {', '.join(left)} still on" if left else "could not confirm"
            raise ActivityFailed(
                f"node-drain: after {timeout_s:g}s {what} {', '.join(nodes)}{problem}; "
                "did a controller lead and have room to move them?"
            )
        time.sleep(DRAIN_POLL_S)


def node_drain(
    node: str | None = None,
    zone: str | None = None,
    selector: dict[str, Any] | None = None,
    mode: str = "one",
    value: Any = None,
    duration: Any = None,
    timeout_s: Any = 10.0,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Planned maintenance: cordon and drain the nodes in `nodes.schedule`, as `kubectl drain`
    does, and return once the controllers moved every task off them (make-before-break), or
    fail after `timeout_s` (the drain is then undone). Recovery uncordons the nodes. On
    Kubernetes it is `kubectl drain`: cordon, then evictions that respect PodDisruptionBudgets,
    done when the pods are gone."""
    timeout = parse_seconds(timeout_s, "timeout_s")
    params = {"timeout_s": timeout}
    if (configuration or {}).get("target") == "kubernetes":  # cordon and evictions, in inject
        return _node_fault(
            "node-drain", params, node, selector, mode, value, duration, configuration, zone
        )
    store = _controlled_store(configuration)

    def drained(record: FaultRecord) -> None:
        _wait_drained(store, record.params["nodes"], timeout)

    return _node_fault(
        "node-drain", params, node, selector, mode, value, duration, configuration, zone, drained
    )


def recover(
    fault_id: str,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Remove one fault of this run by its id."""
    run = ensure_run()
    try:
        record = run.ledger.get(fault_id)
    except KeyError:
        raise ActivityFailed(f"no fault with id {fault_id!r} in this run") from None
    _safe_recover(backend_for(configuration), record, run)
    return record.to_json()


def pause_fault(
    fault_id: str,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pause one active fault of this run without removing it (Chaos Mesh's pause annotation:
    its effects are recovered, the object stays); `resume_fault` injects it again."""
    return _set_paused(fault_id, True, configuration)


def resume_fault(
    fault_id: str,
    configuration: dict[str, Any] | None = None,
    secrets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Resume a paused fault: injected again, and confirmed so, before this returns."""
    return _set_paused(fault_id, False, configuration)


def _set_paused(
    fault_id: str, paused: bool, configuration: dict[str, Any] | None
) -> dict[str, Any]:
    run = ensure_run()
    try:
        record = run.ledger.get(fault_id)
        backend = backend_for(configuration)
    except KeyError:
        raise ActivityFailed(f"no fault with id {fault_id!r} in this run") from None
    except BackendError as exc:
        raise ActivityFailed(str(exc)) from None
    if not record.active:
        raise ActivityFailed(f"fault {fault_id} ({record.kind}) is not active")
    pause = getattr(backend, "set_paused", None)
    if pause is None:
        raise ActivityFailed(f"the {backend.name} backend cannot pause a fault; recover it instead")
    try:
        pause(record, paused)
    except BackendError as exc:
        raise ActivityFailed(str(exc)) from None
    record.details["paused"] = paused
    return record.to_json()


def recover_all(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Remove every fault of this run that is still active (the rollback of every experiment)."""
    run = ensure_run()
    active = run.ledger.active()
    errors: list[str] = []
    if active:
        try:
            backend = backend_for(configuration)
        except BackendError as exc:
            raise ActivityFailed(f"cannot remove {len(active)} fault(s): {exc}") from None
        for record in active:
            problem = _safe_recover(backend, record, run)
            if problem:
                errors.append(f"{record.kind} {record.id}: {problem}")
    result = {
        "removed": [r.id for r in active],
        "errors": errors,
        "still_active": [r.id for r in run.ledger.active()],
        "at": time.time(),
    }
    if errors:
        raise ActivityFailed("; ".join(errors))
    return result


def list_faults(
    configuration: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every fault of this run, active or removed."""
    return ensure_run().ledger.to_json()


def preflight(
    func: str, arguments: dict[str, Any], configuration: dict[str, Any] | None
) -> dict[str, Any]:
    """Check a fault action's arguments and selector against the live target, injecting
    nothing; raises ActivityFailed with the problem."""
    if func not in FAULT_ACTIONS:
        raise ActivityFailed(
            f"unknown fault action {func!r}; expected one of {', '.join(sorted(FAULT_ACTIONS))}"
        )
    _dry.on = True
    try:
        return globals()[func](**arguments, configuration=configuration)
    except TypeError as exc:
        raise ActivityFailed(f"{func}: {exc}") from None
    finally:
        _dry.on = False


FAULT_ACTIONS = {
    name
    for name in __all__
    if name not in ("recover", "recover_all", "list_faults", "pause_fault", "resume_fault")
}
