"""The linearizability checker: models, parsers, search, deadline, report and CLI.

The search is also cross-checked against brute force (every order that respects real time)
on a few hundred small random histories.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probes.linearizability import (
    Operation,
    check,
    check_file,
    counterexample_text,
    history_html,
    load_history,
    make_model,
    parse_history,
    verdict_text,
)
from probes.linearizability.cli import run as cli_run
from probes.linearizability.models import UNKNOWN, register_observes, register_step
from probes.linearizability.search import search

REPO = Path(__file__).resolve().parents[2]


def op(
    i: int,
    process: int,
    kind: str,
    value: object = None,
    output: object = None,
    call: float = 0.0,
    ret: float | None = 1.0,
    status: str = "ok",
    key: str | None = "x",
) -> Operation:
    return Operation(i, process, kind, key, value, output, call, ret, status)


def cas(expect: object, value: object) -> dict:
    return {"expect": expect, "value": value}


def verdict_of(ops: list[Operation], model: str = "kv", **kwargs: object) -> str:
    return check(ops, make_model(model), workers=1, **kwargs).result  # type: ignore[arg-type]


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def record(**fields: object) -> dict:
    base = {"process": 0, "op": "write", "key": "x", "input": 1, "output": None}
    base.update({"call": 0.0, "return": 1.0, "status": "ok"})
    base.update(fields)
    return base


# --- models ------------------------------------------------------------------------------------


def test_register_reads_nil_until_written_as_porcupines_etcd_model() -> None:
    model = make_model("register")
    assert model.apply(None, op(0, 0, "read", output=None)) == (True, None)
    assert model.apply(None, op(0, 0, "read", output=0)) == (False, None)
    assert model.apply(None, op(0, 0, "write", 3)) == (True, 3)
    assert model.apply(3, op(0, 0, "read", output=3)) == (True, 3)
    assert model.apply(3, op(0, 0, "read", output=None)) == (False, 3)


def test_cas_succeeds_exactly_when_the_register_holds_expect() -> None:
    model = make_model("register")
    assert model.apply(1, op(0, 0, "cas", cas(1, 4), True)) == (True, 4)
    assert model.apply(2, op(0, 0, "cas", cas(1, 4), True))[0] is False
    assert model.apply(2, op(0, 0, "cas", cas(1, 4), False)) == (True, 2)
    assert model.apply(1, op(0, 0, "cas", cas(1, 4), False))[0] is False  # should have won
    assert model.apply(None, op(0, 0, "cas", cas(None, "a"), True)) == (True, "a")  # absent
    assert model.apply(1, op(0, 0, "cas", [1, 4], True)) == (True, 4)  # Jepsen's pair


def test_unknown_outcomes_fit_any_state_and_still_apply() -> None:
    model = make_model("kv")
    pending_cas = op(0, 0, "cas", cas(1, 9), None, ret=None, status="unknown")
    assert model.apply(1, pending_cas) == (True, 9)
    assert model.apply(2, pending_cas) == (True, 2)
    assert register_step(5, *model.encode(op(0, 0, "read", ret=None)))[0] is True


def test_delete_append_and_the_observers() -> None:
    model = make_model("kv")
    assert model.apply("a", op(0, 0, "delete", output=True)) == (True, None)
    assert model.apply(None, op(0, 0, "delete", output=True))[0] is False
    assert model.apply(None, op(0, 0, "append", "x 1 y")) == (True, "x 1 y")
    assert model.apply("a", op(0, 0, "append", "b")) == (True, "ab")
    assert register_observes(*model.encode(op(0, 0, "read", output=3))) is True
    assert register_observes(*model.encode(op(0, 0, "cas", cas(1, 2), False))) is True
    assert register_observes(*model.encode(op(0, 0, "cas", cas(1, 2), True))) is False
    assert register_observes(*model.encode(op(0, 0, "read", ret=None))) is False
    assert register_observes(*model.encode(op(0, 0, "write", 1))) is False
    assert UNKNOWN.value == "unknown"


def test_structured_values_are_compared_by_content() -> None:
    ops = [
        op(0, 0, "write", {"b": [1, 2], "a": 1}, call=0, ret=1),
        op(1, 1, "read", output={"a": 1, "b": [1, 2]}, call=2, ret=3),
    ]
    assert verdict_of(ops) == "ok"
    ops[1] = op(1, 1, "read", output={"a": 1, "b": [2, 1]}, call=2, ret=3)
    assert verdict_of(ops) == "illegal"


def test_models_refuse_what_they_cannot_check() -> None:
    with pytest.raises(ValueError, match="unknown model 'queue'"):
        make_model("queue")
    with pytest.raises(ValueError, match="no operation 'append'"):
        check([op(0, 0, "append", "a")], make_model("register"))
    with pytest.raises(ValueError, match="cas input"):
        check([op(0, 0, "cas", 5, True)], make_model("kv"))
    two_keys = [op(0, 0, "write", 1, key="a"), op(1, 0, "write", 1, key="b")]
    with pytest.raises(ValueError, match="use the kv model"):
        check(two_keys, make_model("register"))
    assert set(make_model("kv").partition(two_keys)) == {"a", "b"}


# --- the search --------------------------------------------------------------------------------


def stale_read_history() -> list[Operation]:
    return [
        op(0, 0, "write", 1, call=0, ret=1),
        op(1, 0, "write", 2, call=2, ret=3),
        op(2, 1, "read", output=1, call=4, ret=5),
    ]


def test_a_stale_read_is_illegal_and_the_counterexample_names_it() -> None:
    verdict = check(stale_read_history(), make_model("kv"), workers=1)
    assert verdict.result == "illegal"
    cx = verdict.counterexample
    assert cx is not None and cx.key == "x"
    assert [o.id for o in cx.prefix] == [0, 1] and cx.state == 2
    assert cx.returned.id == 2
    assert [(c.operation.id, c.reason) for c in cx.candidates] == [(2, "inconsistent")]
    text = counterexample_text(cx)
    assert "#2 process 1: read() -> 1 [4, 5]" in text and "inconsistent with state 2" in text
    encoded = json.loads(json.dumps(verdict.to_json()))
    assert encoded["result"] == "illegal"
    assert encoded["counterexample"]["returned"]["id"] == 2
    assert encoded["counterexample"]["state_after_prefix"] == 2


def test_overlapping_operations_may_be_ordered_either_way() -> None:
    ops = [
        op(0, 0, "write", 1, call=0, ret=10),
        op(1, 1, "write", 2, call=1, ret=9),
        op(2, 2, "read", output=1, call=11, ret=12),
    ]
    assert verdict_of(ops) == "ok"
    ops[2] = op(2, 2, "read", output=3, call=11, ret=12)
    assert verdict_of(ops) == "illegal"


def test_equal_times_count_as_concurrent() -> None:
    """A return at the instant of another's call may still be ordered after it (closed
    intervals, Porcupine's rule): no violation is claimed on a clock tie."""
    ops = [
        op(0, 0, "write", 1, call=0, ret=5),
        op(1, 1, "read", output=None, call=5, ret=6),
    ]
    assert verdict_of(ops) == "ok"
    ops[1] = op(1, 1, "read", output=None, call=5.001, ret=6)
    assert verdict_of(ops) == "illegal"


def test_a_pending_write_may_take_effect_late_or_never() -> None:
    base = [
        op(0, 0, "write", 1, call=0, ret=1),
        op(1, 1, "write", 2, call=2, ret=None, status="unknown"),
    ]
    took_effect = base + [op(2, 0, "read", output=2, call=50, ret=51)]
    never = base + [op(2, 0, "read", output=1, call=50, ret=51)]
    first_then_not = never + [op(3, 0, "read", output=2, call=52, ret=53)]
    impossible = base + [op(2, 0, "read", output=3, call=50, ret=51)]
    assert verdict_of(took_effect) == "ok"
    assert verdict_of(never) == "ok"
    assert verdict_of(first_then_not) == "ok"  # applied between the two reads
    assert verdict_of(impossible) == "illegal"
    flip_back = first_then_not + [op(4, 0, "read", output=1, call=54, ret=55)]
    assert verdict_of(flip_back) == "illegal"  # it cannot take effect twice


def test_no_return_counts_as_pending_even_with_status_ok() -> None:
    ops = [op(0, 1, "write", 2, call=0, ret=None), op(1, 0, "read", output=2, call=5, ret=6)]
    assert verdict_of(ops) == "ok"


def test_failed_operations_took_no_effect() -> None:
    ops = [
        op(0, 0, "write", 1, call=0, ret=1),
        op(1, 1, "write", 2, call=2, ret=3, status="fail"),
        op(2, 0, "read", output=2, call=4, ret=5),
    ]
    verdict = check(ops, make_model("kv"), workers=1)
    assert verdict.result == "illegal" and verdict.dropped == 1


def test_pending_reads_are_dropped_as_they_constrain_nothing() -> None:
    ops = [op(0, 0, "write", 1), op(1, 1, "read", output=None, ret=None, status="unknown")]
    verdict = check(ops, make_model("kv"), workers=1)
    assert verdict.result == "ok" and verdict.dropped == 1 and verdict.operations == 1


def test_keys_are_independent_and_the_first_illegal_key_is_reported() -> None:
    ops = [op(i, 0, "write", i, key=f"k{i}", call=i, ret=i + 0.5) for i in range(5)]
    ops += [op(9, 1, "read", output=99, key="k3", call=10, ret=11)]
    verdict = check(ops, make_model("kv"), workers=1)
    assert verdict.result == "illegal"
    assert verdict.counterexample is not None and verdict.counterexample.key == "k3"
    assert {k.key: k.result for k in verdict.keys}["k3"] == "illegal"
    assert len(verdict.keys) == 5


def hard_history(writes: int = 24, key: str = "x") -> list[Operation]:
    """Many concurrent writes, then a read of a value none wrote: proving it illegal means
    trying every subset of the writes in every state, which no deadline below allows."""
    ops = [op(i, i, "write", i, call=0, ret=10, key=key) for i in range(writes)]
    return ops + [op(writes, 0, "read", output=-1, call=11, ret=12, key=key)]


def test_the_deadline_gives_unknown_never_ok() -> None:
    started = time.monotonic()
    verdict = check(hard_history(), make_model("kv"), timeout=0.3, workers=1)
    elapsed = time.monotonic() - started
    assert verdict.result == "unknown"
    assert verdict.keys[0].reason == "deadline passed" and verdict.keys[0].explored > 0
    assert elapsed < 2.0
    assert "deadline passed" in verdict_text(verdict)


def test_the_memory_bound_gives_unknown_never_ok() -> None:
    verdict = check(hard_history(), make_model("kv"), timeout=30, workers=1, max_states=20_000)
    assert verdict.result == "unknown"
    assert "search too large" in (verdict.keys[0].reason or "")
    assert 20_000 <= verdict.keys[0].explored < 40_000


def test_a_search_cut_short_is_unknown_also_alone() -> None:
    outcome = search(hard_history(), make_model("kv"), deadline=time.monotonic() + 0.1)
    assert outcome.result == "unknown" and outcome.counterexample is None


def brute_force(ops: list[Operation], model_name: str = "kv") -> bool:
    """Linearizable iff some order respecting real time steps the model legally."""
    model = make_model(model_name)
    live = [o for o in ops if o.status != "fail" and model.constrains(o)]
    for order in itertools.permutations(live):
        if any(a.call > b.end for i, a in enumerate(order) for b in order[i + 1 :]):
            continue  # b returned before a was called, but a comes first
        state, ok = model.init, True
        for o in order:
            ok, state = model.apply(state, o)
            if not ok:
                break
        if ok:
            return True
    return False


def random_history(rng: random.Random, size: int) -> list[Operation]:
    ops = []
    for i in range(size):
        call = rng.randint(0, 8)
        ret: float | None = call + rng.randint(0, 4)
        status = rng.choice(["ok"] * 8 + ["unknown", "fail"])
        if status == "unknown":
            ret = None
        kind = rng.choice(["read", "write", "cas"])
        value = rng.choice([None, 1, 2]) if kind == "read" else rng.choice([1, 2])
        if kind == "read":
            ops.append(op(i, i, "read", None, value, call, ret, status))
        elif kind == "write":
            ops.append(op(i, i, "write", value, None, call, ret, status))
        else:
            expect = rng.choice([None, 1, 2])
            ops.append(op(i, i, "cas", cas(expect, value), rng.random() < 0.5, call, ret, status))
    return ops


def test_the_search_agrees_with_brute_force_on_random_histories() -> None:
    rng = random.Random(7)
    verdicts = {"ok": 0, "illegal": 0}
    for _ in range(400):
        ops = random_history(rng, rng.randint(1, 6))
        expected = brute_force(ops)
        got = verdict_of(ops)
        assert got == ("ok" if expected else "illegal"), [o.to_json() for o in ops]
        verdicts[got] += 1
    assert verdicts["ok"] > 50 and verdicts["illegal"] > 50  # both sides exercised


# --- parsers -----------------------------------------------------------------------------------


def test_our_json_lines() -> None:
    text = jsonl(
        [
            record(process=3, op="cas", input={"expect": None, "value": "a"}, output=True),
            record(process=4, op="read", input=None, output="a", call=2.0, **{"return": 2.5}),
            record(
                process=5, op="write", input="b", call=3.0, status="unknown", **{"return": None}
            ),
        ]
    )
    history = parse_history(text, "h.jsonl")
    assert history.format == "jsonl" and history.default_model == "kv"
    first, second, third = history.operations
    assert (first.process, first.op, first.input, first.output) == (3, "cas", cas(None, "a"), True)
    assert (second.call, second.ret, second.output) == (2.0, 2.5, "a")
    assert third.pending and third.ret is None
    assert check(history.operations, make_model("kv"), workers=1).result == "ok"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not JSON"),
        ('["a list"]', "expected a JSON object"),
        (json.dumps({"process": 1, "op": "read"}), "missing field"),
        (json.dumps(record(status="maybe")), "status must be one of"),
        (json.dumps(record(process="p1")), "process must be an integer"),
        (json.dumps(record(call=5.0, **{"return": 1.0})), "returns"),
        (json.dumps(record(call="noon")), "must be numbers"),
        (json.dumps(record(key=7)), "key must be a string"),
    ],
)
def test_malformed_json_lines_name_file_and_line(line: str, problem: str) -> None:
    text = jsonl([record()]) + line + "\n"
    with pytest.raises(ValueError, match=rf"^h\.jsonl:2: .*{problem}"):
        parse_history(text, "h.jsonl")


JEPSEN = """\
INFO  jepsen.util - 0\t:invoke\t:write\t3
INFO  jepsen.util - 0\t:ok\t:write\t3
INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]
INFO  jepsen.util - 2\t:invoke\t:read\tnil
INFO  jepsen.util - 1\t:fail\t:cas\t[3 4]
INFO  jepsen.util - 2\t:ok\t:read\t3
INFO  jepsen.util - 3\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:fail\t:read\t:timed-out
INFO  jepsen.util - 10\t:invoke\t:write\t1
INFO  jepsen.util - 10\t:info\t:write\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:cas\t[1 2]
"""


def test_jepsen_logs_map_as_porcupine_maps_them() -> None:
    history = parse_history(JEPSEN, "etcd.log")
    assert history.format == "jepsen" and history.default_model == "register"
    by_process = {o.process: o for o in history.operations}
    assert by_process[0].input == 3 and (by_process[0].call, by_process[0].ret) == (1, 2)
    assert by_process[1].input == cas(3, 4)
    assert (by_process[1].output, by_process[1].status) == (False, "ok")  # compare failed
    assert by_process[2].output == 3
    assert by_process[3].status == "fail"  # a timed-out read took no effect
    assert by_process[10].pending and by_process[10].ret is None  # :info: outcome unknown
    assert by_process[4].pending  # never completed
    verdict = check(history.operations, make_model("register"), workers=1)
    assert verdict.result == "illegal"  # the cas saw 3 and still failed
    assert verdict.counterexample is not None and verdict.counterexample.returned.process == 1


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("INFO  jepsen.util - 0\t:ok\t:read\t3", "completes with no invoke"),
        ("INFO  jepsen.util - 0\t:invoke\t:cas\t7", "cas needs"),
        ("INFO  jepsen.util - 0\t:invoke\t:read\t{weird}", "cannot read value"),
        ("WARN something else entirely", "not a Jepsen log line"),
    ],
)
def test_malformed_jepsen_lines_name_file_and_line(line: str, problem: str) -> None:
    text = "INFO  jepsen.util - 9\t:invoke\t:write\t1\n" + line + "\n"
    with pytest.raises(ValueError, match=rf"^etcd\.log:2: .*{problem}"):
        parse_history(text, "etcd.log")


def test_jepsen_process_invoking_twice_is_an_error() -> None:
    text = "INFO  jepsen.util - 0\t:invoke\t:write\t1\nINFO  jepsen.util - 0\t:invoke\t:write\t2\n"
    with pytest.raises(ValueError, match="etcd.log:2: process 0 invokes again"):
        parse_history(text, "etcd.log")


KV = """\
{:process 0, :type :invoke, :f :put, :key "5", :value "a"}
{:process 1, :type :invoke, :f :get, :key "5", :value nil}
{:process 0, :type :ok, :f :put, :key "5", :value "a"}
{:process 1, :type :ok, :f :get, :key "5", :value "a"}
{:process 0, :type :invoke, :f :append, :key "6", :value "x \\"q\\" y"}
{:process 0, :type :ok, :f :append, :key "6", :value "x \\"q\\" y"}
{:process 1, :type :invoke, :f :get, :key "6", :value nil}
{:process 1, :type :ok, :f :get, :key "6", :value ""}
"""


def test_porcupine_kv_maps() -> None:
    history = parse_history(KV, "c.txt")
    assert history.format == "porcupine-kv" and history.initial_value == ""
    put, get, append, empty_get = history.operations
    assert (put.op, put.key, put.input) == ("put", "5", "a")
    assert (get.op, get.input, get.output) == ("get", None, "a")
    assert append.input == 'x "q" y'
    model = make_model("kv", history.initial_value)
    verdict = check(history.operations, model, workers=1)
    assert verdict.result == "illegal"  # key 6 read "" after the append returned
    assert verdict.counterexample is not None and verdict.counterexample.returned is empty_get


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{:process 0, :type :invoke, :f :get, :key "5" :value nil', "expected one"),
        ('{:process 0, :type :invoke, :f :get, :key "5", :value}', "key without a value"),
        ('{:process 0, :type :invoke, :f :get, "key" "5"}', "keys must be keywords"),
        ("{:process 0, :type :invoke, :f :get, :key @5}", "cannot read EDN"),
        ("{:type :invoke, :f :get}", "missing :process"),
        ("{:process 0, :type :maybe, :f :get}", "bad :process or :type"),
    ],
)
def test_malformed_kv_lines_name_file_and_line(line: str, problem: str) -> None:
    text = '{:process 7, :type :invoke, :f :get, :key "1", :value nil}\n' + line + "\n"
    with pytest.raises(ValueError, match=rf"^c\.txt:2: .*{problem}"):
        parse_history(text, "c.txt")


def test_format_detection_refuses_the_unknown_and_the_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^x:3: unrecognised history format"):
        parse_history("\n\n<html>\n", "x")
    with pytest.raises(ValueError, match="empty history"):
        parse_history(" \n\n", "x")
    with pytest.raises(ValueError, match="no such file"):
        load_history(tmp_path / "missing.jsonl")
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="cannot read"):
        load_history(binary)


# --- report ------------------------------------------------------------------------------------


def test_history_html_draws_every_process_and_highlights_the_stale_read() -> None:
    other_key = op(3, 2, "write", 5, call=1, ret=None, status="unknown", key="y")
    ops = [*stale_read_history(), other_key]
    verdict = check(ops, make_model("kv"), workers=1)
    page = history_html(ops, verdict, "x")
    assert page.startswith('<figure class="lz-timeline">') and "<svg" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "process 0" in page and "process 1" in page and "process 2" not in page
    stuck = page.split('<g class="illegal">')[1].split("</g>")[0]
    assert "#2 process 1: read() -&gt; 1" in stuck
    assert page.count('<g class="prefix">') == 2
    assert "key &#x27;x&#x27;: illegal, 3 operations" in page


def test_history_html_windows_long_histories_and_escapes_labels() -> None:
    ops = [op(i, i % 3, "write", f"<v{i}>", call=i, ret=i + 0.5) for i in range(50)]
    page = history_html(ops, None, "x", max_ops=20)
    assert "20 of 50 operations" in page and "<v" not in page.replace("<svg", "")
    assert "&lt;v0&gt;" in page


# --- CLI ---------------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def history_file(tmp_path: Path, ops: list[Operation]) -> Path:
    lines = [{k: v for k, v in o.to_json().items() if k != "id"} for o in ops]
    return write(tmp_path, "h.jsonl", jsonl(lines))


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = history_file(tmp_path, stale_read_history()[:2])
    assert cli_run([str(good)]) == 0
    assert capsys.readouterr().out.startswith("linearizable: 2 operations")

    stale = history_file(tmp_path, stale_read_history())
    html_out = tmp_path / "timeline.html"
    assert cli_run([str(stale), "--html", str(html_out)]) == 1
    out = capsys.readouterr().out
    assert "NOT linearizable" in out and "#2 process 1: read() -> 1" in out
    assert "<svg" in html_out.read_text()

    hard = history_file(tmp_path, hard_history())
    assert cli_run([str(hard), "--timeout", "0.2", "--json", "--workers", "1"]) == 3
    assert json.loads(capsys.readouterr().out)["result"] == "unknown"


@pytest.mark.parametrize(
    ("content", "args", "problem"),
    [
        (None, [], "no such file"),
        ("", [], "empty history"),
        ("{broken\n", [], "h.jsonl:1: not JSON"),
        (jsonl([record()]), ["--timeout", "0"], "--timeout must be positive"),
        (jsonl([record(op="push")]), [], "no operation 'push'"),
    ],
)
def test_cli_bad_input_is_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    args: list[str],
    problem: str,
) -> None:
    path = tmp_path / "h.jsonl"
    if content is not None:
        path.write_text(content)
    assert cli_run([str(path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and problem in captured.err


def test_a_history_of_failed_operations_only_is_trivially_linearizable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = history_file(tmp_path, [op(0, 0, "write", 1, status="fail")])
    page = tmp_path / "t.html"
    assert cli_run([str(path), "--html", str(page)]) == 0
    assert "1 failed or pending read(s) dropped" in capsys.readouterr().out
    assert "<pre>" in page.read_text()


def test_check_file_uses_the_formats_model(tmp_path: Path) -> None:
    path = history_file(tmp_path, stale_read_history())
    verdict = check_file(path, workers=1)
    assert (verdict.result, verdict.model) == ("illegal", "kv")
    assert check_file(path, model="register", workers=1).model == "register"


def test_cli_model_option_overrides_the_format_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_keys = [op(0, 0, "write", 1, key="a"), op(1, 0, "write", 1, key="b")]
    path = history_file(tmp_path, two_keys)
    assert cli_run([str(path)]) == 0
    assert cli_run([str(path), "--model", "register"]) == 2
    assert "use the kv model" in capsys.readouterr().err


# --- worker processes (start processes: integration) --------------------------------------------


def many_keys(keys: int = 12, stale_key: int | None = None) -> list[Operation]:
    ops: list[Operation] = []
    for k in range(keys):
        for i in range(10):
            ops.append(op(len(ops), i % 3, "write", i, key=f"k{k}", call=2 * i, ret=2 * i + 1))
        seen = 3 if k == stale_key else 9
        ops.append(op(len(ops), 9, "read", output=seen, key=f"k{k}", call=30, ret=31))
    return ops


@pytest.mark.integration
def test_worker_pool_gives_the_same_verdicts_and_leaves_no_process() -> None:
    model = make_model("kv")
    for ops, expected in [(many_keys(), "ok"), (many_keys(stale_key=7), "illegal")]:
        pooled = check(ops, model, workers=2, hand_over_after=0.0)
        assert pooled.parallel and pooled.result == expected
        assert check(ops, model, workers=1).result == expected
    cx = check(many_keys(stale_key=7), model, workers=2, hand_over_after=0.0).counterexample
    assert cx is not None and cx.key == "k7" and cx.returned.output == 3
    assert multiprocessing.active_children() == []


@pytest.mark.integration
def test_worker_pool_deadline_gives_unknown() -> None:
    ops = hard_history(key="a") + [
        dataclass_copy(o, id=o.id + 100, key="b") for o in hard_history(key="b")
    ]
    started = time.monotonic()
    verdict = check(ops, make_model("kv"), timeout=0.5, workers=2, hand_over_after=0.0)
    assert verdict.result == "unknown" and verdict.parallel
    assert {k.result for k in verdict.keys} == {"unknown"}
    assert time.monotonic() - started < 5.0
    assert multiprocessing.active_children() == []


def dataclass_copy(o: Operation, **changes: object) -> Operation:
    import dataclasses

    return dataclasses.replace(o, **changes)  # type: ignore[arg-type]


@pytest.mark.integration
def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    path = history_file(tmp_path, stale_read_history())
    done = subprocess.run(
        [sys.executable, "-m", "probes.linearizability", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "NOT linearizable" in done.stdout
