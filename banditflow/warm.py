"""Warm flow runs: a pre-imported fork server behind a stock Prefect process work pool.

Each flow run of a process worker is a fresh ``python -m prefect.engine``, which spends
most of a short flow's wall time importing Prefect, Feast (and torch), MLflow and
scikit-learn. The stack keeps the stock process pool and worker, but the pool's base job
template (``pool_template``) sets the flow-run command to ``banditflow/warm_launch.py``,
a standard-library launcher that hands the run to this server over a unix socket in the
stack's run folder. The server imports the flows and their libraries once, then stays
single-threaded: for each request it forks a child that takes the launcher's
stdin/stdout/stderr, folder, arguments and environment, refreshes what was read from
the environment at import (Prefect's settings and logging, the pipeline settings, numpy's
global seed) and runs ``prefect.engine`` as ``python -m`` would. The server reports the
child's pid and exit status to the launcher, passes on the signals the launcher forwards,
and kills the child if the launcher vanishes. The socket exists only once the imports are
done, so until then (or when the server is down) the launcher runs the stock command.

Fork safety: the server checks that it runs one OS thread after its imports (pyarrow's
jemalloc background thread is turned off, ``JE_ARROW_MALLOC_CONF``) and opens no HTTP
client, database or event loop before forking.

    python -m banditflow.warm --socket <home>/run/warm.sock
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCHER = Path(__file__).with_name("warm_launch.py")
SOCKET_VAR = "BANDITFLOW_WARM_SOCKET"
ENABLE_VAR = "BANDITFLOW_WARM_RUNS"
HEADER = 8
# What a flow run of this project imports, heaviest first; the flows pull in tasks/.
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.deployments.steps",
    "flows.retrain",
    "flows.optimize",
    "flows.register",
    "flows.promote_check",
    "flows.studies",
    "feast",
    "mlflow",
    "mlflow.sklearn",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "hyperopt",
    "ax",
)
# Read at import by pyarrow: its allocator's background thread would make fork unsafe.
SERVER_ENV = {"JE_ARROW_MALLOC_CONF": "background_thread:false"}


class WarmError(RuntimeError):
    """The fork server cannot run safely; the message says why."""


def socket_path(home: Path) -> Path:
    return Path(home) / "run" / "warm.sock"


def enabled() -> bool:
    return os.environ.get(ENABLE_VAR, "true").strip().lower() not in ("0", "false", "no", "off")


def launch_command() -> str:
    """Return the flow-run command of the warm work pool (``-S``: no site, a fast start)."""
    return f"{sys.executable} -S {LAUNCHER}"


def server_command(home: Path) -> list[str]:
    return [sys.executable, "-m", "banditflow.warm", "--socket", str(socket_path(home))]


def pool_template(launcher: str | None = None) -> dict[str, Any]:
    """Return the process worker's default base job template with the launcher as command."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    command = template["variables"]["properties"]["command"]
    command["default"] = launcher or launch_command()
    command["description"] = (
        "The flow run's command; the default hands the run to banditflow's warm fork "
        "server (banditflow/warm.py) and runs `python -m prefect.engine` when none is up."
    )
    return dict(template)


def pool_args(home: Path, start: Any) -> list[str]:
    """Start the fork server (``start(name, cmd, port, health)``, the stack's spawner) and
    return the ``prefect work-pool create`` options of its base job template.

    ``BANDITFLOW_WARM_RUNS=false``: no server, the stock template (``python -m prefect.engine``).
    """
    if not enabled():
        return []
    start("warm", server_command(home), None, None)
    path = Path(home) / "run" / "warm_pool.json"
    path.write_text(json.dumps(pool_template(), indent=2))
    return ["--base-job-template", str(path)]


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import ``modules``; return the seconds each took. Fails if a thread was started."""
    took = {}
    for name in modules:
        began = time.perf_counter()
        importlib.import_module(name)
        took[name] = round(time.perf_counter() - began, 2)
    if (threads := os_threads()) != 1:
        tasks = os.listdir("/proc/self/task")
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in tasks]
        raise WarmError(f"{threads} threads run after the imports ({names}): forking is unsafe")
    return took


# --- the child: one flow run -------------------------------------------------------------
def refresh_after_fork() -> None:
    """Re-read what the imports read from the (server's) environment."""
    import numpy as np
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    from tasks.settings import get_settings

    refresh_global_settings_context()
    setup_logging(incremental=False)
    get_settings.cache_clear()
    np.random.seed()  # a fresh process would not share the server's global state


def run_engine(argv: list[str]) -> int:
    """Run ``python -m prefect.engine ARGV`` in this process; return its exit code."""
    import runpy
    import traceback

    engine = importlib.import_module("prefect.engine").__file__ or "prefect/engine.py"
    sys.argv = [engine, *argv]
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to `python -m`
        traceback.print_exc()
        return 1
    return 0


def child_main(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the flow run's process, run the engine, and exit."""
    import atexit
    import threading

    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]
    code = 1
    try:
        refresh_after_fork()
        code = run_engine(list(request["argv"]))
    finally:
        threading._shutdown()  # type: ignore[attr-defined]  # as interpreter exit does
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


# --- the server --------------------------------------------------------------------------
def read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read one launcher's request: its descriptors, then its JSON body."""
    conn.settimeout(10)
    header, fds, _flags, _addr = socket.recv_fds(conn, HEADER, 3)
    if len(header) != HEADER or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise WarmError("a launcher sent no descriptors")
    size, body = int.from_bytes(header, "big"), b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise WarmError("a launcher hung up mid-request")
        body += chunk
    conn.settimeout(None)
    return json.loads(body), fds


def wait_status(status: int) -> int:
    """Return a waitpid status as the launcher's exit: a code, or minus the signal."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


@dataclass
class Server:
    """The fork server's state: the listening socket and one connection per running child."""

    path: Path
    listener: socket.socket = field(init=False)
    selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    children: dict[int, socket.socket] = field(default_factory=dict)  # pid -> its launcher
    stopping: bool = False

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(tmp))
        os.chmod(tmp, 0o600)
        self.listener.listen(64)
        os.replace(tmp, self.path)  # launchers see the socket only when it accepts
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def fork(self, conn: socket.socket) -> None:
        try:
            request, fds = read_request(conn)
        except (OSError, ValueError, WarmError) as exc:
            with contextlib.suppress(OSError, KeyError):
                conn.sendall(f"error {exc}\n".encode())
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            self.listener.close()
            for other in (*self.children.values(), conn):
                other.close()
            child_main(request, fds)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        with contextlib.suppress(OSError, KeyError):
            conn.sendall(f"pid {pid}\n".encode())

    def from_launcher(self, conn: socket.socket, pid: int) -> None:
        """A forwarded signal, or the launcher gone (then the run is killed, as stock)."""
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(conn)
            with contextlib.suppress(OSError, KeyError):
                os.kill(pid, signal.SIGKILL)
            return
        for line in data.decode(errors="replace").splitlines():
            word, _, value = line.partition(" ")
            if word == "sig" and value.isdigit():
                with contextlib.suppress(OSError, KeyError):
                    os.kill(pid, int(value))

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(OSError, KeyError):
                self.selector.unregister(conn)
            with contextlib.suppress(OSError, KeyError):
                conn.sendall(f"exit {wait_status(status)}\n".encode())
            conn.close()

    def serve(self) -> None:
        while not self.stopping:
            for key, _mask in self.selector.select(timeout=5):
                if key.data == "accept":
                    with contextlib.suppress(OSError, KeyError):
                        conn, _ = self.listener.accept()
                        self.fork(conn)
                elif key.data == "wake":
                    with contextlib.suppress(OSError, KeyError):
                        os.read(key.fd, 4096)
                    self.reap()
                else:
                    self.from_launcher(key.fileobj, key.data)  # type: ignore[arg-type]
            self.reap()
        self.shutdown()

    def shutdown(self, grace: float = 20.0) -> None:
        """Stop taking runs; stop the running children (SIGTERM, SIGKILL after ``grace``)."""
        self.path.unlink(missing_ok=True)
        self.listener.close()
        for pid in self.children:
            with contextlib.suppress(OSError, KeyError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        for pid in list(self.children):
            with contextlib.suppress(OSError, KeyError):
                os.kill(pid, signal.SIGKILL)
        self.reap()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Where to listen (a unix socket).")
    parser.add_argument("--preload", nargs="*", default=list(PRELOAD), help="Modules to import.")
    args = parser.parse_args(argv)
    os.environ.update(SERVER_ENV)
    began = time.perf_counter()
    took = preload(tuple(args.preload))
    server = Server(Path(args.socket))
    server.start()
    print(
        f"warm fork server on {args.socket}: imports took {time.perf_counter() - began:.1f} s "
        f"{json.dumps(took)}",
        flush=True,
    )
    server.serve()


if __name__ == "__main__":
    main()
