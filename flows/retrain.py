"""The retrain flow: drift check of every serving arm -> warm-started study -> register -> gates.

Started by a feature update or the daily schedule, it checks the recent window against the
training data of every serving version (``tasks/drift_check.py``) and emits
``banditflow.drift.detected`` when something moved; started by a signal (``reason``: the
drift event, a degraded champion, a rollback), it skips the check. Either way a retrain is
a study of the recent window warm-started from the previous best points
(``tasks/retrain.py``), whose candidates go through registration and the gates.

Concurrency: the deployment has ``concurrency_limit: 1`` with ``CANCEL_NEW``
(prefect.yaml), so two feature updates at once start one retrain; and a retrain study is
named after the window's end, so a second signal for the same window starts nothing.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow

from tasks.drift_check import plan_model
from tasks.retrain import RetrainOutcome, feature_view_name, models_with_champion, run_logger
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
    model: str, start: datetime | None, end: datetime | None, **how: Any
) -> RetrainOutcome:
    """Check one model (unless a signal's ``reason`` is given) and retrain it when due."""
    plan = plan_model(model, start, end, **how)
    if plan.spec is not None:
        registered = optimize_and_register(plan.spec, model, plan.data, how["settings"])
        plan.outcome.registered = registered
    return plan.outcome


@flow(name="retrain", log_prints=True)
def retrain(
    feature_view: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    model: str | None = None,
    warm_start_top: int = 3,
    reason: str | None = None,
    drifted_features: list[str] | None = None,
    retrain_on_drift: bool = True,
) -> list[dict[str, Any]]:
    """Check drift for each model with a champion (or ``model``); retrain the drifted ones.

    ``reason`` (a signal's name, e.g. ``{{ event.event }}``): retrain ``model`` on the window
    without a check. ``retrain_on_drift=False``: only check and emit the drift event, and
    leave the retrain to its consumer.
    """
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
        retrain_model(
            name,
            start,
            end,
            settings=settings,
            warm_start_top=warm_start_top,
            reason=reason,
            drifted_features=drifted_features,
            retrain_on_drift=retrain_on_drift,
        )
        for name in names
    ]
    return [asdict(o) for o in outcomes]
