"""The stop-condition watcher, and how an aborted run reads in the verdict, report and JUnit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from chaoslib.exceptions import ActivityFailed

from experiments import stop_condition as sc
from experiments.context import RunContext
from experiments.ledger import Ledger
from experiments.suite_run import verdict_of
from experiments.verdict import reach_verdict
from probes.burn_rate import judge
from reports.junit import junit_tree
from reports.render import render_html
from reports.stop_condition import stop_condition_section

CONDITION = sc.StopCondition(
    slo=0.999, max_burn_rate=14.4, window_s=30.0, min_requests=20, poll_s=1
)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Prometheus:
    """A measure function that answers with scripted counts, or raises."""

    def __init__(self) -> None:
        self.answers: list = []
        self.windows: list[float] = []

    def __call__(self, window, slo, max_burn_rate, min_requests, **kwargs):
        self.windows.append(window)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        errors, requests = answer
        return {**judge(errors, requests, slo, max_burn_rate, min_requests), "window_s": window}


@pytest.fixture
def watched(tmp_path: Path):
    run = RunContext(run_id="r", out_dir=tmp_path, ledger=Ledger())
    clock, prometheus, cleanups = Clock(), Prometheus(), []

    def on_breach():
        cleanups.append(run.interrupted.is_set())
        return {"removed": ["f1"], "errors": []}

    watcher = sc.Watcher(CONDITION, run, {}, measure=prometheus, on_breach=on_breach, clock=clock)
    run.load["stop_condition_watcher"] = watcher
    return watcher, run, clock, prometheus, cleanups


def test_a_breach_records_why_interrupts_the_run_and_cleans_up_once(watched):
    watcher, run, clock, prometheus, cleanups = watched
    prometheus.answers = [(0, 400), (1, 10), (141, 4000), (0, 4000)]
    for step in (1.0, 1.0, 10.3):
        clock.t += step
        watcher.poll_once()
    assert watcher.stopped_by is not None and run.interrupted.is_set()
    assert run.load["stopped_by"] is watcher.stopped_by
    assert watcher.stopped_by["reason"] == (
        "stop condition: burn rate 35.2x > 14.4x over 13s at +12.3s"
    )
    assert watcher.stopped_by["requests"] == 4000 and watcher.stopped_by["errors"] == 141
    assert cleanups == [True], "faults are removed once, after the run is marked interrupted"
    assert sc.interrupt_reason(run) == watcher.stopped_by["reason"]
    clock.t += 1
    assert watcher.poll_once() is None and len(prometheus.answers) == 1, "no poll after a trip"
    watcher.stop()
    assert sc.interrupt_reason(run) is None, "rollbacks after the method are not interrupted"
    entry = watcher.to_json()
    assert entry["breached"] and entry["breached_at"] == watcher.stopped_by["at"]
    assert entry["burn_rate"] == pytest.approx(35.25) and entry["polls"] == 3
    assert entry["judged_polls"] == 2, "10 requests are below min_requests"
    assert [s[0] for s in entry["samples"]] == [1.0, 2.0, 12.3]


def test_the_window_grows_from_the_method_start_up_to_its_size(watched):
    watcher, _, clock, prometheus, _ = watched
    prometheus.answers = [(0, 100)] * 4
    for step in (0.2, 2.5, 30.0, 5.0):
        clock.t += step
        watcher.poll_once()
    assert prometheus.windows == [2.0, 3.0, 30.0, 30.0]
    assert watcher.stopped_by is None and watcher.max_burn_rate_seen == 0.0


def test_prometheus_errors_are_counted_until_it_is_blind_longer_than_the_window(watched):
    watcher, run, clock, prometheus, cleanups = watched
    prometheus.answers = [ActivityFailed("Prometheus at p: cannot connect")] * 3 + [(0, 100)]
    clock.t += 20
    watcher.poll_once()
    assert watcher.prometheus_errors == 1 and watcher.stopped_by is None
    clock.t += 9
    watcher.poll_once()
    assert watcher.stopped_by is None, "29 s blind is within the 30 s window"
    clock.t += 2
    watcher.poll_once()
    assert watcher.stopped_by["kind"] == "prometheus-unanswered"
    assert watcher.stopped_by["reason"].startswith(
        "stop condition: Prometheus unanswered for 31.0s (> window 30s) at +31.0s"
    )
    assert run.interrupted.is_set() and cleanups == [True]
    assert watcher.to_json()["last_prometheus_error"] == "Prometheus at p: cannot connect"


def test_an_answer_resets_the_blind_time(watched):
    watcher, _, clock, prometheus, _ = watched
    prometheus.answers = [ActivityFailed("x"), (0, 100), ActivityFailed("y")]
    for step in (25, 1, 25):
        clock.t += step
        watcher.poll_once()
    assert watcher.stopped_by is None and watcher.prometheus_errors == 2


def test_the_thread_polls_and_stops(tmp_path: Path):
    run = RunContext(run_id="r", out_dir=tmp_path, ledger=Ledger())
    prometheus = Prometheus()
    prometheus.answers = [(0, 100)] * 1000
    quick = sc.StopCondition(0.999, 14.4, 2.0, 20, 0.1)
    watcher = sc.Watcher(quick, run, {}, measure=prometheus, on_breach=dict)
    watcher.start()
    time.sleep(0.35)
    watcher.stop()
    polls = watcher.polls
    assert 2 <= polls <= 6 and watcher.ended_at is not None
    time.sleep(0.2)
    assert watcher.polls == polls, "no poll after stop"


def test_hooks_do_nothing_without_a_stop_condition(tmp_path: Path):
    run = RunContext(run_id="r", out_dir=tmp_path, ledger=Ledger())
    assert sc.validate(run, {"title": "t"}, {}) is None
    assert sc.preflight(run, {}) is None
    assert sc.start_watching(run, {}) is None
    assert sc.stop_watching(run) is None and sc.interrupt_reason(run) is None


# -- how an aborted run reads --------------------------------------------------------------

STOPPED = {
    "kind": "burn-rate",
    "reason": "stop condition: burn rate 35.2x > 14.4x over 30s at +12.3s",
    "at": 1000.0,
    "after_s": 12.3,
    "burn_rate": 35.2,
    "error_ratio": 0.0352,
    "requests": 412,
    "errors": 14,
    "cleanup": {"removed": ["f1"], "errors": []},
    "cleaned_up_at": 1000.4,
}
ENTRY = {
    "config": {**CONDITION.to_json()},
    "polls": 14,
    "judged_polls": 12,
    "prometheus_errors": 0,
    "max_burn_rate_seen": 35.2,
    "breached": True,
    "breached_at": 1000.0,
    "burn_rate": 35.2,
    "stopped_by": STOPPED,
    "samples": [],
}
FAULT = {"kind": "pod-kill", "victims": ["w"], "injected_at": 1.0, "removed_at": 2.0, "error": None}


def test_the_verdict_is_aborted_with_the_breach_and_outranks_failed():
    journal = {"status": "interrupted", "run": []}
    verdict = reach_verdict(journal, [FAULT], stop_condition=ENTRY)
    assert verdict["verdict"] == "aborted"
    assert verdict["reasons"] == [STOPPED["reason"]]
    failed = reach_verdict(journal, [FAULT], ["recovering faults: boom"], stop_condition=ENTRY)
    assert failed["verdict"] == "aborted" and "recovering faults: boom" in failed["reasons"]
    held = reach_verdict(
        journal | {"status": "completed"}, [FAULT], stop_condition=ENTRY | {"stopped_by": None}
    )
    assert held["verdict"] == "passed"


def test_prometheus_errors_while_polling_are_a_note():
    entry = ENTRY | {"stopped_by": None, "prometheus_errors": 2, "last_prometheus_error": "down"}
    verdict = reach_verdict({"status": "completed", "run": []}, [FAULT], stop_condition=entry)
    assert verdict["verdict"] == "passed"
    assert verdict["notes"] == [
        "stop condition: 2 of 14 polls got no answer from Prometheus (last: down)"
    ]


def test_the_report_shows_a_banner_for_a_stopped_run_and_a_line_for_a_held_one():
    section = stop_condition_section({"stop_condition": ENTRY})
    assert (
        section["stopped"] and section["headline"] == "burn rate 35.2x > 14.4x over 30s at +12.3s"
    )
    assert any("14 of 412 requests failed" in line for line in section["lines"])
    held = stop_condition_section({"stop_condition": ENTRY | {"stopped_by": None}})
    assert not held["stopped"] and "highest seen 35.2x in 14 polls" in held["headline"]
    assert stop_condition_section({"stop_condition": None}) is None
    journal = {
        "status": "interrupted",
        "experiment": {"title": "guarded"},
        "inference_chaos": {
            "verdict": "aborted",
            "reasons": [STOPPED["reason"]],
            "faults": [FAULT],
            "stop_condition": ENTRY,
        },
    }
    html = render_html(journal, None)
    assert 'class="verdict v-aborted"' in html and 'id="stop-condition"' in html
    assert "<title>ABORTED: guarded</title>" in html


def test_an_aborted_experiment_is_a_junit_failure_headed_by_the_breach():
    summary = {
        "experiments": [
            {
                "name": "guarded",
                "verdict": "aborted",
                "reasons": [STOPPED["reason"], "SLO missed: availability 91%"],
                "checks": [{"name": "availability-slo", "ok": False, "phase": "method"}],
            }
        ]
    }
    case = junit_tree(summary).find("testsuite/testcase")
    failure = case.find("failure")
    assert failure is not None and case.find("error") is None
    assert failure.get("type") == "aborted" and failure.get("message") == STOPPED["reason"]


def test_the_suite_keeps_the_aborted_verdict():
    journal = {"status": "interrupted", "inference_chaos": {"verdict": "aborted", "reasons": ["x"]}}
    assert verdict_of(journal, 1) == ("aborted", ["x"])


def test_a_bad_stop_condition_is_refused_before_chaos_toolkit_starts(tmp_path, capsys):
    import yaml

    from inference_chaos.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "version": "1.0.0",
                "title": "bad stop condition",
                "description": "x",
                "configuration": {"target": "local"},
                "stop_condition": {"slo": 1.5},
                "method": [
                    {
                        "name": "nothing",
                        "type": "action",
                        "provider": {"type": "python", "module": "os", "func": "getcwd"},
                    }
                ],
            }
        )
    )
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stop_condition.slo" in err and str(path) in err
