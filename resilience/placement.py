"""Where each model replica runs: the pure decision behind task migration and rebalancing.

A task is a model replica that needs `gpus` GPUs on one node. `place` turns the current
assignment and the present health of the nodes into a new complete assignment:

1. A task keeps its node and GPUs while all of them are healthy (a move costs a model reload).
2. A task that touches a failed GPU or node, or is new, is placed on healthy free GPUs: first by
   consistent hashing with bounded loads over the nodes (so a membership change moves only what
   it must, and no node takes much more than its share), then, if the ring finds no room, on the
   least-utilised node that fits ("fill").
3. If a task still fits nowhere because the free GPUs are scattered, smaller tasks are evicted
   from the one node where that costs the fewest GPUs and placed again (sizes strictly shrink,
   so this ends). A task that cannot be placed at all is reported as unplaceable: capacity is
   never overcommitted.

A cordoned node (a fatal Xid seen on one of its GPUs, awaiting its reset) keeps the tasks it
holds on healthy GPUs but takes no new ones, by ring, fill or eviction alike. A draining node is
passed by the caller as `failed=True`: all its tasks move.

Big tasks are placed first, for the same reason one packs big stones before sand. The module
holds no state and starts no process, so a controller that just won leader election can call it
with what it reads from the store and get the same answer its predecessor would have.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resilience.hashring import DEFAULT_LOAD_FACTOR, DEFAULT_VNODES, BoundedLoadRing

RING_PROBES = 16  # distinct nodes the ring walk tries before falling back to "fill"


@dataclass(frozen=True)
class Task:
    """A model replica: `gpus` GPUs, all on one node."""

    id: str
    gpus: int

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"task {self.id} needs at least one GPU")


@dataclass(frozen=True)
class Node:
    """A machine with GPUs 0..gpus-1.

    `failed` marks the whole node down: its tasks move. Callers pass a *draining* node as
    `failed=True` too, since draining means exactly that (the make-before-break order is the
    controller's business, not placement's). `cordoned` keeps the tasks the node holds on healthy
    GPUs but gives it no new ones: a fatal Xid on one GPU makes its siblings suspect until the
    node is reset, yet moving healthy tasks off them would cost reloads for nothing.
    `zone` (a failure domain: a data centre, a rack) spreads new tasks evenly over the zones.
    """

    id: str
    gpus: int
    failed_gpus: frozenset[int] = frozenset()
    failed: bool = False
    cordoned: bool = False
    zone: str = ""

    def healthy_gpus(self) -> list[int]:
        if self.failed:
            return []
        return [gpu for gpu in range(self.gpus) if gpu not in self.failed_gpus]


@dataclass(frozen=True)
class Placement:
    """The node and the GPU indices one task holds."""

    node: str
    gpus: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "gpus": list(self.gpus)}


@dataclass
class Assignment:
    """A complete answer: where each task runs, and which tasks found no room."""

    placements: dict[str, Placement] = field(default_factory=dict)
    unplaceable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "placements": {task: p.to_json() for task, p in sorted(self.placements.items())},
            "unplaceable": sorted(self.unplaceable),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Assignment:
        placements = {
            task: Placement(str(p["node"]), tuple(int(g) for g in p["gpus"]))
            for task, p in data.get("placements", {}).items()
        }
        return cls(placements, [str(t) for t in data.get("unplaceable", [])])


@dataclass(frozen=True)
class Move:
    """A task whose placement changed; `target` None means it lost its place."""

    task: str
    source: Placement
    target: Placement | None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "source": self.source.to_json(),
            "target": None if self.target is None else self.target.to_json(),
        }


def diff(old: Assignment, new: Assignment) -> list[Move]:
    """Tasks placed in `old` whose node or GPUs differ in `new` (first placements are no moves)."""
    moves = []
    for task, source in sorted(old.placements.items()):
        target = new.placements.get(task)
        if target != source:
            moves.append(Move(task, source, target))
    return moves


def node_utilisation(assignment: Assignment, nodes: Iterable[Node]) -> dict[str, float]:
    """Used / healthy GPUs per node that has any healthy GPU."""
    used: dict[str, int] = {}
    for placement in assignment.placements.values():
        used[placement.node] = used.get(placement.node, 0) + len(placement.gpus)
    return {
        node.id: used.get(node.id, 0) / len(healthy)
        for node in nodes
        if (healthy := node.healthy_gpus())
    }


def imbalance(assignment: Assignment, nodes: Iterable[Node]) -> float:
    """max/mean − 1 of node utilisation: 0 is perfect balance."""
    loads = list(node_utilisation(assignment, nodes).values())
    mean = sum(loads) / len(loads) if loads else 0.0
    return max(loads) / mean - 1.0 if mean > 0 else 0.0


class _Cluster:
    """The free healthy GPUs of every node, updated as tasks are placed or evicted.

    `free` covers every node with a healthy GPU, cordoned ones too (the tasks they keep hold
    GPUs there); `open` is the subset that may take new tasks, and the fair share of the bounded
    load is computed over it alone, since a cordoned node's room cannot absorb anything.
    """

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.free: dict[str, set[int]] = {}
        self.capacity: dict[str, int] = {}
        self.open: set[str] = set()
        self.zone_of: dict[str, str] = {}
        seen: set[str] = set()
        for node in nodes:
            if node.id in seen:
                raise ValueError(f"node {node.id} listed twice")
            seen.add(node.id)
            self.zone_of[node.id] = node.zone
            healthy = node.healthy_gpus()
            if healthy:
                self.free[node.id] = set(healthy)
                self.capacity[node.id] = len(healthy)
                if not node.cordoned:
                    self.open.add(node.id)
        self.total_capacity = sum(self.capacity[node] for node in self.open)
        self.total_used = 0  # on open nodes, like total_capacity
        self.zone_capacity: dict[str, int] = {}
        self.zone_used: dict[str, int] = {}
        for node in self.open:
            zone = self.zone_of[node]
            self.zone_capacity[zone] = self.zone_capacity.get(zone, 0) + self.capacity[node]
            self.zone_used.setdefault(zone, 0)
        self.tasks_on: dict[str, dict[str, Task]] = {node: {} for node in self.free}
        # every node, failed or not: the ring over them stays the same when one fails
        self.known = tuple(sorted(seen))

    def used(self, node: str) -> int:
        return self.capacity[node] - len(self.free[node])

    def fits(self, node: str, size: int) -> bool:
        return len(self.free[node]) >= size

    def within_bound(self, node: str, size: int, load_factor: float) -> bool:
        """Bounded load in GPUs: at most c times the node's fair share after this task lands."""
        share = (self.total_used + size) * self.capacity[node] / self.total_capacity
        return self.used(node) + size <= max(size, math.ceil(load_factor * share))

    def within_zone_bound(self, node: str, size: int) -> bool:
        """Zones filled evenly: a zone takes a task only while it holds no more than its share
        (rounded up) of the GPUs in use, so losing a zone loses about its share of the tasks."""
        zone = self.zone_of[node]
        if len(self.zone_capacity) < 2 or zone not in self.zone_capacity:
            return True
        share = (self.total_used + size) * self.zone_capacity[zone] / self.total_capacity
        return self.zone_used[zone] + size <= max(size, math.ceil(share))

    def zone_utilisation(self, node: str) -> float:
        zone = self.zone_of[node]
        capacity = self.zone_capacity.get(zone, 0)
        return self.zone_used.get(zone, 0) / capacity if capacity else 0.0

    def take(self, node: str, task: Task, gpus: Iterable[int] | None = None) -> Placement:
        if gpus is None:
            gpus = sorted(self.free[node])[: task.gpus]
        chosen = tuple(sorted(gpus))
        self.free[node].difference_update(chosen)
        if node in self.open:
            self.total_used += len(chosen)
            self.zone_used[self.zone_of[node]] += len(chosen)
        self.tasks_on[node][task.id] = task
        return Placement(node, chosen)

    def release(self, task: Task, placement: Placement) -> None:
        self.free[placement.node].update(placement.gpus)
        if placement.node in self.open:
            self.total_used -= len(placement.gpus)
            self.zone_used[self.zone_of[placement.node]] -= len(placement.gpus)
        del self.tasks_on[placement.node][task.id]


def _keepable(task: Task, placement: Placement, cluster: _Cluster) -> bool:
    """True when the task's GPUs exist, are healthy, are its size, and nobody else holds them."""
    free = cluster.free.get(placement.node)
    return (
        free is not None
        and len(placement.gpus) == task.gpus
        and len(set(placement.gpus)) == task.gpus
        and all(gpu in free for gpu in placement.gpus)
    )


def _least_utilised_fit(cluster: _Cluster, size: int) -> str | None:
    best: tuple[float, float, str] | None = None
    for node in cluster.open:
        if len(cluster.free[node]) >= size:
            key = (
                cluster.zone_utilisation(node),
                cluster.used(node) / cluster.capacity[node],
                node,
            )
            if best is None or key < best:
                best = key
    return None if best is None else best[2]


def _room_by_eviction(cluster: _Cluster, task: Task) -> tuple[str, list[Task]] | None:
    """The node where evicting strictly smaller tasks frees room for `task` at the least cost."""
    best: tuple[int, float, str, list[Task]] | None = None
    for node in cluster.open:
        if cluster.capacity[node] < task.gpus:
            continue
        room = len(cluster.free[node])
        evicted: list[Task] = []
        smaller = sorted(
            (t for t in cluster.tasks_on[node].values() if t.gpus < task.gpus),
            key=lambda t: (-t.gpus, t.id),
        )
        for victim in smaller:
            if room >= task.gpus:
                break
            evicted.append(victim)
            room += victim.gpus
        if room < task.gpus:
            continue
        cost = sum(t.gpus for t in evicted)
        key = (cost, cluster.used(node) / cluster.capacity[node], node)
        if best is None or key[:3] < best[:3]:
            best = (*key, evicted)
    return None if best is None else (best[2], best[3])


def place(
    tasks: Iterable[Task],
    nodes: Iterable[Node],
    current: Assignment | None = None,
    *,
    load_factor: float = DEFAULT_LOAD_FACTOR,
    vnodes: int = DEFAULT_VNODES,
) -> Assignment:
    """A complete assignment of `tasks` to healthy GPUs of `nodes`, moving as little as it can.

    `current` is the assignment in force (None at first start); tasks it places that are not in
    `tasks` any more are dropped. Raises ValueError on duplicate task or node ids.
    """
    task_list = list(tasks)
    by_id = {task.id: task for task in task_list}
    if len(by_id) != len(task_list):
        raise ValueError("task ids must be unique")
    cluster = _Cluster(nodes)
    placements: dict[str, Placement] = {}
    pending: list[tuple[int, str, Task]] = []  # a heap: biggest first, then by id

    previous = current.placements if current is not None else {}
    for task in sorted(task_list, key=lambda t: t.id):
        placement = previous.get(task.id)
        if placement is not None and _keepable(task, placement, cluster):
            placements[task.id] = cluster.take(placement.node, task, placement.gpus)
        else:
            heapq.heappush(pending, (-task.gpus, task.id, task))

    ring = _ring(cluster.known, vnodes, load_factor)
    unplaceable: list[str] = []
    while pending:
        # Biggest first; ids break ties so the answer is the same on every controller.
        _, _, task = heapq.heappop(pending)
        node = _ring_choice(ring, cluster, task, load_factor) or _least_utilised_fit(
            cluster, task.gpus
        )
        if node is None and cluster.total_capacity - cluster.total_used >= task.gpus:
            room = _room_by_eviction(cluster, task)
            if room is not None:
                node, evicted = room
                for victim in evicted:
                    cluster.release(victim, placements.pop(victim.id))
                    heapq.heappush(pending, (-victim.gpus, victim.id, victim))
        if node is None:
            unplaceable.append(task.id)
        else:
            placements[task.id] = cluster.take(node, task)
    return Assignment(placements, sorted(unplaceable))


@functools.lru_cache(maxsize=8)
def _ring(nodes: tuple[str, ...], vnodes: int, load_factor: float) -> BoundedLoadRing:
    """The ring over every known node, failed ones included, kept between calls: building it
    is the dominant cost at thousands of nodes, and a failure leaves the node set unchanged
    (a walk just passes over nodes with no room). Only `walk` is used, which reads the ring."""
    return BoundedLoadRing(nodes, vnodes=vnodes, load_factor=load_factor)


def _ring_choice(
    ring: BoundedLoadRing, cluster: _Cluster, task: Task, load_factor: float
) -> str | None:
    probes = 0
    for node in ring.walk(task.id):
        if node not in cluster.open:
            continue  # failed, cordoned or no healthy GPU: not a candidate, nor a probe spent
        if probes >= RING_PROBES:
            return None
        probes += 1
        if (
            cluster.fits(node, task.gpus)
            and cluster.within_bound(node, task.gpus, load_factor)
            and cluster.within_zone_bound(node, task.gpus)
        ):
            return node
    return None
