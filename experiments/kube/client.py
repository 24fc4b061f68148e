"""Talking to a Kubernetes API server: credentials, the API groups we use, one-line errors.

A kubeconfig (the configuration's `kubeconfig`, else $KUBECONFIG, else ~/.kube/config) or the
pod's in-cluster credentials (`in_cluster: true`, or no kubeconfig inside a pod). Every problem
the API server reports becomes a KubeError whose message names the object, the verb and what
to do: a missing kubeconfig, a server that does not answer, RBAC refusing a verb, Chaos Mesh's
CRDs not installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError as Urllib3Error

from experiments.kube.names import CHAOS_KINDS, GROUP, VERSION

REQUEST_TIMEOUT_S = 10.0


class KubeError(RuntimeError):
    """Something the API server or the credentials refused; the message is one line."""


@dataclass
class Kube:
    """The API groups we use, over one ApiClient."""

    api: client.ApiClient
    context: str = "in-cluster"
    server: str = ""
    core: client.CoreV1Api = field(init=False)
    custom: client.CustomObjectsApi = field(init=False)
    batch: client.BatchV1Api = field(init=False)
    policy: client.PolicyV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.policy = client.PolicyV1Api(self.api)

    def close(self) -> None:
        self.api.close()


def kubeconfig_path(configuration: dict[str, Any]) -> Path:
    given = configuration.get("kubeconfig") or os.environ.get("KUBECONFIG")
    if given:
        return Path(str(given).split(os.pathsep)[0]).expanduser()
    return Path("~/.kube/config").expanduser()


def connect(configuration: dict[str, Any]) -> Kube:
    """A client from the configuration's credentials; KubeError when they cannot be used."""
    context = configuration.get("kube_context") or None
    in_cluster = configuration.get("in_cluster")
    path = kubeconfig_path(configuration)
    if in_cluster is None:
        in_cluster = not path.exists() and "KUBERNETES_SERVICE_HOST" in os.environ
    if in_cluster:
        try:
            config.load_incluster_config()
        except ConfigException as exc:
            raise KubeError(f"in-cluster credentials unavailable: {exc}") from None
        api = client.ApiClient()
        return Kube(api, "in-cluster", api.configuration.host)
    if not path.exists():
        raise KubeError(
            f"kubeconfig {path} does not exist (set 'kubeconfig' in the configuration or "
            "$KUBECONFIG, or run inside a pod with in_cluster: true)"
        )
    try:
        api = config.new_client_from_config(
            config_file=str(path), context=context, persist_config=False
        )
        _, active = config.list_kube_config_contexts(config_file=str(path))
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KubeError(f"kubeconfig {path}: {first}") from None
    name = context or (active or {}).get("name", "?")
    return Kube(api, name, api.configuration.host)


def status_message(exc: ApiException) -> str:
    """The `message` of the API server's Status object, or the reason phrase."""
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message")
    except (TypeError, ValueError):
        message = None
    return " ".join(str(message or exc.reason or f"HTTP {exc.status}").split())


def explain(exc: Exception, kube: Kube | None, doing: str) -> KubeError:
    """One line for an API failure while `doing` (e.g. 'create PodChaos ic-1 in ns-a')."""
    where = f" (context {kube.context}, {kube.server})" if kube else ""
    if isinstance(exc, ApiException):
        status = exc.status
        message = status_message(exc)
        if status == 401:
            return KubeError(f"{doing}: unauthorized{where}: the credentials were refused")
        if status == 403:
            return KubeError(f"{doing}: RBAC denied: {message}")
        if status == 404:
            return KubeError(f"{doing}: not found: {message}")
        if status == 409:
            return KubeError(f"{doing}: conflict: {message}")
        if status == 422:
            return KubeError(f"{doing}: the API server refused the object: {message}")
        return KubeError(f"{doing}: HTTP {status}: {message}")
    if isinstance(exc, Urllib3Error | OSError):
        return KubeError(f"{doing}: the API server does not answer{where}: {type(exc).__name__}")
    return KubeError(f"{doing}: {type(exc).__name__}: {exc}")


def call(kube: Kube, doing: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """`func(*args, **kwargs)` with a request timeout; failures become KubeError."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_S)
    try:
        return func(*args, **kwargs)
    except (ApiException, Urllib3Error, OSError) as exc:
        raise explain(exc, kube, doing) from None


def require_chaos_mesh(kube: Kube, kinds: list[str] | None = None) -> None:
    """Chaos Mesh's CRDs must be served by this API server (the kinds we need, at least)."""
    try:
        found = kube.custom.get_api_resources(GROUP, VERSION, _request_timeout=REQUEST_TIMEOUT_S)
    except ApiException as exc:
        if exc.status == 404:
            raise KubeError(
                f"Chaos Mesh is not installed in context {kube.context} ({kube.server}): the API "
                f"server does not serve {GROUP}/{VERSION}; install it (helm install chaos-mesh "
                "chaos-mesh/chaos-mesh) or choose another context"
            ) from None
        raise explain(exc, kube, f"discover {GROUP}/{VERSION}") from None
    except (Urllib3Error, OSError) as exc:
        raise explain(exc, kube, f"discover {GROUP}/{VERSION}") from None
    served = {r.name for r in (found.resources or [])}
    missing = sorted(
        CHAOS_KINDS[k] for k in (kinds or list(CHAOS_KINDS)) if CHAOS_KINDS[k] not in served
    )
    if missing:
        raise KubeError(
            f"Chaos Mesh in context {kube.context} lacks the CRD(s) {', '.join(missing)} "
            f"({GROUP}/{VERSION}); upgrade it to 2.8"
        )
