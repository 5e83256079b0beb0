"""The ``studies`` flow: optimize each spec in order, then register its best behind the gates.

The studies an application starts with, as one deployment: run in order, so the first
spec's passing candidate becomes the champion and the later ones its challengers
(registration gives the first passer ``champion`` when the model has none). A deployment
trigger starts it (the demo's: the first materialization of the profile view), so no
script calls a flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.optimize import optimize
from flows.register import register
from tasks.spec import StudySpec


@flow(name="studies", log_prints=True)
def studies(specs: list[StudySpec], model_name: str | None = None) -> list[dict[str, Any]]:
    """Optimize and register each spec in order; return each registration's summary."""
    logger = get_run_logger()
    summaries = []
    for spec in specs:
        result = optimize(spec)
        logger.info("study %s: %d trials done", spec.name, result.n_completed)
        # Feature selection changed the spec's columns: registration reads the spec the
        # study logged (data.drop_columns with the columns it dropped), not the one given.
        selected = spec.stages is not None and spec.stages.feature_selection is not None
        logged = None if selected else spec
        summaries.append(register(spec.name, spec=logged, model_name=model_name))
    return summaries
