"""A retrain's challengers supersede the ones before them (``registration.supersede_challengers``).

Measured in the closed loop (``benchmarks/closed_loop.py``, seed 0): every retrain added a
challenger and none left, so five days after the drift six arms served, each with its
floor of traffic; the stale ones lost money on theirs, and the evidence about the one
retrained arm that mattered grew a sixth as fast as it could. A retrain's candidates learned
from the data the retrain judged current, so the challengers that came before them are
retired as soon as one of them joins (the previous champion on probation stays: the
champion watch compares with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from contract import STAGING, is_challenger_alias, retire_superseded
from tasks.settings import PipelineSettings
from tasks.spec import StudySpec
from tasks.tracking import configure_mlflow


def joined_challengers(states: Sequence[Any]) -> list[str]:
    """Return the versions this registration gave a challenger alias."""
    return [s.version for s in states if s.alias and is_challenger_alias(s.alias)]


@task(name="retire-superseded", cache_policy=NO_CACHE)
def supersede_challengers(
    spec: StudySpec, study: str, states: Sequence[Any], settings: PipelineSettings
) -> list[str]:
    """Retire earlier challengers when the spec asks and one of ``states`` became one.

    Nothing is retired when no candidate joined as a challenger (all failed their gates,
    or the one that passed went to ``staging`` as a shadow: it serves no traffic yet).
    Returns the retired versions.
    """
    if not spec.registration.supersede_challengers:
        return []
    joined = joined_challengers(states)
    if not joined:
        return []
    staged = [s.version for s in states if s.alias == STAGING]
    reason = (
        f"superseded by study {study}'s challengers (version {', '.join(joined)}), "
        "trained on the window its retrain judged current"
    )
    client = configure_mlflow(settings)
    return retire_superseded(client, spec.name, [*joined, *staged], reason)
