"""The retrain flow: drift check -> if drifted, optimize again warm-started -> register -> gates.

The steps are in ``tasks/retrain.py`` (window, drift check, the retrain study's spec) and
``tasks/register.py``; this module chains them with the optimize and register flows.

Concurrency: the deployment has ``concurrency_limit: 1`` with ``CANCEL_NEW``
(prefect.yaml), so two feature updates at once start one retrain; the other run is
cancelled by the server before it starts.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow

from tasks.retrain import (
    RetrainOutcome,
    check_model,
    feature_view_name,
    models_with_champion,
    run_logger,
)
from tasks.settings import PipelineSettings, get_settings
from tasks.spec import StudySpec


def optimize_and_register(
    spec: StudySpec, model: str, data: Any, settings: PipelineSettings
) -> dict[str, str | None]:
    """Run the retrain study (a subflow), then register its best under ``model``.

    Returns ``{version: alias or None}``: the gates decide which become challengers.
    """
    from flows.optimize import optimize
    from flows.register import register_trials
    from tasks.registry import select_trials

    result = optimize(spec)
    # register_trials registers under the spec's name: the model's, not the study's.
    as_model = spec.model_copy(update={"name": model})
    trials = select_trials(as_model, result.best, result.pareto, result.top)
    summary = register_trials(as_model, spec.name, trials, data, settings, result.parent_run_id)
    return {str(v["version"]): v["alias"] for v in summary["versions"]}


def retrain_model(
    model: str,
    start: datetime | None,
    end: datetime | None,
    *,
    settings: PipelineSettings,
    warm_start_top: int,
) -> RetrainOutcome:
    """Check one model's drift and retrain it when drifted."""
    plan = check_model(model, start, end, settings=settings, warm_start_top=warm_start_top)
    if plan.spec is not None:
        plan.outcome.registered = optimize_and_register(plan.spec, model, plan.data, settings)
    return plan.outcome


@flow(name="retrain", log_prints=True)
def retrain(
    feature_view: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    model: str | None = None,
    warm_start_top: int = 3,
) -> list[dict[str, Any]]:
    """Check drift for each model with a champion (or ``model``); retrain the drifted ones."""
    from tasks.tracking import configure_mlflow

    settings = get_settings()
    view = feature_view_name(feature_view)
    log = run_logger()
    names = [model] if model else models_with_champion(configure_mlflow(settings))
    if not names:
        log.info("no registered model has a champion yet: nothing to check")
    if view:
        log.info("feature view %s updated (%s .. %s)", view, start, end)
    outcomes = [
        retrain_model(name, start, end, settings=settings, warm_start_top=warm_start_top)
        for name in names
    ]
    return [asdict(o) for o in outcomes]
