"""The resources the fake serves, and the discovery documents that announce them.

Each `ResourceType` says where a kind lives (group/version/plural), whether it is namespaced,
which verbs the apiserver allows on it, and the few storage quirks the client can observe
(built-in list items carry no kind, DELETE returns the object or a Status).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from experiments.kube.crds import Crd, CrdSchemas
from experiments.kube.names import CHAOS_KINDS, GROUP, VERSION

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
READ_VERBS = ["get", "list", "watch"]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    verbs: tuple[str, ...] = tuple(ALL_VERBS)
    built_in: bool = True
    status_subresource: bool = True
    returns_deleted_object: bool = True
    short_names: tuple[str, ...] = ()
    subresources: dict[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


CORE = [
    ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", short_names=("ns",)),
    ResourceType("", "v1", "nodes", "Node", False, "node", short_names=("no",)),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        "pod",
        short_names=("po",),
        subresources={"eviction": ("Eviction", "policy/v1", ("create",))},
    ),
]
BATCH = [ResourceType("batch", "v1", "jobs", "Job", True, "job", returns_deleted_object=False)]
POLICY = [
    ResourceType(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        True,
        "poddisruptionbudget",
        short_names=("pdb",),
        returns_deleted_object=False,
    )
]
CRD_TYPE = ResourceType(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "CustomResourceDefinition",
    False,
    "customresourcedefinition",
    verbs=tuple(READ_VERBS),
    short_names=("crd", "crds"),
    returns_deleted_object=False,
)


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20x faster on these files


@cache
def chaos_schemas(crd_dir: Path) -> CrdSchemas:
    """`CrdSchemas` for the six kinds, built from the same fast parse (`CrdSchemas.load` reads
    every CRD with the pure-Python parser, seconds per fake)."""
    _, docs = _parse_crds(crd_dir.resolve())
    crds = {}
    for doc in docs:
        version = next(v for v in doc["spec"]["versions"] if v["name"] == VERSION)
        names = doc["spec"]["names"]
        crds[names["kind"]] = Crd(
            kind=names["kind"],
            plural=names["plural"],
            group=doc["spec"]["group"],
            version=VERSION,
            schema=version["schema"]["openAPIV3Schema"],
        )
    return CrdSchemas(crds)


def load_chaos_types(crd_dir: Path) -> tuple[list[ResourceType], list[dict[str, Any]]]:
    """The six Chaos Mesh kinds we create, from their CRD files (the status subresource is on
    only where the CRD declares it), and the CRD documents themselves."""
    types, docs = _parse_crds(crd_dir.resolve())
    return list(types), copy.deepcopy(docs)


@cache
def _parse_crds(crd_dir: Path) -> tuple[tuple[ResourceType, ...], list[dict[str, Any]]]:
    """Parsed once per folder: the YAML takes seconds to read and every test starts a fake."""
    types, docs = [], []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            names = doc["spec"]["names"]
            if names["kind"] not in CHAOS_KINDS or doc["spec"]["group"] != GROUP:
                continue
            version = next(v for v in doc["spec"]["versions"] if v["name"] == VERSION)
            types.append(
                ResourceType(
                    GROUP,
                    VERSION,
                    names["plural"],
                    names["kind"],
                    doc["spec"]["scope"] == "Namespaced",
                    names.get("singular", ""),
                    built_in=False,
                    status_subresource="status" in (version.get("subresources") or {}),
                    short_names=tuple(names.get("shortNames") or ()),
                )
            )
            docs.append(doc)
    return tuple(types), docs


def api_versions(port: int) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}
        ],
    }


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list(groups: dict[str, list[str]]) -> dict[str, Any]:
    listed = [api_group(g, v) for g, v in groups.items()]
    for entry in listed:
        del entry["kind"], entry["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}


def api_resource_list(group_version: str, types: list[ResourceType]) -> dict[str, Any]:
    resources = []
    for rt in types:
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        resources.append(entry)
        if rt.status_subresource:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        for sub, (kind, gv, verbs) in rt.subresources.items():
            group, _, version = gv.rpartition("/")
            resources.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "group": group,
                    "version": version,
                    "kind": kind,
                    "verbs": list(verbs),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fakekube",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
