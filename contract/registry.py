"""The registry writes both halves make: promote, roll back, add or retire a challenger, history.

Every move of an alias goes through here, and each is recorded as a timestamped version tag,
so the MLflow registry is the audit log (mlflow#2169: MLflow keeps no alias history itself).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from contract.names import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    STAGING,
    TAG_EVENT_PREFIX,
    TAG_ROLE,
    challenger_alias,
    challenger_number,
    is_challenger_alias,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


# --- history ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryEntry:
    """One line of a version's audit log, read back from its event tags."""

    at: datetime
    version: str
    action: str
    reason: str


def record_event(
    client: MlflowClient, name: str, version: str | int, action: str, reason: str
) -> HistoryEntry:
    """Append ``action: reason`` to a version's history as a timestamped tag."""
    now = datetime.now(UTC)
    # Microseconds keep two events in the same second apart and in order.
    key = f"{TAG_EVENT_PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    client.set_model_version_tag(name, str(version), key, f"{action}: {reason}")
    return HistoryEntry(at=now, version=str(version), action=action, reason=reason)


def read_history(client: MlflowClient, name: str) -> list[HistoryEntry]:
    """Return every version's history entries of a registered model, oldest first."""
    entries = []
    for mv in client.search_model_versions(f"name='{name}'"):
        for key, value in (mv.tags or {}).items():
            if not key.startswith(TAG_EVENT_PREFIX):
                continue
            stamp = datetime.strptime(key[len(TAG_EVENT_PREFIX) :], "%Y%m%dT%H%M%S%fZ")
            action, _, reason = value.partition(": ")
            entries.append(HistoryEntry(stamp.replace(tzinfo=UTC), str(mv.version), action, reason))
    return sorted(entries, key=lambda e: (e.at, e.version))


def aliases_of(client: MlflowClient, name: str) -> dict[str, str]:
    """Return ``{alias: version}`` for a registered model (versions as strings)."""
    # A SQL store hands versions back as ints, a REST one as strings: compare as strings.
    return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}


class NoChampionToRestore(LookupError):
    """Rollback was asked for, but no previous champion is recorded."""


def promote(client: MlflowClient, name: str, version: str | int, reason: str) -> dict[str, Any]:
    """Make ``version`` the champion; the old champion becomes ``previous-champion``.

    Any challenger alias the promoted version held is removed; the move is recorded in
    both versions' history tags. Returns ``{"champion": v, "previous": old or None}``.
    """
    version = str(version)
    aliases = aliases_of(client, name)
    old = aliases.get(CHAMPION)
    if old == version:
        return {"champion": version, "previous": None}
    for alias, held_by in aliases.items():
        if held_by == version and is_challenger_alias(alias):
            client.delete_registered_model_alias(name, alias)
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, old)
        client.set_model_version_tag(name, old, TAG_ROLE, PREVIOUS_CHAMPION)
        record_event(client, name, old, "demoted", f"replaced by version {version}: {reason}")
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, TAG_ROLE, CHAMPION)
    record_event(client, name, version, "promoted", reason)
    return {"champion": version, "previous": old}


def rollback(client: MlflowClient, name: str, reason: str) -> dict[str, Any]:
    """Give ``champion`` back to the ``previous-champion`` version, and record why.

    ``previous-champion`` then moves one level further back, to the last champion before
    the restored one that was replaced normally (not rolled back), read from the history
    tags, so rollbacks can walk back as many levels as the history holds.
    """
    aliases = aliases_of(client, name)
    previous = aliases.get(PREVIOUS_CHAMPION)
    if previous is None:
        raise NoChampionToRestore(
            f"model {name!r} has no {PREVIOUS_CHAMPION!r} alias: nothing to roll back to; "
            "promote a version instead"
        )
    current = aliases.get(CHAMPION)
    for alias, held_by in aliases.items():
        if held_by == previous and is_challenger_alias(alias):
            client.delete_registered_model_alias(name, alias)  # it was on probation
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, previous, TAG_ROLE, CHAMPION)
    record_event(client, name, previous, "restored", reason)
    if current is not None and current != previous:
        client.set_model_version_tag(name, current, TAG_ROLE, "rolled-back")
        record_event(client, name, current, "rolled_back", reason)
    older = _last_replaced_champion(client, name, exclude={previous, current})
    if older is None:
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    else:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, older)
        client.set_model_version_tag(name, older, TAG_ROLE, PREVIOUS_CHAMPION)
    return {"champion": previous, "rolled_back": current, "previous": older}


def _last_replaced_champion(
    client: MlflowClient, name: str, exclude: set[str | None]
) -> str | None:
    """Return the most recently demoted version whose last move was that demotion."""
    last: dict[str, HistoryEntry] = {}
    for entry in read_history(client, name):
        if entry.action in ("promoted", "restored", "demoted", "rolled_back", "retired"):
            last[entry.version] = entry
    demoted = [e for v, e in last.items() if e.action == "demoted" and v not in exclude]
    return max(demoted, key=lambda e: e.at).version if demoted else None


def next_challenger_alias(aliases: dict[str, str]) -> str:
    """Return the lowest ``challenger-N`` alias no version holds."""
    taken = {n for a in aliases if (n := challenger_number(a)) is not None}
    n = 1
    while n in taken:
        n += 1
    return challenger_alias(n)


def add_challenger(client: MlflowClient, name: str, version: str | int, reason: str) -> str:
    """Give ``version`` the next free ``challenger-N`` alias (or the one it holds); record why."""
    version = str(version)
    aliases = aliases_of(client, name)
    for alias, held_by in aliases.items():
        if held_by == version and is_challenger_alias(alias):
            return alias
    alias = next_challenger_alias(aliases)
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, TAG_ROLE, alias)
    record_event(client, name, version, "challenger", f"{alias}: {reason}")
    return alias


def retire_challenger(client: MlflowClient, name: str, version: str | int, reason: str) -> bool:
    """Take every challenger alias ``version`` holds away from it; record why.

    Returns whether the version held a challenger alias.
    """
    version = str(version)
    held = False
    for alias, held_by in aliases_of(client, name).items():
        if held_by == version and is_challenger_alias(alias):
            client.delete_registered_model_alias(name, alias)
            held = True
    client.set_model_version_tag(name, version, TAG_ROLE, "retired")
    record_event(client, name, version, "retired", reason)
    return held


def retire_superseded(
    client: MlflowClient, name: str, keep: Collection[str], reason: str
) -> list[str]:
    """Retire every challenger but ``keep`` and the replaced champion on probation.

    A retrain's candidates supersede the challengers that came before them: those were
    trained on data the retrain judged out of date, and each one left in rotation takes its
    floor of traffic and dilutes the evidence the decision rule needs about the new ones.
    The previous champion on probation stays (the champion watch compares with it).
    Returns the retired versions, in alias order.
    """
    aliases = aliases_of(client, name)
    spared = {str(v) for v in keep} | {aliases.get(PREVIOUS_CHAMPION)}
    retired: list[str] = []
    challengers = [a for a in aliases if is_challenger_alias(a)]
    for alias in sorted(challengers, key=lambda a: challenger_number(a) or 0):
        version = aliases[alias]
        if version not in spared and version not in retired:
            retire_challenger(client, name, version, reason)
            retired.append(version)
    return retired


def was_rejected(tags: dict[str, str]) -> bool:
    """Return whether a version's history holds a ``rejected`` entry."""
    return any(
        k.startswith(TAG_EVENT_PREFIX) and v.startswith("rejected:") for k, v in tags.items()
    )


def stage(client: MlflowClient, name: str, version: str | int, reason: str) -> bool:
    """Point ``staging`` at ``version`` (its tag and history first, the alias last); record why.

    Returns False when ``version`` already held ``staging`` (nothing written).
    """
    version = str(version)
    if aliases_of(client, name).get(STAGING) == version:
        return False
    client.set_model_version_tag(name, version, TAG_ROLE, STAGING)
    record_event(client, name, version, STAGING, reason)
    client.set_registered_model_alias(name, STAGING, version)
    return True
