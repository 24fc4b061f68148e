"""One fault record as Chaos Mesh 2.8 objects: pure functions, no cluster needed.

`chaos_manifests` turns a FaultRecord's kind, params and selector into the custom objects the
Kubernetes backend creates. Every object must pass the CRD schema *and* Chaos Mesh's admission
webhook, so this module checks what the webhook checks (api/v1alpha1/*_webhook.go and the
`webhook:` tags of Chaos Mesh 2.x) and refuses values Chaos Mesh would reject or silently
change, with a one-line ValueError. Objects carry no `spec.duration`: the harness holds a
fault and deletes the object itself, so a crashed run leaves an object `cleanup` can find
rather than a timer nobody watches.

Semantics worth knowing (see docs/kubernetes-faults.md for the whole table):
- netem faults (delay, loss, duplicate, corrupt, bandwidth) shape the *egress* of a pod; with
  direction `from`/`both` Chaos Mesh shapes the target pods' egress towards the victims, so
  those directions need `target_selector` (the webhook refuses them without one).
- a partition drops packets (iptables DROP); there is no TCP reset, so `partition: reset` is
  not possible. Without a target it drops *all* traffic on the pod's eth0, kubelet probes
  included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from experiments.kube import names

MODES = ("one", "all", "fixed", "fixed-percent", "random-max-percent")
DIRECTIONS = ("to", "from", "both")
SELECTOR_KEYS = frozenset({"namespaces", "labelSelectors", "nodes", "pods", "nodeSelectors"})
# the keys the fault actions add to the raw selector of a FaultRecord
RECORD_KEYS = frozenset({"mode", "value"})

# Chaos Mesh's IoMethod constants (api/v1alpha1/podiochaos_types.go)
IO_METHODS = frozenset(
    "lookup forget getattr setattr readlink mknod mkdir unlink rmdir symlink rename link open "
    "read write flush release fsync opendir readdir releasedir fsyncdir statfs setxattr "
    "getxattr listxattr removexattr access create getlk setlk bmap".split()
)
# the methods HTTPChaos accepts for a Request target (api/v1alpha1/httpchaos_webhook.go)
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
HTTP_TARGETS = ("Request", "Response")
# TimeChaos clockIds (the CRD's description lists them)
CLOCK_IDS = frozenset(
    {
        "CLOCK_REALTIME",
        "CLOCK_MONOTONIC",
        "CLOCK_PROCESS_CPUTIME_ID",
        "CLOCK_THREAD_CPUTIME_ID",
        "CLOCK_MONOTONIC_RAW",
        "CLOCK_REALTIME_COARSE",
        "CLOCK_MONOTONIC_COARSE",
        "CLOCK_BOOTTIME",
        "CLOCK_REALTIME_ALARM",
        "CLOCK_BOOTTIME_ALARM",
    }
)
MAX_STRESS_WORKERS = 8192  # the CRD's maximum (stress-ng's limit)
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# what docker/go-units FromHumanSize reads (StressChaos memory size), or a percentage
_HUMAN_SIZE = re.compile(r"^\d+(\.\d+)? ?[kKmMgGtTpP]?[iI]?[bB]?$")
_SIZE_PERCENT = re.compile(r"^(\d{1,3})%$")

UNSUPPORTED: dict[str, str] = {
    "pod-pause": "pod-pause is not possible on Kubernetes (Chaos Mesh cannot SIGSTOP a pod); "
    "use pod-failure, which keeps the pod's containers from running",
    "node-pause": "node-pause is not possible on Kubernetes (Chaos Mesh cannot freeze a node); "
    "use node-crash, which kills every pod of the node and keeps replacements off it",
}
# kinds another part of the Kubernetes backend handles: node-drain by cordon and eviction,
# GPU faults by DCGM field injection (experiments/kube/gpu.py), which may add a PodChaos
OTHER_KINDS: dict[str, list[str]] = {
    "node-drain": [],
    "gpu-xid": ["PodChaos"],
    "gpu-hang": ["PodChaos"],
    "gpu-throttle": [],
    "hbm-pressure": [],
}


class UnsupportedOnKubernetes(ValueError):
    """A fault Chaos Mesh cannot make; the message names what to use instead."""


# -- units ---------------------------------------------------------------------------------------


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what}: expected a finite number, got {value!r}")
    return float(value)


def _whole(value: Any, what: str, low: int, high: int) -> int:
    """An integer within [low, high]; a float is accepted only when it is whole."""
    number = _number(value, what)
    if number != int(number):
        raise ValueError(f"{what}: Chaos Mesh needs a whole number, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{what}: must be within {low}-{high}, got {value!r}")
    return int(number)


def percent_str(value: Any, what: str) -> str:
    """A netem percentage (0-100) as the decimal string Chaos Mesh parses, never exponent form."""
    number = _number(value, what)
    if not 0 <= number <= 100:
        raise ValueError(f"{what}: must be within 0-100, got {value!r}")
    if number == int(number):
        return str(int(number))
    return format(Decimal(repr(number)), "f")


def duration_str(ms: Any, what: str, *, signed: bool = False) -> str:
    """Milliseconds as a Go duration ("500ms", "-10s", "1500us"), exact to the nanosecond:
    the largest of s, ms, us, ns that divides the value, so nothing is rounded away."""
    number = _number(ms, what)
    if number < 0 and not signed:
        raise ValueError(f"{what}: must not be negative, got {ms!r}")
    nanos = round(number * 1_000_000)
    if abs(nanos) >= 2**63:
        raise ValueError(f"{what}: {ms!r} ms does not fit a Go duration")
    for unit, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if nanos % size == 0:
            return f"{nanos // size}{unit}"
    return f"{nanos}ns"


def netem_duration_str(ms: Any, what: str) -> str:
    """A netem latency or jitter: netem keeps microseconds in 32 bits, so round to the
    microsecond and refuse what would overflow."""
    micros = round(_number(ms, what) * 1000)
    if micros < 0:
        raise ValueError(f"{what}: must not be negative, got {ms!r}")
    if micros > UINT32_MAX:
        raise ValueError(f"{what}: {ms!r} ms is beyond netem's {UINT32_MAX} us")
    return f"{micros // 1000}ms" if micros % 1000 == 0 else f"{micros}us"


def rate_str(rate_bps: Any) -> str:
    """Bytes per second as tc's `bps` unit (bytes per second, not bits). Chaos Mesh takes only
    whole numbers and counts `kbps` as 1024 bps, so the plain unit is the exact one."""
    number = _number(rate_bps, "rate_bps")
    whole = round(number)
    if whole < 1:
        raise ValueError(f"rate_bps: must be at least 1 byte/s, got {rate_bps!r}")
    return f"{whole}bps"


# -- selectors -----------------------------------------------------------------------------------


def mode_value(mode: Any, value: Any, what: str = "selector") -> dict[str, str]:
    """Chaos Mesh's `mode` and `value`: the webhook reads value with Atoi, so a percentage must
    be a whole number in 1-100 and `fixed` a whole number >= 1."""
    if mode not in MODES:
        raise ValueError(f"{what}: mode {mode!r} is not one of {', '.join(MODES)}")
    if mode in ("one", "all"):
        return {"mode": mode}
    if value is None or value == "":
        raise ValueError(f"{what}: mode {mode!r} needs a value")
    try:
        number = float(value) if isinstance(value, str) else _number(value, f"{what} value")
    except ValueError:
        raise ValueError(f"{what}: value {value!r} is not a number") from None
    high = INT32_MAX if mode == "fixed" else 100
    count = _whole(number, f"{what} value (mode {mode})", 1, high)
    return {"mode": mode, "value": str(count)}


def _string_map(raw: Any, what: str) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{what}: expected a mapping, got {type(raw).__name__}")
    return {str(k): str(v) for k, v in raw.items()}


def _string_list(raw: Any, what: str) -> list[str]:
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise ValueError(f"{what}: expected a list, got {raw!r}")
    return [str(item) for item in raw]


def pod_selector(raw: Mapping[str, Any] | None, namespace: str) -> dict[str, Any]:
    """Our selector keys mapped one-to-one onto Chaos Mesh's `selector`; namespaces default to
    the object's namespace (what Chaos Mesh's defaulting webhook would do), pods given as a
    list belong to the one selected namespace. Chaos Mesh takes listed pods as they are and
    ignores the other keys (pkg/selector/pod), so a selector that lists pods should list
    exactly the victims: the backend pins resolved victims that way."""
    raw = {k: v for k, v in (raw or {}).items() if k not in RECORD_KEYS}
    unknown = set(raw) - SELECTOR_KEYS
    if unknown:
        raise ValueError(f"selector: unknown key(s) {sorted(unknown)}")
    namespaces = _string_list(raw.get("namespaces") or [namespace], "selector.namespaces")
    spec: dict[str, Any] = {"namespaces": namespaces}
    if raw.get("labelSelectors"):
        spec["labelSelectors"] = _string_map(raw["labelSelectors"], "selector.labelSelectors")
    if raw.get("nodes"):
        spec["nodes"] = _string_list(raw["nodes"], "selector.nodes")
    if raw.get("nodeSelectors"):
        spec["nodeSelectors"] = _string_map(raw["nodeSelectors"], "selector.nodeSelectors")
    pods = raw.get("pods")
    if pods:
        if isinstance(pods, Mapping):
            spec["pods"] = {
                str(ns): _string_list(v, f"selector.pods.{ns}") for ns, v in pods.items()
            }
        elif len(namespaces) == 1:
            spec["pods"] = {namespaces[0]: _string_list(pods, "selector.pods")}
        else:
            raise ValueError(
                "selector.pods: a list of names needs exactly one namespace; "
                "give pods as {namespace: [names]}"
            )
    return spec


def _target(raw: Mapping[str, Any] | None, namespace: str) -> dict[str, Any] | None:
    """params.target_selector ({selector, mode, value}) as NetworkChaos `spec.target`."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"target_selector: expected {{selector, mode, value}}, got {raw!r}")
    unknown = set(raw) - {"selector", "mode", "value"}
    if unknown:
        raise ValueError(f"target_selector: unknown key(s) {sorted(unknown)}")
    picked = mode_value(raw.get("mode", "all"), raw.get("value"), "target_selector")
    return {"selector": pod_selector(raw.get("selector"), namespace), **picked}


# -- builders, one per fault kind ----------------------------------------------------------------


def _direction(params: Mapping[str, Any]) -> str:
    direction = params.get("direction", "to")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
    return direction


def _netem_spec(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """action, direction and target shared by every NetworkChaos traffic-control fault."""
    direction = _direction(params)
    target = _target(params.get("target_selector"), namespace)
    if direction != "to" and target is None:
        raise UnsupportedOnKubernetes(
            f"{kind} with direction {direction!r} needs target_selector on Kubernetes: "
            "Chaos Mesh shapes egress only, so ingress is shaped on the target pods; "
            "use direction 'to' or give a target"
        )
    spec: dict[str, Any] = {"direction": direction}
    if target is not None:
        spec["target"] = target
    return spec


def _netem(action: str, field: str) -> Callable[[str, Mapping[str, Any], str], dict[str, Any]]:
    def build(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
        detail = {
            field: percent_str(params.get(field), field),
            "correlation": percent_str(params.get("correlation", 0), "correlation"),
        }
        return {"action": action, field: detail, **_netem_spec(kind, params, namespace)}

    return build


def _delay(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    delay = {
        "latency": netem_duration_str(params.get("delay_ms"), "delay_ms"),
        "jitter": netem_duration_str(params.get("jitter_ms", 0), "jitter_ms"),
        "correlation": percent_str(params.get("correlation", 0), "correlation"),
    }
    return {"action": "delay", "delay": delay, **_netem_spec(kind, params, namespace)}


def _bandwidth(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    bandwidth = {
        "rate": rate_str(params.get("rate_bps")),
        "limit": _whole(params.get("limit_bytes"), "limit_bytes", 1, UINT32_MAX),
        "buffer": _whole(params.get("buffer_bytes"), "buffer_bytes", 1, UINT32_MAX),
    }
    return {"action": "bandwidth", "bandwidth": bandwidth, **_netem_spec(kind, params, namespace)}


def _partition_action(params: Mapping[str, Any]) -> None:
    how = params.get("partition", "blackhole")
    if how == "reset":
        raise UnsupportedOnKubernetes(
            "partition 'reset' is not possible on Kubernetes (Chaos Mesh only drops packets, "
            "it sends no TCP reset); use partition 'blackhole'"
        )
    if how != "blackhole":
        raise ValueError(f"partition: {how!r} is not 'blackhole' or 'reset'")


def _partition(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    _partition_action(params)
    spec: dict[str, Any] = {"action": "partition", "direction": _direction(params)}
    target = _target(params.get("target_selector"), namespace)
    if target is not None:
        spec["target"] = target
    return spec


def _node_names(params: Mapping[str, Any]) -> list[str]:
    nodes = _string_list(params.get("nodes"), "nodes")
    if not nodes:
        raise ValueError("nodes: a node fault needs at least one node name")
    return nodes


def _container_names(params: Mapping[str, Any]) -> dict[str, Any]:
    given = params.get("container_names")
    if not given:
        return {}
    return {"containerNames": _string_list(given, "container_names")}


def _pod_kill(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    # restart_after has no Chaos Mesh counterpart: the pod's controller replaces it at once
    return {"action": "pod-kill", "gracePeriod": 0}


def _pod_failure(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    return {"action": "pod-failure"}


def _container_kill(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    names_given = _container_names(params)
    if not names_given:
        raise ValueError("container_names: container-kill needs at least one container name")
    return {"action": "container-kill", **names_given}


def _memory_size(size: Any) -> str:
    text = str(size).strip()
    percent = _SIZE_PERCENT.match(text)
    if percent and int(percent.group(1)) <= 100:
        return text
    if percent or not _HUMAN_SIZE.match(text):
        raise ValueError(f"memory.size: {size!r} is not a size like '256MB' or a percent '50%'")
    return text


def _stress(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    stressors: dict[str, Any] = {}
    cpu = params.get("cpu")
    if cpu:
        stressors["cpu"] = {
            "workers": _whole(cpu.get("workers"), "cpu.workers", 1, MAX_STRESS_WORKERS)
        }
        if cpu.get("load") is not None:
            stressors["cpu"]["load"] = _whole(cpu["load"], "cpu.load", 0, 100)
    memory = params.get("memory")
    if memory:
        workers = _whole(memory.get("workers"), "memory.workers", 1, MAX_STRESS_WORKERS)
        stressors["memory"] = {"workers": workers}
        if memory.get("size") is not None:
            stressors["memory"]["size"] = _memory_size(memory["size"])
    if not stressors:
        raise ValueError("stress: give cpu and/or memory")
    return {"stressors": stressors, **_container_names(params)}


def _io_common(params: Mapping[str, Any]) -> dict[str, Any]:
    volume_path = params.get("volume_path")
    if not isinstance(volume_path, str) or not volume_path.startswith("/"):
        raise ValueError(f"volume_path: expected an absolute mount path, got {volume_path!r}")
    spec: dict[str, Any] = {
        "volumePath": volume_path,
        "percent": _whole(params.get("percent", 100), "percent", 0, 100),
    }
    if params.get("path"):
        spec["path"] = str(params["path"])
    methods = params.get("methods")
    if methods:
        listed = _string_list(methods, "methods")
        unknown = sorted(set(listed) - IO_METHODS)
        if unknown:
            raise ValueError(f"methods: {unknown} are not IOChaos methods")
        spec["methods"] = listed
    return {**spec, **_container_names(params)}


def _io_latency(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    delay = duration_str(params.get("delay_ms"), "delay_ms")
    return {"action": "latency", "delay": delay, **_io_common(params)}


def _io_fault(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    errno = _whole(params.get("errno"), "errno", 1, 4095)
    return {"action": "fault", "errno": errno, **_io_common(params)}


def _http_common(params: Mapping[str, Any]) -> dict[str, Any]:
    target = params.get("http_target", "Request")
    if target not in HTTP_TARGETS:
        raise ValueError(f"http_target: {target!r} is not 'Request' or 'Response'")
    spec: dict[str, Any] = {"target": target, "port": _whole(params.get("port"), "port", 1, 65535)}
    if params.get("path"):
        spec["path"] = str(params["path"])
    method = params.get("method")
    if method:
        if str(method).upper() not in HTTP_METHODS:
            raise ValueError(f"method: {method!r} is not one of {', '.join(HTTP_METHODS)}")
        spec["method"] = str(method).upper()
    return spec


def _http_abort(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    return {**_http_common(params), "abort": True}


def _http_delay(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    return {**_http_common(params), "delay": duration_str(params.get("delay_ms"), "delay_ms")}


def _time_skew(kind: str, params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    clocks = _string_list(params.get("clock_ids") or ["CLOCK_REALTIME"], "clock_ids")
    unknown = sorted(set(clocks) - CLOCK_IDS)
    if unknown:
        raise ValueError(f"clock_ids: {unknown} are not clock ids TimeChaos knows")
    return {
        "timeOffset": duration_str(params.get("offset_ms"), "offset_ms", signed=True),
        "clockIds": clocks,
        **_container_names(params),
    }


Builder = Callable[[str, Mapping[str, Any], str], dict[str, Any]]
# kind -> (Chaos Mesh kind, spec builder); node faults are built separately (their selector)
_BUILDERS: dict[str, tuple[str, Builder]] = {
    "network-delay": ("NetworkChaos", _delay),
    "network-loss": ("NetworkChaos", _netem("loss", "loss")),
    "network-duplicate": ("NetworkChaos", _netem("duplicate", "duplicate")),
    "network-corrupt": ("NetworkChaos", _netem("corrupt", "corrupt")),
    "network-bandwidth": ("NetworkChaos", _bandwidth),
    "network-partition": ("NetworkChaos", _partition),
    "pod-kill": ("PodChaos", _pod_kill),
    "pod-failure": ("PodChaos", _pod_failure),
    "container-kill": ("PodChaos", _container_kill),
    "stress": ("StressChaos", _stress),
    "io-latency": ("IOChaos", _io_latency),
    "io-fault": ("IOChaos", _io_fault),
    "http-abort": ("HTTPChaos", _http_abort),
    "http-delay": ("HTTPChaos", _http_delay),
    "time-skew": ("TimeChaos", _time_skew),
}
_NODE_KINDS = {"node-isolate": "NetworkChaos", "node-crash": "PodChaos"}
SUPPORTED_KINDS: frozenset[str] = frozenset(_BUILDERS) | frozenset(_NODE_KINDS)


def chaos_kinds_for(kind: str) -> list[str]:
    """The Chaos Mesh kinds a fault kind may create (for RBAC and CRD checks before a run)."""
    if kind in UNSUPPORTED:
        raise UnsupportedOnKubernetes(UNSUPPORTED[kind])
    if kind in _BUILDERS:
        return [_BUILDERS[kind][0]]
    if kind in _NODE_KINDS:
        return [_NODE_KINDS[kind]]
    if kind in OTHER_KINDS:
        return list(OTHER_KINDS[kind])
    raise ValueError(f"unknown fault kind {kind!r}")


def node_down_taint(fault_id: str) -> dict[str, str]:
    """The NoSchedule taint that keeps replacements off a crashed node (applied and removed
    by the backend); its value names the fault so recovery removes only its own taint."""
    return {
        "key": names.NODE_DOWN_TAINT,
        "value": names.label_value(fault_id),
        "effect": "NoSchedule",
    }


def check_dns_label(text: str, what: str) -> str:
    """Object names we create are DNS labels: they also end up in label values (a Job's name
    in `job-name`), which allow at most 63 characters."""
    if not isinstance(text, str) or not _DNS_LABEL.match(text):
        raise ValueError(
            f"{what}: {text!r} is not a DNS label (lowercase letters, digits, '-', at most 63)"
        )
    return text


def _metadata(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    check_dns_label(name, "name")
    check_dns_label(namespace, "namespace")
    return {
        "name": name,
        "namespace": namespace,
        "labels": {str(k): str(v) for k, v in labels.items()},
    }


def _node_spec(kind: str, params: Mapping[str, Any], selector: Mapping[str, Any], namespace: str):
    """Node faults hit every pod Chaos Mesh may touch on the nodes: those of the selected
    namespaces (the selector's, else the object's own)."""
    nodes = _node_names(params)
    namespaces = _string_list(selector.get("namespaces") or [namespace], "selector.namespaces")
    where = {"namespaces": namespaces, "nodes": nodes}
    if kind == "node-crash":
        return {"action": "pod-kill", "gracePeriod": 0, "selector": where, "mode": "all"}
    _partition_action(params)
    return {
        "action": "partition",
        "direction": "both",
        "selector": where,
        "mode": "all",
        # every pod of the same namespaces: the node's pods lose every pod peer, and kubelet
        # probes (from the node's own address) still pass, as on a node cut off by its switch
        "target": {"selector": {"namespaces": list(namespaces)}, "mode": "all"},
    }


def chaos_manifests(
    kind: str,
    params: Mapping[str, Any],
    selector: Mapping[str, Any],
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The Chaos Mesh objects for one fault; ValueError (or its UnsupportedOnKubernetes) names
    the first thing Chaos Mesh would refuse or could not do."""
    if kind in UNSUPPORTED:
        raise UnsupportedOnKubernetes(UNSUPPORTED[kind])
    selector = selector or {}
    if kind in _NODE_KINDS:
        chaos_kind = _NODE_KINDS[kind]
        spec = _node_spec(kind, params, selector, namespace)
    elif kind in _BUILDERS:
        chaos_kind, build = _BUILDERS[kind]
        picked = mode_value(selector.get("mode", "one"), selector.get("value"))
        spec = {"selector": pod_selector(selector, namespace), **picked}
        spec.update(build(kind, params, namespace))
    elif kind in OTHER_KINDS:
        raise ValueError(f"{kind} is not made with Chaos Mesh (see experiments/kube/gpu.py)")
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return [
        {
            "apiVersion": names.API_VERSION,
            "kind": chaos_kind,
            "metadata": _metadata(name, namespace, labels),
            "spec": spec,
        }
    ]
