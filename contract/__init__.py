"""The contract of banditflow: names and registry writes that every other floor imports.

It imports nothing of the project. ``from contract import CHAMPION, promote`` reads the same
as the two modules behind it: :mod:`contract.names` and :mod:`contract.registry`.
"""

from contract.names import *  # noqa: F403
from contract.names import __all__ as _names_all
from contract.registry import (
    HistoryEntry,
    NoChampionToRestore,
    add_challenger,
    aliases_of,
    next_challenger_alias,
    promote,
    read_history,
    record_event,
    retire_challenger,
    retire_superseded,
    rollback,
    stage,
    was_rejected,
)

__all__ = [
    *_names_all,
    "HistoryEntry",
    "NoChampionToRestore",
    "add_challenger",
    "aliases_of",
    "next_challenger_alias",
    "promote",
    "read_history",
    "record_event",
    "retire_challenger",
    "retire_superseded",
    "rollback",
    "stage",
    "was_rejected",
]
