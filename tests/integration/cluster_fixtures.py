"""Shared helpers for tests that start the real embedded cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from resilience import launcher
from resilience.state import pid_alive


@contextlib.contextmanager
def chaos_home(path: Path) -> Iterator[Path]:
    """Point every part (and every child process) at a private state folder."""
    old = os.environ.get("INFERENCE_CHAOS_HOME")
    os.environ["INFERENCE_CHAOS_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("INFERENCE_CHAOS_HOME", None)
        else:
            os.environ["INFERENCE_CHAOS_HOME"] = old


@contextlib.contextmanager
def running_cluster(home: Path, nodes: int = 2, gpus: int = 2, **kwargs) -> Iterator[dict]:
    """A cluster that is always brought down, and proven down, afterwards."""
    with chaos_home(home):
        state = launcher.up(launcher.UpOptions(nodes=nodes, gpus_per_node=gpus, **kwargs))
        try:
            yield state
        finally:
            final = launcher.status() or state
            outcome = launcher.down()
            pids = [p["pid"] for p in final["processes"]] + [final["supervisor"]["pid"]]
            assert not [pid for pid in pids if pid and pid_alive(pid)], "processes left behind"
            assert outcome.get("ports_still_bound", []) == []


def process(state: dict, name: str) -> dict:
    return next(p for p in state["processes"] if p["name"] == name)


def link_port(state: dict, target: str) -> int:
    return next(link["listen_port"] for link in state["links"] if link["target"] == target)
