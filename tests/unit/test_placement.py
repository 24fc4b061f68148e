"""Task placement: nothing lost or doubled, no failed GPU used, few moves, balanced nodes.

Seeded examples; the same properties over hypothesis-drawn clusters, failures and cordons are in
test_placement_properties.py.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from resilience.placement import (
    Assignment,
    Node,
    Placement,
    Task,
    diff,
    imbalance,
    place,
)

SEEDS = range(25)


def make_tasks(
    rng: random.Random,
    gpu_budget: int,
    sizes: tuple[int, ...] = (1, 2, 4, 8),
    weights: tuple[int, ...] | None = None,
) -> list[Task]:
    """Tasks of random sizes (smaller ones likelier) until the next would exceed the budget."""
    weights = weights or tuple(range(len(sizes), 0, -1))
    tasks: list[Task] = []
    used = 0
    while True:
        size = rng.choices(sizes, weights)[0]
        if used + size > gpu_budget:
            return tasks
        tasks.append(Task(f"task-{len(tasks):04d}", size))
        used += size


def random_cluster(rng: random.Random) -> tuple[list[Task], list[Node]]:
    nodes = [
        Node(
            f"node-{i:02d}",
            8,
            failed_gpus=frozenset(g for g in range(8) if rng.random() < 0.05),
            failed=rng.random() < 0.05,
        )
        for i in range(rng.randint(1, 30))
    ]
    capacity = sum(len(n.healthy_gpus()) for n in nodes)
    tasks = make_tasks(rng, int(capacity * rng.uniform(0.3, 1.3)))
    return tasks, nodes


def check_valid(tasks: list[Task], nodes: list[Node], result: Assignment) -> None:
    """Every task exactly once (placed xor unplaceable), only healthy GPUs, none shared."""
    by_node = {n.id: n for n in nodes}
    sizes = {t.id: t.gpus for t in tasks}
    placed, unplaced = set(result.placements), set(result.unplaceable)
    assert placed.isdisjoint(unplaced)
    assert placed | unplaced == set(sizes)
    assert len(result.unplaceable) == len(unplaced)
    held: Counter[tuple[str, int]] = Counter()
    for task, placement in result.placements.items():
        assert len(placement.gpus) == sizes[task]
        healthy = by_node[placement.node].healthy_gpus()
        for gpu in placement.gpus:
            assert gpu in healthy
            held[(placement.node, gpu)] += 1
    assert all(count == 1 for count in held.values())


def free_gpus(nodes: list[Node], result: Assignment) -> dict[str, int]:
    used = Counter()
    for placement in result.placements.values():
        used[placement.node] += len(placement.gpus)
    return {n.id: len(n.healthy_gpus()) - used[n.id] for n in nodes}


@pytest.mark.parametrize("seed", SEEDS)
def test_random_clusters_lose_nothing_and_respect_capacity(seed: int) -> None:
    rng = random.Random(seed)
    tasks, nodes = random_cluster(rng)
    first = place(tasks, nodes)
    check_valid(tasks, nodes, first)
    # Fail more hardware, drop some tasks, add some: still a valid complete assignment.
    later_nodes = [
        Node(n.id, n.gpus, n.failed_gpus | {rng.randrange(8)}, n.failed or rng.random() < 0.2)
        for n in nodes
    ]
    later_tasks = [t for t in tasks if rng.random() > 0.1] + [Task("new-0", 2), Task("new-1", 1)]
    second = place(later_tasks, later_nodes, first)
    check_valid(later_tasks, later_nodes, second)


@pytest.mark.parametrize("seed", SEEDS)
def test_unplaceable_only_when_no_node_has_room(seed: int) -> None:
    rng = random.Random(seed)
    tasks, nodes = random_cluster(rng)
    result = place(tasks, nodes)
    sizes = {t.id: t.gpus for t in tasks}
    free = free_gpus(nodes, result)
    for task in result.unplaceable:
        assert all(room < sizes[task] for room in free.values())


def test_overload_reports_unplaceable_instead_of_overcommitting() -> None:
    nodes = [Node("a", 4), Node("b", 4)]
    tasks = [Task(f"t{i}", 2) for i in range(6)]
    result = place(tasks, nodes)
    check_valid(tasks, nodes, result)
    assert len(result.placements) == 4
    assert len(result.unplaceable) == 2


def test_one_node_failure_moves_only_its_tasks() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        nodes = [Node(f"node-{i:02d}", 8) for i in range(20)]
        tasks = make_tasks(rng, 80, sizes=(1, 2, 4))  # half full: room to take the victims
        before = place(tasks, nodes)
        victim = rng.choice(nodes).id
        after_nodes = [Node(n.id, 8, failed=n.id == victim) for n in nodes]
        after = place(tasks, after_nodes, before)
        check_valid(tasks, after_nodes, after)
        assert after.unplaceable == []
        moved = {move.task for move in diff(before, after)}
        assert moved == {t for t, p in before.placements.items() if p.node == victim}


def test_one_failed_gpu_moves_only_the_task_on_it() -> None:
    nodes = [Node(f"node-{i}", 8) for i in range(4)]
    tasks = make_tasks(random.Random(7), 20, sizes=(1, 2))
    before = place(tasks, nodes)
    node, gpu = next((p.node, p.gpus[0]) for p in before.placements.values())
    after_nodes = [Node(n.id, 8, frozenset({gpu}) if n.id == node else frozenset()) for n in nodes]
    after = place(tasks, after_nodes, before)
    check_valid(tasks, after_nodes, after)
    moves = diff(before, after)
    assert len(moves) == 1
    assert gpu in moves[0].source.gpus and moves[0].source.node == node


def test_unchanged_cluster_moves_nothing_and_is_deterministic() -> None:
    tasks, nodes = random_cluster(random.Random(3))
    first = place(tasks, nodes)
    assert diff(first, place(tasks, nodes, first)) == []
    assert place(list(reversed(tasks)), list(reversed(nodes))).to_json() == first.to_json()


def test_new_node_takes_new_tasks_without_moving_old_ones() -> None:
    nodes = [Node(f"node-{i}", 8) for i in range(10)]
    tasks = make_tasks(random.Random(5), 40, sizes=(1, 2))
    before = place(tasks, nodes)
    grown = place([*tasks, Task("extra", 2)], [*nodes, Node("node-new", 8)], before)
    assert diff(before, grown) == []
    assert "extra" in grown.placements


def test_balance_on_skewed_task_sizes() -> None:
    for seed in range(10):
        rng = random.Random(seed)
        nodes = [Node(f"node-{i:02d}", 8) for i in range(50)]
        # Mostly 1-GPU tasks with a tail of 4-GPU ones, half the capacity.
        tasks = make_tasks(rng, 200, sizes=(1, 2, 4), weights=(8, 2, 1))
        result = place(tasks, nodes)
        assert result.unplaceable == []
        assert imbalance(result, nodes) <= 0.5  # 8-GPU nodes at 50% mean: 6 of 8 is +0.5
        failed = [Node(n.id, 8, failed=i < 5) for i, n in enumerate(nodes)]
        after = place(tasks, failed, result)
        assert after.unplaceable == []
        assert imbalance(after, failed) <= 0.5


def test_fragmented_capacity_is_freed_by_evicting_smaller_tasks() -> None:
    # Two 4-GPU nodes, each with 2 free GPUs scattered: a 4-GPU task fits only after a move.
    nodes = [Node("a", 4), Node("b", 4)]
    current = Assignment({"small-a": Placement("a", (0, 1)), "small-b": Placement("b", (0, 1))})
    tasks = [Task("small-a", 2), Task("small-b", 2), Task("big", 4)]
    result = place(tasks, nodes, current)
    check_valid(tasks, nodes, result)
    assert result.unplaceable == []
    assert len(diff(current, result)) == 1


def test_invalid_current_placements_are_repaired() -> None:
    nodes = [Node("a", 4), Node("b", 4)]
    current = Assignment(
        {
            "x": Placement("a", (0, 1)),
            "y": Placement("a", (1, 2)),  # shares GPU 1 with x
            "z": Placement("gone", (0,)),  # node no longer exists
            "w": Placement("b", (0,)),  # task grew to 2 GPUs
        }
    )
    tasks = [Task("x", 2), Task("y", 2), Task("z", 1), Task("w", 2)]
    result = place(tasks, nodes, current)
    check_valid(tasks, nodes, result)
    assert result.placements["x"] == current.placements["x"]
    assert result.unplaceable == []


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ValueError):
        place([Task("a", 1), Task("a", 2)], [Node("n", 8)])
    with pytest.raises(ValueError):
        place([Task("a", 1)], [Node("n", 8), Node("n", 4)])


def test_json_round_trip() -> None:
    tasks, nodes = random_cluster(random.Random(11))
    first = place(tasks, nodes)
    text = json.dumps(first.to_json())
    assert Assignment.from_json(json.loads(text)).to_json() == first.to_json()
    failed = [Node(n.id, n.gpus, n.failed_gpus, True) for n in nodes[:1]] + nodes[1:]
    moves = diff(first, place(tasks, failed, first))
    json.dumps([m.to_json() for m in moves])


def test_cordoned_node_keeps_its_tasks_and_takes_none() -> None:
    nodes = [Node("a", 4), Node("b", 4), Node("c", 4)]
    tasks = [Task(f"t{i}", 1) for i in range(6)]
    first = place(tasks, nodes)
    on_a = {t for t, p in first.placements.items() if p.node == "a"}
    on_b = {t for t, p in first.placements.items() if p.node == "b"}
    # a is cordoned, b fails: b's tasks must go to c, never to a, even though a has room.
    later = [Node("a", 4, cordoned=True), Node("b", 4, failed=True), Node("c", 4)]
    second = place([*tasks, Task("fresh", 1)], later, first)
    for task in on_a:
        assert second.placements[task] == first.placements[task]
    placed_on_a = {t for t, p in second.placements.items() if p.node == "a"}
    assert placed_on_a == on_a
    assert all(second.placements[t].node == "c" for t in on_b if t in second.placements)
    room_on_c = 4 - sum(1 for t in first.placements.values() if t.node == "c")
    assert len(second.unplaceable) == max(0, len(on_b) + 1 - room_on_c)


def test_cordoned_node_is_never_used_to_make_room_by_eviction() -> None:
    # The big task would fit on a only by evicting its small tasks; a is cordoned, so it cannot.
    current = Assignment({"small": Placement("a", (0,))})
    nodes = [Node("a", 4, cordoned=True), Node("b", 2)]
    result = place([Task("small", 1), Task("big", 4)], nodes, current)
    assert result.placements["small"] == Placement("a", (0,))
    assert result.unplaceable == ["big"]


def test_draining_node_passed_as_failed_moves_all_its_tasks() -> None:
    nodes = [Node(f"n{i}", 8) for i in range(4)]
    tasks = [Task(f"t{i}", s) for i, s in enumerate((1, 2, 4, 1, 2, 1, 1))]
    first = place(tasks, nodes)
    drained = next(p.node for p in first.placements.values())
    second = place(tasks, [Node(n.id, 8, failed=n.id == drained) for n in nodes], first)
    assert second.unplaceable == []
    assert all(p.node != drained for p in second.placements.values())
    moved = {m.task for m in diff(first, second)}
    assert moved == {t for t, p in first.placements.items() if p.node == drained}


def test_tasks_spread_evenly_over_zones_and_a_lost_zone_moves_only_its_share():
    zones = {"node-0": "a", "node-1": "a", "node-2": "b", "node-3": "b"}
    nodes = [Node(n, 2, zone=z) for n, z in zones.items()]
    tasks = [Task(f"task-{i}", 1) for i in range(4)]
    first = place(tasks, nodes)
    per_zone = Counter(zones[p.node] for p in first.placements.values())
    assert per_zone == {"a": 2, "b": 2}
    survivors = [Node(n, 2, zone=z, failed=z == "b") for n, z in zones.items()]
    after = place(tasks, survivors, first)
    assert not after.unplaceable
    assert {zones[p.node] for p in after.placements.values()} == {"a"}
    assert len(diff(first, after)) == 2  # only zone b's share moved


def test_zones_stay_within_one_task_of_each_other_on_a_bigger_cluster():
    nodes = [Node(f"node-{i}", 8, zone=f"zone-{i % 3}") for i in range(12)]
    tasks = [Task(f"task-{i}", 1 + i % 2) for i in range(40)]
    result = place(tasks, nodes)
    used = Counter()
    for p in result.placements.values():
        used[next(n.zone for n in nodes if n.id == p.node)] += len(p.gpus)
    assert max(used.values()) - min(used.values()) <= 2
