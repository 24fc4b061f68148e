"""The pytest plugin: experiments collected as items, selected by tag, run and judged."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.pytest_plugin import chaos_var_argument
from resilience.state import read_state
from tests.integration.cluster_fixtures import chaos_home

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
# the raft experiment on the smallest cluster: one node, one GPU, three store replicas
SMALL = ["--chaos-var", "nodes=1", "--chaos-var", "gpus_per_node=1"]
PLUGIN = ["-p", "experiments.pytest_plugin"]  # also loaded by its entry point; same name

MINIMAL_EXPERIMENT = """\
version: 1.0.0
title: {title}
description: a method that only runs `true`
tags: {tags}
method:
  - name: nothing
    type: action
    provider: {{type: process, path: "true"}}
"""


def catalogue_by_tag(tag: str) -> list[str]:
    """The oracle: experiment names whose own file lists the tag."""
    names = []
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and "method" in doc and tag in (doc.get("tags") or []):
            names.append(path.stem)
    return names


def run_pytest(args: list[str], env: dict[str, str], timeout: float = 120.0) -> tuple[int, str]:
    """pytest in a subprocess; on a timeout it gets SIGINT, so the plugin stops its run cleanly."""
    proc = subprocess.Popen(
        [*PYTEST, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        raise AssertionError(f"pytest took longer than {timeout} s:\n{out}") from None
    return proc.returncode, out


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        ("nodes=1", "nodes:int=1"),
        ("failover_bound_s=0.001", "failover_bound_s:float=0.001"),
        ("raft_kind=etcd", "raft_kind=etcd"),
        ("label=a=b", "label=a=b"),
        ("history_keys:float=5", "history_keys:float=5"),
    ],
)
def test_chaos_var_is_passed_typed(given: str, passed_on: str) -> None:
    assert chaos_var_argument(given) == passed_on


@pytest.mark.parametrize("bad", ["nodes", "=1"])
def test_chaos_var_without_key_and_value_is_a_usage_error(bad: str) -> None:
    with pytest.raises(pytest.UsageError, match="expected KEY=VALUE"):
        chaos_var_argument(bad)


@pytest.mark.parametrize("tag", ["raft", "gpu"])
def test_marker_selects_the_catalogue_by_tag(tag: str) -> None:
    expected = catalogue_by_tag(tag)
    assert expected, f"no experiment in the catalogue is tagged {tag}"
    code, out = run_pytest(
        ["experiments/", "-m", tag, "--collect-only", "-q", "--strict-markers", "-W", "error"],
        env=dict(os.environ),
        timeout=60,
    )
    assert code == 0, out
    collected = re.findall(r"^experiments/([\w-]+)\.yaml::([\w-]+)$", out, re.M)
    assert [name for name, _ in collected] == expected
    assert all(file == item for file, item in collected)
    total = len(catalogue_by_tag("nightly"))  # every experiment of ours is nightly
    assert f"{len(expected)}/{total} tests collected ({total - len(expected)} deselected)" in out
    assert "warning" not in out.lower()


def test_collects_only_experiments_under_an_experiments_folder(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".toml", pyproject='[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    pytester.mkdir("experiments")
    pytester.mkdir("tests")
    pytester.mkdir("other")
    (pytester.path / "experiments/leader.yaml").write_text(
        MINIMAL_EXPERIMENT.format(title="leader", tags="[raft, pod-kill]")
    )
    (pytester.path / "experiments/card.yml").write_text(
        MINIMAL_EXPERIMENT.format(title="card", tags="[gpu]")
    )
    (pytester.path / "experiments/settings.yaml").write_text("nodes: 4\n")  # no method
    (pytester.path / "other/elsewhere.yaml").write_text(
        MINIMAL_EXPERIMENT.format(title="elsewhere", tags="[raft]")
    )
    (pytester.path / "tests/test_plain.py").write_text("def test_plain():\n    assert True\n")

    everything = pytester.runpytest(*PLUGIN, ".", "--collect-only", "-q")
    assert sorted(everything.outlines[:3]) == [
        "experiments/card.yml::card",
        "experiments/leader.yaml::leader",
        "tests/test_plain.py::test_plain",
    ]

    # a subprocess: in-process, `-W error` would also trip over modules this session imported
    raft = pytester.runpytest_subprocess(
        *PLUGIN, ".", "-m", "raft", "--collect-only", "-q", "--strict-markers", "-W", "error"
    )
    assert raft.ret == 0
    assert raft.outlines[0] == "experiments/leader.yaml::leader"
    assert "1/3 tests collected (2 deselected)" in raft.stdout.str()
    dashed = pytester.runpytest(*PLUGIN, ".", "-m", "pod-kill and experiment", "--collect-only")
    dashed.assert_outcomes()
    assert "<ExperimentItem leader>" in dashed.stdout.str()
    assert "card" not in dashed.stdout.str()

    default = pytester.runpytest(*PLUGIN, "--collect-only", "-q")  # testpaths = tests
    assert default.outlines[0] == "tests/test_plain.py::test_plain"
    assert "1 test collected" in default.stdout.str()
    assert ".yaml" not in default.stdout.str() and ".yml" not in default.stdout.str()


def test_unreadable_experiment_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.mkdir("experiments")
    (pytester.path / "experiments/broken.yaml").write_text("method: [\n  - name: x\n  oops: {\n")
    result = pytester.runpytest(*PLUGIN, "experiments", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*experiments/broken.yaml: not a readable experiment:*"])


def test_run_without_a_verdict_fails_with_the_run_s_last_lines(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """An experiment without our control leaves no verdict: that is a failure, not a pass."""
    pytester.mkdir("experiments")
    (pytester.path / "experiments/bare.yaml").write_text(
        MINIMAL_EXPERIMENT.format(title="bare", tags="[smoke]")
    )
    out = tmp_path / "runs"
    result = pytester.runpytest_subprocess(*PLUGIN, "experiments", "--chaos-out", str(out))
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "bare: NO VERDICT (exit 0," in text
    assert "no verdict in a journal; the run's last lines:" in text
    assert "Experiment ended with status: completed" in text
    assert f"log:     {out / 'bare' / 'bare.log'}" in text
    assert (out / "bare" / "bare.log").is_file()


def test_a_passing_experiment_passes(tmp_path: Path) -> None:
    env = {**os.environ, "INFERENCE_CHAOS_HOME": str(tmp_path / "home")}
    out = tmp_path / "runs"
    junit = tmp_path / "junit.xml"
    code, text = run_pytest(
        ["experiments/raft-leader-kill.yaml", "--chaos-out", str(out), *SMALL]
        + ["--junitxml", str(junit)],
        env,
    )
    assert code == 0, text
    assert "1 passed" in text
    (run_dir,) = [p for p in (out / "raft-leader-kill").iterdir() if p.is_dir()]
    journal = json.loads((run_dir / "journal.json").read_text())
    assert journal["inference_chaos"]["verdict"] == "passed"
    assert journal["inference_chaos"]["cluster_owned"] is True
    assert (run_dir / "report.html").is_file()
    assert re.search(rf"raft-leader-kill +passed +[\d.]+ s +{re.escape(str(run_dir))}", text)
    assert f'name="report" value="{run_dir / "report.html"}"' in junit.read_text()
    with chaos_home(tmp_path / "home"):
        assert read_state() is None, "the run left its cluster up"


def test_a_deviating_experiment_fails_with_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "INFERENCE_CHAOS_HOME": str(tmp_path / "home")}
    out = tmp_path / "runs"
    code, text = run_pytest(
        ["experiments/raft-leader-kill.yaml", "--chaos-out", str(out), *SMALL]
        + ["--chaos-var", "failover_bound_s=0.001"],
        env,
    )
    assert code == 1, text
    assert "1 failed" in text
    failure = text[text.index("= FAILURES =") : text.index("chaos experiments")]
    assert re.search(r"raft-leader-kill: DEVIATED \(exit 1, [\d.]+ s\)", failure), failure
    missed = re.search(r"SLO missed: raft-failover: new leader after ([\d.]+) s", failure)
    assert missed, failure
    assert float(missed.group(1)) > 0.001
    assert "(bound 0.001 s)" in failure
    report = re.search(r"^report:  (\S+)$", failure, re.M)
    assert report and Path(report.group(1)).is_file()
    assert len(failure.strip().splitlines()) <= 8, "the failure should be a few lines"
    assert "Traceback" not in failure
    with chaos_home(tmp_path / "home"):
        assert read_state() is None, "the run left its cluster up"


def test_plain_pytest_still_collects_only_tests() -> None:
    """The repository's own `pytest` (testpaths = tests) does not pick up the catalogue."""
    code, out = run_pytest(["--collect-only", "-q"], dict(os.environ), timeout=90)
    nodeids = re.findall(r"^(\S+::\S+)$", out, re.M)
    assert len(nodeids) > 100, out[-2000:]
    assert all(n.startswith("tests/") for n in nodeids), [n for n in nodeids if ".yaml" in n]
