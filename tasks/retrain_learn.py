"""What the retrain study learns from and with, once it is due.

Three steps, in this order, each reading what the one before left: the outcomes of the
offers served since the change join the training rows (never the hold-out), the family
cross-validation picks the family on those rows, and the prior adds the older labels,
weighted by a searched power. The drift check that only emits the event stops before
these (``plan_retrain(decide_only=True)``); the event's consumer runs them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.settings import PipelineSettings
from tasks.spec import StudySpec


@dataclass
class Learned:
    """The study's spec and rows after the three steps, its start points and what they did."""

    spec: StudySpec
    data: Any
    warm_start: list[dict[str, Any]]
    family: str
    detail: str  # appended to the outcome's detail: "; served ...; prior ...; family ..."


def learn_with(
    spec: StudySpec, data: Any, warm: list[dict[str, Any]], settings: PipelineSettings
) -> Learned:
    """Add the served outcomes, choose the family and add the prior, in that order."""
    from tasks.retrain_family import choose_family, with_family
    from tasks.retrain_prior import add_prior
    from tasks.retrain_window import with_served_outcomes

    # Beside the labels, the outcomes of the offers served since the change.
    spec, data, served = with_served_outcomes(spec, data, settings)
    detail = f"; {served}" if served else ""
    # What it learns with: the family cross-validation picks on these rows.
    only = [f.strip() for f in settings.retrain_families.split(",") if f.strip()]
    choice = choose_family(spec, data, warm, only=only or None)
    spec, warm = with_family(spec, choice), choice.warm_start
    # And what it keeps of the world before: the older labels, weighted by a searched power.
    spec, warm, data, prior = add_prior(spec, warm, data, settings)
    detail += f"; {prior}" if prior else ""
    return Learned(spec, data, warm, choice.family, f"{detail}; {choice.detail()}")
