"""How a trial evaluated in the flow's own process reaches the loop: its start and outcome.

The thread runner and the warm process pool run ``run_trial`` in this process, so the
outcome can reach the loop the moment the evaluation returns, while Prefect records the
task run's end on its own thread (about 25 ms of API round trips that were on the loop's
path between two trials).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from tasks.evaluate import TrialOutcome


def outcome_of(future: Any, trial: Any) -> TrialOutcome:
    """Return a task's outcome; a task that crashed (not a failed trial) becomes failed."""
    try:
        return future.result()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - e.g. a Dask worker lost: the study goes on
        return TrialOutcome(
            trial.params, "failed", reason=f"task crashed: {exc!r}", trial_id=trial.id
        )


class TrialChannel:
    """How a trial evaluated in this process reaches the loop: its start and its outcome.

    Opaque to Prefect's parameter walking (a plain object); never pickled (threads only).
    """

    __slots__ = ("_done", "_on_start")

    def __init__(
        self,
        done: queue.Queue[tuple[str, TrialOutcome | None]],
        on_start: Callable[[], None] | None,
    ) -> None:
        self._done = done
        self._on_start = on_start

    def started(self) -> None:
        if self._on_start is not None:
            self._on_start()

    def finished(self, trial_id: str, outcome: TrialOutcome) -> None:
        self._done.put((trial_id, outcome))
