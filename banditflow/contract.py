"""The contract between the pipeline and the rollout service: registry names, tags, events.

Both halves import this module (it imports nothing heavy at import time), so the names
that the registry and Prefect's event bus carry are written once. DESIGN.md: "The two
halves meet only through contracts: the MLflow registry (names, aliases, tags), Prefect
events, and the rollout service's HTTP API."
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

# --- aliases ---------------------------------------------------------------------------
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
CHALLENGER_PREFIX = "challenger-"
_CHALLENGER_RE = re.compile(r"^challenger-(\d+)$")


def challenger_alias(n: int) -> str:
    """Return the alias of the n-th challenger (1-based)."""
    if n < 1:
        raise ValueError(f"challenger numbers start at 1, got {n=}")
    return f"{CHALLENGER_PREFIX}{n}"


def is_challenger_alias(alias: str) -> bool:
    return bool(_CHALLENGER_RE.match(alias))


# --- version tags ----------------------------------------------------------------------
TAG_PREFIX = "banditflow."
TAG_STUDY = "banditflow.study"
TAG_TRIAL = "banditflow.trial_id"
TAG_PARAMS_HASH = "banditflow.params_hash"
TAG_METRIC_PREFIX = "banditflow.metric."  # + metric name
TAG_GATE_PREFIX = "banditflow.gate."  # + gate name: "pass: value=... threshold=..."
TAG_GATES = "banditflow.gates"  # "passed" | "failed"
TAG_GATE_FAILURES = "banditflow.gate_failures"  # comma-separated gate names
TAG_SERVING_FLAVOUR = "banditflow.serving_flavour"  # "onnx" | "sklearn"
TAG_ONNX_URI = "banditflow.onnx_uri"  # artifact URI of the ONNX file
TAG_ONNX_FALLBACK = "banditflow.onnx_fallback_reason"
TAG_ROLE = "banditflow.role"  # the alias a version holds, written at each move
TAG_EVENT_PREFIX = "banditflow.event."  # + UTC timestamp: "<action>: <reason>"

# --- Prefect events --------------------------------------------------------------------
EVENT_FEATURES_UPDATED = "banditflow.features.updated"
EVENT_DRIFT_DETECTED = "banditflow.drift.detected"
EVENT_CANDIDATES_REGISTERED = "banditflow.candidates.registered"
EVENT_ROLLOUT_PROMOTED = "banditflow.rollout.promoted"
EVENT_ROLLOUT_ROLLED_BACK = "banditflow.rollout.rolled_back"


def model_resource_id(name: str, version: str | int | None = None) -> str:
    """Return the Prefect event resource id of a registered model (and version)."""
    rid = f"banditflow.model.{name}"
    return rid if version is None else f"{rid}.v{version}"


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
    """Give ``champion`` back to the ``previous-champion`` version, and record why."""
    aliases = aliases_of(client, name)
    previous = aliases.get(PREVIOUS_CHAMPION)
    if previous is None:
        raise NoChampionToRestore(
            f"model {name!r} has no {PREVIOUS_CHAMPION!r} alias: nothing to roll back to; "
            "promote a version instead"
        )
    current = aliases.get(CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    client.set_model_version_tag(name, previous, TAG_ROLE, CHAMPION)
    record_event(client, name, previous, "restored", reason)
    if current is not None and current != previous:
        client.set_model_version_tag(name, current, TAG_ROLE, "rolled-back")
        record_event(client, name, current, "rolled_back", reason)
    return {"champion": previous, "rolled_back": current}


def next_challenger_alias(aliases: dict[str, str]) -> str:
    """Return the lowest ``challenger-N`` alias no version holds."""
    taken = {int(m.group(1)) for a in aliases if (m := _CHALLENGER_RE.match(a))}
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
