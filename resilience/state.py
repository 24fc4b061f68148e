"""The embedded cluster's state file: the one place every part learns pids, ports and labels.

The supervisor writes it; the fault backend, probes and CLI read it. Writes are atomic
(write to a temporary file, then rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


def home() -> Path:
    """Folder that holds the cluster's state, logs and Prometheus data."""
    return Path(os.environ.get("INFERENCE_CHAOS_HOME", "/tmp/inference-chaos"))


def state_path() -> Path:
    return home() / STATE_FILE


def read_state(path: Path | None = None) -> dict[str, Any] | None:
    """Return the state of the running cluster, or None when no cluster is up."""
    path = path or state_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None


def write_state(state: dict[str, Any], path: Path | None = None) -> None:
    path = path or state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


def remove_state(path: Path | None = None) -> None:
    path = path or state_path()
    path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid runs (a stopped one counts; a zombie does not:
    it is dead and only waits for its parent to collect it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
