"""The demo's data folder: emptied for a fresh run, and library output kept out of the way."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Set up by the process before the demo starts (its log file, Prefect's logging config).
_KEEP = {"logs", "logging.yml"}


def clear_home(home: Path) -> None:
    """Remove what an earlier demo left in the data folder (data, stores, registry, report).

    The process's own set-up stays: the log file its handlers write to and Prefect's
    logging configuration (read once, at start-up).
    """
    if not home.exists():
        return
    for child in home.iterdir():
        if child.name in _KEEP:
            continue
        if child.is_dir() and not child.is_symlink():
            if any(c.name in _KEEP for c in child.iterdir()):
                clear_home(child)
            else:
                shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def library_output_to(log_path: Path) -> Iterator[Any]:
    """Send everything written to file descriptors 1 and 2 to ``log_path``; yield the terminal.

    Libraries (Feast's progress bars, MLflow's notices, Prefect's deploy output) write to
    the process's stdout and stderr: only a descriptor-level redirect catches all of it.
    The demo's own lines go to a copy of the real stdout.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()
