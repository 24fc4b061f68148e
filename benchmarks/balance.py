"""Balance of session routing on Zipf keys, and what it costs in stickiness.

DESIGN section 9 wants max/mean − 1 < 5% on skewed traffic. For 8, 64 and 800 members, a seeded
stream of 100 requests per member draws session keys with Zipf popularity (s = 1.1 over 10 keys
per member, so the hottest key alone is a large share of the traffic). Every request adds one to
its member's load and stays (long sessions; the gateway counts in-flight requests instead, which
only lowers the loads the bound sees). Three schemes route the same stream:

- the bounded-load ring at load factor 1.25 (the gateway's default) and 1.05;
- plain consistent hashing (`owner`, loads ignored): the reference, measured in the same run.

Printed per scheme: max/mean − 1; the bound the ring guarantees, ceil(c · mean)/mean − 1;
affinity (share of requests that land on their key's plain owner: a warm KV cache); and, when
one member is removed and the same stream routed again, the share of requests (and of distinct
keys with any request) that change member, next to the share that had to move because it sat on
the removed member. Ratios are against plain hashing. The removed members are drawn with the
same seed; at 800 members one removal (each run of the bounded ring there takes seconds).

Run: `python -m benchmarks.balance [--seed N] [--removals N]`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence

from resilience.hashring import BoundedLoadRing

MEMBER_COUNTS = (8, 64, 800)
REQUESTS_PER_MEMBER = 100
KEYS_PER_MEMBER = 10
ZIPF_S = 1.1
SCHEMES: tuple[tuple[str, float | None], ...] = (
    ("bounded_1.25", 1.25),
    ("bounded_1.05", 1.05),
    ("plain", None),
)


def zipf_stream(rng: random.Random, members: int) -> list[str]:
    """Session keys for REQUESTS_PER_MEMBER * members requests, rank r drawn ∝ 1 / r^s."""
    ranks = range(1, KEYS_PER_MEMBER * members + 1)
    weights = [1 / rank**ZIPF_S for rank in ranks]
    return [f"session-{r}" for r in rng.choices(ranks, weights, k=REQUESTS_PER_MEMBER * members)]


def route(names: Sequence[str], stream: Sequence[str], load_factor: float | None) -> list[str]:
    """The member each request goes to, in order; None as load factor is plain hashing."""
    ring = BoundedLoadRing(names, load_factor=load_factor or 1.0)
    loads: Counter[str] = Counter()
    chosen = []
    for key in stream:
        member = ring.owner(key) if load_factor is None else ring.choose(key, loads)
        assert member is not None
        loads[member] += 1
        chosen.append(member)
    return chosen


def imbalance(chosen: Sequence[str], members: int) -> float:
    mean = len(chosen) / members
    return max(Counter(chosen).values()) / mean - 1.0


def removal(
    names: list[str], stream: list[str], before: list[str], gone: str, load_factor: float | None
) -> dict[str, float]:
    after = route([n for n in names if n != gone], stream, load_factor)
    moved_keys = {key for key, b, a in zip(stream, before, after, strict=True) if a != b}
    return {
        "moved_requests": sum(a != b for a, b in zip(before, after, strict=True)) / len(stream),
        "had_to_move": sum(b == gone for b in before) / len(stream),
        "moved_keys": len(moved_keys) / len(set(stream)),
    }


def members_figures(members: int, rng: random.Random, removals: int) -> dict:
    names = [f"worker-{i}" for i in range(members)]
    stream = zipf_stream(rng, members)
    gone = rng.sample(names, removals)
    plain_owner = BoundedLoadRing(names)
    owners = [plain_owner.owner(key) for key in stream]
    mean = len(stream) / members
    schemes: dict[str, dict] = {}
    for label, load_factor in SCHEMES:
        start = time.perf_counter()
        chosen = route(names, stream, load_factor)
        runs = [removal(names, stream, chosen, g, load_factor) for g in gone]
        figures = {
            "max_over_mean_minus_1": round(imbalance(chosen, members), 4),
            "guaranteed_max_over_mean_minus_1": (
                None
                if load_factor is None
                else round(math.ceil(load_factor * len(stream) / members) / mean - 1, 4)
            ),
            "affinity": round(
                sum(c == o for c, o in zip(chosen, owners, strict=True)) / len(stream), 4
            ),
        }
        for field in ("moved_requests", "had_to_move", "moved_keys"):
            figures[f"remove_one_{field}"] = round(sum(r[field] for r in runs) / len(runs), 4)
        figures["seconds"] = round(time.perf_counter() - start, 2)
        schemes[label] = figures
    plain = schemes["plain"]
    for label, _ in SCHEMES[:-1]:
        figures = schemes[label]
        figures["imbalance_vs_plain"] = _ratio(
            figures["max_over_mean_minus_1"], plain["max_over_mean_minus_1"]
        )
        figures["moved_requests_vs_plain"] = _ratio(
            figures["remove_one_moved_requests"], plain["remove_one_moved_requests"]
        )
    top_share = Counter(stream).most_common(1)[0][1] / len(stream)
    return {
        "members": members,
        "requests": len(stream),
        "distinct_keys": len(set(stream)),
        "hottest_key_share": round(top_share, 4),
        "removed": len(gone),
        "schemes": schemes,
    }


def _ratio(value: float, reference: float) -> float | None:
    return None if reference == 0 else round(value / reference, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--removals", type=int, default=3, help="removed members averaged")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results = [members_figures(n, rng, args.removals if n < 800 else 1) for n in MEMBER_COUNTS]
    print(json.dumps({"seed": args.seed, "zipf_s": ZIPF_S, "balance": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
