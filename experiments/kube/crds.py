"""Chaos Mesh's CRD schemas as validators: a manifest we send must pass what the API server checks.

The API server validates a custom object against its CRD's `openAPIV3Schema` and answers 422
when it fails; this runs the same schema through jsonschema before anything is sent (and the
fake API server in the tests answers 422 from it). `strict` also refuses fields the schema does
not know, which the API server would silently prune: a typo in a manifest must not become a
fault that quietly does nothing.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from experiments.kube.names import API_VERSION

CRD_DIR_ENV = "INFERENCE_CHAOS_CRDS"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20x faster on CRD files


class CrdError(ValueError):
    """A manifest the CRD schema refuses, or CRDs that cannot be read; the message says where."""


def default_crd_dir() -> Path | None:
    """$INFERENCE_CHAOS_CRDS, else `../shared/chaos-mesh-crds` beside the checkout, if present."""
    env = os.environ.get(CRD_DIR_ENV)
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[3] / "shared" / "chaos-mesh-crds"
    return beside if beside.is_dir() else None


@dataclass(frozen=True)
class Crd:
    kind: str
    plural: str
    group: str
    version: str
    schema: dict[str, Any]


def load_crds(directory: Path) -> dict[str, Crd]:
    """Every CRD in `directory` (controller-gen YAML files), by kind."""
    if not directory.is_dir():
        raise CrdError(f"no CRD folder at {directory}")
    crds: dict[str, Crd] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("storage", True):
                    continue
                crds[spec["names"]["kind"]] = Crd(
                    kind=spec["names"]["kind"],
                    plural=spec["names"]["plural"],
                    group=spec["group"],
                    version=version["name"],
                    schema=version["schema"]["openAPIV3Schema"],
                )
    if not crds:
        raise CrdError(f"no CustomResourceDefinition in {directory}")
    return crds


def _closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever it lists properties and neither
    allows extra fields nor keeps unknown ones (Kubernetes' structural-schema pruning rule)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
    return out


class CrdSchemas:
    """Validators for the Chaos Mesh kinds, built once per folder."""

    def __init__(self, crds: dict[str, Crd]) -> None:
        self.crds = crds
        self._validators: dict[tuple[str, bool], jsonschema.protocols.Validator] = {}

    @classmethod
    def load(cls, directory: Path | None = None) -> CrdSchemas:
        found = directory or default_crd_dir()
        if found is None:
            raise CrdError(f"no Chaos Mesh CRD folder: set ${CRD_DIR_ENV}")
        return _load_cached(Path(found).resolve())

    def plural(self, kind: str) -> str:
        return self._crd(kind).plural

    def _crd(self, kind: str) -> Crd:
        try:
            return self.crds[kind]
        except KeyError:
            raise CrdError(f"unknown Chaos Mesh kind {kind!r}") from None

    def errors(self, manifest: dict[str, Any], strict: bool = True) -> list[str]:
        """Every problem with `manifest`, each as `kind name: path: message`; empty when valid."""
        kind = manifest.get("kind", "")
        name = (manifest.get("metadata") or {}).get("name", "?")
        where = f"{kind} {name}"
        if manifest.get("apiVersion") != API_VERSION:
            got = manifest.get("apiVersion")
            return [f"{where}: apiVersion must be {API_VERSION}, got {got!r}"]
        try:
            crd = self._crd(kind)
        except CrdError as exc:
            return [f"{where}: {exc}"]
        key = (kind, strict)
        if key not in self._validators:
            schema = copy.deepcopy(crd.schema)
            if strict:
                schema = _closed(schema)
                # metadata and status belong to the API server and the controller
                schema["properties"]["metadata"] = {"type": "object"}
                schema["properties"]["status"] = {"type": "object"}
            self._validators[key] = jsonschema.Draft4Validator(schema)
        problems = []
        for err in sorted(self._validators[key].iter_errors(manifest), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in err.absolute_path) or "(root)"
            problems.append(f"{where}: {path}: {err.message}")
        return problems

    def validate(self, manifest: dict[str, Any], strict: bool = True) -> None:
        """Raise CrdError with the first problem (and how many more there are)."""
        problems = self.errors(manifest, strict=strict)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CrdError(problems[0] + more)


@cache
def _load_cached(directory: Path) -> CrdSchemas:
    return CrdSchemas(load_crds(directory))
