"""A Chaos Mesh object's life: create, watch until injected, pause, delete, watch until gone.

Chaos Mesh reports progress in the object's status: `conditions` (Selected, AllInjected,
AllRecovered, Paused) and `experiment.containerRecords`, one per pod or container with its
phase and the events of every apply and recover. We never assume a fault took hold: creation
returns only once AllInjected is True, and a record that failed is reported with its message.
Deletion returns only once the object is gone, which Chaos Mesh allows when every record is
recovered and its finalizer released; a stuck finalizer can be forced with Chaos Mesh's
`cleanFinalizer: forced` annotation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from experiments.kube.client import Kube, KubeError, call, explain
from experiments.kube.names import (
    CHAOS_KINDS,
    CLEAN_FINALIZER_ANNOTATION,
    CLEAN_FINALIZER_FORCED,
    GROUP,
    PAUSE_ANNOTATION,
    VERSION,
)

Predicate = Callable[[dict[str, Any]], bool]


def plural(kind: str) -> str:
    try:
        return CHAOS_KINDS[kind]
    except KeyError:
        raise KubeError(f"{kind} is not a Chaos Mesh kind we manage") from None


def ref(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name) of a manifest or object."""
    meta = obj.get("metadata") or {}
    return obj["kind"], meta.get("namespace", "default"), meta["name"]


def describe(obj: dict[str, Any]) -> str:
    kind, namespace, name = ref(obj)
    return f"{kind} {namespace}/{name}"


def conditions(obj: dict[str, Any]) -> dict[str, bool]:
    """`{type: status == "True"}` of the object's status conditions."""
    out = {}
    for c in ((obj.get("status") or {}).get("conditions")) or []:
        out[str(c.get("type"))] = str(c.get("status")) == "True"
    return out


def container_records(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(((obj.get("status") or {}).get("experiment") or {}).get("containerRecords") or [])


def failed_records(obj: dict[str, Any]) -> list[str]:
    """`id: message` of every record whose last apply failed."""
    failed = []
    for record in container_records(obj):
        events = [e for e in record.get("events") or [] if e.get("operation") == "Apply"]
        if events and events[-1].get("type") == "Failed":
            failed.append(f"{record.get('id')}: {events[-1].get('message') or 'failed'}")
    return failed


def injected_targets(obj: dict[str, Any]) -> list[str]:
    """The `namespace/pod[/container]` ids Chaos Mesh injected into."""
    return sorted(str(r.get("id")) for r in container_records(obj) if r.get("phase") == "Injected")


def is_injected(obj: dict[str, Any]) -> bool:
    """Selected and AllInjected. Chaos Mesh computes AllInjected over the records, so before it
    selected anything (no records) AllInjected is vacuously True: never trust it alone."""
    c = conditions(obj)
    records = container_records(obj)
    return (
        c.get("Selected", False)
        and c.get("AllInjected", False)
        and bool(records)
        and all(r.get("phase") == "Injected" for r in records)
    )


def is_recovered(obj: dict[str, Any]) -> bool:
    return conditions(obj).get("AllRecovered", False)


def create(kube: Kube, manifest: dict[str, Any]) -> dict[str, Any]:
    kind, namespace, _ = ref(manifest)
    return call(
        kube,
        f"create {describe(manifest)}",
        kube.custom.create_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        plural(kind),
        manifest,
    )


def get(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        return kube.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural(kind), name, _request_timeout=10
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise explain(exc, kube, f"get {kind} {namespace}/{name}") from None
    except (Urllib3Error, OSError) as exc:
        raise explain(exc, kube, f"get {kind} {namespace}/{name}") from None


def wait_for(
    kube: Kube, kind: str, namespace: str, name: str, done: Predicate, timeout_s: float
) -> tuple[dict[str, Any] | None, bool]:
    """Watch the object until `done(obj)` or it is deleted; returns (last object or None when
    gone, whether the wait ended before the deadline)."""
    deadline = time.monotonic() + timeout_s
    obj = get(kube, kind, namespace, name)
    while True:
        if obj is None or done(obj):
            return obj, True
        left = deadline - time.monotonic()
        if left <= 0:
            return obj, False
        version = (obj.get("metadata") or {}).get("resourceVersion")
        stream = watch.Watch()
        try:
            for event in stream.stream(
                kube.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                plural(kind),
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=max(1, int(left + 0.999)),
                _request_timeout=left + 5,
            ):
                if event.get("type") == "DELETED":
                    return None, True
                if event.get("type") in ("ADDED", "MODIFIED"):
                    obj = event["object"]
                    if done(obj):
                        return obj, True
                if time.monotonic() > deadline:
                    break
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: our resourceVersion is too old; list again
                raise explain(exc, kube, f"watch {kind} {namespace}/{name}") from None
        except (Urllib3Error, OSError):
            time.sleep(0.1)  # a broken stream: read the object again and watch anew
        finally:
            stream.stop()
        obj = get(kube, kind, namespace, name)


def wait_injected(kube: Kube, obj: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Until AllInjected; KubeError with the failed records on a failure or the deadline."""
    kind, namespace, name = ref(obj)

    def settled(o: dict[str, Any]) -> bool:
        return is_injected(o) or bool(failed_records(o))

    last, in_time = wait_for(kube, kind, namespace, name, settled, timeout_s)
    if last is None:
        raise KubeError(f"{kind} {namespace}/{name} was deleted before it was injected")
    failed = failed_records(last)
    if failed:
        raise KubeError(f"{kind} {namespace}/{name} failed to inject: {'; '.join(failed)}")
    if not in_time:
        seen = conditions(last)
        if seen.get("Selected") is False:
            why = "its selector matched no pod"
        elif not container_records(last):
            why = "no record yet (is the Chaos Mesh controller running?)"
        else:
            pending = [r.get("id") for r in container_records(last) if r.get("phase") != "Injected"]
            why = f"not injected into {', '.join(map(str, pending)) or 'every target'}"
        raise KubeError(f"{kind} {namespace}/{name} not AllInjected after {timeout_s:g}s: {why}")
    return last


def delete(kube: Kube, kind: str, namespace: str, name: str) -> bool:
    """Ask for deletion; False when the object was already gone."""
    try:
        kube.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, plural(kind), name, _request_timeout=10
        )
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise explain(exc, kube, f"delete {kind} {namespace}/{name}") from None
    except (Urllib3Error, OSError) as exc:
        raise explain(exc, kube, f"delete {kind} {namespace}/{name}") from None


def annotate(kube: Kube, kind: str, namespace: str, name: str, annotations: dict[str, Any]) -> None:
    call(
        kube,
        f"annotate {kind} {namespace}/{name}",
        kube.custom.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        plural(kind),
        name,
        {"metadata": {"annotations": annotations}},
        _content_type="application/merge-patch+json",
    )


def remove(
    kube: Kube, kind: str, namespace: str, name: str, timeout_s: float, force: bool = False
) -> dict[str, Any]:
    """Delete and wait until the object is gone (faults recovered, finalizer released). With
    `force`, a finalizer still held at the deadline is cleared with Chaos Mesh's annotation
    (the fault may then stay in the pods: Chaos Mesh gave up recovering it)."""
    started = time.monotonic()
    if not delete(kube, kind, namespace, name):
        return {"gone": True, "forced": False, "took_s": 0.0}
    last, _ = wait_for(kube, kind, namespace, name, lambda o: False, timeout_s)
    if last is None:
        return {"gone": True, "forced": False, "took_s": round(time.monotonic() - started, 3)}
    stuck = ", ".join((last.get("metadata") or {}).get("finalizers") or []) or "none"
    if not force:
        raise KubeError(
            f"{kind} {namespace}/{name} still exists {timeout_s:g}s after deletion (finalizers: "
            f"{stuck}; not recovered: {', '.join(_unrecovered(last)) or '-'}); "
            "'inference-chaos cleanup --force' clears the finalizer"
        )
    try:
        annotate(kube, kind, namespace, name, {CLEAN_FINALIZER_ANNOTATION: CLEAN_FINALIZER_FORCED})
    except KubeError as exc:
        if "not found" not in str(exc):
            raise
    last, _ = wait_for(kube, kind, namespace, name, lambda o: False, timeout_s)
    if last is not None:
        raise KubeError(f"{kind} {namespace}/{name} still exists after forcing its finalizer")
    return {
        "gone": True,
        "forced": True,
        "unrecovered": _unrecovered(last or {}),
        "took_s": round(time.monotonic() - started, 3),
    }


def _unrecovered(obj: dict[str, Any]) -> list[str]:
    return [str(r.get("id")) for r in container_records(obj) if r.get("phase") == "Injected"]


def set_paused(
    kube: Kube, kind: str, namespace: str, name: str, paused: bool, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Pause (faults recovered, object kept) or resume (injected again), and wait for it."""
    annotate(kube, kind, namespace, name, {PAUSE_ANNOTATION: "true" if paused else None})

    def reached(o: dict[str, Any]) -> bool:
        c = conditions(o)
        return c.get("Paused", False) if paused else (not c.get("Paused") and is_injected(o))

    last, in_time = wait_for(kube, kind, namespace, name, reached, timeout_s)
    if last is None:
        raise KubeError(f"{kind} {namespace}/{name} disappeared while being paused/resumed")
    if not in_time:
        what = "paused" if paused else "resumed and injected"
        raise KubeError(f"{kind} {namespace}/{name} not {what} after {timeout_s:g}s")
    return last
