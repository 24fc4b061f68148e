"""The nightly GitHub Actions workflow, checked offline.

It must validate against GitHub's workflow schema (check-jsonschema bundles it) and say what
the night needs: a schedule, both targets, the suite's command lines as our CLI parses them,
faults cleaned up and reports uploaded whatever happened, the deployment it waits for being
the one deploy/ builds.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy_manifests import DEPLOY, IMAGE, build, workloads

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly-chaos.yml"
ALWAYS = "always()"
OUT = {"kubernetes": "nightly-k8s", "embedded": "nightly-embedded"}
NIGHTLY_K8S = (
    "inference-chaos nightly --target kubernetes --var namespace=inference "
    "--var gateway_url=http://127.0.0.1:8000 --var prometheus_url=http://127.0.0.1:9090 "
    "--out nightly-k8s"
)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return workflow["jobs"][job]["steps"]


def step_running(workflow: dict[str, Any], job: str, command: str) -> tuple[int, dict[str, Any]]:
    """The one step whose script runs `command` (at the start of a line)."""
    hits = [
        (i, s)
        for i, s in enumerate(steps(workflow, job))
        if any(line.strip().startswith(command) for line in s.get("run", "").splitlines())
    ]
    assert len(hits) == 1, f"{job}: {len(hits)} steps run {command!r}"
    return hits[0]


def step_using(workflow: dict[str, Any], job: str, action: str) -> list[tuple[int, dict[str, Any]]]:
    return [
        (i, s)
        for i, s in enumerate(steps(workflow, job))
        if s.get("uses", "").split("@")[0] == action
    ]


def command_line(step: dict[str, Any], command: str) -> list[str]:
    (line,) = [ln.strip() for ln in step["run"].splitlines() if ln.strip().startswith(command)]
    return shlex.split(line)


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with the GitHub workflow schema it bundles (no download)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
        + [str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_workflow_matches_githubs_schema() -> None:
    done = check_jsonschema(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = yaml.safe_load(WORKFLOW.read_text())
    del broken["jobs"]["embedded"]["runs-on"]
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert check_jsonschema(path).returncode != 0


def test_it_runs_every_night_and_on_demand(workflow: dict[str, Any]) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    (schedule,) = triggers["schedule"]
    fields = schedule["cron"].split()
    assert len(fields) == 5 and fields[2:] == ["*", "*", "*"], "once a day, every day"
    assert "workflow_dispatch" in triggers
    assert set(workflow["jobs"]) == {"kubernetes", "embedded"}


def test_every_action_is_pinned_to_a_release(workflow: dict[str, Any]) -> None:
    for job in workflow["jobs"]:
        for step in steps(workflow, job):
            if "uses" in step:
                ref = step["uses"].split("@")[1]
                assert re.fullmatch(r"v\d+\.\d+\.\d+|[0-9a-f]{40}", ref), step["uses"]


@pytest.mark.parametrize("job", ["kubernetes", "embedded"])
def test_python_3_11_is_set_up(workflow: dict[str, Any], job: str) -> None:
    ((_, step),) = step_using(workflow, job, "actions/setup-python")
    assert str(step["with"]["python-version"]) == "3.11"
    assert workflow["jobs"][job]["runs-on"] == "ubuntu-latest"


def test_the_kubernetes_job_runs_the_suite_with_the_agreed_command(
    workflow: dict[str, Any],
) -> None:
    from inference_chaos import cli

    at, step = step_running(workflow, "kubernetes", "inference-chaos nightly")
    argv = command_line(step, "inference-chaos nightly")
    assert argv == shlex.split(NIGHTLY_K8S)
    args = cli.build_parser()[0].parse_args(argv[1:])
    assert args.target == "kubernetes"
    assert args.out == Path(OUT["kubernetes"])
    assert dict(v.split("=", 1) for v in args.var) == {
        "namespace": "inference",
        "gateway_url": "http://127.0.0.1:8000",
        "prometheus_url": "http://127.0.0.1:9090",
    }
    assert "if" not in step  # a failed set-up step must stop the night before the suite


def test_faults_are_cleaned_up_after_the_suite_whatever_happened(
    workflow: dict[str, Any],
) -> None:
    from inference_chaos import cli

    nightly_at, _ = step_running(workflow, "kubernetes", "inference-chaos nightly")
    at, step = step_running(workflow, "kubernetes", "inference-chaos cleanup")
    assert at > nightly_at
    assert step.get("if") == ALWAYS
    argv = command_line(step, "inference-chaos cleanup")
    assert argv == ["inference-chaos", "cleanup", "--all"]
    assert cli.build_parser()[0].parse_args(argv[1:]).all is True


def test_the_cluster_is_made_before_the_suite_in_order(workflow: dict[str, Any]) -> None:
    ((kind_at, kind),) = step_using(workflow, "kubernetes", "helm/kind-action")
    assert (ROOT / kind["with"]["config"]).is_file()
    chaos_at, chaos = step_running(workflow, "kubernetes", "helm install chaos-mesh")
    script = chaos["run"]
    for needed in (
        "https://charts.chaos-mesh.org",
        "--version 2.8.3",
        "--set chaosDaemon.runtime=containerd",
        "--set chaosDaemon.socketPath=/run/containerd/containerd.sock",
    ):
        assert needed in script, needed
    build_at, build_step = step_running(workflow, "kubernetes", "docker build")
    image = workflow["jobs"]["kubernetes"]["env"]["IMAGE"]
    assert image == IMAGE  # the image deploy/ names
    assert 'kind load docker-image "$IMAGE"' in build_step["run"]
    apply_at, _ = step_running(workflow, "kubernetes", "kubectl apply -k deploy/overlays/simulated")
    prom_at, prom = step_running(workflow, "kubernetes", "helm install prometheus")
    assert "prometheus-community/prometheus" in prom["run"]
    values = re.search(r"-f (\S+)", prom["run"]).group(1)
    assert (ROOT / values).is_file()
    wait_at, _ = step_running(workflow, "kubernetes", "kubectl -n inference rollout status")
    forward_at, forward = step_running(workflow, "kubernetes", "forward gateway")
    install_at, _ = step_running(workflow, "kubernetes", "pip install .")
    nightly_at, _ = step_running(workflow, "kubernetes", "inference-chaos nightly")
    order = [kind_at, chaos_at, build_at, apply_at, prom_at, wait_at, forward_at, install_at]
    assert order == sorted(order) and order[-1] < nightly_at
    assert "svc/gateway 8000:8000" in forward["run"]
    assert "9090:" in forward["run"]


def test_the_rollout_waits_for_every_workload_deploy_builds(workflow: dict[str, Any]) -> None:
    _, wait = step_running(workflow, "kubernetes", "kubectl -n inference rollout status")
    script = wait["run"]
    loop = re.search(r"for node in ([\d ]+); do", script)
    waited = set()
    for kind, name in re.findall(r'rollout status "?(statefulset|deployment)/([\w$-]+)', script):
        each = loop.group(1).split() if "$node" in name else [""]
        waited |= {(kind, name.replace("$node", n)) for n in each}
    built = {
        (w["kind"].lower(), w["metadata"]["name"])
        for w in workloads(build(DEPLOY / "overlays" / "simulated").objects)
    }
    assert built <= waited, f"not waited for: {sorted(built - waited)}"


@pytest.mark.parametrize("job", ["kubernetes", "embedded"])
def test_reports_are_uploaded_and_published_whatever_happened(
    workflow: dict[str, Any], job: str
) -> None:
    out = OUT[job]
    nightly_at, nightly = step_running(workflow, job, step_command(job))
    assert command_line(nightly, step_command(job))[-2:] == ["--out", out]
    ((upload_at, upload),) = step_using(workflow, job, "actions/upload-artifact")
    assert upload.get("if") == ALWAYS and upload_at > nightly_at
    assert upload["with"]["path"].rstrip("/") == out
    ((junit_at, junit),) = step_using(workflow, job, "mikepenz/action-junit-report")
    assert junit.get("if") == ALWAYS and junit_at > nightly_at
    assert junit["with"]["report_paths"] == f"{out}/junit.xml"


def step_command(job: str) -> str:
    return "inference-chaos nightly" if job == "kubernetes" else ".venv/bin/inference-chaos nightly"


def test_the_embedded_job_sets_up_with_the_projects_script(workflow: dict[str, Any]) -> None:
    setup_at, setup = step_running(workflow, "embedded", "bash scripts/setup.sh")
    assert (ROOT / "scripts" / "setup.sh").is_file()
    apt_at, apt = step_running(workflow, "embedded", "sudo apt-get install")
    # what setup.sh would otherwise apt-get itself, which needs root
    setup_script = (ROOT / "scripts" / "setup.sh").read_text()
    for package in ("prometheus", "etcd-server"):
        assert f"need_apt+=({package})" in setup_script and package in apt["run"].split()
    nightly_at, _ = step_running(workflow, "embedded", ".venv/bin/inference-chaos nightly")
    assert apt_at < setup_at < nightly_at
    assert setup["env"]["INFERENCE_CHAOS_WITH_BROWSER"] == "0"
