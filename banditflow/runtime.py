"""One process set-up for every command: Prefect's home, the running stack, library output.

``prepare_process(home)`` runs before any command imports Prefect, MLflow or Feast:

- ``PREFECT_HOME`` under the data folder, so parallel runs on different data folders do
  not contend on ``~/.prefect`` and the runs of a folder stay together;
- when ``banditflow up`` runs for this data folder and no ``PREFECT_API_URL`` is set, the
  stack's Prefect server (and the service's URL and admin token) from its run folder, so a
  feature update reaches the triggers with nothing to export;
- telemetry off (no network here), and library output (Prefect's logging, tracebacks of
  its background services, library warnings) to ``<home>/logs/banditflow.log`` instead
  of the terminal. A command's own lines still go to the terminal.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

LIBRARY_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",  # MLflow reads "true", not "1"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FEAST_USAGE": "False",
    # Prefect's ephemeral API gets 20 s to start by default; on a busy 2-core laptop it needs
    # more (measured: over 25 s with one core spinning), and a timeout fails the command.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}

LOG_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


def log_file(home: Path) -> Path:
    """Return the file library output goes to."""
    return home / "logs" / "banditflow.log"


def _prefect_logging_config(home: Path) -> Path:
    """Write Prefect's logging configuration with every console handler sent to the log file."""
    import yaml

    target = log_file(home)
    to_file = {
        "level": 0,
        "class": "logging.FileHandler",
        "filename": str(target),
        "formatter": "standard",
        "delay": True,
    }
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "standard": {
                "format": LOG_FORMAT,
            }
        },
        "handlers": {
            "console": to_file,
            "api": {"level": 0, "class": "prefect.logging.handlers.APILogHandler"},
            "worker_api": {"level": 0, "class": "prefect.logging.handlers.WorkerAPILogHandler"},
        },
        "loggers": {
            "prefect": {"level": "${PREFECT_LOGGING_LEVEL}"},
            "prefect.extra": {"handlers": ["api"], "propagate": False},
            "prefect.flow_runs": {"level": "NOTSET", "handlers": ["api"]},
            "prefect.task_runs": {"level": "NOTSET", "handlers": ["api"]},
            "prefect.workers": {"level": "NOTSET", "handlers": ["worker_api"]},
            "uvicorn": {"handlers": ["console"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["console"]},
    }
    path = home / "prefect" / "logging.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def attach_stack_env(home: Path) -> str | None:
    """Point this process at the stack ``up`` started for ``home``; return its API URL.

    Explicit variables win: nothing is changed when ``PREFECT_API_URL`` is already set.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    from banditflow.stack import attach

    stack = attach(home)
    if stack is None:
        return None
    for key, value in stack.env().items():
        os.environ.setdefault(key, value)
    return stack.prefect_api_url


def prepare_process(home: Path, *, library_output_to_file: bool = True) -> None:
    """Set Prefect's home, find the running stack, and keep library output off the terminal."""
    for key, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    attach_stack_env(home)
    if not library_output_to_file:
        return
    target = log_file(home)
    target.parent.mkdir(parents=True, exist_ok=True)
    if "PREFECT_LOGGING_SETTINGS_PATH" not in os.environ:
        os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(_prefect_logging_config(home))
    # Until Prefect configures logging (and for processes that never import it): the root
    # logger and Python's warnings go to the same file.
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == str(target) for h in root.handlers):
        handler = logging.FileHandler(target, delay=True)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    logging.captureWarnings(True)
