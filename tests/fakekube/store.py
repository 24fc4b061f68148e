"""Object storage with one global resourceVersion and the watch fan-out, like etcd + watch cache.

Every change bumps the global resourceVersion and is kept in a history, so a watch can start
from a resourceVersion (replay) or from "now" (synthetic ADDED for what exists). A watcher with a
selector sees an object enter (ADDED) or leave (DELETED) its selection when it changes, as the
apiserver's watch cache does.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakekube.meta import ApiError

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]
Listener = Callable[[str, str, Obj, Obj | None], None]

CLOSE = object()  # queued to a watcher to end its stream
HISTORY_LIMIT = 200_000


@dataclass
class Change:
    rv: int
    plural: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


class Watcher:
    """One watch stream's filter and its queue of `{"type", "object"}` events (or CLOSE)."""

    def __init__(self, plural: str, namespace: str | None, matches: Matcher) -> None:
        self.plural = plural
        self.namespace = namespace
        self._matches = matches
        self.queue: queue.Queue[Any] = queue.Queue()

    def _sees(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self._matches(obj)

    def offer(self, change: Change) -> None:
        if change.plural != self.plural:
            return
        now_in = self._sees(change.obj)
        if change.type == "ADDED":
            kind = "ADDED" if now_in else None
        elif change.type == "DELETED":
            kind = "DELETED" if now_in else None
        else:
            was_in = self._sees(change.old)
            kind = {
                (True, True): "MODIFIED",
                (False, True): "ADDED",
                (True, False): "DELETED",
            }.get((was_in, now_in))
        if kind:
            self.queue.put({"type": kind, "object": copy.deepcopy(change.obj)})


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._rv = 0
        self._history: deque[Change] = deque()
        self._compacted_rv = 0
        self._watchers: list[Watcher] = []
        self._listeners: list[Listener] = []

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def add_listener(self, listener: Listener) -> None:
        """Called under the store lock after each change: (plural, type, object, old object)."""
        self._listeners.append(listener)

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects.get(plural, {}).get((namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        with self.lock:
            items = self._objects.get(plural, {})
            keys = sorted(k for k in items if namespace is None or k[0] == namespace)
            return [copy.deepcopy(items[k]) for k in keys]

    def create(self, plural: str, obj: Obj) -> Obj:
        with self.lock:
            key = _key(obj)
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._objects.setdefault(plural, {})[key] = obj
            self._record(Change(self._rv, plural, "ADDED", obj, None))
            return copy.deepcopy(obj)

    def update(self, plural: str, obj: Obj) -> Obj:
        """Store a new version; a deleting object left without finalizers goes away instead."""
        with self.lock:
            key = _key(obj)
            old = self._objects.get(plural, {}).get(key)
            if old is None:
                raise KeyError(key)
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                return self._remove(plural, key, obj)
            self._rv += 1
            obj = copy.deepcopy(obj)
            meta = obj["metadata"]
            meta["resourceVersion"] = str(self._rv)
            self._objects[plural][key] = obj
            self._record(Change(self._rv, plural, "MODIFIED", obj, old))
            return copy.deepcopy(obj)

    def delete(self, plural: str, namespace: str | None, name: str) -> Obj:
        with self.lock:
            key = (namespace or "", name)
            obj = self._objects.get(plural, {}).get(key)
            if obj is None:
                raise KeyError(key)
            return self._remove(plural, key, obj)

    def _remove(self, plural: str, key: tuple[str, str], final: Obj) -> Obj:
        self._rv += 1
        final = copy.deepcopy(final)
        final["metadata"]["resourceVersion"] = str(self._rv)
        del self._objects[plural][key]
        self._record(Change(self._rv, plural, "DELETED", final, None))
        return copy.deepcopy(final)

    def _record(self, change: Change) -> None:
        self._history.append(change)
        if len(self._history) > HISTORY_LIMIT:
            self._compacted_rv = self._history.popleft().rv
        for watcher in list(self._watchers):
            watcher.offer(change)
        for listener in self._listeners:
            listener(change.plural, change.type, copy.deepcopy(change.obj), change.old)

    def watch(
        self, plural: str, namespace: str | None, matches: Matcher, since: str | None
    ) -> Watcher:
        """A registered watcher, its queue already holding what it must see first: every
        matching object as ADDED (no or "0" resourceVersion), or the changes after `since`."""
        watcher = Watcher(plural, namespace, matches)
        with self.lock:
            if since in (None, "", "0"):
                for obj in self.list(plural, namespace):
                    if watcher._sees(obj):
                        watcher.queue.put({"type": "ADDED", "object": obj})
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(
                        400, "BadRequest", f"invalid resource version: {since}"
                    ) from None
                if start < self._compacted_rv:
                    watcher.queue.put({"type": "ERROR", "object": _gone(start, self._compacted_rv)})
                    watcher.queue.put(CLOSE)
                    return watcher
                for change in self._history:
                    if change.rv > start:
                        watcher.offer(change)
            self._watchers.append(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def close_watchers(self) -> None:
        with self.lock:
            for watcher in self._watchers:
                watcher.queue.put(CLOSE)
            self._watchers.clear()


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


def _gone(requested: int, oldest: int) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {requested} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }
