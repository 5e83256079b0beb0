"""Register a study's candidates: load -> register -> gates -> describe -> aliases -> tell.

Run it right after ``optimize`` (the demo chains them) or with ``banditflow register STUDY``.
The steps are tasks in ``tasks/register.py``; the result is described there. Every tag
(serving flavour, gates) and the description are written before any alias moves: a running
service that sees a new challenger alias loads it in the flavour that passed the gates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import flow

from tasks.register import (
    assign_candidate_aliases,
    convert_candidates,
    describe_candidates,
    emit_registered,
    gate_candidates,
    log_summary,
    plan_registration,
    register_candidates,
    summarize,
)
from tasks.settings import PipelineSettings, get_settings
from tasks.spec import StudySpec

if TYPE_CHECKING:
    from tasks.registry import TrialLike


def register_trials(
    spec: StudySpec,
    study: str,
    trials: list[TrialLike],
    data: Any,
    settings: PipelineSettings,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Run the steps as tasks (inside a flow) on given trials and data; emit the event."""
    from tasks.gates import holdout_from

    holdout = holdout_from(data, spec.gates)
    states = register_candidates(spec, study, trials, data, settings, parent_run_id)
    states = gate_candidates(spec, states, holdout, settings, getattr(data, "feature_types", None))
    states = convert_candidates(spec, states, holdout, settings)
    states = describe_candidates(spec, study, states, settings)
    states = assign_candidate_aliases(spec, study, states, settings)  # last: tags are all set
    summary = summarize(spec, study, states, settings)
    emit_registered(summary)
    log_summary(summary)
    return summary


@flow(name="register", log_prints=True)
def register(
    study: str, spec: StudySpec | None = None, model_name: str | None = None
) -> dict[str, Any]:
    """Register the study's best trials (or Pareto set) behind the spec's gates.

    ``spec`` defaults to the one the optimize flow logged with the study; ``model_name``
    (default: ``registration.model_name``, else the spec's name) is the registered model.
    """
    settings = get_settings()
    plan = plan_registration(study, spec, model_name, settings)
    return register_trials(plan.spec, study, plan.trials, plan.data, settings, plan.parent_run_id)
