"""pytest plugin: `pytest experiments/` runs every Chaos Toolkit experiment as one test item.

A test run is the same `inference-chaos run FILE` a person types, in a subprocess, so a
deviation fails the item with the figures that missed and the report's path, and `-m raft`
or `-m gpu` picks experiments by their `tags`. Registered as the entry point
`experiments.pytest_plugin` (or load it with `-p experiments.pytest_plugin`); it collects
nothing outside an `experiments/` folder, so a plain `pytest` (testpaths = tests) is unchanged.

Options: `--chaos-out DIR` (run folders; default pytest's tmp), `--chaos-var KEY=VALUE`
(repeatable, passed to every experiment as `--var`; a number is passed typed, `KEY:TYPE=VALUE`
as given), `--chaos-timeout SECONDS` (per experiment; default 900).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

EXPERIMENTS_DIR = "experiments"
EXPERIMENT_MARKER = "experiment"
DEFAULT_TIMEOUT_S = 900.0
INTERRUPT_GRACE_S = 60.0  # the control removes faults and stops its cluster on SIGINT
MAX_REASON_LINES = 8
LOG_TAIL_LINES = 15
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESULTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
_VARS_KEY = pytest.StashKey[list[str]]()


class ExperimentNotPassed(Exception):
    """The experiment ran (or tried to) and its verdict is not `passed`."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


# --- Options and configuration ---------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("inference-chaos", "Chaos Toolkit experiments as test items")
    group.addoption(
        "--chaos-out",
        metavar="DIR",
        default=None,
        help="folder for the experiments' run folders (default: pytest's tmp folder)",
    )
    group.addoption(
        "--chaos-var",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="configuration value passed to every experiment as `--var` (repeatable)",
    )
    group.addoption(
        "--chaos-timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"longest one experiment may run (default {DEFAULT_TIMEOUT_S:.0f})",
    )


def chaos_var_argument(text: str) -> str:
    """`KEY=VALUE` as Chaos Toolkit's `--var`: typed when the value is a number (a bound
    of "0.5" given as a string would break the probe doing arithmetic with it)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise pytest.UsageError(f"--chaos-var {text!r}: expected KEY=VALUE")
    if ":" in key:  # KEY:TYPE=VALUE, Chaos Toolkit's own typed form
        return text
    for kind, cast in (("int", int), ("float", float)):
        try:
            cast(value)
        except ValueError:
            continue
        return f"{key}:{kind}={value}"
    return text


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS_KEY] = []
    config.stash[_VARS_KEY] = [chaos_var_argument(v) for v in config.option.chaos_var]
    register_marker(config, EXPERIMENT_MARKER, "a Chaos Toolkit experiment run as a test item")
    catalogue = config.rootpath / EXPERIMENTS_DIR
    if catalogue.is_dir():  # so `pytest --markers` lists the catalogue's tags
        for path in sorted(catalogue.glob("*.yaml")):
            experiment = _load(path)
            if _is_experiment(experiment):
                for tag in _tags(experiment):
                    register_marker(config, tag)


def register_marker(config: pytest.Config, name: str, description: str = "") -> None:
    """Register a marker once, so `-m NAME` and `--strict-markers` accept it."""
    known = {line.split(":", 1)[0].split("(")[0].strip() for line in config.getini("markers")}
    if name not in known:
        text = description or f"experiments tagged {name!r} (inference-chaos)"
        config.addinivalue_line("markers", f"{name}: {text}")


# --- Collection ------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _is_experiment(document: Any) -> bool:
    return isinstance(document, dict) and "method" in document


def _tags(experiment: dict[str, Any]) -> list[str]:
    tags = experiment.get("tags") or []
    if not isinstance(tags, list):
        return []
    # a marker name may not start with "_" and must be a single `-m` word
    return [str(t) for t in tags if str(t) and not str(t).startswith("_") and " " not in str(t)]


def _under_experiments_dir(file_path: Path, rootpath: Path) -> bool:
    try:
        parts = file_path.parent.relative_to(rootpath).parts
    except ValueError:
        parts = file_path.parent.parts
    return EXPERIMENTS_DIR in parts


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if not _under_experiments_dir(file_path, parent.config.rootpath):
        return None
    try:
        document = yaml.load(file_path.read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        # meant as an experiment most likely: a collection error says what is wrong
        return ExperimentFile.from_parent(parent, path=file_path, document=None, problem=str(exc))
    if not _is_experiment(document):
        return None
    return ExperimentFile.from_parent(parent, path=file_path, document=document, problem=None)


class ExperimentFile(pytest.File):
    """One experiment file: one item."""

    def __init__(self, *, document: dict[str, Any] | None, problem: str | None, **kw: Any):
        super().__init__(**kw)
        self.document = document
        self.problem = problem

    def collect(self) -> Iterator[pytest.Item]:
        if self.document is None:
            raise self.CollectError(f"{self.path}: not a readable experiment: {self.problem}")
        yield ExperimentItem.from_parent(self, name=self.path.stem, experiment=self.document)


class ExperimentItem(pytest.Item):
    """Runs `inference-chaos run FILE` and judges it by the verdict in the journal."""

    def __init__(self, *, experiment: dict[str, Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.experiment = experiment
        config = self.config
        for tag in [EXPERIMENT_MARKER, *_tags(experiment)]:
            register_marker(config, tag)
            self.add_marker(tag)
        if config.pluginmanager.hasplugin("timeout"):  # pytest-timeout: ours governs
            self.add_marker(pytest.mark.timeout(config.option.chaos_timeout + INTERRUPT_GRACE_S))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"experiment {self.name}: {self.experiment.get('title', '')}"

    def runtest(self) -> None:
        out_root = self._out_root()
        log_path = out_root / f"{self.name}.log"
        before = {p for p in out_root.iterdir() if p.is_dir()}
        argv = [*_inference_chaos_command(), "run", str(self.path)]
        for var in self.config.stash[_VARS_KEY]:
            argv += ["--var", var]
        env = {
            **os.environ,
            "INFERENCE_CHAOS_OUT": str(out_root),
            "INFERENCE_CHAOS_LOG": str(out_root / f"{self.name}.chaostoolkit.log"),
        }
        started = time.monotonic()
        exit_code = _run(
            argv, env, self.config.rootpath, log_path, self.config.option.chaos_timeout
        )
        duration = time.monotonic() - started
        run_dir = _new_run_dir(out_root, before)
        journal = _read_journal(run_dir)
        outcome = (journal or {}).get("inference_chaos") or {}
        verdict = outcome.get("verdict") or ("timed out" if exit_code is None else "no verdict")
        report = run_dir / "report.html" if run_dir else None
        result = {
            "name": self.name,
            "verdict": verdict,
            "exit_code": exit_code,
            "duration_s": round(duration, 1),
            "report": str(report) if report and report.exists() else None,
        }
        self.config.stash[_RESULTS_KEY].append(result)
        self.user_properties += [(k, v) for k, v in result.items() if k != "name"]
        if verdict != "passed":
            raise ExperimentNotPassed(
                _failure_text(self.name, result, journal or {}, run_dir, log_path, exit_code)
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:
        if isinstance(excinfo.value, ExperimentNotPassed):
            return excinfo.value.summary
        return super().repr_failure(excinfo, style=style)

    def _out_root(self) -> Path:
        chosen = self.config.option.chaos_out
        if chosen:
            root = Path(chosen).expanduser().resolve() / self.name
            root.mkdir(parents=True, exist_ok=True)
            return root
        factory = getattr(self.config, "_tmp_path_factory", None)  # pytest's tmp plugin
        if factory is not None:
            return factory.mktemp(self.name, numbered=True)
        return Path(tempfile.mkdtemp(prefix=f"chaos-{self.name}-"))


def _inference_chaos_command() -> list[str]:
    """The CLI beside this interpreter (the virtualenv's), not whatever PATH finds first."""
    bin_dir = os.path.dirname(sys.executable)
    found = shutil.which("inference-chaos", path=bin_dir)
    return [found] if found else [sys.executable, "-m", "inference_chaos.cli"]


def _run(argv: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float) -> int | None:
    """The exit code, or None on timeout. Any interruption (Ctrl-C, pytest-timeout) stops
    the run the way a person would: SIGINT first, so the control removes its faults."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _new_run_dir(out_root: Path, before: set[Path]) -> Path | None:
    created = [p for p in out_root.iterdir() if p.is_dir() and p not in before]
    return max(created, key=lambda p: p.stat().st_mtime) if created else None


def _read_journal(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None:
        return None
    try:
        return json.loads((run_dir / "journal.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _failure_text(
    name: str,
    result: dict[str, Any],
    journal: dict[str, Any],
    run_dir: Path | None,
    log_path: Path,
    exit_code: int | None,
) -> str:
    """A few lines: the verdict, why (with the figures), and where to look."""
    outcome = journal.get("inference_chaos") or {}
    ended = "timed out" if exit_code is None else f"exit {exit_code}"
    lines = [f"{name}: {result['verdict'].upper()} ({ended}, {result['duration_s']:.1f} s)"]
    reasons = [str(r) for r in outcome.get("reasons") or []]
    reasons += _missed_hypothesis_probes(journal)
    lines += [f"  {r}" for r in reasons[:MAX_REASON_LINES]]
    if len(reasons) > MAX_REASON_LINES:
        lines.append(f"  ... and {len(reasons) - MAX_REASON_LINES} more")
    lines += [f"  note: {n}" for n in outcome.get("notes") or []]
    if not outcome:  # no verdict at all: the run's own last words say why
        tail = _tail(log_path, LOG_TAIL_LINES)
        lines += ["  no verdict in a journal; the run's last lines:", *[f"    {t}" for t in tail]]
    if result["report"]:
        lines.append(f"report:  {result['report']}")
    if run_dir is not None:
        lines.append(f"journal: {run_dir / 'journal.json'}")
    lines.append(f"log:     {log_path}")
    return "\n".join(lines)


def _missed_hypothesis_probes(journal: dict[str, Any]) -> list[str]:
    """The verdict names a hypothesis probe that missed its tolerance; this shows what it saw."""
    lines = []
    for phase in ("before", "after"):
        state = (journal.get("steady_states") or {}).get(phase) or {}
        for run in state.get("probes") or []:
            if run.get("tolerance_met") is False:
                name = (run.get("activity") or {}).get("name", "probe")
                lines.append(f"{phase} hypothesis, {name} saw: {_short(run.get('output'))}")
    return lines


def _short(output: Any, limit: int = 200) -> str:
    if isinstance(output, dict) and isinstance(output.get("summary"), str):
        text = output["summary"]
    else:
        text = json.dumps(output, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(path: Path, count: int) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines()[-count:]]


# --- Summary ---------------------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS_KEY, [])
    if not results:
        return
    terminalreporter.section("chaos experiments")
    for r in results:
        where = r["report"] or "no report"
        terminalreporter.write_line(
            f"{r['name']:<28} {r['verdict']:<11} {r['duration_s']:>7.1f} s  {where}"
        )
