"""The warm fork server's child: become one flow run's process and run Prefect's engine.

Forked from the pre-imported server (``banditflow/warm.py``), the child takes the
launcher's stdin/stdout/stderr, folder, arguments and environment, re-reads what the
imports read from the server's environment (Prefect's settings and logging, the pipeline
settings, numpy's global seed), runs ``prefect.engine`` as ``python -m prefect.engine``
would, and exits as the interpreter would (threads joined, exit handlers run).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from typing import Any


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


def child_main(request: dict[str, Any], fds: list[int], imported_env: dict[str, str]) -> None:
    """In the forked child: become the flow run's process, run the engine, and exit.

    ``imported_env``: what the server's imports set in its environment; the run's own
    variables win over it.
    """
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
    os.environ.update(imported_env | request["env"])
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
