"""The REST semantics of the apiserver, independent of HTTP: routing a path to a resource, RBAC
denials, create/get/list/watch/update/patch/delete with the apiserver's rules (resourceVersion
preconditions, finalizers and deletionTimestamp, no-op writes that change nothing, 404/409/415/422
Status errors), discovery documents.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakekube import meta, patches
from tests.fakekube.meta import ApiError
from tests.fakekube.resources import (
    VERSION_INFO,
    ResourceType,
    api_group,
    api_group_list,
    api_resource_list,
    api_versions,
)
from tests.fakekube.selectors import parse_field_selector, parse_label_selector, supported_fields
from tests.fakekube.store import Obj, Store, Watcher

# admission(obj, old): mutates and validates an object about to be stored (old is None on create)
Admission = Callable[[Obj, Obj | None], None]
# a POST to a subresource: (namespace, name, body) -> Response
SubresourcePost = Callable[[str | None, str, Any], "Response"]


@dataclass
class Response:
    code: int
    body: Any


@dataclass
class WatchResponse:
    watcher: Watcher
    timeout_s: float | None


@dataclass
class Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass
class Denial:
    verb: str
    resource: str
    namespace: str | None


@dataclass
class Api:
    store: Store
    types: list[ResourceType]
    port: int = 0
    disabled_groups: set[str] = field(default_factory=set)
    denials: list[Denial] = field(default_factory=list)
    admissions: dict[str, Admission] = field(default_factory=dict)
    subresource_posts: dict[tuple[str, str], SubresourcePost] = field(default_factory=dict)

    # ---- routing -------------------------------------------------------------------------

    def served(self) -> list[ResourceType]:
        return [rt for rt in self.types if rt.group not in self.disabled_groups]

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rt in self.served():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return groups

    def handle(
        self, method: str, path: str, query: dict[str, str], body: Any, content_type: str | None
    ) -> Response | WatchResponse:
        parts = [p for p in path.split("/") if p]
        if parts == ["version"]:
            return Response(200, VERSION_INFO)
        if parts == ["api"]:
            return Response(200, api_versions(self.port))
        if parts == ["apis"]:
            return Response(200, api_group_list(self._groups()))
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 2 and parts[0] == "apis":
            group = parts[1]
            if group not in self._groups():
                raise meta.no_such_path()
            if len(parts) == 2:
                return Response(200, api_group(group, self._groups()[group]))
            version, rest = parts[2], parts[3:]
        else:
            raise meta.no_such_path()
        in_gv = [rt for rt in self.served() if rt.group == group and rt.version == version]
        if not in_gv:
            raise meta.no_such_path()
        if not rest:
            if method != "GET":
                raise meta.method_not_allowed(method, "")
            gv = f"{group}/{version}" if group else version
            return Response(200, api_resource_list(gv, in_gv))
        route = self._route(in_gv, rest)
        return self._dispatch(method, route, query, body, content_type)

    def _route(self, in_gv: list[ResourceType], rest: list[str]) -> Route:
        by_plural = {rt.plural: rt for rt in in_gv}
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in by_plural:
            rt = by_plural[rest[2]]
            if not rt.namespaced:
                raise meta.no_such_path()
            namespace, rest = rest[1], rest[2:]
        rt = by_plural.get(rest[0])
        if rt is None or len(rest) > 3:
            raise meta.no_such_path()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rt.namespaced and namespace is None and name is not None:
            raise meta.no_such_path()
        if sub is not None and not (
            (sub == "status" and rt.status_subresource) or sub in rt.subresources
        ):
            raise meta.no_such_path()
        return Route(rt, namespace, name, sub)

    # ---- RBAC ----------------------------------------------------------------------------

    def _authorize(self, verb: str, route: Route) -> None:
        resource = route.rt.plural + (f"/{route.subresource}" if route.subresource else "")
        for denial in self.denials:
            if denial.verb not in ("*", verb) or denial.resource not in ("*", resource):
                continue
            if denial.namespace is not None and denial.namespace != route.namespace:
                continue
            raise meta.forbidden(verb, resource, route.rt.group, route.namespace, route.name)

    # ---- verbs ---------------------------------------------------------------------------

    def _dispatch(
        self, method: str, route: Route, query: dict[str, str], body: Any, content_type: str | None
    ) -> Response | WatchResponse:
        watching = query.get("watch") in ("true", "1")
        verb = {
            "GET": "watch" if watching else ("get" if route.name else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if route.name else "deletecollection",
        }.get(method)
        if route.subresource == "status":
            allowed: tuple[str, ...] = ("get", "update", "patch")
        elif route.subresource:
            allowed = route.rt.subresources[route.subresource][2]
        else:
            allowed = route.rt.verbs
        if (
            verb not in allowed
            or (verb == "create" and route.name and not route.subresource)
            or (verb in ("update", "patch") and not route.name)
        ):
            raise meta.method_not_allowed(method, route.rt.plural)
        self._authorize(verb, route)
        dry_run = query.get("dryRun") == "All"
        if verb == "watch":
            return self._watch(route, query)
        if verb == "list":
            return Response(200, self._list(route, query))
        if verb == "get":
            return Response(200, self._present(route.rt, self._existing(route)))
        if verb == "create" and route.subresource:
            post = self.subresource_posts[(route.rt.plural, route.subresource)]
            return post(route.namespace, route.name or "", body)
        if verb == "create":
            return Response(201, self._create(route, body, dry_run))
        if verb == "update":
            return Response(200, self._update(route, body, dry_run))
        if verb == "patch":
            return Response(200, self._patch(route, body, content_type, dry_run))
        if verb == "delete":
            return self._delete(route, body, query, dry_run)
        return self._delete_collection(route, body, query, dry_run)

    def _existing(self, route: Route) -> Obj:
        obj = self.store.get(route.rt.plural, route.namespace, route.name or "")
        if obj is None:
            raise meta.not_found(route.rt.plural, route.rt.group, route.name or "")
        return obj

    def _present(self, rt: ResourceType, obj: Obj, in_list: bool = False) -> Obj:
        if in_list and rt.built_in:
            obj = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        return obj

    def _matcher(self, route: Route, query: dict[str, str]) -> Callable[[Obj], bool]:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(
            query.get("fieldSelector"), supported_fields(route.rt.plural), route.rt.plural
        )
        return lambda obj: labels(obj["metadata"].get("labels")) and fields(obj)

    def _list(self, route: Route, query: dict[str, str]) -> Obj:
        matches = self._matcher(route, query)
        with self.store.lock:
            rv = self.store.resource_version
            items = [o for o in self.store.list(route.rt.plural, route.namespace) if matches(o)]
        start = int(base64.b64decode(query["continue"]).decode()) if query.get("continue") else 0
        list_meta: dict[str, Any] = {"resourceVersion": rv}
        limit = int(query.get("limit") or 0)
        if limit > 0 and start + limit < len(items):
            list_meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
            list_meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        return {
            "kind": route.rt.list_kind,
            "apiVersion": route.rt.api_version,
            "metadata": list_meta,
            "items": [self._present(route.rt, o, in_list=True) for o in items],
        }

    def _watch(self, route: Route, query: dict[str, str]) -> WatchResponse:
        matches = self._matcher(route, query)
        timeout = query.get("timeoutSeconds")
        watcher = self.store.watch(
            route.rt.plural, route.namespace, matches, query.get("resourceVersion")
        )
        return WatchResponse(watcher, float(timeout) if timeout else None)

    def _create(self, route: Route, body: Any, dry_run: bool) -> Obj:
        rt = route.rt
        if not isinstance(body, dict):
            raise meta.bad_request("the body of the request could not be decoded as an object")
        obj = copy.deepcopy(body)
        if not rt.built_in and not obj.get("kind"):
            raise meta.bad_request(f"Object 'Kind' is missing in '{json.dumps(body)}'")
        if obj.get("apiVersion", rt.api_version) != rt.api_version:
            raise meta.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({rt.api_version})"
            )
        if obj.get("kind", rt.kind) != rt.kind:
            raise meta.bad_request(f"kind {obj.get('kind')} does not match {rt.kind}")
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        md = obj.setdefault("metadata", {})
        if not isinstance(md, dict):
            raise meta.bad_request("metadata must be an object")
        if rt.namespaced:
            if md.get("namespace") not in (None, "", route.namespace):
                raise meta.bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            md["namespace"] = route.namespace
            if self.store.get("namespaces", None, route.namespace or "") is None:
                raise meta.not_found("namespaces", "", route.namespace or "")
        if not md.get("name") and md.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            md["name"] = md["generateName"] + suffix
        if not md.get("name"):
            raise meta.invalid(
                rt.kind,
                rt.group,
                "",
                [("metadata.name", "Required value: name or generateName is required")],
            )
        problems = meta.name_problems(md["name"]) + meta.label_problems(md.get("labels"))
        if problems:
            raise meta.invalid(rt.kind, rt.group, md["name"], problems)
        for key in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            md.pop(key, None)
        if rt.status_subresource:
            obj.pop("status", None)
        if rt.built_in:  # Go structs, not pointers: an empty spec/status still shows as {}
            obj.setdefault("spec", {})
            obj.setdefault("status", {})
        md.update(uid=meta.new_uid(), creationTimestamp=meta.now(), generation=1)
        admission = self.admissions.get(rt.plural)
        if admission:
            admission(obj, None)
        with self.store.lock:
            if self.store.get(rt.plural, route.namespace, md["name"]) is not None:
                raise meta.already_exists(rt.plural, rt.group, md["name"])
            if dry_run:
                return obj
            return self.store.create(rt.plural, obj)

    def _update(self, route: Route, body: Any, dry_run: bool) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise meta.bad_request("the body of the request could not be decoded as an object")
        name = body["metadata"].get("name")
        if name != route.name:
            raise meta.bad_request(
                f"the name of the object ({name}) does not match the name on the URL ({route.name})"
            )
        with self.store.lock:
            current = self._existing(route)
            rv = body["metadata"].get("resourceVersion")
            if not rv:
                raise meta.invalid(
                    route.rt.kind,
                    route.rt.group,
                    route.name or "",
                    [
                        (
                            "metadata.resourceVersion",
                            "Invalid value: 0x0: must be specified for an update",
                        )
                    ],
                )
            return self._write(route, current, copy.deepcopy(body), dry_run)

    def _patch(self, route: Route, body: Any, content_type: str | None, dry_run: bool) -> Obj:
        accepted = [patches.JSON_PATCH, patches.MERGE_PATCH]
        if route.rt.built_in:
            accepted.append(patches.STRATEGIC_PATCH)
        accepted.append("application/apply-patch+yaml")
        kind = (content_type or "").split(";")[0].strip()
        if kind not in accepted[:-1]:
            raise meta.unsupported_media_type(kind, accepted)
        with self.store.lock:
            current = self._existing(route)
            if kind == patches.MERGE_PATCH:
                patched = patches.merge_patch(current, body)
            elif kind == patches.STRATEGIC_PATCH:
                patched = patches.strategic_merge_patch(current, body)
            else:
                patched = patches.json_patch(current, body)
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise meta.bad_request("the patched object is not a Kubernetes object")
            return self._write(route, current, patched, dry_run)

    def _write(self, route: Route, current: Obj, new: Obj, dry_run: bool) -> Obj:
        """Store `new` over `current` with the apiserver's update rules."""
        rt = route.rt
        cur_md, new_md = current["metadata"], new.setdefault("metadata", {})
        if new_md.get("resourceVersion") not in (None, cur_md["resourceVersion"]):
            raise meta.conflict(
                rt.plural,
                rt.group,
                route.name or "",
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        new["kind"], new["apiVersion"] = rt.kind, rt.api_version
        for key in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ):
            if key in cur_md:
                new_md[key] = cur_md[key]
            else:
                new_md.pop(key, None)
        if route.subresource == "status":
            new = {**copy.deepcopy(current), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif rt.status_subresource:
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        if cur_md.get("deletionTimestamp"):
            added = [
                f
                for f in new_md.get("finalizers") or []
                if f not in (cur_md.get("finalizers") or [])
            ]
            if added:
                raise meta.invalid(
                    rt.kind,
                    rt.group,
                    route.name or "",
                    [
                        (
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being "
                            f"deleted, found new finalizers {json.dumps(added)}",
                        )
                    ],
                )
        problems = meta.label_problems(new_md.get("labels"))
        if problems:
            raise meta.invalid(rt.kind, rt.group, route.name or "", problems)
        if new == current:
            return current  # the apiserver does not write (nor bump resourceVersion) on a no-op
        ignored = {"metadata"} | ({"status"} if rt.status_subresource else set())
        if {k: v for k, v in new.items() if k not in ignored} != {
            k: v for k, v in current.items() if k not in ignored
        }:
            new_md["generation"] = int(cur_md.get("generation", 1)) + 1
        admission = self.admissions.get(rt.plural)
        if admission:
            admission(new, current)
        if dry_run:
            return new
        return self.store.update(rt.plural, new)

    def _delete(self, route: Route, body: Any, query: dict[str, str], dry_run: bool) -> Response:
        rt = route.rt
        options = body if isinstance(body, dict) else {}
        with self.store.lock:
            current = self._existing(route)
            md = current["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") not in (None, md["uid"]):
                raise meta.conflict(
                    rt.plural,
                    rt.group,
                    route.name or "",
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                    f"meta: {md['uid']}",
                )
            if pre.get("resourceVersion") not in (None, md["resourceVersion"]):
                raise meta.conflict(
                    rt.plural,
                    rt.group,
                    route.name or "",
                    f"Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{md['resourceVersion']}",
                )
            if dry_run:
                return Response(200, current)
            if md.get("finalizers"):
                if md.get("deletionTimestamp"):
                    return Response(200, current)
                deleting = copy.deepcopy(current)
                deleting["metadata"]["deletionTimestamp"] = meta.now()
                deleting["metadata"]["deletionGracePeriodSeconds"] = 0
                return Response(200, self.store.update(rt.plural, deleting))
            final = self.store.delete(rt.plural, route.namespace, route.name or "")
        if rt.returns_deleted_object:
            return Response(200, final)
        return Response(
            200, meta.success_status(200, rt.plural, rt.group, route.name or "", md["uid"])
        )

    def _delete_collection(
        self, route: Route, body: Any, query: dict[str, str], dry_run: bool
    ) -> Response:
        listed = self._list(route, {k: v for k, v in query.items() if k != "limit"})
        for item in listed["items"]:
            name = item["metadata"]["name"]
            ns = item["metadata"].get("namespace")
            try:
                self._delete(Route(route.rt, ns, name, None), body, query, dry_run)
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return Response(200, listed)
