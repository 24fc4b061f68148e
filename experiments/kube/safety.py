"""Guards before a fault touches a real cluster: which namespaces, and how much of them.

A namespace takes faults only when it carries the opt-in label, and never when it is one of
Kubernetes' own or Chaos Mesh's (short of `force_namespaces: true`): a typo in a selector must
not take down the control plane. The blast radius caps the share of pods (or nodes) one fault
may hit, counted the way the mode picks (a random-max-percent counts at its maximum).
"""

from __future__ import annotations

import math
import random

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from experiments.kube.client import Kube, KubeError, explain
from experiments.kube.names import OPT_IN_LABEL, OPT_IN_VALUE, PROTECTED_NAMESPACES
from experiments.kube.settings import KubeSettings
from experiments.selectors import Selector


def check_namespace(kube: Kube, namespace: str, settings: KubeSettings) -> None:
    """KubeError unless faults may go into `namespace`."""
    if settings.force_namespaces:
        return
    if namespace in PROTECTED_NAMESPACES or namespace == settings.chaos_mesh_namespace:
        raise KubeError(
            f"namespace {namespace} is protected: the harness never injects faults there "
            "(force_namespaces: true overrides)"
        )
    try:
        ns = kube.core.read_namespace(namespace, _request_timeout=10)
    except ApiException as exc:
        if exc.status == 404:
            raise KubeError(
                f"namespace {namespace} does not exist (context {kube.context})"
            ) from None
        raise explain(exc, kube, f"read namespace {namespace}") from None
    except (Urllib3Error, OSError) as exc:
        raise explain(exc, kube, f"read namespace {namespace}") from None
    labels = (ns.metadata.labels or {}) if ns.metadata else {}
    if labels.get(OPT_IN_LABEL) != OPT_IN_VALUE:
        raise KubeError(
            f"namespace {namespace} is not opted in to chaos: label it with "
            f"'kubectl label namespace {namespace} {OPT_IN_LABEL}={OPT_IN_VALUE}'"
        )


def worst_case_count(selector: Selector, matched: int) -> int:
    """How many of `matched` the mode may hit at most."""
    if selector.mode == "random-max-percent":
        return min(matched, max(1, math.floor(matched * float(selector.value or 0) / 100)))
    if selector.mode == "one":
        return min(1, matched)
    return selector.count(matched, random.Random(0))


def check_blast_radius(hit: int, total: int, max_share: float, what: str, where: str) -> None:
    """KubeError when `hit` of `total` exceeds the allowed share."""
    if total <= 0:
        return
    share = hit / total
    if share > max_share + 1e-9:
        raise KubeError(
            f"blast radius: the fault would hit {hit} of {total} {what} in {where} "
            f"({share:.0%}), more than max_{what[:-1]}_share {max_share:.0%}"
        )
