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

from banditflow.warm_child import child_main

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


def project_files() -> dict[str, int]:
    """Return the modification time of every loaded module of this checkout (not its venv)."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(root) and "site-packages" not in path:
            with contextlib.suppress(OSError):
                out[path] = os.stat(path).st_mtime_ns
    return out


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
    argv: list[str] = field(default_factory=list)  # to start again after a code change
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))  # ... with this
    # What the imports wrote to os.environ (Feast: its Prometheus folder): the children
    # keep it, as the library state they inherit was made with it.
    imported_env: dict[str, str] = field(default_factory=dict)
    children: dict[int, socket.socket] = field(default_factory=dict)  # pid -> its launcher
    sources: dict[str, int] = field(default_factory=project_files)
    stopping: bool = False
    retired: bool = False  # the code changed: no new runs; start again once these end

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
        if project_files() != self.sources:
            # An edited flow or task would run stale code here: the run goes cold.
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall(b"stock\n")
            conn.close()
            self.retire()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.selector.close()
            self.listener.close()
            for other in (*self.children.values(), conn):
                other.close()
            child_main(request, fds, self.imported_env)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        run = request["env"].get("PREFECT__FLOW_RUN_ID", "?")
        print(f"flow run {run}: forked pid {pid}", flush=True)
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

    def retire(self) -> None:
        """Take no new runs (launchers run the stock command) until this server restarts."""
        print("the project's code changed: restarting the warm server", flush=True)
        self.retired = True
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()

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
        while not self.stopping and not (self.retired and not self.children):
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
        if self.retired and not self.stopping:
            # Import the edited code afresh: the same pid, so the stack still knows it.
            command = [sys.executable, "-m", "banditflow.warm", *self.argv]
            os.execve(sys.executable, command, self.environ)
        self.shutdown()

    def shutdown(self, grace: float = 20.0) -> None:
        """Stop taking runs; stop the running children (SIGTERM, SIGKILL after ``grace``)."""
        if not self.retired:
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
    environ = dict(os.environ)
    os.environ.update(SERVER_ENV)
    before = dict(os.environ)
    began = time.perf_counter()
    took = preload(tuple(args.preload))
    imported = {k: v for k, v in os.environ.items() if before.get(k) != v}
    argv = list(sys.argv[1:] if argv is None else argv)
    server = Server(Path(args.socket), argv=argv, environ=environ, imported_env=imported)
    server.start()
    print(
        f"warm fork server on {args.socket}: imports took {time.perf_counter() - began:.1f} s "
        f"{json.dumps(took)}",
        flush=True,
    )
    server.serve()


if __name__ == "__main__":
    main()
