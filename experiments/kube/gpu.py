"""GPU faults on Kubernetes, emulated honestly: Chaos Mesh has none, so we fake what the
monitoring sees and make real only what Kubernetes can make real.

What is faked: DCGM field values. A Job pinned to the victim's node runs DCGM's injector
(`dcgmi test --inject`) against the node's standalone host engine, the one dcgm-exporter reads,
so dcgm-exporter's /metrics and every controller that reads it see the Xid, the ECC error, the
hot and slow clocks or the full framebuffer. The GPU itself is untouched.

What is real: when the fault means the GPU is gone (fatal Xid 48/79/95), the victim pods are
killed (PodChaos pod-kill) and the node gets a NoSchedule taint so replacements land elsewhere;
a hung GPU (Xid 43) makes its pods stop serving (PodChaos pod-failure).

Two DCGM facts shape the Jobs (NVIDIA/DCGM dcgmi/DcgmiTest.cpp, CommandLineParser.cpp):
injection takes one GPU per call, and an injected sample is just the newest sample in the host
engine's cache. An event field (the Xid) keeps it until the next event; a polled field
(temperature, clocks, memory, ECC counters) is replaced by the driver's real reading at the
next poll, so a holding Job re-injects polled fields every `reinject_every_s` until the
backend deletes it. Recovery: delete the holding Job, then a one-shot Job injects Xid 0 (an
event field does not come back by itself) and the values the GPU had before, when known.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiments.kube import names
from experiments.kube.manifests import chaos_manifests, check_dns_label

DEFAULT_DCGM_IMAGE = "nvcr.io/nvidia/cloud-native/dcgm:4.2.3-1-ubuntu22.04"
# The GPU Operator's standalone host engine (dcgm.enabled=true): Service `nvidia-dcgm`, port
# 5555, internalTrafficPolicy Local, so a pod reaches the engine of its own node or none at all.
DEFAULT_HOST_ENGINE = "nvidia-dcgm.gpu-operator.svc:5555"
DEFAULT_REINJECT_S = 1.0
ONE_SHOT_DEADLINE_S = 120
FINISHED_JOB_TTL_S = 3600
FATAL_XIDS = frozenset({48, 79, 95})  # the GPU is gone until a reset (docs/internals.md)
HANG_XID = 43  # "GPU stopped processing"


@dataclass(frozen=True)
class DcgmField:
    name: str
    id: int
    polled: bool  # sampled every watch interval (else event-driven: kept until the next event)


# Field ids from NVIDIA/DCGM dcgmlib/dcgm_fields.h; all five are INT64 fields.
DCGM_FIELDS: dict[str, DcgmField] = {
    f.name: f
    for f in (
        DcgmField("DCGM_FI_DEV_SM_CLOCK", 100, polled=True),  # MHz
        DcgmField("DCGM_FI_DEV_GPU_TEMP", 150, polled=True),  # degrees C
        DcgmField("DCGM_FI_DEV_XID_ERRORS", 230, polled=False),  # the last Xid
        DcgmField("DCGM_FI_DEV_FB_USED", 252, polled=True),  # MiB
        DcgmField("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 311, polled=True),  # count since reset
    )
}
# our worker's fault-seam fields (PUT /fault) and the DCGM field each one shows up as
SEAM_TO_DCGM = {
    "xid": "DCGM_FI_DEV_XID_ERRORS",
    "temperature_c": "DCGM_FI_DEV_GPU_TEMP",
    "sm_clock_mhz": "DCGM_FI_DEV_SM_CLOCK",
    "fb_used_mib": "DCGM_FI_DEV_FB_USED",
    "ecc_dbe_volatile": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
}
GPU_KINDS = frozenset({"gpu-xid", "gpu-hang", "gpu-throttle", "hbm-pressure"})

Injection = tuple[str, int, int]  # (DCGM field name, field id, value)


@dataclass
class GpuPlan:
    """What one GPU fault does on Kubernetes; the backend carries it out."""

    injections: list[Injection]
    recovery_injections: list[Injection]
    taint: dict[str, str] | None = None
    pod_action: str | None = None  # "pod-kill" | "pod-failure" | None
    emulated: list[str] = field(default_factory=list)
    # re-inject the polled fields this often while the fault is held (None: inject once)
    reinject_every_s: float | None = None


def _injection(name: str, value: Any) -> Injection:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return (name, DCGM_FIELDS[name].id, int(round(value)))


def gpu_fault_taint(xid: int) -> dict[str, str]:
    """The NoSchedule taint of a node whose GPU is gone: nothing new lands there."""
    return {"key": names.GPU_FAULT_TAINT, "value": f"xid-{xid}", "effect": "NoSchedule"}


def gpu_plan(
    kind: str, params: Mapping[str, Any], *, baseline: Mapping[str, float] | None = None
) -> GpuPlan:
    """The plan for a GPU fault record. `baseline` (DCGM field name -> the value the GPU showed
    before the fault, as read from dcgm-exporter) raises counters from where they were and is
    what recovery restores; without it a raised counter starts from 0 and polled fields are
    left to the host engine's next real reading."""
    if kind not in GPU_KINDS:
        raise ValueError(f"{kind!r} is not a GPU fault ({', '.join(sorted(GPU_KINDS))})")
    baseline = dict(baseline or {})
    unknown = set(baseline) - set(DCGM_FIELDS)
    if unknown:
        raise ValueError(f"baseline: unknown DCGM field(s) {sorted(unknown)}")
    fault_set = dict(params.get("set") or {})
    raised = dict(params.get("add") or {})
    if kind == "gpu-hang":
        fault_set.setdefault("xid", HANG_XID)

    values: dict[str, Any] = {}
    emulated: list[str] = []
    for seam, value in fault_set.items():
        if seam in SEAM_TO_DCGM:
            values[SEAM_TO_DCGM[seam]] = value
    for seam, amount in raised.items():
        if seam not in SEAM_TO_DCGM:
            raise ValueError(f"add: {seam!r} has no DCGM field")
        dcgm = SEAM_TO_DCGM[seam]
        values[dcgm] = baseline.get(dcgm, 0) + amount
    injections = [_injection(n, v) for n, v in sorted(values.items(), key=_by_id)]

    xid = fault_set.get("xid")
    taint = pod_action = None
    if xid in FATAL_XIDS:
        taint = gpu_fault_taint(int(xid))
        pod_action = "pod-kill"
        emulated.append(
            f"GPU gone (Xid {xid}) emulated: DCGM reports it, the victim pods are killed and "
            f"the node tainted {names.GPU_FAULT_TAINT}=xid-{xid}:NoSchedule; the GPU still works"
        )
    elif fault_set.get("hang"):
        pod_action = "pod-failure"
        emulated.append(
            "GPU hang emulated: DCGM reports Xid 43 and the victim pods are swapped for a pause "
            "image (pod-failure), so requests are refused rather than left hanging"
        )
    elif xid:
        emulated.append(
            f"Xid {xid}: only DCGM reports it; the serving process keeps its CUDA context and "
            "goes on serving (nothing on Kubernetes breaks a context or fails a request)"
        )
    for name, value in sorted(values.items(), key=_by_id):
        emulated.append(f"{name} injected as {int(round(value))} on the victim's GPU (DCGM only)")
    if "slowdown" in fault_set:
        emulated.append(
            f"slowdown x{fault_set['slowdown']} not emulated: the real GPU runs at full speed"
        )
    if "kv_capacity_factor" in fault_set:
        emulated.append(
            f"kv_capacity_factor {fault_set['kv_capacity_factor']} not emulated: the serving "
            "engine's KV cache keeps its size"
        )
    if not injections:
        raise ValueError(f"{kind}: nothing DCGM could report in {dict(params)}")

    recovery: list[Injection] = []
    for name, _, _ in injections:
        if not DCGM_FIELDS[name].polled:
            recovery.append(_injection(name, 0))  # an event field stays until overwritten
        elif name in baseline:
            recovery.append(_injection(name, baseline[name]))
        elif name == "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL":
            recovery.append(_injection(name, 0))  # the reset that ends the fault zeroes it
    polled = any(DCGM_FIELDS[name].polled for name, _, _ in injections)
    if polled:
        emulated.append(
            f"polled DCGM fields re-injected every {DEFAULT_REINJECT_S:g} s while held; "
            "after recovery the host engine's next real reading replaces them"
        )
    return GpuPlan(
        injections=injections,
        recovery_injections=recovery,
        taint=taint,
        pod_action=pod_action,
        emulated=emulated,
        reinject_every_s=DEFAULT_REINJECT_S if polled else None,
    )


def _by_id(item: tuple[str, Any]) -> int:
    return DCGM_FIELDS[item[0]].id


def gpu_pod_chaos(
    plan: GpuPlan,
    selector: Mapping[str, Any],
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The PodChaos that makes the plan's pod action real on the victim pods ([] when none)."""
    if plan.pod_action is None:
        return []
    params = {"restart_after": None} if plan.pod_action == "pod-kill" else {}
    return chaos_manifests(
        plan.pod_action, params, selector, name=name, namespace=namespace, labels=labels
    )


# -- the injector Job ----------------------------------------------------------------------------

GPU_LIST_SCRIPT = (
    # every GPU id the host engine lists (`dcgmi discovery -l` prints "| <id> | Name: ..."; the
    # table of CPUs that newer versions print after it is skipped)
    'dcgmi discovery --host "$HOST" -l < /dev/null'
    " | awk '/CPUs? found/{exit} /^\\| *[0-9]+ *\\|/{print $2}' > \"$GPUS\"\n"
    '[ -s "$GPUS" ] || { echo "the host engine at $HOST lists no GPU" >&2; exit 1; }\n'
)


def _inject_lines(injections: Sequence[Injection], indent: str) -> str:
    lines = [f"{indent}while read -r g; do\n"]
    for fname, fid, value in injections:
        lines.append(f'{indent}  inject "$g" {fid} {value}  # {fname}\n')
    lines.append(f'{indent}done < "$GPUS"\n')
    return "".join(lines)


def injector_script(
    gpu_index: int | None, injections: Sequence[Injection], reinject_every_s: float | None
) -> str:
    """The shell the Job runs: event fields once, polled fields once or in a loop."""
    once = [i for i in injections if reinject_every_s is None or not DCGM_FIELDS[i[0]].polled]
    looped = [i for i in injections if i not in once]
    script = [
        "set -eu\n",
        'HOST="$DCGM_HOST_ENGINE"\n',
        'GPUS="${GPU_LIST_FILE:-/tmp/gpus}"\n',
        # stdin from /dev/null: the loops feed GPU ids on stdin, dcgmi must not eat them
        "inject() {\n"
        '  dcgmi test --inject --host "$HOST" --gpuid "$1" -f "$2" -v "$3" < /dev/null\n'
        "}\n",
    ]
    if gpu_index is None:
        script.append(GPU_LIST_SCRIPT)
    else:
        script.append(f'echo {shlex.quote(str(gpu_index))} > "$GPUS"\n')
    if once:
        script.append(_inject_lines(once, ""))
    if looped:
        script.append("while :; do\n")
        script.append(_inject_lines(looped, "  "))
        script.append(f"  sleep {reinject_every_s:g}\n")
        script.append("done\n")
    return "".join(script)


def _check_injections(injections: Sequence[Injection]) -> list[Injection]:
    checked = []
    for item in injections:
        fname, fid, value = item
        known = DCGM_FIELDS.get(fname)
        if known is None or known.id != fid:
            raise ValueError(f"injection {item!r}: not a DCGM field of {sorted(DCGM_FIELDS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"injection {item!r}: {fname} is an INT64 field, give a whole number")
        checked.append((fname, fid, int(value)))
    return checked


def dcgm_job(
    name: str,
    namespace: str,
    node: str,
    gpu_index: int | None,
    injections: Sequence[Injection],
    labels: Mapping[str, str],
    image: str = DEFAULT_DCGM_IMAGE,
    *,
    host_engine: str = DEFAULT_HOST_ENGINE,
    reinject_every_s: float | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job on `node` (spec.nodeName, so no scheduler and no taint stops it) that
    injects `injections` into GPU `gpu_index` (None: every GPU the host engine lists). With
    `reinject_every_s` it keeps re-injecting the polled fields until deleted; without, it is a
    one-shot with a deadline."""
    check_dns_label(name, "name")
    if not node:
        raise ValueError("node: the Job must be pinned to the victim's node")
    if gpu_index is not None and (
        isinstance(gpu_index, bool) or not isinstance(gpu_index, int) or gpu_index < 0
    ):
        raise ValueError(f"gpu_index: expected a GPU id >= 0 or None, got {gpu_index!r}")
    if reinject_every_s is not None and not reinject_every_s > 0:
        raise ValueError(f"reinject_every_s: must be > 0, got {reinject_every_s!r}")
    checked = _check_injections(injections)
    if not checked:
        raise ValueError("injections: nothing to inject")
    job_labels = {str(k): str(v) for k, v in labels.items()}
    pod_spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "tolerations": [
            {"key": names.GPU_FAULT_TAINT, "operator": "Exists", "effect": "NoSchedule"},
            {"key": names.NODE_DOWN_TAINT, "operator": "Exists", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "containers": [
            {
                "name": "dcgm-inject",
                "image": image,
                "command": ["/bin/sh", "-c", injector_script(gpu_index, checked, reinject_every_s)],
                "env": [{"name": "DCGM_HOST_ENGINE", "value": host_engine}],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"memory": "128Mi"},
                },
            }
        ],
    }
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_S,
        "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod_spec},
    }
    if reinject_every_s is None:
        spec["activeDeadlineSeconds"] = ONE_SHOT_DEADLINE_S
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": job_labels},
        "spec": spec,
    }
