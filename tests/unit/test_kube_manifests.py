"""Fault records as Chaos Mesh 2.8.3 objects: every output passes the CRD schemas strictly
(unknown fields refused), the mapping of selector, mode, direction, target and units is the
one Chaos Mesh reads, and what Chaos Mesh cannot do is refused with a one-line reason.

Property tests draw parameters over their whole ranges (latencies, percentages, correlations,
rates, sizes, signed time offsets, every mode with its value, selectors with several keys) and
check each object against the schema and against what Chaos Mesh's webhook parses: values as
whole numbers, percentages and Go durations that read back to the number we meant.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.kube import names
from experiments.kube.crds import CrdError, CrdSchemas
from experiments.kube.manifests import (
    IO_METHODS,
    SUPPORTED_KINDS,
    UnsupportedOnKubernetes,
    chaos_kinds_for,
    chaos_manifests,
    node_down_taint,
)

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LABELS = {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.RUN_LABEL: "run-1"}
NAMESPACE = "inference"
WORKERS = {"labelSelectors": {"role": "worker"}, "mode": "one", "value": None}
TARGET = {"selector": {"labelSelectors": {"role": "gateway"}}, "mode": "all"}

# one record's params per fault kind, as the fault actions write them
EXAMPLES: dict[str, dict] = {
    "network-delay": {
        "delay_ms": 500.0,
        "jitter_ms": 100.0,
        "correlation": 100.0,
        "direction": "to",
    },
    "network-loss": {"loss": 10.0, "correlation": 0.0, "direction": "to"},
    "network-duplicate": {
        "duplicate": 5.0,
        "correlation": 25.0,
        "direction": "both",
        "target_selector": TARGET,
    },
    "network-corrupt": {
        "corrupt": 1.5,
        "correlation": 0.0,
        "direction": "from",
        "target_selector": TARGET,
    },
    "network-bandwidth": {
        "rate_bps": 125000.0,
        "limit_bytes": 20000,
        "buffer_bytes": 10000,
        "direction": "to",
    },
    "network-partition": {"partition": "blackhole", "direction": "both", "target_selector": TARGET},
    "pod-kill": {"restart_after": None},
    "pod-failure": {},
    "container-kill": {"container_names": ["vllm"]},
    "stress": {
        "cpu": {"workers": 2, "load": 80},
        "memory": {"workers": 1, "size": "256MB"},
        "container_names": None,
    },
    "io-latency": {
        "volume_path": "/models",
        "path": "/models/**",
        "delay_ms": 100.0,
        "percent": 50,
        "methods": ["read"],
        "container_names": ["vllm"],
    },
    "io-fault": {
        "volume_path": "/models",
        "path": "",
        "errno": 5,
        "percent": 100,
        "methods": None,
        "container_names": None,
    },
    "http-abort": {
        "port": 8000,
        "path": "/v1/chat/completions",
        "method": "POST",
        "http_target": "Request",
    },
    "http-delay": {
        "port": 8000,
        "path": "/v1/*",
        "method": None,
        "http_target": "Response",
        "delay_ms": 750.0,
    },
    "time-skew": {"offset_ms": -10000.0, "clock_ids": ["CLOCK_REALTIME"], "container_names": None},
    "node-isolate": {"nodes": ["gpu-node-1"], "partition": "blackhole", "direction": "both"},
    "node-crash": {"nodes": ["gpu-node-1", "gpu-node-2"], "restart_after": None},
}
NODE_SELECTOR = {"nodes": ["gpu-node-1"], "mode": "all", "value": None}


@pytest.fixture(scope="module")
def schemas() -> CrdSchemas:
    try:
        return CrdSchemas.load()
    except CrdError as exc:
        pytest.skip(f"Chaos Mesh CRDs not found ({exc}); set $INFERENCE_CHAOS_CRDS")


def build(kind: str, params: dict | None = None, selector: dict | None = None) -> dict:
    """The one manifest of a kind (every kind makes exactly one object)."""
    default_selector = NODE_SELECTOR if kind.startswith("node-") else WORKERS
    made = chaos_manifests(
        kind,
        EXAMPLES[kind] if params is None else params,
        default_selector if selector is None else selector,
        name="fault-abc123",
        namespace=NAMESPACE,
        labels=LABELS,
    )
    assert len(made) == 1
    return made[0]


def test_examples_cover_every_supported_kind():
    assert set(EXAMPLES) == set(SUPPORTED_KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_kind_validates_strictly(schemas, kind):
    manifest = build(kind)
    assert schemas.errors(manifest, strict=True) == []
    assert manifest["apiVersion"] == names.API_VERSION
    assert manifest["kind"] == chaos_kinds_for(kind)[0]
    assert manifest["metadata"] == {
        "name": "fault-abc123",
        "namespace": NAMESPACE,
        "labels": LABELS,
    }
    assert "duration" not in manifest["spec"]  # we hold the fault and delete the object


def test_the_strict_validator_would_catch_a_typo(schemas):
    manifest = build("network-delay")
    broken = copy.deepcopy(manifest)
    broken["spec"]["delay"]["latencyy"] = "1s"
    assert schemas.errors(broken, strict=True)
    broken = copy.deepcopy(manifest)
    broken["spec"]["delay"]["latency"] = "500 ms"
    assert schemas.errors(broken, strict=True)


# -- selector, mode, value -------------------------------------------------------------------


def test_selector_maps_one_to_one_and_defaults_namespace():
    raw = {
        "labelSelectors": {"role": "worker", "gpu": 0},
        "nodes": ["n1", "n2"],
        "nodeSelectors": {"zone": "zone-b"},
        "mode": "fixed",
        "value": 2,
    }
    spec = build("pod-failure", {}, raw)["spec"]
    assert spec["selector"] == {
        "namespaces": [NAMESPACE],
        "labelSelectors": {"role": "worker", "gpu": "0"},
        "nodes": ["n1", "n2"],
        "nodeSelectors": {"zone": "zone-b"},
    }
    assert (spec["mode"], spec["value"]) == ("fixed", "2")
    listed = build("pod-failure", {}, {"pods": ["worker-0", "worker-1"], "mode": "all"})
    assert listed["spec"]["selector"] == {
        "namespaces": [NAMESPACE],
        "pods": {NAMESPACE: ["worker-0", "worker-1"]},
    }


def test_listed_pods_keep_the_other_keys_one_to_one():
    raw = {"pods": ["raft-0"], "labelSelectors": {"role": "raft"}, "mode": "all"}
    selector = build("pod-kill", None, raw)["spec"]["selector"]
    assert selector == {
        "namespaces": [NAMESPACE],
        "labelSelectors": {"role": "raft"},
        "pods": {NAMESPACE: ["raft-0"]},
    }


def test_pods_by_namespace_are_kept_and_a_list_needs_one_namespace():
    spec = build("pod-kill", None, {"namespaces": ["a", "b"], "pods": {"a": ["p"]}, "mode": "all"})
    assert spec["spec"]["selector"] == {"namespaces": ["a", "b"], "pods": {"a": ["p"]}}
    with pytest.raises(ValueError, match="exactly one namespace"):
        build("pod-kill", None, {"namespaces": ["a", "b"], "pods": ["p"], "mode": "all"})


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("one", None, {"mode": "one"}),
        ("all", "7", {"mode": "all"}),
        ("fixed", 3, {"mode": "fixed", "value": "3"}),
        ("fixed-percent", 50.0, {"mode": "fixed-percent", "value": "50"}),
        ("random-max-percent", "100", {"mode": "random-max-percent", "value": "100"}),
    ],
)
def test_mode_and_value_as_chaos_mesh_reads_them(mode, value, expected):
    spec = build("pod-failure", {}, {"labelSelectors": {"a": "b"}, "mode": mode, "value": value})
    assert {k: spec["spec"][k] for k in ("mode", "value") if k in spec["spec"]} == expected


@pytest.mark.parametrize(
    "mode, value, message",
    [
        ("fixed-percent", 12.5, "whole number"),  # the webhook reads value with Atoi
        ("fixed-percent", 0, "1-100"),
        ("random-max-percent", 101, "1-100"),
        ("fixed", 0, "1-"),
        ("fixed", None, "needs a value"),
        ("fixed", "two", "not a number"),
        ("some", None, "not one of"),
    ],
)
def test_bad_mode_or_value_is_refused(mode, value, message):
    with pytest.raises(ValueError, match=message):
        build("pod-failure", {}, {"mode": mode, "value": value})


def test_unknown_selector_key_is_refused():
    with pytest.raises(ValueError, match="unknown key"):
        build("pod-failure", {}, {"labels": {"a": "b"}, "mode": "one"})


# -- network ---------------------------------------------------------------------------------


def test_delay_units_and_direction():
    params = {"delay_ms": 500, "jitter_ms": 0.5, "correlation": 25.5, "direction": "to"}
    spec = build("network-delay", params)["spec"]
    assert spec["action"] == "delay"
    assert spec["delay"] == {"latency": "500ms", "jitter": "500us", "correlation": "25.5"}
    assert spec["direction"] == "to" and "target" not in spec


def test_target_selector_becomes_spec_target():
    params = {
        "loss": 30,
        "correlation": 0,
        "direction": "both",
        "target_selector": {
            "selector": {"labelSelectors": {"role": "raft"}, "namespaces": ["store"]},
            "mode": "fixed",
            "value": 2,
        },
    }
    spec = build("network-loss", params)["spec"]
    assert spec["loss"] == {"loss": "30", "correlation": "0"}
    assert spec["direction"] == "both"
    assert spec["target"] == {
        "selector": {"namespaces": ["store"], "labelSelectors": {"role": "raft"}},
        "mode": "fixed",
        "value": "2",
    }


@pytest.mark.parametrize("kind", ["network-delay", "network-loss", "network-bandwidth"])
@pytest.mark.parametrize("direction", ["from", "both"])
def test_ingress_shaping_needs_a_target(kind, direction):
    params = {k: v for k, v in EXAMPLES[kind].items() if k != "target_selector"}
    params["direction"] = direction
    with pytest.raises(UnsupportedOnKubernetes, match="target_selector"):
        build(kind, params)


def test_bandwidth_rate_is_bytes_per_second_in_plain_bps():
    params = dict(EXAMPLES["network-bandwidth"], rate_bps=1_000_000.4)
    bandwidth = build("network-bandwidth", params)["spec"]["bandwidth"]
    # "1mbps" would be 1048576 B/s to Chaos Mesh (it counts in 1024s); plain bps is exact
    assert bandwidth == {"rate": "1000000bps", "limit": 20000, "buffer": 10000}
    with pytest.raises(ValueError, match="at least 1"):
        build("network-bandwidth", dict(params, rate_bps=0.2))
    with pytest.raises(ValueError, match="limit_bytes"):
        build("network-bandwidth", dict(params, limit_bytes=0))


def test_partition_without_target_and_reset_refused():
    spec = build("network-partition", {"partition": "blackhole", "direction": "to"})["spec"]
    assert spec == {
        "selector": {"namespaces": [NAMESPACE], "labelSelectors": {"role": "worker"}},
        "mode": "one",
        "action": "partition",
        "direction": "to",
    }
    with pytest.raises(UnsupportedOnKubernetes, match="blackhole"):
        build("network-partition", {"partition": "reset", "direction": "both"})


def test_percentages_outside_0_100_are_refused():
    with pytest.raises(ValueError, match="0-100"):
        build("network-loss", {"loss": 100.5, "correlation": 0, "direction": "to"})
    with pytest.raises(ValueError, match="correlation"):
        build("network-loss", {"loss": 1, "correlation": -1, "direction": "to"})


# -- node faults -----------------------------------------------------------------------------


def test_node_isolate_partitions_the_nodes_pods_from_every_pod_of_the_namespaces():
    selector = {"namespaces": ["inference", "store"], "nodes": ["gpu-node-1"], "mode": "all"}
    spec = build("node-isolate", None, selector)["spec"]
    assert spec == {
        "action": "partition",
        "direction": "both",
        "selector": {"namespaces": ["inference", "store"], "nodes": ["gpu-node-1"]},
        "mode": "all",
        "target": {"selector": {"namespaces": ["inference", "store"]}, "mode": "all"},
    }
    with pytest.raises(UnsupportedOnKubernetes):
        build("node-isolate", {"nodes": ["n"], "partition": "reset", "direction": "both"})


def test_node_crash_kills_every_pod_on_the_nodes():
    spec = build("node-crash")["spec"]
    assert spec == {
        "action": "pod-kill",
        "gracePeriod": 0,
        "selector": {"namespaces": [NAMESPACE], "nodes": ["gpu-node-1", "gpu-node-2"]},
        "mode": "all",
    }
    with pytest.raises(ValueError, match="at least one node"):
        build("node-crash", {"nodes": [], "restart_after": None})


def test_node_down_taint():
    assert node_down_taint("Fault 42!") == {
        "key": names.NODE_DOWN_TAINT,
        "value": "Fault-42",
        "effect": "NoSchedule",
    }


# -- pod, stress, io, http, time -------------------------------------------------------------


def test_pod_actions():
    assert build("pod-kill")["spec"]["action"] == "pod-kill"
    assert build("pod-kill")["spec"]["gracePeriod"] == 0
    assert build("pod-failure")["spec"]["action"] == "pod-failure"
    kill = build("container-kill")["spec"]
    assert (kill["action"], kill["containerNames"]) == ("container-kill", ["vllm"])
    with pytest.raises(ValueError, match="container"):
        build("container-kill", {"container_names": []})


def test_stress_stressors():
    spec = build("stress")["spec"]
    assert spec["stressors"] == {
        "cpu": {"workers": 2, "load": 80},
        "memory": {"workers": 1, "size": "256MB"},
    }
    assert "containerNames" not in spec
    only_memory = build("stress", {"cpu": None, "memory": {"workers": 3, "size": "50%"}})
    assert only_memory["spec"]["stressors"] == {"memory": {"workers": 3, "size": "50%"}}
    for bad in (
        {"cpu": None, "memory": None},
        {"cpu": {"workers": 0, "load": 10}},
        {"cpu": {"workers": 1, "load": 101}},
        {"memory": {"workers": 1, "size": "lots"}},
        {"memory": {"workers": 1, "size": "150%"}},
    ):
        with pytest.raises(ValueError):
            build("stress", bad)


def test_io_faults():
    latency = build("io-latency")["spec"]
    assert {k: latency[k] for k in ("action", "delay", "volumePath", "path", "percent")} == {
        "action": "latency",
        "delay": "100ms",
        "volumePath": "/models",
        "path": "/models/**",
        "percent": 50,
    }
    assert (latency["methods"], latency["containerNames"]) == (["read"], ["vllm"])
    fault = build("io-fault")["spec"]
    assert (fault["action"], fault["errno"], fault["percent"]) == ("fault", 5, 100)
    assert "path" not in fault and "methods" not in fault
    base = EXAMPLES["io-fault"]
    for bad in ({"volume_path": "models"}, {"errno": 0}, {"percent": 50.5}, {"methods": ["reed"]}):
        with pytest.raises(ValueError):
            build("io-fault", {**base, **bad})


def test_http_faults():
    abort = build("http-abort")["spec"]
    assert {k: abort[k] for k in ("target", "port", "path", "method", "abort")} == {
        "target": "Request",
        "port": 8000,
        "path": "/v1/chat/completions",
        "method": "POST",
        "abort": True,
    }
    delay = build("http-delay")["spec"]
    assert (delay["target"], delay["delay"], "method" in delay) == ("Response", "750ms", False)
    lower = build("http-abort", {**EXAMPLES["http-abort"], "method": "get"})["spec"]
    assert lower["method"] == "GET"
    for bad in ({"port": 0}, {"method": "FETCH"}, {"http_target": "Both"}):
        with pytest.raises(ValueError):
            build("http-abort", {**EXAMPLES["http-abort"], **bad})


@pytest.mark.parametrize(
    "offset_ms, expected",
    [(-10000, "-10s"), (1500, "1500ms"), (0.25, "250us"), (-0.0005, "-500ns"), (0, "0s")],
)
def test_time_offset(offset_ms, expected):
    spec = build("time-skew", {"offset_ms": offset_ms, "clock_ids": [], "container_names": None})
    assert spec["spec"]["timeOffset"] == expected
    assert spec["spec"]["clockIds"] == ["CLOCK_REALTIME"]


def test_time_skew_refuses_unknown_clock():
    with pytest.raises(ValueError, match="clock"):
        build("time-skew", {"offset_ms": 1, "clock_ids": ["CLOCK_WALL"]})


# -- what cannot be done, and what is made elsewhere -----------------------------------------


@pytest.mark.parametrize(
    "kind, alternative", [("pod-pause", "pod-failure"), ("node-pause", "node-crash")]
)
def test_pause_is_unsupported_and_names_the_alternative(kind, alternative):
    with pytest.raises(UnsupportedOnKubernetes, match=alternative) as caught:
        chaos_manifests(kind, {}, WORKERS, name="x", namespace=NAMESPACE, labels={})
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)
    with pytest.raises(UnsupportedOnKubernetes):
        chaos_kinds_for(kind)


@pytest.mark.parametrize(
    "kind", ["node-drain", "gpu-xid", "gpu-hang", "gpu-throttle", "hbm-pressure", "nope"]
)
def test_kinds_not_made_by_chaos_manifests(kind):
    with pytest.raises(ValueError):
        chaos_manifests(kind, {}, WORKERS, name="x", namespace=NAMESPACE, labels={})


def test_chaos_kinds_for():
    assert chaos_kinds_for("network-partition") == ["NetworkChaos"]
    assert chaos_kinds_for("node-isolate") == ["NetworkChaos"]
    assert chaos_kinds_for("node-crash") == ["PodChaos"]
    assert chaos_kinds_for("stress") == ["StressChaos"]
    assert chaos_kinds_for("io-fault") == ["IOChaos"]
    assert chaos_kinds_for("http-delay") == ["HTTPChaos"]
    assert chaos_kinds_for("time-skew") == ["TimeChaos"]
    assert chaos_kinds_for("node-drain") == []
    assert chaos_kinds_for("gpu-throttle") == []
    assert chaos_kinds_for("gpu-xid") == ["PodChaos"]  # a fatal Xid kills the victim pods
    assert all(set(chaos_kinds_for(k)) <= set(names.CHAOS_KINDS) for k in SUPPORTED_KINDS)
    with pytest.raises(ValueError, match="unknown"):
        chaos_kinds_for("nope")


def test_names_must_be_dns_labels():
    for name in ("Fault_1", "-x", "x" * 64, ""):
        with pytest.raises(ValueError, match="DNS label"):
            chaos_manifests("pod-kill", {}, WORKERS, name=name, namespace=NAMESPACE, labels={})


# -- properties over parameter ranges --------------------------------------------------------

DNS = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
LABEL_KEY = st.from_regex(r"([a-z]{1,8}\.io/)?[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)
LABEL_VALUE = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?", fullmatch=True)
PERCENT = st.floats(min_value=0, max_value=100, allow_nan=False)
_GO = re.compile(r"^(-?)(\d+)(ns|us|ms|s)$")
_NANOS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9}


def go_nanos(text: str) -> int:
    """What Go's time.ParseDuration reads from the strings we emit."""
    m = _GO.match(text)
    assert m, text
    return (-1 if m.group(1) else 1) * int(m.group(2)) * _NANOS[m.group(3)]


@st.composite
def mode_values(draw):
    mode = draw(st.sampled_from(["one", "all", "fixed", "fixed-percent", "random-max-percent"]))
    if mode in ("one", "all"):
        return mode, draw(st.none() | st.integers(1, 5)), None
    high = 10_000 if mode == "fixed" else 100
    number = draw(st.integers(1, high))
    value = draw(st.sampled_from([number, float(number), str(number)]))
    return mode, value, str(number)


@st.composite
def selectors(draw):
    raw: dict = {}
    namespaces = draw(st.none() | st.lists(DNS, min_size=1, max_size=3, unique=True))
    if namespaces:
        raw["namespaces"] = namespaces
    if draw(st.booleans()):
        raw["labelSelectors"] = draw(
            st.dictionaries(LABEL_KEY, LABEL_VALUE, min_size=1, max_size=3)
        )
    if draw(st.booleans()):
        raw["nodes"] = draw(st.lists(DNS, min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        raw["nodeSelectors"] = draw(st.dictionaries(LABEL_KEY, LABEL_VALUE, min_size=1, max_size=2))
    if draw(st.booleans()):
        pod_names = draw(st.lists(DNS, min_size=1, max_size=3, unique=True))
        if namespaces and len(namespaces) > 1:
            raw["pods"] = {namespaces[0]: pod_names}
        else:
            raw["pods"] = draw(st.sampled_from([pod_names, {NAMESPACE: pod_names}]))
    mode, value, expected_value = draw(mode_values())
    return {**raw, "mode": mode, "value": value}, expected_value


@st.composite
def targets(draw):
    selector, _ = draw(selectors())
    return {
        "selector": {k: v for k, v in selector.items() if k not in ("mode", "value")},
        "mode": selector["mode"],
        "value": selector["value"],
    }


@st.composite
def network_params(draw):
    kind = draw(
        st.sampled_from(
            [
                "network-delay",
                "network-loss",
                "network-duplicate",
                "network-corrupt",
                "network-bandwidth",
                "network-partition",
            ]
        )
    )
    target = draw(st.none() | targets())
    directions = ["to", "from", "both"] if target or kind == "network-partition" else ["to"]
    params: dict = {"direction": draw(st.sampled_from(directions))}
    if target:
        params["target_selector"] = target
    if kind == "network-delay":
        params |= {
            "delay_ms": draw(st.floats(0, 4_000_000, allow_nan=False)),
            "jitter_ms": draw(st.floats(0, 10_000, allow_nan=False)),
            "correlation": draw(PERCENT),
        }
    elif kind == "network-bandwidth":
        params |= {
            "rate_bps": draw(st.floats(1.0, 1e11, allow_nan=False)),
            "limit_bytes": draw(st.integers(1, 2**32 - 1)),
            "buffer_bytes": draw(st.integers(1, 2**32 - 1)),
        }
    elif kind == "network-partition":
        params["partition"] = "blackhole"
    else:
        field = kind.removeprefix("network-")
        params |= {field: draw(PERCENT), "correlation": draw(PERCENT)}
    return kind, params


@PROPERTY_SETTINGS
@given(network=network_params(), drawn=selectors())
def test_property_network_faults_validate_and_read_back(schemas, network, drawn):
    kind, params = network
    selector, expected_value = drawn
    manifest = build(kind, params, selector)
    assert schemas.errors(manifest, strict=True) == []
    spec = manifest["spec"]
    assert spec["mode"] == selector["mode"] and spec.get("value") == expected_value
    assert spec["direction"] == params["direction"]
    assert ("target" in spec) == ("target_selector" in params)
    if "target" in spec:
        assert spec["target"]["mode"] == params["target_selector"]["mode"]
    expected_namespaces = selector.get("namespaces") or [NAMESPACE]
    assert spec["selector"]["namespaces"] == expected_namespaces
    if kind == "network-delay":
        assert go_nanos(spec["delay"]["latency"]) == round(params["delay_ms"] * 1000) * 1000
        assert go_nanos(spec["delay"]["jitter"]) == round(params["jitter_ms"] * 1000) * 1000
        assert Decimal(spec["delay"]["correlation"]) == Decimal(repr(params["correlation"]))
    elif kind == "network-bandwidth":
        rate = re.fullmatch(r"(\d+)bps", spec["bandwidth"]["rate"])
        assert rate and int(rate.group(1)) == round(params["rate_bps"])
    elif kind != "network-partition":
        field = kind.removeprefix("network-")
        assert "e" not in spec[field][field].lower()  # Go's ParseFloat would take it; be plain
        assert float(spec[field][field]) == params[field]


@PROPERTY_SETTINGS
@given(
    drawn=selectors(),
    offset_ms=st.floats(-1e9, 1e9, allow_nan=False),
    clocks=st.lists(
        st.sampled_from(["CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_BOOTTIME"]),
        max_size=3,
        unique=True,
    ),
)
def test_property_time_offsets_signed(schemas, drawn, offset_ms, clocks):
    selector, _ = drawn
    params = {"offset_ms": offset_ms, "clock_ids": clocks, "container_names": None}
    manifest = build("time-skew", params, selector)
    assert schemas.errors(manifest, strict=True) == []
    assert go_nanos(manifest["spec"]["timeOffset"]) == round(offset_ms * 1_000_000)
    assert manifest["spec"]["clockIds"] == (clocks or ["CLOCK_REALTIME"])


SIZES = st.one_of(
    st.builds(
        lambda n, u: f"{n}{u}",
        st.integers(1, 4096),
        st.sampled_from(["", "B", "KB", "MB", "GB", "MiB", "GiB", "k", "m"]),
    ),
    st.builds(lambda p: f"{p}%", st.integers(0, 100)),
)


@PROPERTY_SETTINGS
@given(
    drawn=selectors(),
    cpu=st.none()
    | st.fixed_dictionaries(
        {"workers": st.integers(1, 8192), "load": st.none() | st.integers(0, 100)}
    ),
    memory=st.none()
    | st.fixed_dictionaries({"workers": st.integers(1, 8192), "size": st.none() | SIZES}),
    containers=st.none() | st.lists(DNS, min_size=1, max_size=2),
)
def test_property_stress_validates(schemas, drawn, cpu, memory, containers):
    selector, _ = drawn
    params = {"cpu": cpu, "memory": memory, "container_names": containers}
    if not cpu and not memory:
        with pytest.raises(ValueError):
            build("stress", params, selector)
        return
    manifest = build("stress", params, selector)
    assert schemas.errors(manifest, strict=True) == []
    assert set(manifest["spec"]["stressors"]) == {k for k in ("cpu", "memory") if params[k]}
    assert manifest["spec"].get("containerNames") == containers


@PROPERTY_SETTINGS
@given(
    drawn=selectors(),
    latency=st.booleans(),
    delay_ms=st.floats(0, 1e7, allow_nan=False),
    errno=st.integers(1, 133),
    percent=st.integers(0, 100),
    methods=st.none()
    | st.lists(st.sampled_from(sorted(IO_METHODS)), min_size=1, max_size=4, unique=True),
    path=st.sampled_from(["", "/data/*", "/data/model.safetensors"]),
)
def test_property_io_faults_validate(
    schemas, drawn, latency, delay_ms, errno, percent, methods, path
):
    selector, _ = drawn
    params = {"volume_path": "/data", "path": path, "percent": percent, "methods": methods}
    params |= {"delay_ms": delay_ms} if latency else {"errno": errno}
    manifest = build("io-latency" if latency else "io-fault", params, selector)
    assert schemas.errors(manifest, strict=True) == []
    spec = manifest["spec"]
    assert spec["percent"] == percent
    if latency:
        assert go_nanos(spec["delay"]) == round(delay_ms * 1_000_000)
    else:
        assert spec["errno"] == errno


@PROPERTY_SETTINGS
@given(
    drawn=selectors(),
    abort=st.booleans(),
    port=st.integers(1, 65535),
    method=st.none() | st.sampled_from(["GET", "post", "Put", "DELETE"]),
    target=st.sampled_from(["Request", "Response"]),
    delay_ms=st.floats(0, 1e6, allow_nan=False),
)
def test_property_http_faults_validate(schemas, drawn, abort, port, method, target, delay_ms):
    selector, _ = drawn
    params = {"port": port, "path": "/v1/*", "method": method, "http_target": target}
    if not abort:
        params["delay_ms"] = delay_ms
    manifest = build("http-abort" if abort else "http-delay", params, selector)
    assert schemas.errors(manifest, strict=True) == []
    spec = manifest["spec"]
    assert (spec["port"], spec["target"], spec.get("method")) == (
        port,
        target,
        method.upper() if method else None,
    )
    assert spec.get("abort") is (True if abort else None)


@PROPERTY_SETTINGS
@given(
    kind=st.sampled_from(
        ["pod-kill", "pod-failure", "container-kill", "node-crash", "node-isolate"]
    ),
    drawn=selectors(),
    nodes=st.lists(DNS, min_size=1, max_size=4, unique=True),
)
def test_property_pod_and_node_faults_validate(schemas, kind, drawn, nodes):
    selector, _ = drawn
    params = {
        "nodes": nodes,
        "partition": "blackhole",
        "direction": "both",
        "restart_after": None,
        "container_names": ["vllm"],
    }
    manifest = build(kind, params, selector)
    assert schemas.errors(manifest, strict=True) == []
    if kind.startswith("node-"):
        assert manifest["spec"]["selector"]["nodes"] == nodes
        assert manifest["spec"]["mode"] == "all"
