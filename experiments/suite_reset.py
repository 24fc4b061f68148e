"""Between two experiments of the suite: undo whatever the last one left, then prove the cluster
whole before the next one starts.

An experiment's own rollbacks should leave nothing behind, but the suite does not take that on
trust: a crashed run skips its rollbacks, and a fault that outlives its experiment would be
blamed on the next one. So the reset removes every kind of leftover the harness can make
(ledger faults, proxy rules, held or stopped processes, GPU fault state, cordons, an autoscale
policy, a changed replica count, nodes added for a flood, stray processes of the run) and then
checks the same list from outside until it is clean or the deadline passes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from resilience.state import home, pid_alive, read_state
from resilience.store_client import Store, StoreUnavailable

SCHEDULE_KEY = "nodes.schedule"
POLICY_KEY = "autoscale.policy"
SPEC_KEY = "tasks.spec"
RUN_COOKIE = "INFERENCE_CHAOS_SUITE_RUN"  # in the environment of everything one run starts


@dataclass
class ResetOutcome:
    ok: bool
    seconds: float
    actions: list[str] = field(default_factory=list)  # what had to be undone
    problems: list[str] = field(default_factory=list)  # what was still wrong at the deadline


def initial_spec(tasks: int, task_gpus: int) -> dict[str, Any]:
    """The `tasks.spec` a first controller leader writes (docs/internals.md)."""
    return {"tasks": [{"id": f"task-{i}", "gpus": task_gpus} for i in range(tasks)]}


def _client() -> httpx.Client:
    return httpx.Client(timeout=2.0, trust_env=False)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


# -- stray processes of one run ------------------------------------------------------------------
def processes_with_cookie(cookie: str, proc: Path = Path("/proc")) -> list[int]:
    """Live pids whose environment carries `RUN_COOKIE=cookie`: whatever one experiment's run
    started, however it detached (Locust runs in its own session, so a process group is not
    enough; the environment is inherited by every descendant)."""
    needle = f"{RUN_COOKIE}={cookie}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def kill_strays(cookie: str, grace_s: float = 3.0) -> list[str]:
    """SIGTERM, then SIGKILL, every process left by one run; says which it had to stop."""
    pids = processes_with_cookie(cookie)
    described = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
        except OSError:
            cmd = "?"
        described.append(f"pid {pid} ({cmd.strip()})")
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
    return described


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- undo ---------------------------------------------------------------------------------------
def ledger_files(ignore: Collection[str] = ()) -> list[Path]:
    """The mirrored ledgers of this cluster's runs: those that were there before the suite
    started (runs against an earlier cluster) are left alone."""
    return [p for p in sorted((home() / "faults").glob("*.json")) if p.name not in ignore]


def recover_ledgers(ignore: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """`inference-chaos recover`: every active record of every mirrored ledger removed."""
    from experiments.backends import BackendError, backend_for
    from experiments.ledger import Ledger

    removed, errors = [], []
    for path in ledger_files(ignore):
        try:
            ledger = Ledger.load(path)
        except (OSError, ValueError, TypeError) as exc:
            errors.append(f"{path.name}: unreadable ledger: {exc}")
            continue
        for record in ledger.active():
            try:
                backend_for({"target": record.backend}).recover(record)
                ledger.mark_removed(record, error="removed by the nightly suite's reset")
                removed.append(f"fault {record.kind} on {', '.join(record.victims)}")
            except (BackendError, httpx.HTTPError, OSError) as exc:
                errors.append(f"{record.kind} {record.id}: {exc}")
    return removed, errors


def undo_leftovers(
    state: dict[str, Any], shape: Mapping[str, int], client: httpx.Client, remove_nodes: bool
) -> list[str]:
    """One pass over every kind of leftover; returns what it changed. Nodes added for a flood
    are the controller's to remove once the policy is gone and no task runs there; the suite
    removes them itself (`remove_nodes`) only when the controller has not."""
    from resilience.worker import GpuState

    done: list[str] = []
    proxy = state.get("proxy_control_url")
    if proxy and client.get(f"{proxy}/faults").json():
        client.delete(f"{proxy}/faults").raise_for_status()
        done.append("proxy faults cleared")
    supervisor = state["supervisor"]["control_url"]
    healthy_gpu = dataclasses.asdict(GpuState())
    for p in state["processes"]:
        pid = p.get("pid")
        if pid and _proc_state(pid) in ("T", "t"):
            _signal(pid, signal.SIGCONT)
            done.append(f"{p['name']} continued (was stopped)")
        if p.get("held") or not (pid and pid_alive(pid)):
            client.post(f"{supervisor}/processes/{p['name']}/release").raise_for_status()
            done.append(f"{p['name']} released")
        if p["labels"].get("role") == "worker" and pid and pid_alive(pid):
            url = f"http://127.0.0.1:{p['ports']['http']}/fault"
            try:
                if client.get(url).json() != healthy_gpu:
                    client.delete(url).raise_for_status()
                    done.append(f"{p['name']} GPU fault state reset")
            except (httpx.HTTPError, ValueError):
                pass  # checked again below
    endpoints = state.get("raft_endpoints") or []
    if endpoints and int(shape.get("tasks") or 0) > 0:
        store = Store(list(endpoints))
        if store.get(POLICY_KEY) is not None:
            store.delete(POLICY_KEY)
            done.append(f"{POLICY_KEY} deleted")
        if store.get(SCHEDULE_KEY):
            store.put(SCHEDULE_KEY, {})
            done.append(f"{SCHEDULE_KEY} cleared")
        spec = store.get(SPEC_KEY) or {}
        if len(spec.get("tasks") or []) != int(shape["tasks"]):
            store.put(SPEC_KEY, initial_spec(int(shape["tasks"]), int(shape["task_gpus"])))
            done.append(f"{SPEC_KEY} back to {shape['tasks']} tasks")
    for node in state.get("added_nodes") or [] if remove_nodes else []:
        r = client.delete(f"{supervisor}/nodes/{node}", timeout=15.0)
        if r.status_code == 200:
            done.append(f"{node} (added at run time) removed")
    return done


# -- check --------------------------------------------------------------------------------------
def cluster_problems(
    shape: Mapping[str, int], client: httpx.Client, ignore: Collection[str] = ()
) -> list[str]:
    """Everything that is not as a fresh cluster has it; empty when the cluster is whole."""
    from experiments.ledger import Ledger
    from resilience.worker import GpuState

    state = read_state()
    if not state or not state.get("ready"):
        return ["the embedded cluster is not running"]
    problems: list[str] = []
    for path in ledger_files(ignore):
        try:
            active = Ledger.load(path).active()
        except (OSError, ValueError, TypeError):
            continue
        problems += [f"fault {r.kind} {r.id} still active in {path.name}" for r in active]
    healthy_gpu = dataclasses.asdict(GpuState())
    for p in state["processes"]:
        pid = p.get("pid")
        if not (pid and pid_alive(pid)):
            problems.append(f"{p['name']} is not running")
        elif _proc_state(pid) in ("T", "t"):
            problems.append(f"{p['name']} is stopped")
        elif p.get("held"):
            problems.append(f"{p['name']} is held")
        elif p["labels"].get("role") == "worker":
            problems += _ask(
                client,
                f"http://127.0.0.1:{p['ports']['http']}/fault",
                lambda fault, n=p["name"]: [] if fault == healthy_gpu else [f"{n} has a GPU fault"],
            )
    if state.get("added_nodes"):
        problems.append(f"nodes added at run time remain: {', '.join(state['added_nodes'])}")
    problems += _ask(
        client,
        f"{state['proxy_control_url']}/faults",
        lambda faults: [f"{len(faults)} fault(s) in the proxy"] if faults else [],
    )
    problems += _ask(
        client,
        f"{state['gateway_url']}/upstreams",
        lambda ups: [
            f"{n} is out of the gateway's rotation"
            for n, u in ups.items()
            if not u.get("healthy", False) or u.get("ejected")
        ],
    )
    if int(shape.get("tasks") or 0) > 0:
        problems += _controllers_problems(state, client)
        problems += _store_problems(state, shape)
    return problems


def _ask(client: httpx.Client, url: str, judge: Callable[[Any], list[str]]) -> list[str]:
    try:
        r = client.get(url)
        r.raise_for_status()
        return judge(r.json())
    except (httpx.HTTPError, ValueError) as exc:
        return [f"{url} did not answer: {exc}"]


def _controllers_problems(state: dict[str, Any], client: httpx.Client) -> list[str]:
    statuses = []
    for p in state["processes"]:
        if p["labels"].get("role") == "controller":
            url = f"http://127.0.0.1:{p['ports']['http']}/status"
            try:
                statuses.append(client.get(url).json())
            except (httpx.HTTPError, ValueError):
                pass
    leaders = [s for s in statuses if s.get("role") == "leader"]
    if len(leaders) != 1:
        return [f"{len(leaders)} controller leader(s), expected one"]
    leader = leaders[0]
    problems = [] if leader.get("settled") else [f"controller {leader.get('id')} is not settled"]
    if leader.get("cordoned"):
        problems.append(f"nodes cordoned: {', '.join(leader['cordoned'])}")
    if leader.get("failed_gpus"):
        problems.append(f"GPUs seen failed: {', '.join(leader['failed_gpus'])}")
    return problems


def _store_problems(state: dict[str, Any], shape: Mapping[str, int]) -> list[str]:
    try:
        store = Store(list(state.get("raft_endpoints") or []))
        problems = []
        if store.get(POLICY_KEY) is not None:
            problems.append(f"{POLICY_KEY} is set")
        if store.get(SCHEDULE_KEY):
            problems.append(f"{SCHEDULE_KEY} is not empty")
        count = len((store.get(SPEC_KEY) or {}).get("tasks") or [])
        if count != int(shape["tasks"]):
            problems.append(f"{SPEC_KEY} holds {count} tasks, not {shape['tasks']}")
        return problems
    except (StoreUnavailable, ValueError, httpx.HTTPError) as exc:
        return [f"the metadata store did not answer: {exc}"]


def reset(
    shape: Mapping[str, int],
    deadline_s: float = 30.0,
    ignore: Collection[str] = (),
    undo_every_s: float = 3.0,
) -> ResetOutcome:
    """Undo what is left, then wait until the cluster checks whole (or say what is not); the
    undo pass is repeated while it is not, for leftovers that only show once others are gone
    (a released worker comes back, then its gateway ejection ends)."""
    started = time.monotonic()
    actions: list[str] = []
    errors: list[str] = []  # of the last undo pass
    with _client() as client:
        undone, last_undo = False, float("-inf")
        while True:
            state = read_state()
            if state and state.get("ready") and time.monotonic() - last_undo > undo_every_s:
                last_undo = time.monotonic()
                removed, errors = recover_ledgers(ignore)
                try:
                    late = time.monotonic() - started > deadline_s / 3
                    removed += undo_leftovers(state, shape, client, remove_nodes=late)
                    undone = True
                except (httpx.HTTPError, StoreUnavailable, ValueError, KeyError) as exc:
                    errors.append(f"reset step failed: {exc}")
                actions += [a for a in removed if a not in actions]
            found = cluster_problems(shape, client, ignore)
            if not found and undone:
                elapsed = time.monotonic() - started
                if actions and elapsed > deadline_s:  # whole again, but not within the deadline
                    late = f"whole again only after {elapsed:.1f}s (deadline {deadline_s:g}s)"
                    return ResetOutcome(False, elapsed, actions, [late])
                return ResetOutcome(True, elapsed, actions, [])
            if time.monotonic() - started > deadline_s:
                return ResetOutcome(False, time.monotonic() - started, actions, found + errors)
            time.sleep(0.25)
