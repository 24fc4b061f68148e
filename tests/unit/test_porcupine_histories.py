"""Porcupine's public test histories give the verdicts Porcupine expects.

Jepsen etcd logs: ../shared/testdata/porcupine/expected.txt says which are linearizable.
kv files: cNN-ok.txt are linearizable, cNN-bad.txt are not. Checked in this process
(workers=1), each with a generous deadline so a slow machine gives a visible `unknown`
rather than a wrong answer. On 2 cores the whole file takes a few seconds; the slowest
history is jepsen/etcd_002.log (about half a second).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from probes.linearizability import check, load_history, make_model

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PORCUPINE = SHARED / "testdata" / "porcupine"
DEADLINE_S = 60.0

pytestmark = pytest.mark.skipif(
    not (PORCUPINE / "expected.txt").exists(),
    reason=f"Porcupine test histories not found at {PORCUPINE} (the shared/ folder beside "
    "the repository)",
)


def jepsen_expectations() -> list[tuple[int, bool]]:
    path = PORCUPINE / "expected.txt"
    if not path.exists():
        return []
    found = re.findall(r"checkJepsen\(t, (\d+), (true|false)\)", path.read_text())
    return [(int(n), verdict == "true") for n, verdict in found]


@pytest.mark.parametrize(("number", "linearizable"), jepsen_expectations())
def test_jepsen_history_gives_porcupines_verdict(number: int, linearizable: bool) -> None:
    history = load_history(PORCUPINE / "jepsen" / f"etcd_{number:03d}.log")
    assert history.format == "jepsen"
    model = make_model(history.default_model, history.initial_value)
    verdict = check(history.operations, model, timeout=DEADLINE_S, workers=1)
    assert verdict.result == ("ok" if linearizable else "illegal"), verdict.reason
    if not linearizable:
        cx = verdict.counterexample
        assert cx is not None and cx.candidates
        assert cx.returned.id in cx.illegal_ids()


def test_every_expectation_was_read() -> None:
    """expected.txt lists 102 histories (etcd_095 is empty and Porcupine skips it)."""
    numbers = [n for n, _ in jepsen_expectations()]
    assert len(numbers) == 102 and 95 not in numbers
    assert sum(ok for _, ok in jepsen_expectations()) == 23


def test_the_empty_jepsen_log_is_bad_input() -> None:
    with pytest.raises(ValueError, match="etcd_095.log: empty history"):
        load_history(PORCUPINE / "jepsen" / "etcd_095.log")


@pytest.mark.parametrize("name", ["c01-ok", "c01-bad", "c10-ok", "c10-bad", "c50-ok", "c50-bad"])
def test_kv_history_gives_porcupines_verdict(name: str) -> None:
    history = load_history(PORCUPINE / "kv" / f"{name}.txt")
    assert history.format == "porcupine-kv" and history.default_model == "kv"
    model = make_model("kv", history.initial_value)
    verdict = check(history.operations, model, timeout=DEADLINE_S, workers=1)
    assert verdict.result == ("ok" if name.endswith("-ok") else "illegal"), verdict.reason
    assert len(verdict.keys) > 1  # split by key
    if name.endswith("-bad"):
        assert verdict.counterexample is not None
        assert verdict.counterexample.returned.key == verdict.counterexample.key
