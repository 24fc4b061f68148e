"""deploy/ checked offline: the kustomize builds, their schemas, and the code they start.

A small kustomize below builds each overlay the way `kubectl kustomize` does for what deploy/
uses (resources, configMapGenerator, JSON 6902 patches); where kubectl is installed the two
builds are compared. Every object then validates against the Kubernetes schemas that
kubernetes-validate bundles (strict: an unknown field fails), and every container's command
line is fed to its component's own `main()` with the server start replaced, so a flag the code
does not accept fails here rather than in a CrashLoopBackOff.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from experiments.kube import names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("simulated", "real-workers")
# the kind node image of the nightly workflow, and the newest schemas kubernetes-validate has
K8S_VERSIONS = ("1.32", latest_version())
APP_LABELS = {
    "app.kubernetes.io/name": "inference-chaos",
    "app.kubernetes.io/part-of": "inference-chaos",
}
ROLE_MODULES = {
    "worker": "resilience.worker",
    "gateway": "resilience.gateway",
    "raft": "resilience.raft",
    "controller": "resilience.controller",
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


# -- a small kustomize -------------------------------------------------------------------------

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches"}


@dataclass
class Build:
    objects: list[dict[str, Any]] = field(default_factory=list)
    read: set[Path] = field(default_factory=set)  # every file the build used
    hashed: set[str] = field(default_factory=set)  # generated names kustomize suffixes


def build(directory: Path) -> Build:
    """Build one kustomization (recursively); a key deploy/ starts using fails loudly here."""
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - SUPPORTED_KEYS
    assert not unknown, f"{path}: the test's kustomize does not implement {sorted(unknown)}"
    out = Build(read={path})
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        assert target.exists(), f"{path}: resource {entry} does not exist"
        if target.is_dir():
            inner = build(target)
            out.objects += inner.objects
            out.read |= inner.read
            out.hashed |= inner.hashed
        else:
            out.read.add(target)
            out.objects += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for generator in spec.get("configMapGenerator", []):
        out.objects.append(_generate(directory, generator, out))
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, out)
    return out


def _generate(directory: Path, generator: dict[str, Any], out: Build) -> dict[str, Any]:
    data = {}
    for entry in generator.get("files", []):
        key, _, rel = entry.rpartition("=")
        source = (directory / rel).resolve()
        assert source.is_relative_to(directory.resolve()), f"{rel}: kustomize reads no file above"
        assert source.is_file(), f"{directory}: generator file {rel} does not exist"
        out.read.add(source)
        data[key or source.name] = source.read_text()
    options = generator.get("options", {})
    metadata: dict[str, Any] = {"name": generator["name"]}
    if "namespace" in generator:
        metadata["namespace"] = generator["namespace"]
    if options.get("labels"):
        metadata["labels"] = dict(options["labels"])
    if not options.get("disableNameSuffixHash"):
        out.hashed.add(generator["name"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _apply_patch(directory: Path, patch: dict[str, Any], out: Build) -> None:
    source = directory / patch["path"]
    out.read.add(source.resolve())
    ops = yaml.safe_load(source.read_text())
    assert isinstance(ops, list), f"{source}: only JSON 6902 patches (a list of ops) are built here"
    target = patch["target"]
    hits = [o for o in out.objects if _matches(o, target)]
    assert len(hits) == 1, f"{source}: the target {target} matches {len(hits)} objects"
    for op in ops:
        _json_patch(hits[0], op)


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    meta = obj["metadata"]
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": meta["name"]}
    wanted["namespace"] = meta.get("namespace")
    return all(wanted.get(key) == value for key, value in target.items())


def _json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    """RFC 6902 add, replace and remove: what deploy/ uses."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if op["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), op["value"])
    elif op["op"] in ("add", "replace"):
        node[int(last) if isinstance(node, list) else last] = op["value"]
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise AssertionError(f"unsupported patch op {op['op']}")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Build]:
    return request.param, build(DEPLOY / "overlays" / request.param)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


# -- the builds ----------------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_is_built_or_a_known_config() -> None:
    """No manifest lies around unbuilt (and so unvalidated); deploy/ci holds non-manifests."""
    used: set[Path] = set()
    for name in OVERLAYS:
        used |= build(DEPLOY / "overlays" / name).read
    kind_config, helm_values = (
        DEPLOY / "ci" / "kind-cluster.yaml",
        DEPLOY / "ci" / "prometheus-values.yaml",
    )
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".yml", ".json"):
            assert path.resolve() in used | {kind_config, helm_values}, f"{path} is in no build"
    assert yaml.safe_load(kind_config.read_text())["kind"] == "Cluster"


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (its built-in kustomize) absent")
def test_the_small_kustomize_builds_what_kubectl_kustomize_builds(
    overlay: tuple[str, Build],
) -> None:
    name, ours = overlay
    done = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = json.dumps(list(yaml.safe_load_all(done.stdout)))
    if ours.hashed:  # kustomize's content hash on generated names (and their references)
        text = re.sub(rf"\b({'|'.join(map(re.escape, ours.hashed))})-[a-z0-9]{{10}}\b", r"\1", text)

    def canonical(objects: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(o, sort_keys=True) for o in objects if o)

    assert canonical(json.loads(text)) == canonical(ours.objects)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(overlay: tuple[str, Build], version: str) -> None:
    _, built = overlay
    for obj in built.objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{where} fails Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The validator above can fail: a typo in a container is an error, not a pruned field."""
    gateway = copy.deepcopy(
        find(build(DEPLOY / "overlays" / "simulated").objects, "Deployment", "gateway")
    )
    gateway["spec"]["template"]["spec"]["containers"][0]["comand"] = ["python"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, K8S_VERSIONS[0], strict=True)


def test_the_overlays_differ_where_they_should() -> None:
    simulated = build(DEPLOY / "overlays" / "simulated").objects
    real = build(DEPLOY / "overlays" / "real-workers").objects
    roles = {
        name: {w["spec"]["template"]["metadata"]["labels"]["role"] for w in workloads(objs)}
        for name, objs in (("simulated", simulated), ("real", real))
    }
    assert roles == {"simulated": set(ROLE_MODULES), "real": {"gateway", "raft"}}
    real_args = find(real, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--store" not in real_args  # no controllers publish a table there


# -- labels, names and references ------------------------------------------------------------------


def test_pod_templates_carry_the_app_and_role_labels(overlay: tuple[str, Build]) -> None:
    _, built = overlay
    for workload in workloads(built.objects):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        name = workload["metadata"]["name"]
        assert APP_LABELS.items() <= labels.items(), f"{name}: {labels}"
        assert labels.get("role") in ROLE_MODULES, f"{name}: role {labels.get('role')}"
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{name}: the selector misses its own pods"
        assert "role" in selector
        assert workload["metadata"]["namespace"] == "inference"


def test_the_namespace_opts_in_to_faults(overlay: tuple[str, Build]) -> None:
    _, built = overlay
    namespace = find(built.objects, "Namespace", "inference")
    assert namespace["metadata"]["labels"][names.OPT_IN_LABEL] == names.OPT_IN_VALUE
    assert "inference" not in names.PROTECTED_NAMESPACES
    for obj in built.objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace") in ("inference", "monitoring"), obj["metadata"]


def test_references_resolve_within_the_build(overlay: tuple[str, Build]) -> None:
    """ConfigMap volumes, Service selectors and named ports all point at something built."""
    _, built = overlay
    configmaps = {
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in built.objects
        if o["kind"] == "ConfigMap"
    }
    templates = [
        (w["metadata"]["namespace"], w["spec"]["template"]) for w in workloads(built.objects)
    ]
    for namespace, template in templates:
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert (namespace, volume["configMap"]["name"]) in configmaps, volume
    for service in (o for o in built.objects if o["kind"] == "Service"):
        selected = [
            t for ns, t in templates
            if ns == service["metadata"]["namespace"]
            and service["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]  # fmt: skip
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for template in selected:
                named = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
                assert port["targetPort"] in named, f"{service['metadata']['name']}: {port}"
    for sts in (w for w in workloads(built.objects) if w["kind"] == "StatefulSet"):
        find(built.objects, "Service", sts["spec"]["serviceName"])


def test_disruption_budgets_keep_a_raft_quorum_and_one_worker_at_a_time() -> None:
    objects = build(DEPLOY / "overlays" / "simulated").objects
    raft = find(objects, "StatefulSet", "raft")
    assert raft["spec"]["replicas"] == 3
    assert raft["spec"]["podManagementPolicy"] == "Parallel"
    headless = find(objects, "Service", raft["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    budgets = {
        o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget"
    }
    assert budgets["raft"]["minAvailable"] == 2
    assert budgets["raft"]["selector"]["matchLabels"].items() <= pod_labels(raft).items()
    for worker in (w for w in workloads(objects) if pod_labels(w)["role"] == "worker"):
        assert budgets["workers"]["selector"]["matchLabels"].items() <= pod_labels(worker).items()
    assert budgets["workers"]["maxUnavailable"] == 1


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


# -- the command lines, through each component's own argparse --------------------------------------


@dataclass
class Pod:
    name: str
    ordinal: int
    workload: dict[str, Any]

    @property
    def ip(self) -> str:
        return f"10.244.1.{10 + self.ordinal}"

    def field(self, path: str) -> str:
        """What the downward API gives an env var's fieldRef on this pod."""
        if path == "metadata.name":
            return self.name
        if path == "metadata.namespace":
            return self.workload["metadata"]["namespace"]
        if path == "status.podIP":
            return self.ip
        if path == "metadata.labels['apps.kubernetes.io/pod-index']":
            assert self.workload["kind"] == "StatefulSet", "only StatefulSet pods have an index"
            return str(self.ordinal)
        raise AssertionError(f"the test does not know fieldRef {path}")


def pods(workload: dict[str, Any]) -> list[Pod]:
    name, count = workload["metadata"]["name"], workload["spec"]["replicas"]
    if workload["kind"] == "StatefulSet":
        return [Pod(f"{name}-{i}", i, workload) for i in range(count)]
    return [Pod(f"{name}-5d8f9c7b6-x{i}", i, workload) for i in range(count)]


def container_env(pod: Pod, container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = pod.field(var["valueFrom"]["fieldRef"]["fieldPath"])
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of command and args ($$ escapes, unknown names stay)."""

    def one(m: re.Match[str]) -> str:
        return "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def materialize_mounts(
    container: dict[str, Any], template: dict[str, Any], objects: list[dict[str, Any]], root: Path
) -> dict[str, Path]:
    """Write each mounted ConfigMap under `root`; returns mount path -> local folder."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mounted = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "configMap" not in volume:
            continue
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for key, text in find(objects, "ConfigMap", volume["configMap"]["name"])["data"].items():
            (local / key).write_text(text)
        mounted[mount["mountPath"]] = local
    return mounted


def localize(arg: str, mounted: dict[str, Path]) -> str:
    for mount_path, local in mounted.items():
        if arg == mount_path or arg.startswith(mount_path + "/"):
            return str(local) + arg[len(mount_path) :]
    return arg


def python_argv(container: dict[str, Any], env: dict[str, str], tmp_path: Path) -> list[str]:
    """The argv after `python`: read from the command, or from what a shell wrapper execs."""
    line = [expand(part, env) for part in container["command"] + container.get("args", [])]
    if line[0] == "python":
        return line[1:]
    assert line[:2] == ["/bin/sh", "-c"], f"unexpected command {line[:2]}"
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "json.dump(sys.argv[1:], open(os.environ['ARGV_OUT'], 'w'))\n"
    )
    stub.chmod(0o755)
    out = tmp_path / "argv.json"
    shell_env = {**env, "PATH": f"{stub.parent}:/usr/bin:/bin", "ARGV_OUT": str(out)}
    subprocess.run(["/bin/sh", "-c", line[2]], env=shell_env, check=True, timeout=10)
    return json.loads(out.read_text())


def run_main(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Call the module's main(argv) with its server start replaced; returns what it got."""
    from aiohttp import web

    seen: dict[str, Any] = {}
    monkeypatch.setattr(web, "run_app", lambda app, **kw: seen.update(app=app, **kw))
    if module == "resilience.raft":
        import resilience.raft.__main__ as raft_main

        async def fake_serve(*args: Any) -> None:
            keys = ("id", "host", "client_port", "peer_port", "peers", "data_dir", "config")
            seen.update(zip(keys, args, strict=True))

        monkeypatch.setattr(raft_main, "serve", fake_serve)
        raft_main.main(argv)
    elif module == "resilience.controller":
        import resilience.controller as controller

        async def fake_controller_serve(self: Any, host: str, port: int) -> None:
            seen.update(controller=self, host=host, port=port)

        monkeypatch.setattr(controller.Controller, "serve", fake_controller_serve)
        controller.main(argv)
    elif module == "resilience.gateway":
        import resilience.gateway as gateway

        made: list[Any] = []

        class Recorded(gateway.Gateway):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        monkeypatch.setattr(gateway, "Gateway", Recorded)
        gateway.main(argv)
        seen["gateway"] = made[0]
    elif module == "resilience.worker":
        import resilience.worker as worker

        monkeypatch.setattr(
            worker, "create_app", lambda *args: seen.update(worker=args) or web.Application()
        )
        worker.main(argv)
    else:
        raise AssertionError(f"no known component {module}")
    return seen


def started(
    built: Build,
    workload: dict[str, Any],
    pod: Pod,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, Any], dict[str, str], dict[str, Path]]:
    template = workload["spec"]["template"]
    (container,) = template["spec"]["containers"]
    env = container_env(pod, container)
    mounted = materialize_mounts(container, template, built.objects, tmp_path / pod.name)
    argv = [localize(a, mounted) for a in python_argv(container, env, tmp_path)]
    assert not any("$(" in a for a in argv), f"{pod.name}: unexpanded variable in {argv}"
    assert argv[0] == "-m", argv
    assert argv[1] == ROLE_MODULES[pod_labels(workload)["role"]], f"{pod.name} runs {argv[1]}"
    for name, value in env.items():
        monkeypatch.setenv(name, localize(value, mounted))
    return run_main(argv[1], argv[2:], monkeypatch), env, mounted


def http_port(workload: dict[str, Any]) -> int:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return next(p["containerPort"] for p in container["ports"] if p["name"] == "http")


def store_urls(objects: list[dict[str, Any]]) -> list[str]:
    """The client URL of every store replica, by its stable name under the headless Service."""
    raft = find(objects, "StatefulSet", "raft")
    service, port = raft["spec"]["serviceName"], http_port(raft)
    return [f"http://{pod.name}.{service}:{port}" for pod in pods(raft)]


def test_every_container_command_is_accepted_by_its_component(
    overlay: tuple[str, Build], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, built = overlay
    objects = built.objects
    checked = set()
    for workload in workloads(objects):
        role = pod_labels(workload)["role"]
        for pod in pods(workload):
            with monkeypatch.context() as patch:
                seen, env, mounted = started(built, workload, pod, tmp_path, patch)
                check = CHECKS[role]
                check(seen, pod, objects, mounted)
            checked.add(role)
    expected = set(ROLE_MODULES) if name == "simulated" else {"gateway", "raft"}
    assert checked == expected


def _check_raft(seen: dict[str, Any], pod: Pod, objects: list[dict[str, Any]], _: Any) -> None:
    raft = pod.workload
    peer_port = next(
        p["containerPort"] for p in raft["spec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "peer"
    )  # fmt: skip
    service = raft["spec"]["serviceName"]
    assert seen["id"] == pod.ordinal
    assert seen["host"] == pod.ip  # its advertised leader URL must be reachable from other pods
    assert (seen["client_port"], seen["peer_port"]) == (http_port(raft), peer_port)
    others = [p for p in pods(raft) if p.ordinal != pod.ordinal]
    assert seen["peers"] == {p.ordinal: f"http://{p.name}.{service}:{peer_port}" for p in others}
    mounts = raft["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    data = next(m for m in mounts if m["name"] == "data")
    assert str(seen["data_dir"]) == data["mountPath"]
    claims = [c["metadata"]["name"] for c in raft["spec"]["volumeClaimTemplates"]]
    assert claims == ["data"]  # the data dir is the replica's own persistent volume


def _check_gateway(
    seen: dict[str, Any], pod: Pod, objects: list[dict[str, Any]], mounted: dict[str, Path]
) -> None:
    gateway = seen["gateway"]
    assert (seen["host"], seen["port"]) == ("0.0.0.0", http_port(pod.workload))
    service = find(objects, "Service", "gateway")
    assert service["spec"]["ports"][0]["port"] == seen["port"] == 8000  # the workflow's forward
    assert gateway.upstreams, "the gateway starts with no upstream"
    if gateway.store_endpoints:
        assert gateway.store_endpoints == store_urls(objects)
        from resilience.topology import TASK_GATEWAY_DEFAULTS

        for key, value in TASK_GATEWAY_DEFAULTS.items():
            assert getattr(gateway.config, key) == value


def _check_controller(
    seen: dict[str, Any], pod: Pod, objects: list[dict[str, Any]], mounted: dict[str, Path]
) -> None:
    from resilience import state
    from resilience.controller import ClusterMap
    from resilience.remediation import KubernetesRemediation

    controller = seen["controller"]
    assert controller.identity == pod.name  # unique per replica: the election needs that
    # restarts delete worker pods in the controller's own namespace, with its in-cluster
    # credentials (the ServiceAccount of test_the_controllers_may_restart_workers_and_no_more)
    assert isinstance(controller.remediation, KubernetesRemediation)
    assert controller.remediation.namespace == pod.workload["metadata"]["namespace"]
    assert controller.remediation.kubeconfig is None
    assert (seen["host"], seen["port"]) == ("0.0.0.0", http_port(pod.workload))
    assert controller.store_endpoints == store_urls(objects)
    cluster = ClusterMap.load(controller.cluster_path)
    capacity = sum(gpus // controller.task_gpus for gpus in cluster.nodes.values())
    assert 0 < controller.initial_tasks <= capacity
    gateway_url = (state.read_state() or {}).get("gateway_url")
    port = find(objects, "Service", "gateway")["spec"]["ports"][0]["port"]
    assert gateway_url == f"http://gateway:{port}"


def _check_worker(
    seen: dict[str, Any], pod: Pod, objects: list[dict[str, Any]], mounted: dict[str, Path]
) -> None:
    name, node, gpu, model, _config = seen["worker"]
    labels = pod_labels(pod.workload)
    assert (name, node, gpu) == (pod.name, labels["inference-chaos.io/sim-node"], str(pod.ordinal))
    assert model == labels["model"]
    assert (seen["host"], seen["port"]) == ("0.0.0.0", http_port(pod.workload))


CHECKS = {
    "raft": _check_raft,
    "gateway": _check_gateway,
    "controller": _check_controller,
    "worker": _check_worker,
}


def test_a_flag_the_code_does_not_know_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The argv check above can fail: argparse refuses what the component does not accept."""
    built = build(DEPLOY / "overlays" / "simulated")
    worker = copy.deepcopy(find(built.objects, "StatefulSet", "worker-n0"))
    worker["spec"]["template"]["spec"]["containers"][0]["args"].append("--gpus-per-node")
    with pytest.raises(SystemExit):
        started(built, worker, pods(worker)[0], tmp_path, monkeypatch)


def test_the_simulated_workers_are_the_ones_the_gateway_and_controllers_know() -> None:
    """StatefulSets, cluster.json and upstreams.json name the same workers at the same URLs."""
    objects = build(DEPLOY / "overlays" / "simulated").objects
    running = {}
    for sts in (w for w in workloads(objects) if pod_labels(w)["role"] == "worker"):
        labels = pod_labels(sts)
        url = f"http://{{}}.{sts['spec']['serviceName']}:{http_port(sts)}"
        for pod in pods(sts):
            running[pod.name] = {
                "url": url.format(pod.name),
                "node": labels["inference-chaos.io/sim-node"],
                "zone": labels["inference-chaos.io/sim-zone"],
                "gpu": str(pod.ordinal),
            }
    cluster = json.loads(find(objects, "ConfigMap", "controller-cluster")["data"]["cluster.json"])
    in_cluster = {}
    for node, info in cluster["nodes"].items():
        assert info["gpus"] == len(info["workers"])
        for gpu, w in info["workers"].items():
            assert w["link_url"] == w["url"]  # no fault proxy on Kubernetes: Chaos Mesh instead
            in_cluster[w["name"]] = {
                "url": w["url"],
                "node": node,
                "zone": info["zone"],
                "gpu": gpu,
            }
    upstreams = json.loads(
        find(objects, "ConfigMap", "gateway-upstreams")["data"]["upstreams.json"]
    )
    routed = {
        u["name"]: {"url": u["url"], **{k: u["labels"][k] for k in ("node", "zone", "gpu")}}
        for u in upstreams
    }
    assert running == in_cluster == routed
    assert len(running) == 8


# -- Prometheus: one source of alert rules, a scrape config Prometheus accepts ---------------------


def test_the_alert_rules_under_deploy_are_a_true_copy() -> None:
    source = ROOT / "resilience" / "alerts" / "inference-chaos.rules.yml"
    copied = DEPLOY / "base" / "prometheus" / "inference-chaos.rules.yml"
    fix = f"cp {source.relative_to(ROOT)} {copied.relative_to(ROOT)}"
    assert copied.read_bytes() == source.read_bytes(), f"the copy kustomize reads differs: {fix}"


def test_the_helm_values_mount_the_generated_configmaps() -> None:
    objects = build(DEPLOY / "base").objects
    values = yaml.safe_load((DEPLOY / "ci" / "prometheus-values.yaml").read_text())
    prom = values["serverFiles"]["prometheus.yml"]
    globs = prom["rule_files"] + prom["scrape_config_files"]
    mounts = values["server"]["extraConfigmapMounts"]
    assert mounts == values["configmapReload"]["prometheus"]["extraConfigmapMounts"]
    for mount in mounts:
        configmap = find(objects, "ConfigMap", mount["configMap"])
        assert configmap["metadata"]["namespace"] == "monitoring"
        files = [f"{mount['mountPath']}/{key}" for key in configmap["data"]]
        assert any(Path(f).match(g) for f in files for g in globs), f"{mount} is loaded by no glob"
        assert mount["mountPath"] in values["configmapReload"]["prometheus"]["extraVolumeDirs"]


SCRAPE_FILE = DEPLOY / "base" / "prometheus" / "inference-chaos.scrape.yml"


@pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool (Debian package prometheus) absent"
)
def test_promtool_accepts_the_scrape_config_and_the_rules(tmp_path: Path) -> None:
    """Prometheus 3 reads the scrape file through scrape_config_files; promtool here is older
    and Debian builds it without Kubernetes discovery, so the job is checked (relabel rules,
    intervals, with the alert rules loaded) with a static target in place of its discovery."""
    (job,) = yaml.safe_load(SCRAPE_FILE.read_text())["scrape_configs"]
    (discovery,) = job.pop("kubernetes_sd_configs")
    assert discovery["role"] == "pod"
    assert discovery["namespaces"] == {"names": ["inference"]}
    assert discovery["selectors"] == [
        {"role": "pod", "label": "app.kubernetes.io/part-of=inference-chaos"}
    ]
    job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    config = {
        "rule_files": [str(SCRAPE_FILE.parent / "inference-chaos.rules.yml")],
        "scrape_configs": [job],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling (keep, replace, labelmap), enough to run the scrape config."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        if action == "labelmap":
            for name, value in list(labels.items()):
                if m := regex.match(name):
                    labels[m.expand(rule.get("replacement", "$1").replace("$", "\\"))] = value
            continue
        value = ";".join(labels.get(n, "") for n in rule["source_labels"])
        m = regex.match(value)
        if action == "keep":
            if not m:
                return None
        elif action == "replace" and m:
            labels[rule["target_label"]] = m.expand(
                rule.get("replacement", "$1").replace("$", "\\")
            )
        elif action != "replace":
            raise AssertionError(f"the test does not implement relabel action {action}")
    return {k: v for k, v in labels.items() if not k.startswith("__") and v}


def discovered_targets(workload: dict[str, Any], pod: Pod) -> list[dict[str, str]]:
    """What Kubernetes pod discovery gives Prometheus: one target per container port."""
    labels = dict(pod_labels(workload))
    if workload["kind"] == "StatefulSet":  # Kubernetes adds it (1.28+)
        labels["apps.kubernetes.io/pod-index"] = str(pod.ordinal)
    meta = {
        f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
        for k, v in labels.items()
    }
    meta |= {
        "__meta_kubernetes_pod_name": pod.name,
        "__meta_kubernetes_namespace": workload["metadata"]["namespace"],
        "__meta_kubernetes_pod_node_name": "kind-worker",
    }
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return [
        {**meta, "__meta_kubernetes_pod_container_port_name": p["name"]} for p in container["ports"]
    ]


def test_every_pod_is_scraped_once_with_the_embedded_clusters_labels() -> None:
    """job, instance_name, node and gpu as resilience/topology.py scrape_targets sets them."""
    (job,) = yaml.safe_load(SCRAPE_FILE.read_text())["scrape_configs"]
    objects = build(DEPLOY / "overlays" / "simulated").objects
    seen_roles = set()
    for workload in workloads(objects):
        labels = pod_labels(workload)
        for pod in pods(workload):
            relabelled = [
                relabel(t, job["relabel_configs"]) for t in discovered_targets(workload, pod)
            ]
            kept = [t for t in relabelled if t is not None]
            assert len(kept) == 1, f"{pod.name} is scraped {len(kept)} times"
            (target,) = kept
            role = labels["role"]
            seen_roles.add(role)
            assert target["job"] == target["role"] == role
            assert target["instance_name"] == pod.name
            assert target["app"] == labels["app"]
            if role == "worker":
                assert target["node"] == labels["inference-chaos.io/sim-node"]
                assert target["gpu"] == str(pod.ordinal)
                assert target["model"] == labels["model"]
            else:
                assert target["node"] == "kind-worker" and "gpu" not in target
    assert seen_roles == set(ROLE_MODULES)


def test_an_unknown_role_is_not_scraped() -> None:
    (job,) = yaml.safe_load(SCRAPE_FILE.read_text())["scrape_configs"]
    target = {
        "__meta_kubernetes_pod_label_role": "loadgen",
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    assert relabel(target, job["relabel_configs"]) is None


# -- RBAC ------------------------------------------------------------------------------------------

# (api group, resource, verb, scope): scope "cluster" must be granted cluster-wide, "inference"
# at least in the namespace of the system under test.
CLUSTER_READS = [
    ("", "nodes", "get"),
    ("", "nodes", "list"),
    ("", "nodes", "patch"),  # cordon and taint
    ("", "namespaces", "get"),  # the opt-in label
    ("", "namespaces", "list"),
    ("batch", "jobs", "list"),  # cleanup --all
    *((names.GROUP, plural, "list") for plural in names.CHAOS_KINDS.values()),
]
NAMESPACE_WRITES = [
    *(
        (names.GROUP, plural, verb)
        for plural in names.CHAOS_KINDS.values()
        for verb in ("create", "delete", "patch", "get", "list", "watch")
    ),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods/eviction", "create"),
    ("batch", "jobs", "create"),
    ("batch", "jobs", "delete"),
    ("batch", "jobs", "get"),
    ("batch", "jobs/status", "get"),
]
NEEDED = {(*item, "cluster") for item in CLUSTER_READS} | {
    (*item, "inference") for item in NAMESPACE_WRITES
}


def test_the_harness_role_grants_what_the_kubernetes_backend_calls() -> None:
    objects = build(DEPLOY / "rbac").objects
    account = find(objects, "ServiceAccount", "inference-chaos-harness")
    subject = {
        "kind": "ServiceAccount",
        "name": "inference-chaos-harness",
        "namespace": "inference",
    }
    assert account["metadata"]["namespace"] == "inference"
    granted = set()
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert subject in binding["subjects"]
        scope = (
            "cluster"
            if binding["kind"] == "ClusterRoleBinding"
            else binding["metadata"]["namespace"]
        )
        role = find(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted |= {(group, resource, verb, scope) for verb in rule["verbs"]}
    cluster_wide = {(g, r, v, "inference") for g, r, v, s in granted if s == "cluster"}
    missing = NEEDED - granted - cluster_wide
    assert not missing, sorted(missing)
    assert not any("*" in item for item in granted), "no wildcards"


def test_the_controllers_may_restart_workers_and_no_more() -> None:
    """The controllers' ServiceAccount gets and deletes pods in their namespace (a restart),
    and every worker they know by name is a StatefulSet's pod there (so it comes back)."""
    objects = build(DEPLOY / "overlays" / "simulated").objects
    controller = find(objects, "Deployment", "controller")
    namespace = controller["metadata"]["namespace"]
    account_name = controller["spec"]["template"]["spec"]["serviceAccountName"]
    account = find(objects, "ServiceAccount", account_name)
    assert account["metadata"]["namespace"] == namespace
    subject = {"kind": "ServiceAccount", "name": account_name, "namespace": namespace}
    granted = set()
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if subject not in binding["subjects"]:
            continue
        scope = binding["metadata"].get("namespace", "cluster")
        role = find(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted |= {(group, resource, verb, scope) for verb in rule["verbs"]}
    assert granted == {("", "pods", "get", namespace), ("", "pods", "delete", namespace)}
    stateful_pods = {
        pod.name
        for sts in workloads(objects)
        if sts["kind"] == "StatefulSet" and sts["metadata"]["namespace"] == namespace
        for pod in pods(sts)
    }
    cluster = json.loads(find(objects, "ConfigMap", "controller-cluster")["data"]["cluster.json"])
    known = {w["name"] for info in cluster["nodes"].values() for w in info["workers"].values()}
    assert known and known <= stateful_pods


# -- the image -------------------------------------------------------------------------------------


def test_the_image_installs_the_package_and_runs_as_the_manifests_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [
        line.strip()
        for line in dockerfile.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert not any(line.startswith(("ENTRYPOINT", "CMD")) for line in lines)
    user = [line.split()[1] for line in lines if line.startswith("USER ")][-1]
    uid = int(user.split(":")[0])
    assert uid != 0
    copied = {
        part.rstrip("/")
        for line in lines
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    }
    pyproject = _toml(ROOT / "pyproject.toml")
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed, f"the build context lacks {sorted(copied - allowed)}"
    for name in OVERLAYS:
        for workload in workloads(build(DEPLOY / "overlays" / name).objects):
            spec = workload["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsUser"] == uid
            assert spec["securityContext"]["runAsNonRoot"] is True
            for container in spec["containers"]:
                assert container["image"] == IMAGE
                assert container["imagePullPolicy"] == "IfNotPresent"  # kind load, no registry


IMAGE = "inference-chaos:dev"


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())
