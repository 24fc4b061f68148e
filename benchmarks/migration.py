"""Time to a new complete task assignment after a node or a zone fails, and ring balance.

In-process, pure logic (resilience.placement, resilience.hashring). The brief asked for 100 nodes
x 8 GPUs and 10,000 tasks, but 10,000 tasks of at least one GPU cannot fit 800 GPUs; so two
clusters run: the 100 x 8 one filled to 75%, and one sized so 10,000 tasks (sizes 1/2/4/8, weights
4/3/2/1) fill it to 75%. Printed per failure: seconds to the new assignment, tasks moved, balance
(max/mean − 1 of node utilisation; with whole-node 8-GPU tasks its floor is 1/fill − 1), and
unplaceable tasks. Then max/mean − 1 of the bounded-load ring on Zipf keys at 8, 64, 800 members.

Run: `python -m benchmarks.migration`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter

from resilience.hashring import BoundedLoadRing
from resilience.placement import Node, Task, diff, imbalance, place

FILL = 0.75
SIZES, WEIGHTS = (1, 2, 4, 8), (4, 3, 2, 1)


def make_tasks(rng: random.Random, budget: int, count: int | None = None) -> list[Task]:
    tasks: list[Task] = []
    used = 0
    while count is None or len(tasks) < count:
        size = rng.choices(SIZES, WEIGHTS)[0]
        if count is None and used + size > budget:
            break
        tasks.append(Task(f"task-{len(tasks):05d}", size))
        used += size
    return tasks


def failure_run(nodes: list[Node], tasks: list[Task], failed: set[str]) -> dict:
    before = place(tasks, nodes)
    after_nodes = [Node(n.id, n.gpus, failed=n.id in failed) for n in nodes]
    start = time.perf_counter()
    after = place(tasks, after_nodes, before)
    seconds = time.perf_counter() - start
    return {
        "failed_nodes": len(failed),
        "tasks_on_failed": sum(1 for p in before.placements.values() if p.node in failed),
        "seconds": round(seconds, 4),
        "moved": len(diff(before, after)),
        "balance_before": round(imbalance(before, nodes), 3),
        "balance_after": round(imbalance(after, after_nodes), 3),
        "unplaceable": len(after.unplaceable),
    }


def cluster_figures(label: str, node_count: int, tasks: list[Task], rng: random.Random) -> dict:
    nodes = [Node(f"node-{i:04d}", 8) for i in range(node_count)]
    start = time.perf_counter()
    place(tasks, nodes)
    initial = time.perf_counter() - start
    zone = set(rng.sample([n.id for n in nodes], node_count // 10))
    return {
        "cluster": label,
        "nodes": node_count,
        "tasks": len(tasks),
        "gpus_used": sum(t.gpus for t in tasks),
        "initial_seconds": round(initial, 4),
        "one_node": failure_run(nodes, tasks, {rng.choice(nodes).id}),
        "one_zone": failure_run(nodes, tasks, zone),
    }


def zipf_ring_balance(members: int, rng: random.Random, s: float = 1.1) -> dict:
    """Keys drawn with Zipf popularity; each request adds one to its member's load."""
    ring = BoundedLoadRing(f"worker-{i}" for i in range(members))
    requests = 20 * members
    weights = [1 / (rank**s) for rank in range(1, 10 * members + 1)]
    keys = rng.choices(range(len(weights)), weights, k=requests)
    bounded: Counter[str] = Counter()
    plain: Counter[str] = Counter()
    for key in keys:
        name = f"session-{key}"
        bounded[ring.choose(name, bounded)] += 1  # type: ignore[index]
        plain[ring.owner(name)] += 1  # type: ignore[index]
    mean = requests / members
    return {
        "members": members,
        "requests": requests,
        "bounded_max_over_mean_minus_1": round(max(bounded.values()) / mean - 1, 3),
        "plain_max_over_mean_minus_1": round(max(plain.values()) / mean - 1, 3),
    }


def main() -> int:
    rng = random.Random(42)
    small = make_tasks(rng, int(100 * 8 * FILL))
    big_tasks = make_tasks(rng, 0, count=10_000)
    big_nodes = math.ceil(sum(t.gpus for t in big_tasks) / FILL / 8)
    results = {
        "placement": [
            cluster_figures("100x8", 100, small, rng),
            cluster_figures(f"{big_nodes}x8", big_nodes, big_tasks, rng),
        ],
        "ring_zipf": [zipf_ring_balance(m, rng) for m in (8, 64, 800)],
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
