"""The work pool's flow-run command: hand the run to the warm fork server, or run it cold.

A Prefect process worker starts this file as each flow run's process (the work pool's
base job template sets ``command``, ``banditflow.warm.pool_template``) with the run's
environment (``PREFECT__FLOW_RUN_ID``, the control channel's port and token, the
settings) and its working folder. It runs with ``python -S`` and imports only the
standard library, so it starts in a few tens of milliseconds.

It sends its environment, arguments and folder, with its stdin/stdout/stderr descriptors,
to the fork server listening on ``BANDITFLOW_WARM_SOCKET`` (default
``$BANDITFLOW_HOME/run/warm.sock``; ``banditflow/warm.py``),
which forks a pre-imported child that runs ``prefect.engine`` for the run and writes
straight to this process's output. Signals this process receives (the worker's SIGTERM
on cancellation) are passed on to the child; if this process is killed outright, the
server kills the child. It exits with the child's exit code, or dies of the child's
signal, so the worker sees the real outcome. When no server answers, it execs the
stock command, ``python -m prefect.engine``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

SOCKET_VAR = "BANDITFLOW_WARM_SOCKET"
HEADER = 8  # bytes: the request's length, big-endian
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def stock(argv: list[str]) -> None:
    """Replace this process by Prefect's own flow-run command (the same env and folder)."""
    command = [sys.executable, "-m", "prefect.engine", *argv]
    os.execv(sys.executable, command)


def connect(path: str) -> socket.socket | None:
    """Return a connection to the fork server at ``path``, or None when none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def send_request(sock: socket.socket, argv: list[str]) -> None:
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(sock, [len(body).to_bytes(HEADER, "big")], [0, 1, 2])
    sock.sendall(body)


def exit_like(status: int) -> None:
    """Exit with ``status`` as the child did: a code (>= 0) or a signal (< 0)."""
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status if status >= 0 else 128 - status)


def relay(sock: socket.socket) -> int | None:
    """Forward signals to the child until the server reports its exit; return the status.

    None: the server asks for the stock command (its code is older than the checkout's).
    """

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(f"sig {signum}\n".encode())

    for signum in FORWARDED:
        signal.signal(signum, forward)
    buffer = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except InterruptedError:
            continue
        if not chunk:
            sys.stderr.write("banditflow.warm_launch: the fork server went away mid-run\n")
            return 1
        buffer += chunk
        for line in buffer.split(b"\n")[:-1]:
            word, _, value = line.decode().partition(" ")
            if word == "exit":
                return int(value)
            if word == "stock":
                return None
            if word == "error":
                sys.stderr.write(f"banditflow.warm_launch: the fork server failed: {value}\n")
                return 1
        buffer = buffer.rsplit(b"\n", 1)[-1]


def main(argv: list[str]) -> None:
    home = os.environ.get("BANDITFLOW_HOME", "")
    path = os.environ.get(SOCKET_VAR) or (os.path.join(home, "run", "warm.sock") if home else "")
    sock = connect(path) if path else None
    if sock is None:
        stock(argv)
        return
    with sock:
        try:
            send_request(sock, argv)
        except OSError:
            sock.close()
            stock(argv)
            return
        status = relay(sock)
    if status is None:
        stock(argv)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
