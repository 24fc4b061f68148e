"""Which experiments a nightly run holds, the one cluster they share, and what each is told.

Pure logic, no processes: the suite picks experiments by name or by the `nightly` tag, starts
one embedded cluster big enough for all of them (the most nodes, GPUs per node and tasks any of
them declares) and hands each the same shape through its var file, so every experiment judges
the cluster that really runs rather than the one its file imagines.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXPERIMENTS_DIR = Path(__file__).resolve().parent
NIGHTLY_TAG = "nightly"
SHAPE_KEYS = ("nodes", "gpus_per_node", "tasks", "task_gpus")
SHAPE_DEFAULTS = {"nodes": 4, "gpus_per_node": 2, "tasks": 0, "task_gpus": 1}  # `up`'s defaults
# Seconds an experiment spends around its load and fault (process start, hypotheses, report,
# reset): 7 s on average over the catalogue on the 2-core reference machine, rounded up; only
# used until a history exists.
DEFAULT_OVERHEAD_S = 10.0


class SuiteError(Exception):
    """Bad input to the suite: a one-line message, and exit code 2."""


@dataclass
class Entry:
    """One experiment of the suite: its name, file, configuration, and why it cannot run."""

    name: str
    path: Path
    config: dict[str, Any]
    tags: list[str]
    problem: str | None = None


def load_entry(path: Path) -> Entry:
    """Read an experiment file; a file Chaos Toolkit would refuse keeps its one-line problem,
    so the suite records it as a failed experiment and goes on with the others."""
    from inference_chaos.cli import check_experiment

    problem = check_experiment(path)
    document: Any = None
    if problem is None:
        document = yaml.safe_load(path.read_text())
    document = document if isinstance(document, dict) else {}
    config = document.get("configuration") or {}
    tags = document.get("tags") or []
    return Entry(
        name=path.stem,
        path=path,
        config=dict(config) if isinstance(config, dict) else {},
        tags=[str(t) for t in tags] if isinstance(tags, list) else [],
        problem=problem,
    )


def select(
    names: Sequence[str], directory: Path = EXPERIMENTS_DIR, tag: str = NIGHTLY_TAG
) -> list[Entry]:
    """The named experiments (a file, or a name in `directory`), in the order given; with no
    names every `*.yaml` of `directory` tagged `tag` (`nightly`), in file-name order."""
    if not names:
        entries = [load_entry(p) for p in sorted(directory.glob("*.yaml"))]
        tagged = [e for e in entries if tag in e.tags]
        if not tagged:
            raise SuiteError(f"no experiment in {directory} is tagged '{tag}'")
        return tagged
    paths: list[Path] = []
    for name in names:
        path = resolve(name, directory)
        if path not in paths:
            paths.append(path)
    return [load_entry(p) for p in paths]


def resolve(name: str, directory: Path = EXPERIMENTS_DIR) -> Path:
    """`worker-kill` -> `<directory>/worker-kill.yaml`; an existing file is taken as it is."""
    given = Path(name)
    if given.is_file():
        return given.resolve()
    candidate = directory / f"{name}.yaml"
    if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
    raise SuiteError(f"no experiment named {name!r} (a file, or one of: {known})")


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SuiteError(f"{what}: {value!r} is not a whole number")
    try:
        number = int(str(value))
    except ValueError:
        raise SuiteError(f"{what}: {value!r} is not a whole number") from None
    return number


def cluster_shape(
    entries: Iterable[Entry], overrides: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """The one cluster every entry fits on: the most nodes, GPUs per node and tasks that any
    declares (defaults where none does); `--var` overrides of those keys win."""
    overrides = overrides or {}
    shape = dict(SHAPE_DEFAULTS)
    declared: dict[str, list[int]] = {k: [] for k in SHAPE_KEYS}
    for entry in entries:
        for key in SHAPE_KEYS:
            if key in entry.config and entry.config[key] not in ("", None):
                declared[key].append(_whole(entry.config[key], f"{entry.name}: {key}"))
    for key in SHAPE_KEYS:
        if key in overrides:
            shape[key] = _whole(overrides[key], f"--var {key}")
        elif declared[key]:
            shape[key] = max(declared[key])
    sizes = {
        _whole(e.config.get("task_gpus", 1), f"{e.name}: task_gpus")
        for e in entries
        if int(e.config.get("tasks") or 0) > 0
    }
    if len(sizes) > 1 and "task_gpus" not in overrides:
        raise SuiteError(
            f"the experiments ask for tasks of different sizes ({sorted(sizes)} GPUs): "
            "run them in separate suites"
        )
    return shape


def var_file(
    entry: Entry, shape: Mapping[str, int], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The `--var-file` document for one experiment: the suite's cluster shape and the `--var`
    overrides, each only for a key the experiment declares (Chaos Toolkit ignores the rest,
    so passing them would only hide a typo)."""
    values: dict[str, Any] = {k: v for k, v in shape.items() if k in entry.config}
    if int(shape.get("tasks") or 0) == 0:
        values.pop("tasks", None)
        values.pop("task_gpus", None)
    values.update({k: v for k, v in (overrides or {}).items() if k in entry.config})
    return {"configuration": values}


def parse_vars(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs as typed values (`14` an int, `5s` a string, `true` a bool)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SuiteError(f"--var takes key=value, got {pair!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def check_overrides(entries: Sequence[Entry], overrides: Mapping[str, Any]) -> None:
    """A `--var` that no selected experiment declares is a typo, not a setting."""
    declared = {k for e in entries for k in e.config} | set(SHAPE_KEYS)
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise SuiteError(
            f"--var {', '.join(unknown)}: no selected experiment declares "
            + ("it" if len(unknown) == 1 else "them")
        )


def seconds(value: Any) -> float:
    """`10s`, `2m`, `36` or `1.5` as seconds; anything else counts as 0."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m)?\s*", str(value))
    if not match:
        return 0.0
    number = float(match.group(1))
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


def estimate_s(
    config: Mapping[str, Any], past: Sequence[float] = (), overhead_s: float = DEFAULT_OVERHEAD_S
) -> float:
    """How long an experiment will take: the median of its past durations when there are any,
    else its load (or its warm-up, fault and settling pauses) plus the usual overhead."""
    if past:
        return float(statistics.median(past))
    if config.get("load_duration") not in (None, ""):
        active = seconds(config["load_duration"])
    else:
        active = sum(seconds(config.get(k, 0)) for k in ("warmup_s", "fault_duration", "settle_s"))
    return active + overhead_s
