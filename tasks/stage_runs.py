"""A stage's MLflow run under the study's parent: one current run per stage, the final result.

A resumed study runs its stages again (tasks/stages.py, flows/optimize.py), and what they
find may differ from the first run's: more trials after a larger budget, another best, a
changed ``stages.compression.tolerance``, re-measured latencies. MLflow params cannot be
changed and a logged metric cannot be removed, so a stage whose result differs from its
logged run is logged as a **fresh run**, and the old one is kept beside it, marked:

- ``banditflow.role = stage-superseded`` (so it is no longer the stage's run),
- ``banditflow.superseded_by = <new run id>``, run name ``stage-<kind> (superseded)``;
- the new run has ``banditflow.supersedes = <old run id(s)>``.

Whether a result differs is decided by a digest of everything logged (params, metrics,
step series, texts, tags), kept as tag ``banditflow.stage_digest``: a stage that found
the same again keeps its run (a re-run of a spent study adds no runs). A run logged
before digests existed, or left half-logged by a crash (status RUNNING), is superseded.
:func:`find_stage_run` returns the stage's current run, the newest one not superseded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from contract import TAG_KIND, TAG_ROLE, TAG_STUDY

if TYPE_CHECKING:
    from mlflow import MlflowClient

STAGE_ROLE = "stage"
SUPERSEDED_ROLE = "stage-superseded"
TAG_DIGEST = "banditflow.stage_digest"
TAG_SUPERSEDED_BY = "banditflow.superseded_by"
TAG_SUPERSEDES = "banditflow.supersedes"
PARAM_CHARS = 6000  # MLflow's limit on a param's value


def _stage_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, stage: str) -> list:
    """The stage's runs under the parent that are not superseded, newest first."""
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TAG_ROLE}` = "
                f"'{STAGE_ROLE}' and tags.`{TAG_KIND}` = '{stage}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
    )


def find_stage_run(client: MlflowClient, experiment_id: str, parent_run_id: str, stage: str) -> Any:
    """Return the stage's current run under the parent (the newest not superseded), or None."""
    runs = _stage_runs(client, experiment_id, parent_run_id, stage)
    return runs[0] if runs else None


def stage_digest(
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    steps: Mapping[str, list[tuple[int, float]]],
    texts: Mapping[str, str],
    tags: Mapping[str, str],
) -> str:
    """A digest of what a stage run logs: equal digests, equal runs."""
    content = {
        "params": dict(params),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "steps": {k: [[int(s), float(v)] for s, v in p] for k, p in steps.items()},
        "texts": dict(texts),
        "tags": dict(tags),
    }
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def log_stage_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    stage: str,
    *,
    study: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    steps: Mapping[str, list[tuple[int, float]]] | None = None,
    texts: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log a finished stage as a child run of the study; return the stage's current run id.

    The stage's run already under the parent is kept when it logged this same result, and
    superseded by a fresh run when it did not (the module's docstring says how).
    """
    as_params = {k: str(v)[:PARAM_CHARS] for k, v in (params or {}).items()}
    content = (as_params, dict(metrics or {}), dict(steps or {}), dict(texts or {}))
    digest = stage_digest(*content, dict(tags or {}))
    old = _stage_runs(client, experiment_id, parent_run_id, stage)
    if old and old[0].data.tags.get(TAG_DIGEST) == digest and old[0].info.status == "FINISHED":
        kept = str(old[0].info.run_id)
        for run in old[1:]:  # a crash between logging and marking left two
            supersede_run(client, run, kept)
        return kept
    run_tags = {
        "mlflow.parentRunId": parent_run_id,
        TAG_ROLE: STAGE_ROLE,
        TAG_KIND: stage,
        TAG_STUDY: study,
        **(tags or {}),
        TAG_DIGEST: digest,
    }
    if old:
        run_tags[TAG_SUPERSEDES] = ",".join(str(r.info.run_id) for r in old)
    new_id = _create_stage_run(client, experiment_id, stage, run_tags, *content)
    for run in old:  # marked after the new run is complete: a crash here leaves it current
        supersede_run(client, run, new_id)
    return new_id


def _create_stage_run(
    client: MlflowClient,
    experiment_id: str,
    stage: str,
    run_tags: Mapping[str, str],
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    steps: Mapping[str, list[tuple[int, float]]],
    texts: Mapping[str, str],
) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment_id, run_name=f"stage-{stage}", tags=dict(run_tags))
    run_id = str(run.info.run_id)
    now = int(time.time() * 1000)
    rows = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for name, points in steps.items():
        rows += [Metric(name, float(v), now, int(step)) for step, v in points]
    client.log_batch(run_id, metrics=rows, params=[Param(k, v) for k, v in params.items()])
    for name, text in texts.items():
        client.log_text(run_id, text, name)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def supersede_run(client: MlflowClient, run: Any, new_run_id: str) -> None:
    """Mark a stage run as replaced by ``new_run_id`` (kept, no longer the stage's run)."""
    run_id = str(run.info.run_id)
    name = run.data.tags.get("mlflow.runName") or run.info.run_name or "stage"
    client.set_tag(run_id, TAG_ROLE, SUPERSEDED_ROLE)
    client.set_tag(run_id, TAG_SUPERSEDED_BY, new_run_id)
    if not name.endswith("(superseded)"):
        client.set_tag(run_id, "mlflow.runName", f"{name} (superseded)")
    if run.info.status == "RUNNING":  # half-logged by a crashed run
        client.set_terminated(run_id, status="KILLED")
