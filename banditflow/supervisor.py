"""Processes of the local stack: start each in its own session, recognise it later, stop its tree.

A plain ``cmd &`` worker ignores SIGTERM (STACK.md), so every process gets its own session
and is recorded with its pid, start time and port in ``<home>/run/stack.json``; stopping
stops exactly those process trees and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
# Stop order: consumers first, the Prefect server last (the worker reports to it).
STOP_ORDER = ("worker", "rollout", "mlflow", "prefect")
# The scaled profile's extra parts (banditflow/stack_scaled.py) stop after those.


class StackError(RuntimeError):
    """A component of the local stack could not be started or stopped; says which and why."""


@dataclass
class Component:
    """A process ``up`` started: what it is, where it listens, how to recognise it later."""

    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a recycled pid from ours
    cmd: list[str]
    log: str
    port: int | None = None
    url: str | None = None
    health: str | None = None


# --- processes -------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return [str(pid), "comm", *raw[raw.rindex(")") + 2 :].split()]


def start_ticks(pid: int) -> int | None:
    """Return a process's start time in clock ticks since boot, or None if it is gone."""
    fields = _stat(pid)
    return int(fields[21]) if fields else None


def is_alive(component: Component) -> bool:
    """Whether the recorded process still runs (and is the same process, not a new one)."""
    fields = _stat(component.pid)
    if fields is None or fields[2] == "Z":
        return False
    return int(fields[21]) == component.start_ticks


def descendants(pid: int) -> list[int]:
    """Return every live descendant of ``pid`` (children in their own sessions included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[3]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _running(pids: list[int]) -> list[int]:
    return [p for p in pids if (f := _stat(p)) is not None and f[2] != "Z"]


def stop_component(component: Component, timeout: float = 20.0) -> list[int]:
    """Stop a recorded process and all its descendants: SIGTERM, then SIGKILL after ``timeout``.

    Returns the pids that were still running when it was asked to stop.
    """
    if not is_alive(component):
        return []
    tree = [component.pid, *descendants(component.pid)]
    # The session/group first (what the process itself started shares it) ...
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(component.pid, signal.SIGTERM)
    _signal(tree, signal.SIGTERM)  # ... then children that made their own sessions
    deadline = time.monotonic() + timeout
    while _running(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = _running(tree) + _running(descendants(component.pid))
    _signal(leftover, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _running(leftover) and time.monotonic() < deadline:
        time.sleep(0.1)
    return tree


def spawn(name: str, cmd: list[str], *, env: dict[str, str], run_dir: Path, cwd: Path) -> Component:
    """Start ``cmd`` in its own session with output in ``<run_dir>/<name>.log``."""
    log_path = run_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise StackError(f"{name} exited at once; see {log_path}")
    return Component(name, proc.pid, ticks, cmd, str(log_path))


# --- ports and health ------------------------------------------------------------------
def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def healthy(url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def wait_healthy(component: Component, timeout: float) -> None:
    """Wait until the component answers its health URL; raise with its log's tail if not."""
    if component.health is None:
        raise StackError(f"{component.name} has no health URL to wait on")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(component):
            raise StackError(f"{component.name} exited while starting:\n{_tail(component.log)}")
        if healthy(component.health):
            return
        time.sleep(0.5)
    raise StackError(
        f"{component.name} did not answer {component.health} within {timeout:.0f} s:\n"
        f"{_tail(component.log)}"
    )


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- the record ------------------------------------------------------------------------
def run_dir(home: Path) -> Path:
    return home / "run"


def stack_file(home: Path) -> Path:
    return run_dir(home) / "stack.json"


def token_file(home: Path) -> Path:
    return run_dir(home) / "admin_token"


def write_token(home: Path, given: str | None) -> str:
    """Return the admin token (given, or generated) written to ``run/admin_token`` (0600)."""
    import secrets

    token = given or secrets.token_urlsafe(32)
    path = token_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


def read_record(home: Path) -> tuple[dict[str, Component], dict[str, Any]]:
    """Return the recorded components and the rest of the record (URLs, pool, profile)."""
    path = stack_file(home)
    if not path.exists():
        return {}, {}
    try:
        raw = json.loads(path.read_text())
        components = {n: Component(**fields) for n, fields in raw.pop("components", {}).items()}
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise StackError(f"{path} is not a stack record ({exc}): remove it") from exc
    return components, raw


def read_stack(home: Path) -> dict[str, Component]:
    """Return the components recorded in ``<home>/run/stack.json`` (none: empty)."""
    return read_record(home)[0]


def write_stack(home: Path, components: dict[str, Component], extra: dict[str, Any]) -> None:
    path = stack_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"components": {n: asdict(c) for n, c in components.items()}, **extra}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)


def stop_recorded(home: Path, echo: Any = print) -> list[int]:
    """Stop exactly the recorded processes (and their descendants); return their pids."""
    components = read_stack(home)
    stopped: list[int] = []
    for name in (*STOP_ORDER, *(n for n in components if n not in STOP_ORDER)):
        component = components.get(name)
        if component is None:
            continue
        pids = stop_component(component)
        echo(f"{name}: {'stopped pid ' + str(component.pid) if pids else 'was not running'}")
        stopped += pids
    stack_file(home).unlink(missing_ok=True)
    return stopped


def describe(home: Path) -> list[dict[str, Any]]:
    """Return one row per recorded component: running, healthy, pid, URL, log."""
    rows = []
    for name, component in read_stack(home).items():
        alive = is_alive(component)
        rows.append(
            {
                "name": name,
                "running": alive,
                "healthy": bool(alive and (component.health is None or healthy(component.health))),
                "pid": component.pid,
                "url": component.url or "",
                "log": component.log,
            }
        )
    return rows
