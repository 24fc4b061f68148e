"""Linearizability checker speed: 10,000 operations over 100 keys in < 5 s (DESIGN section 9).

The history comes from a simulated linearizable kv store: concurrent clients issue reads,
writes and compare-and-sets with random latencies; each operation takes effect at a random
instant inside its [call, return] interval, so the history is linearizable by construction.
Some calls time out (outcome unknown: half of them still take effect, possibly after the
client gave up) and some fail without effect. Printed, all from this one run:

- the check as the harness runs it (split by key, parallel when it pays), wall time;
- the reference: the same history checked in this process alone;
- the same history with one stale read planted, which must come out illegal;
- Porcupine's largest kv histories (../shared/testdata/porcupine/kv/c50-*.txt).

Run: `python -m benchmarks.checker [--ops 10000 --keys 100 --clients 50 1000 --seed 1]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

from probes.linearizability import Operation, check, load_history, make_model

TARGET_S = 5.0
PORCUPINE_KV = Path(__file__).resolve().parents[1].parent / "shared/testdata/porcupine/kv"


@dataclasses.dataclass
class _Planned:
    process: int
    op: str
    key: str
    input: object
    call: float
    ret: float | None
    takes_effect_at: float | None  # None: never (failed, or timed out and lost)
    status: str


def simulate_kv_history(
    ops: int = 10_000,
    keys: int = 100,
    clients: int = 50,
    seed: int = 1,
    timeout_rate: float = 0.01,
    fail_rate: float = 0.01,
) -> list[Operation]:
    """A linearizable history of a kv store under `clients` concurrent clients."""
    rng = random.Random(seed)
    key_names = [f"k{i}" for i in range(keys)]
    timeout_s = 0.050
    planned: list[_Planned] = []
    clock = [rng.uniform(0, 0.005) for _ in range(clients)]
    last_seen: dict[tuple[int, str], object] = {}
    for n in range(ops):
        client = n % clients
        call = clock[client]
        key = rng.choice(key_names)
        roll = rng.random()
        if roll < 0.5:
            op, value = "read", None
        elif roll < 0.8:
            op, value = "write", f"v{n}"
        else:
            op, value = "cas", {"expect": last_seen.get((client, key)), "value": f"v{n}"}
        latency = rng.uniform(0.001, 0.010)
        fate = rng.random()
        if fate < timeout_rate:  # the client gives up; the store may apply it later, or never
            effect = call + rng.uniform(0, 2 * timeout_s) if rng.random() < 0.5 else None
            planned.append(_Planned(client, op, key, value, call, None, effect, "unknown"))
            clock[client] = call + timeout_s
        elif fate < timeout_rate + fail_rate:  # refused (e.g. not leader): no effect
            planned.append(_Planned(client, op, key, value, call, call + latency, None, "fail"))
            clock[client] = call + latency
        else:
            effect = call + rng.uniform(0, latency)
            planned.append(_Planned(client, op, key, value, call, call + latency, effect, "ok"))
            clock[client] = call + latency
        clock[client] += rng.uniform(0, 0.002)  # think time
    return _apply_in_effect_order(planned, last_seen)


def _apply_in_effect_order(
    planned: list[_Planned], last_seen: dict[tuple[int, str], object]
) -> list[Operation]:
    """Run every operation against one dict in the order the store applied them."""
    store: dict[str, object] = {}
    outputs: dict[int, object] = {}
    effective = sorted(
        (p.takes_effect_at, i) for i, p in enumerate(planned) if p.takes_effect_at is not None
    )
    for _, i in effective:
        p = planned[i]
        current = store.get(p.key)
        if p.op == "read":
            outputs[i] = current
            last_seen[(p.process, p.key)] = current
        elif p.op == "write":
            store[p.key] = p.input
        else:
            assert isinstance(p.input, dict)
            outputs[i] = current == p.input["expect"]
            if outputs[i]:
                store[p.key] = p.input["value"]
    return [
        Operation(
            i,
            p.process,
            p.op,
            p.key,
            p.input,
            outputs.get(i) if p.status == "ok" else None,
            p.call,
            p.ret,
            p.status,
        )  # fmt: skip
        for i, p in enumerate(planned)
    ]


def plant_stale_read(history: list[Operation]) -> list[Operation]:
    """Turn the last ok read that saw a value into one that saw an older value of its key."""
    values: dict[str, list[object]] = {}
    for op in history:
        if op.op == "write" and op.status == "ok":
            values.setdefault(op.key or "", []).append(op.input)
    for index in range(len(history) - 1, -1, -1):
        op = history[index]
        older = [v for v in values.get(op.key or "", []) if v != op.output]
        if op.op == "read" and op.status == "ok" and op.output is not None and older:
            changed = dataclasses.replace(op, output=older[0])
            return history[:index] + [changed] + history[index + 1 :]
    raise ValueError("no read to make stale")


def in_flight_per_key(history: list[Operation]) -> float:
    """Mean number of completed operations in flight on one key (busy time / span)."""
    done = [op for op in history if op.ret is not None]
    span = max(op.ret for op in done) - min(op.call for op in done)  # type: ignore[type-var]
    busy = sum(op.ret - op.call for op in done)  # type: ignore[operator]
    return busy / span / len({op.key for op in history})


def _timed(label: str, ops: list[Operation], model_name: str, **kwargs: object) -> float:
    model = make_model(model_name, kwargs.pop("initial", None))
    started = time.perf_counter()
    verdict = check(ops, model, **kwargs)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    keys = len(verdict.keys)
    mode = "parallel" if verdict.parallel else "one process"
    print(
        f"{label:<44} {verdict.result:<8} {verdict.operations:>6} ops {keys:>4} keys "
        f"{mode:<11} {wall:7.3f} s"
    )
    return wall


def run_scenario(ops: int, keys: int, clients: int, seed: int) -> bool:
    """Check one simulated history three ways; True when the target is met."""
    history = simulate_kv_history(ops, keys, clients, seed)
    pending = sum(op.status == "unknown" for op in history)
    failed = sum(op.status == "fail" for op in history)
    print(
        f"history: {len(history)} operations, {keys} keys, {clients} clients "
        f"({in_flight_per_key(history):.1f} in flight per key on average), "
        f"{pending} timed out, {failed} failed"
    )
    wall = _timed("split by key, as the harness runs it", history, "kv", timeout=60)
    reference = _timed("reference: same history, one process", history, "kv", workers=1)
    _timed("same history with one stale read", plant_stale_read(history), "kv", timeout=60)
    met = wall < TARGET_S
    print(
        f"target < {TARGET_S:g} s for {len(history)} ops: {'met' if met else 'NOT met'} "
        f"({wall:.3f} s; {wall / reference:.2f}x the single-process reference)"
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[50, 1000],
        help="one scenario per count (default: 50, and 1000 = Jepsen's 10 per key)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    met = [run_scenario(args.ops, args.keys, clients, args.seed) for clients in args.clients]
    for name in ("c50-ok.txt", "c50-bad.txt"):
        path = PORCUPINE_KV / name
        if path.exists():
            kv = load_history(path)
            _timed(f"Porcupine kv/{name}", kv.operations, "kv", initial="", timeout=60)
            _timed("  reference: one process", kv.operations, "kv", initial="", workers=1)
        else:
            print(f"Porcupine kv/{name}: not found at {path}")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
