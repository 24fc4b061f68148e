"""How the nightly suite reads one run's outcome, and what the night's exit code is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from experiments.suite import NightlyOptions, _finish, run_nightly
from experiments.suite_catalogue import SuiteError
from experiments.suite_outputs import EXIT_CANNOT_RUN, EXIT_FAILED, EXIT_PASSED, exit_code
from experiments.suite_reset import RUN_COOKIE, ResetOutcome, initial_spec, processes_with_cookie
from experiments.suite_run import _collect, phase_times, verdict_of


def night(*verdicts: str, regressions: list | None = None) -> dict:
    return {
        "experiments": [{"name": f"e{i}", "verdict": v} for i, v in enumerate(verdicts)],
        "regressions": regressions or [],
    }


def test_exit_code_is_zero_only_when_everything_passed_and_nothing_regressed():
    assert exit_code(night("passed", "passed")) == EXIT_PASSED
    for bad in ("deviated", "failed", "interrupted", "crashed"):
        assert exit_code(night("passed", bad)) == EXIT_FAILED
    regressed = night("passed", regressions=[{"experiment": "e0", "figure": "ttft_p95_s"}])
    assert exit_code(regressed) == EXIT_FAILED


def test_exit_code_two_when_the_suite_itself_could_not_run():
    assert exit_code(night("passed"), suite_problem="the cluster could not be restarted") == 2
    assert exit_code(night()) == EXIT_CANNOT_RUN


def test_the_verdict_comes_from_the_control_and_a_missing_one_is_a_crash():
    journal = {"inference_chaos": {"verdict": "deviated", "reasons": ["SLO missed"]}}
    assert verdict_of(journal, 1) == ("deviated", ["SLO missed"])
    assert verdict_of({"status": "interrupted"}, 130)[0] == "interrupted"
    verdict, reasons = verdict_of(None, -6)
    assert verdict == "crashed" and "exit code -6" in reasons[0]


def test_phase_times_split_the_wall_time_at_the_journal_s_marks():
    journal = {
        "start": "2026-11-29T00:00:10+00:00",
        "end": "2026-11-29T00:01:00+00:00",
        "run": [
            {"start": "2026-11-29T00:00:14+00:00", "end": "2026-11-29T00:00:15+00:00"},
            {"start": "2026-11-29T00:00:40+00:00", "end": "2026-11-29T00:00:50+00:00"},
        ],
        "steady_states": {
            "after": {
                "probes": [
                    {"start": "2026-11-29T00:00:52+00:00", "end": "2026-11-29T00:00:53+00:00"},
                    {"start": "2026-11-29T00:00:53+00:00", "end": "2026-11-29T00:00:55+00:00"},
                ]
            }
        },
    }
    t0 = 1795910400.0  # 2026-11-29T00:00:00Z
    assert phase_times(journal, t0 + 8, t0 + 62) == {
        "startup": 2.0,
        "before": 4.0,
        "method": 38.0,  # up to the hypothesis after: the load's tail and the pauses count
        "after": 3.0,
        "teardown": 7.0,
    }
    assert phase_times({}, t0, t0 + 5)["method"] == 0.0


def test_a_failed_reset_fails_a_passed_experiment_and_says_why():
    result = {
        "name": "x",
        "verdict": "passed",
        "reasons": [],
        "started_at": 0.0,
        "phases_s": {"method": 10.0},
    }
    outcome = ResetOutcome(False, 30.0, ["proxy faults cleared"], ["worker-n0-g0 is stopped"])
    finished = _finish(dict(result), outcome)
    assert finished["verdict"] == "failed"
    assert "worker-n0-g0 is stopped" in finished["reasons"][-1]
    assert finished["phases_s"]["reset"] == 30.0
    assert finished["overhead_s"] == pytest.approx(finished["duration_s"] - 10.0, abs=0.01)
    kept = _finish(dict(result, verdict="deviated"), outcome)
    assert kept["verdict"] == "deviated"


def test_the_run_folder_moves_under_the_suite_and_its_journal_follows(tmp_path):
    staging, folder = tmp_path / ".staging" / "worker-kill", tmp_path / "worker-kill"
    run = staging / "runs" / "20261129-000000-a-gpu-worker-dies"
    run.mkdir(parents=True)
    ours = {"verdict": "passed", "run_dir": str(run.resolve())}
    ours["records_path"] = str(run.resolve() / "records.jsonl")
    (run / "journal.json").write_text(json.dumps({"inference_chaos": ours}))
    (staging / "console.log").write_text("chaos said things\n")
    journal = _collect(staging, folder)
    assert journal["inference_chaos"]["run_dir"] == str(folder.resolve())
    assert journal["inference_chaos"]["records_path"] == str(folder.resolve() / "records.jsonl")
    assert (folder / "console.log").exists() and not staging.exists()


def test_a_run_that_wrote_nothing_still_gets_its_folder(tmp_path):
    staging = tmp_path / ".staging" / "crash"
    staging.mkdir(parents=True)
    assert _collect(staging, tmp_path / "crash") is None
    assert (tmp_path / "crash").is_dir()


def test_stray_processes_are_found_by_the_cookie_in_their_environment(tmp_path):
    alive = os.getppid()  # any live pid that is not this process
    (tmp_path / str(alive)).mkdir()
    (tmp_path / str(alive) / "environ").write_bytes(f"A=1\0{RUN_COOKIE}=abc\0".encode())
    (tmp_path / "99999999").mkdir()  # a dead pid that carries it
    (tmp_path / "99999999" / "environ").write_bytes(f"{RUN_COOKIE}=abc\0".encode())
    (tmp_path / "self").mkdir()
    assert processes_with_cookie("abc", tmp_path) == [alive]
    assert processes_with_cookie("abcd", tmp_path) == []


def test_the_initial_spec_is_what_a_first_leader_writes():
    assert initial_spec(2, 1) == {
        "tasks": [{"id": "task-0", "gpus": 1}, {"id": "task-1", "gpus": 1}]
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"target": "kubernetes", "variables": ["kubeconfig=/nonexistent/kubeconfig"]},
            "kubeconfig /nonexistent/kubeconfig does not exist",
        ),
        ({"experiments": ["no-such-experiment"]}, "no experiment named"),
        ({"variables": ["load_user=3"]}, "no selected experiment declares"),
        ({"history": Path("/nonexistent/history")}, "no such folder"),
    ],
)
def test_bad_input_stops_the_suite_before_anything_starts(options, message, tmp_path):
    with pytest.raises(SuiteError, match=message):
        run_nightly(NightlyOptions(out=tmp_path / "out", **options))
    assert not (tmp_path / "out").exists()


def test_a_tolerance_for_an_unknown_figure_is_bad_input(tmp_path):
    tolerances = tmp_path / "tolerances.yaml"
    tolerances.write_text("ttft_p95: {relative: 0.3}\n")
    with pytest.raises(SuiteError, match="ttft_p95"):
        run_nightly(NightlyOptions(tolerances=tolerances, out=tmp_path / "out"))


def test_a_bad_name_on_the_command_line_is_exit_two_with_one_line(capsys, tmp_path):
    from inference_chaos.cli import main

    assert main(["nightly", "worker-kill", "wroker-kill", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("inference-chaos: no experiment named")
    assert "'wroker-kill'" in err
