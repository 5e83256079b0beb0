"""The ``optimize`` progress bar: the phase it is in, and library log lines printed above it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

PHASES = {
    "starting": "starting Prefect",
    "loading data": "loading data",
    "opening study": "opening the study",
    "trials": "trials",
    "finishing": "logging the result",
}


@contextmanager
def logs_above(console: Console) -> Iterator[None]:
    """Send log handlers that write to the terminal through ``console`` for a while.

    A handler keeps the stream it was given when logging was configured, so rich's
    stdout/stderr redirection alone does not keep Prefect's log lines off the bar:
    Prefect's console handlers print through ``console`` (above the live bar), and plain
    stream handlers on stderr write to the redirected ``sys.stderr``.
    """
    swapped: list[tuple[logging.Handler, str, Any]] = []
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if hasattr(handler, "console") and isinstance(handler.console, Console):
                swapped.append((handler, "console", handler.console))
                handler.console = console
            elif isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.__stderr__,
                sys.__stdout__,
            ):
                swapped.append((handler, "stream", handler.stream))
                handler.setStream(sys.stderr)
    try:
        yield
    finally:
        for handler, attribute, value in swapped:
            if attribute == "console":
                handler.console = value  # type: ignore[attr-defined]
            else:
                handler.setStream(value)  # type: ignore[attr-defined]


class StudyProgress:
    """A bar that shows the phase (starting Prefect, loading data, trials) and the best."""

    def __init__(
        self, console: Console, name: str, total: int, done: int, metric: str, direction: str
    ) -> None:
        self.metric, self.direction = metric, direction
        self.name = name
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self.bar = self.progress.add_task(
            f"{name}: {PHASES['starting']}", total=total, completed=done, best="-"
        )

    def on_event(self, event: dict[str, Any]) -> None:
        """Take a study event: a phase change, or a told trial with the best so far."""
        phase = PHASES.get(str(event.get("phase")), str(event.get("phase")))
        update: dict[str, Any] = {"description": f"{self.name}: {phase}"}
        if "finished" in event:
            update["completed"] = event["finished"]
        best = event.get("best")
        if best is not None:
            update["best"] = f"{self.metric}={best:.4g} ({self.direction})"
        self.progress.update(self.bar, **update)

    @contextmanager
    def running(self) -> Iterator[None]:
        with self.progress, logs_above(self.progress.console):
            yield
