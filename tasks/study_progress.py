"""Progress listeners of a study (the CLI's progress bar, benchmarks): told after each tell."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ProgressListener = Callable[[dict[str, Any]], None]
_LISTENERS: list[tuple[ProgressListener, bool]] = []


def add_progress_listener(
    listener: ProgressListener, *, phases: bool = False
) -> Callable[[], None]:
    """Call ``listener(event)`` after every tell (and at each phase with ``phases=True``).

    A tell event has ``record``, ``finished``, ``best``; a phase event only ``phase``.
    Return a function that removes the listener.
    """
    entry = (listener, phases)
    _LISTENERS.append(entry)
    return lambda: _LISTENERS.remove(entry) if entry in _LISTENERS else None


def notify(event: dict[str, Any]) -> None:
    """Send ``event`` to the listeners: a phase (no ``record``) only to those that asked."""
    for listener, phases in list(_LISTENERS):
        if phases or "record" in event:
            listener(event)


def has_listeners() -> bool:
    """Whether anyone listens (a study builds no event when no one does)."""
    return bool(_LISTENERS)
