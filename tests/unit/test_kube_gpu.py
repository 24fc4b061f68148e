"""GPU faults on Kubernetes: which DCGM fields a fault injects and how it is undone, what is
made real (pod kill, pod failure, a node taint), and the injector Job itself: pinned to the
node, one `dcgmi test --inject` per field and GPU, valid for the Kubernetes API (strict
schemas of kubernetes-validate, offline) and, run under /bin/sh against a fake `dcgmi`, doing
what it says.
"""

from __future__ import annotations

import copy
import os
import re
import stat
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from experiments.kube import names
from experiments.kube.crds import CrdError, CrdSchemas
from experiments.kube.gpu import (
    DCGM_FIELDS,
    DEFAULT_DCGM_IMAGE,
    DEFAULT_HOST_ENGINE,
    GpuPlan,
    dcgm_job,
    gpu_plan,
    gpu_pod_chaos,
    injector_script,
)

LABELS = {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.RUN_LABEL: "run-1"}
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
INJECT = re.compile(r'^\s*inject "\$g" (\d+) (-?\d+)  # (\S+)$')


def xid_params(xid: int) -> dict:
    """What experiments.faults.gpu_xid records for each Xid it supports."""
    effects = {
        13: ({"healthy": False}, {}, "restart"),
        31: ({"healthy": False}, {}, "restart"),
        43: ({"hang": True}, {}, "reset"),
        48: ({"healthy": False}, {"ecc_dbe_volatile": 1}, "reset"),
        79: ({"healthy": False}, {}, "reset"),
        94: ({}, {"ecc_dbe_volatile": 1}, "reset"),
        95: ({"healthy": False}, {"ecc_dbe_volatile": 1}, "reset"),
    }
    fault_set, add, recovery = effects[xid]
    return {"xid": xid, "set": {"xid": xid, **fault_set}, "add": add, "recovery": recovery}


HANG = {"set": {"hang": True}, "add": {}, "recovery": "reset"}
THROTTLE = {
    "set": {"slowdown": 2.0, "sm_clock_mhz": 900.0, "temperature_c": 92.0},
    "add": {},
    "recovery": "reset",
}
HBM = {"set": {"kv_capacity_factor": 0.3, "fb_used_mib": 70000.0}, "add": {}, "recovery": "reset"}


def test_dcgm_field_ids_match_dcgm_fields_h():
    ids = {name: f.id for name, f in DCGM_FIELDS.items()}
    assert ids == {
        "DCGM_FI_DEV_SM_CLOCK": 100,
        "DCGM_FI_DEV_GPU_TEMP": 150,
        "DCGM_FI_DEV_XID_ERRORS": 230,
        "DCGM_FI_DEV_FB_USED": 252,
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 311,
    }
    assert [n for n, f in DCGM_FIELDS.items() if not f.polled] == ["DCGM_FI_DEV_XID_ERRORS"]


# -- plans -----------------------------------------------------------------------------------


@pytest.mark.parametrize("xid", [48, 79, 95])
def test_fatal_xid_kills_pods_and_taints_the_node(xid):
    plan = gpu_plan("gpu-xid", xid_params(xid))
    assert plan.injections[0] == ("DCGM_FI_DEV_XID_ERRORS", 230, xid)
    assert plan.pod_action == "pod-kill"
    assert plan.taint == {
        "key": names.GPU_FAULT_TAINT,
        "value": f"xid-{xid}",
        "effect": "NoSchedule",
    }
    assert ("DCGM_FI_DEV_XID_ERRORS", 230, 0) in plan.recovery_injections
    assert any("GPU gone" in line for line in plan.emulated)


def test_xid_48_raises_the_ecc_counter_and_recovery_zeroes_it():
    plan = gpu_plan("gpu-xid", xid_params(48))
    assert plan.injections == [
        ("DCGM_FI_DEV_XID_ERRORS", 230, 48),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 311, 1),
    ]
    assert plan.recovery_injections == [
        ("DCGM_FI_DEV_XID_ERRORS", 230, 0),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 311, 0),
    ]
    assert plan.reinject_every_s and plan.reinject_every_s > 0  # ECC is a polled field


def test_a_counter_rises_from_the_baseline_and_recovery_restores_it():
    baseline = {"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 3, "DCGM_FI_DEV_XID_ERRORS": 0}
    plan = gpu_plan("gpu-xid", xid_params(94), baseline=baseline)
    assert ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 311, 4) in plan.injections
    assert ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 311, 3) in plan.recovery_injections
    assert (plan.pod_action, plan.taint) == (None, None)  # Xid 94: the GPU stays usable
    with pytest.raises(ValueError, match="baseline"):
        gpu_plan("gpu-xid", xid_params(94), baseline={"DCGM_FI_DEV_POWER_USAGE": 300})


@pytest.mark.parametrize("xid", [13, 31])
def test_application_xids_are_only_reported(xid):
    plan = gpu_plan("gpu-xid", xid_params(xid))
    assert plan.injections == [("DCGM_FI_DEV_XID_ERRORS", 230, xid)]
    assert (plan.pod_action, plan.taint, plan.reinject_every_s) == (None, None, None)
    assert any("only DCGM reports it" in line for line in plan.emulated)


@pytest.mark.parametrize("kind, params", [("gpu-hang", HANG), ("gpu-xid", xid_params(43))])
def test_hang_reports_xid_43_and_fails_the_pods(kind, params):
    plan = gpu_plan(kind, params)
    assert plan.injections == [("DCGM_FI_DEV_XID_ERRORS", 230, 43)]
    assert plan.pod_action == "pod-failure" and plan.taint is None
    assert plan.recovery_injections == [("DCGM_FI_DEV_XID_ERRORS", 230, 0)]


def test_throttle_injects_clock_and_temperature_and_says_what_is_not_emulated():
    plan = gpu_plan("gpu-throttle", THROTTLE)
    assert plan.injections == [
        ("DCGM_FI_DEV_SM_CLOCK", 100, 900),
        ("DCGM_FI_DEV_GPU_TEMP", 150, 92),
    ]
    assert plan.recovery_injections == []  # the next real reading replaces them
    assert plan.reinject_every_s is not None
    assert any("slowdown" in line and "not emulated" in line for line in plan.emulated)
    restored = gpu_plan(
        "gpu-throttle",
        THROTTLE,
        baseline={"DCGM_FI_DEV_SM_CLOCK": 1980, "DCGM_FI_DEV_GPU_TEMP": 41},
    )
    assert restored.recovery_injections == [
        ("DCGM_FI_DEV_SM_CLOCK", 100, 1980),
        ("DCGM_FI_DEV_GPU_TEMP", 150, 41),
    ]


def test_hbm_pressure_reports_framebuffer_only():
    plan = gpu_plan("hbm-pressure", HBM)
    assert plan.injections == [("DCGM_FI_DEV_FB_USED", 252, 70000)]
    assert any("kv_capacity_factor" in line for line in plan.emulated)
    with pytest.raises(ValueError, match="nothing DCGM"):
        gpu_plan("hbm-pressure", {"set": {"kv_capacity_factor": 0.3}})


def test_every_plan_says_what_is_emulated_in_one_line_each():
    for kind, params in [("gpu-xid", xid_params(x)) for x in (13, 31, 43, 48, 79, 94, 95)] + [
        ("gpu-hang", HANG),
        ("gpu-throttle", THROTTLE),
        ("hbm-pressure", HBM),
    ]:
        plan = gpu_plan(kind, params)
        assert plan.emulated and all("\n" not in line for line in plan.emulated)


def test_non_gpu_kind_is_refused():
    with pytest.raises(ValueError, match="not a GPU fault"):
        gpu_plan("pod-kill", {})


@pytest.fixture(scope="module")
def schemas() -> CrdSchemas:
    try:
        return CrdSchemas.load()
    except CrdError as exc:
        pytest.skip(f"Chaos Mesh CRDs not found ({exc}); set $INFERENCE_CHAOS_CRDS")


@pytest.mark.parametrize(
    "plan_args, action",
    [(("gpu-xid", xid_params(79)), "pod-kill"), (("gpu-hang", HANG), "pod-failure")],
)
def test_pod_chaos_of_a_plan_validates(schemas, plan_args, action):
    plan = gpu_plan(*plan_args)
    selector = {"labelSelectors": {"role": "worker"}, "nodes": ["gpu-node-1"], "mode": "one"}
    made = gpu_pod_chaos(plan, selector, name="fault-1-pods", namespace="inference", labels=LABELS)
    assert [m["spec"]["action"] for m in made] == [action]
    assert schemas.errors(made[0], strict=True) == []
    assert (
        gpu_pod_chaos(
            gpu_plan("gpu-throttle", THROTTLE), selector, name="x", namespace="n", labels={}
        )
        == []
    )


# -- the Job ---------------------------------------------------------------------------------


def injected(job: dict) -> list[tuple[int, int, str]]:
    """(field id, value, field name) of every inject line of the Job's script, in order."""
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    return [(int(m[1]), int(m[2]), m[3]) for m in map(INJECT.match, script.splitlines()) if m]


def test_job_shape():
    plan = gpu_plan("gpu-xid", xid_params(79))
    job = dcgm_job("fault-1-inject", "inference", "gpu-node-1", 3, plan.injections, LABELS)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"] == {"name": "fault-1-inject", "namespace": "inference", "labels": LABELS}
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == LABELS
    assert (pod["nodeName"], pod["restartPolicy"]) == ("gpu-node-1", "Never")
    tolerated = {(t["key"], t["operator"], t["effect"]) for t in pod["tolerations"]}
    assert tolerated == {
        (names.GPU_FAULT_TAINT, "Exists", "NoSchedule"),
        (names.NODE_DOWN_TAINT, "Exists", "NoSchedule"),
        ("nvidia.com/gpu", "Exists", "NoSchedule"),
    }
    (container,) = pod["containers"]
    assert container["image"] == DEFAULT_DCGM_IMAGE
    assert container["command"][:2] == ["/bin/sh", "-c"]
    assert container["env"] == [{"name": "DCGM_HOST_ENGINE", "value": DEFAULT_HOST_ENGINE}]
    assert injected(job) == [(230, 79, "DCGM_FI_DEV_XID_ERRORS")]
    assert 'echo 3 > "$GPUS"' in container["command"][2]


def test_job_injects_once_per_field_and_loops_only_polled_fields():
    plan = gpu_plan("gpu-xid", xid_params(95))
    held = dcgm_job(
        "fault-2-hold",
        "inference",
        "n1",
        0,
        plan.injections,
        LABELS,
        image="registry.local/dcgm:4.2.3",
        host_engine="10.0.0.7:5555",
        reinject_every_s=plan.reinject_every_s,
    )
    assert injected(held) == [
        (230, 95, "DCGM_FI_DEV_XID_ERRORS"),
        (311, 1, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ]
    script = held["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert script.index("230 95") < script.index("while :; do") < script.index("311 1")
    assert "activeDeadlineSeconds" not in held["spec"]  # held until the backend deletes it
    assert held["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/dcgm:4.2.3"
    recovery = dcgm_job("fault-2-recover", "inference", "n1", 0, plan.recovery_injections, LABELS)
    assert injected(recovery) == [
        (230, 0, "DCGM_FI_DEV_XID_ERRORS"),
        (311, 0, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ]
    assert "while :" not in recovery["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_job_without_gpu_index_injects_into_every_listed_gpu():
    job = dcgm_job("fault-3", "inference", "n1", None, [("DCGM_FI_DEV_XID_ERRORS", 230, 79)], {})
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "dcgmi discovery" in script and "echo" not in script.split("dcgmi discovery")[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("reinject", [None, 1.0])
def test_job_validates_strictly_against_kubernetes(version, reinject):
    plan = gpu_plan("gpu-throttle", THROTTLE)
    job = dcgm_job(
        "fault-4", "inference", "n1", None, plan.injections, LABELS, reinject_every_s=reinject
    )
    kubernetes_validate.validate(job, version, strict=True)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["nodename"] = "n1"  # a typo the API would drop
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"name": "Fault_1"}, "DNS label"),
        ({"node": ""}, "pinned"),
        ({"gpu_index": -1}, "gpu_index"),
        ({"injections": [("DCGM_FI_DEV_XID_ERRORS", 231, 79)]}, "not a DCGM field"),
        ({"injections": [("DCGM_FI_DEV_GPU_TEMP", 150, 92.5)]}, "whole number"),
        ({"injections": []}, "nothing to inject"),
        ({"reinject_every_s": 0}, "reinject_every_s"),
    ],
)
def test_bad_job_arguments_are_refused(args, message):
    given = {
        "name": "fault-5",
        "namespace": "inference",
        "node": "n1",
        "gpu_index": 0,
        "injections": [("DCGM_FI_DEV_XID_ERRORS", 230, 79)],
        "labels": {},
        **args,
    }
    with pytest.raises(ValueError, match=message):
        dcgm_job(**given)


# -- the script, run against a fake dcgmi -----------------------------------------------------

DISCOVERY = """2 GPUs found.
+--------+----------------------------------------------------------------------+
| GPU ID | Device Information                                                   |
+--------+----------------------------------------------------------------------+
| 0      | Name: NVIDIA H800                                                    |
|        | PCI Bus ID: 00000000:18:00.0                                         |
+--------+----------------------------------------------------------------------+
| 1      | Name: NVIDIA H800                                                    |
|        | PCI Bus ID: 00000000:3E:00.0                                         |
+--------+----------------------------------------------------------------------+
1 CPU found.
+--------+----------------------------------------------------------------------+
| CPU ID | Device Information                                                   |
+--------+----------------------------------------------------------------------+
| 0      | Name: Grace                                                          |
+--------+----------------------------------------------------------------------+
"""


def fake_tools(tmp_path: Path) -> dict[str, str]:
    """A `dcgmi` that logs its arguments (and prints a discovery table) and a `sleep` that
    fails, so a re-inject loop runs exactly once and the script exits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "discovery.txt").write_text(DISCOVERY)
    scripts = {
        "dcgmi": f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n'
        f'[ "$1" = discovery ] && cat {tmp_path}/discovery.txt\nexit 0\n',
        "sleep": f'#!/bin/sh\necho "sleep $*" >> {tmp_path}/calls\nexit 1\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DCGM_HOST_ENGINE": "10.0.0.7:5555",
        "GPU_LIST_FILE": str(tmp_path / "gpus"),
    }


def run_script(script: str, tmp_path: Path) -> tuple[int, list[str]]:
    env = fake_tools(tmp_path)
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, timeout=10)
    calls = (tmp_path / "calls").read_text().splitlines()
    return done.returncode, calls


@pytest.mark.integration
def test_script_injects_every_listed_gpu_once_then_loops_polled_fields(tmp_path):
    plan = gpu_plan("gpu-xid", xid_params(48))
    code, calls = run_script(injector_script(None, plan.injections, 1.0), tmp_path)
    assert code == 1  # the fake sleep ends the loop
    host = "--host 10.0.0.7:5555"
    assert calls == [
        f"discovery {host} -l",
        f"test --inject {host} --gpuid 0 -f 230 -v 48",
        f"test --inject {host} --gpuid 1 -f 230 -v 48",  # GPU 0 of the CPU table is skipped
        f"test --inject {host} --gpuid 0 -f 311 -v 1",
        f"test --inject {host} --gpuid 1 -f 311 -v 1",
        "sleep 1",
    ]


@pytest.mark.integration
def test_one_shot_script_on_one_gpu_succeeds(tmp_path):
    plan = gpu_plan("gpu-xid", xid_params(95))
    code, calls = run_script(injector_script(2, plan.recovery_injections, None), tmp_path)
    assert code == 0
    assert calls == [
        "test --inject --host 10.0.0.7:5555 --gpuid 2 -f 230 -v 0",
        "test --inject --host 10.0.0.7:5555 --gpuid 2 -f 311 -v 0",
    ]


def test_plan_is_plain_data():
    plan = gpu_plan("gpu-xid", xid_params(79))
    assert isinstance(plan, GpuPlan)
    assert all(isinstance(v, int) for _, _, v in plan.injections + plan.recovery_injections)
