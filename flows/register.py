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
from tasks.supersede import supersede_challengers

if TYPE_CHECKING:
    from tasks.registry import TrialLike
    from tasks.staging import Choice


def register_trials(
    spec: StudySpec,
    study: str,
    trials: list[TrialLike],
    data: Any,
    settings: PipelineSettings,
    parent_run_id: str | None = None,
    staged: Choice | None = None,
) -> dict[str, Any]:
    """Run the steps as tasks (inside a flow) on given trials and data; emit the event.

    ``staged``: the trial to stage (default: the spec's choice rule over ``trials``).
    """
    from tasks.gates import holdout_from
    from tasks.staging import choose_for

    staged = staged or choose_for(spec, trials)

    holdout = holdout_from(data, spec.gates)
    states = register_candidates(spec, study, trials, data, settings, parent_run_id)
    states = gate_candidates(spec, states, holdout, settings, getattr(data, "feature_types", None))
    states = convert_candidates(spec, states, holdout, settings)
    states = describe_candidates(spec, study, states, settings)
    states = assign_candidate_aliases(spec, study, states, settings, staged)  # last: tags set
    retired = supersede_challengers(spec, study, states, settings)
    summary = summarize(spec, study, states, settings) | {"superseded": retired}
    emit_registered(summary)
    log_summary(summary)
    fail_on_step_errors(summary)
    return summary


class RegistrationStepFailed(RuntimeError):
    """A register step errored on a version (a gate run that raised, a failed conversion)."""


def fail_on_step_errors(summary: dict[str, Any]) -> None:
    """Fail the flow run, after everything else is recorded, when a step errored.

    The other versions are registered, gated and aliased as usual; a Prefect artifact
    and the exception say which step failed on which version, so the UI shows the run
    Failed instead of Completed.
    """
    errors = [f"version {v['version']}: {v['error']}" for v in summary["versions"] if v["error"]]
    if not errors:
        return
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    text = f"{len(errors)} register step(s) failed for model {summary['model']}:\n- " + (
        "\n- ".join(errors)
    )
    if FlowRunContext.get() is not None:
        create_markdown_artifact(markdown=text, description="register steps that failed")
    raise RegistrationStepFailed(text)


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
    return register_trials(
        plan.spec, study, plan.trials, plan.data, settings, plan.parent_run_id, plan.staged
    )
