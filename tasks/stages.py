"""The study's stages as Prefect tasks, each logged as its own MLflow run under the parent.

``stages:`` in the spec (tasks/spec_stages.py) runs, in order:

- ``feature_selection`` (tasks/selection.py) on the training part; the kept columns become
  the spec's data for the rest of the study (``data.drop_columns`` grows), so the trials,
  the registered model's signature and what the rollout service reads are those columns;
- ``hpo``: the study itself (the optimize flow's ask/evaluate/tell loop); its stage run
  sums it up. ``hpo: null`` evaluates the library defaults and warm starts only;
- ``compression`` (tasks/compression.py) of the candidates registration would take: each
  refit on the training part, compressed, judged on the hold-out against the uncompressed
  model, the kept variants' Pareto set of (metric, p95 latency, bytes), and the best
  trade-off by the spec's choice rule (tasks/staging.py).

A stage run has tags ``banditflow.role = stage`` and ``banditflow.kind = <stage>``, and
``mlflow.parentRunId`` = the study's run (tasks/stage_runs.py). A resumed study runs its
stages again: a stage that finds what its run logged keeps that run; one whose result
changed (more trials, another best, a changed tolerance, re-measured latencies) is logged
as a fresh run and the old run is marked superseded, so the stage's run is the final result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.stage_runs import find_stage_run, log_stage_run

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tasks.compression import CompressionResult
    from tasks.data import StudyData
    from tasks.selection import SelectionResult
    from tasks.settings import PipelineSettings
    from tasks.spec import StudySpec
    from tasks.study_result import StudyResult

FEATURE_SELECTION, HPO, COMPRESSION = "feature_selection", "hpo", "compression"


def has_stage(spec: StudySpec, name: str) -> bool:
    """Whether the spec runs stage ``name`` (a spec without ``stages:`` runs the HPO only)."""
    if spec.stages is None:
        return name == HPO
    return getattr(spec.stages, name) is not None


def defaults_only(spec: StudySpec) -> StudySpec:
    """``hpo: null``: a budget of the library defaults and the warm starts, nothing searched."""
    if has_stage(spec, HPO):
        return spec
    n = len(spec.warm_start) + 1
    budget = spec.budget.model_copy(update={"max_trials": n})
    return spec.model_copy(update={"budget": budget, "defaults_first": True})


# --- feature selection -------------------------------------------------------------------
@task(name="stage-feature-selection", cache_policy=NO_CACHE)
def feature_selection_stage(
    spec: StudySpec, data: StudyData
) -> tuple[StudySpec, StudyData, SelectionResult]:
    """Select the columns on the training part; return the spec and data restricted to them."""
    from tasks.selection import apply_selection, select_features

    selection = select_features(spec, data)
    new_spec, new_data = apply_selection(spec, data, selection)
    return new_spec, new_data, selection


def log_selection(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    spec: StudySpec,
    selection: SelectionResult,
) -> str:
    """Log the selection stage: the kept columns, the score of each k, every importance."""
    cfg = spec.stages.feature_selection if spec.stages else None
    params: dict[str, Any] = {
        "method": cfg.method if cfg else "permutation",
        "metric": selection.metric,
        "rule": selection.rule,
        "objective_n_features": bool(cfg and cfg.objective),
        "folds": cfg.folds if cfg else "",
        "k_grid": ",".join(str(s.k) for s in selection.curve),
        "selected": ",".join(selection.features),
    }
    payload = asdict(selection)
    return log_stage_run(
        client,
        experiment_id,
        parent_run_id,
        FEATURE_SELECTION,
        study=spec.name,
        params=params,
        metrics={
            "n_features": selection.k,
            "n_columns": len(selection.ranking),
            "rows_used": selection.rows_used,
        },
        steps={
            f"cv_{selection.metric}": [(s.k, s.mean) for s in selection.curve],
            f"cv_{selection.metric}_se": [(s.k, s.se) for s in selection.curve],
        },
        texts={
            "feature_selection.json": json.dumps(payload, indent=1, default=str),
            "feature_selection.md": selection.to_markdown(),
        },
        tags={"banditflow.selected_features": json.dumps(selection.features)},
    )


# --- HPO -----------------------------------------------------------------------------------
@task(name="stage-hpo", cache_policy=NO_CACHE)
def hpo_stage(
    spec: StudySpec, result: StudyResult, data: StudyData, settings: PipelineSettings
) -> str:
    """Sum the search up as the ``hpo`` stage run (its trials are the parent's children)."""
    from tasks.tracking import configure_mlflow

    metrics: dict[str, float] = {
        "n_trials": result.n_trials,
        "n_completed": result.n_completed,
        "n_failed": result.n_failed,
        "n_pruned": result.n_pruned,
        "n_pareto": len(result.pareto),
        "cpu_seconds": result.cpu_seconds,
        "n_features": len(data.feature_types),
    }
    if result.best is not None:
        metrics |= {f"best_{k}": v for k, v in result.best.values.items()}
    if result.tuning_gain is not None:
        metrics["tuning_gain"] = result.tuning_gain
    return log_stage_run(
        configure_mlflow(settings),
        result.experiment_id,
        result.parent_run_id,
        HPO,
        study=spec.name,
        params={
            "optimizer": spec.optimizer if has_stage(spec, HPO) else "defaults only",
            "family": spec.model.family,
            "max_trials": spec.budget.max_trials,
            "stop_reason": result.stop_reason,
            "features": ",".join(data.feature_types),
        },
        metrics=metrics,
    )


# --- compression ---------------------------------------------------------------------------
@task(name="stage-compression", cache_policy=NO_CACHE)
def compression_stage(
    spec: StudySpec, result: StudyResult, data: StudyData, settings: PipelineSettings
) -> dict[str, Any]:
    """Compress the candidates registration would take; log the variants and the choice."""
    from tasks.compression import compress_candidates
    from tasks.registry import refit_candidate, select_trials
    from tasks.tracking import configure_mlflow

    cfg = spec.stages.compression if spec.stages else None
    assert cfg is not None
    trials = select_trials(spec, result.best, result.pareto, result.top)
    trials = trials[: cfg.max_candidates or spec.registration.max_candidates]
    candidates = [
        (
            str(t.trial_id),
            refit_candidate(spec, t, data.X_train, data.y_train, data.feature_types, data.history),
        )
        for t in trials
    ]
    found = compress_candidates(
        spec,
        [(tid, c.model) for tid, c in candidates],
        data,
        tolerance=cfg.tolerance,
        refit_leaves=cfg.refit_leaves,
    )
    chosen, choice = choose_variant(spec, found)
    params_of = {tid: dict(c.params) for tid, c in candidates}
    summary = compression_summary(spec, found, chosen, params_of)
    summary["choice"] = None if choice is None else {"rule": choice.rule, "score": choice.score}
    summary["run_id"] = log_stage_run(
        configure_mlflow(settings),
        result.experiment_id,
        result.parent_run_id,
        COMPRESSION,
        study=spec.name,
        params={"tolerance": cfg.tolerance, "metric": found.metric, "candidates": len(trials)},
        metrics=summary["metrics"],
        texts={
            "compression.md": found.to_markdown(),
            "compression.json": json.dumps(summary, indent=1, default=str),
        },
        tags={"banditflow.compression_choice": summary["chosen"] or "-"},
    )
    return summary


def choose_variant(spec: StudySpec, found: CompressionResult) -> tuple[Any, Any]:
    """The best trade-off of the variants' Pareto set and the choice (knee if 'none')."""
    from tasks.selection import ScoredPoint
    from tasks.spec import ChoiceSpec
    from tasks.staging import choose

    if not found.pareto:
        return None, None
    choice = spec.registration.choice
    if choice.rule == "none":
        choice = ChoiceSpec(rule="knee")
    objectives = {
        found.metric: found.direction,
        "latency_ms": "minimize",
        "model_bytes": "minimize",
    }
    points = [
        ScoredPoint(
            f"{v.candidate}/{v.name}",
            {found.metric: v.value, "latency_ms": v.p95_ms, "model_bytes": float(v.size_bytes)},
        )
        for v in found.pareto
    ]
    picked = choose(points, objectives, choice)
    if picked is None:
        return None, None
    return next(v for v in found.pareto if f"{v.candidate}/{v.name}" == picked.trial_id), picked


def variant_params(spec: StudySpec, params: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The parameters that rebuild a variant by a plain fit, or None.

    The first k trees of a seeded forest are the trees of the same forest with k trees,
    and the first k boosting iterations those of ``max_iter=k``: the registry can refit it.
    A quantized variant is the candidate's own refit, served as its quantized graph
    (tasks/quantized.py).
    """
    out = {**dict(params), **dict(spec.model.fixed)}
    if name in ("uncompressed", "quantized"):
        return out
    if name.startswith("trees="):
        key = "max_iter" if spec.model.family == "hist_gradient_boosting" else "n_estimators"
        return out | {key: int(name.split("=", 1)[1])}
    if name.startswith("leaves<="):
        return out | {"max_leaf_nodes": int(name.split("<=", 1)[1])}
    return None


def compression_summary(
    spec: StudySpec,
    found: CompressionResult,
    chosen: Any,
    params_of: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """The stage's result: every variant, the Pareto set, the choice and what it saved."""
    rows = [v.row() for v in found.variants]
    metrics: dict[str, float] = {
        "n_variants": len(found.variants),
        "n_pareto": len(found.pareto),
        "n_within_tolerance": sum(v.within_tolerance for v in found.variants),
    }
    out: dict[str, Any] = {
        "metric": found.metric,
        "tolerance": found.tolerance,
        "variants": rows,
        "pareto": [f"{v.candidate}/{v.name}" for v in found.pareto],
        "chosen": None,
        "chosen_params": None,
        "metrics": metrics,
    }
    if chosen is None:
        return out
    base = next(
        v for v in found.variants if v.candidate == chosen.candidate and v.name == "uncompressed"
    )
    out["chosen"] = f"{chosen.candidate}/{chosen.name}"
    out["chosen_params"] = variant_params(spec, params_of[chosen.candidate], chosen.name)
    metrics |= {
        f"chosen_{found.metric}": chosen.value,
        "chosen_lost": chosen.lost,
        "chosen_p95_ms": chosen.p95_ms,
        "chosen_bytes": chosen.size_bytes,
        "bytes_ratio": base.size_bytes / max(chosen.size_bytes, 1),
        "latency_ratio": base.p95_ms / chosen.p95_ms if chosen.p95_ms > 0 else float("nan"),
    }
    return out


# --- the compression stage's choice goes to staging -----------------------------------------
def with_compression_choice(
    trials: list[Any], choice: Any, parent_run_id: str | None, settings: PipelineSettings
) -> tuple[list[Any], Any]:
    """Add the compression stage's best trade-off to the trials; make it the staged one.

    The chosen variant is registered as a trial of its own (``<trial>-<variant>``, e.g.
    ``2-trees=16``) whose parameters rebuild it by a plain fit (:func:`variant_params`);
    ``2-quantized`` serves its quantized ONNX graph (tasks/quantized.py).
    Without a compression stage run, ``trials`` and ``choice`` come back unchanged.
    """
    from tasks.staging import Choice
    from tasks.study_result import TrialRecord
    from tasks.tracking import configure_mlflow

    if parent_run_id is None:
        return trials, choice
    client = configure_mlflow(settings)
    parent = client.get_run(parent_run_id)
    run = find_stage_run(client, parent.info.experiment_id, parent_run_id, COMPRESSION)
    if run is None:
        return trials, choice
    import mlflow

    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/compression.json"))
    if not summary.get("chosen") or summary.get("chosen_params") is None:
        return trials, choice
    candidate, variant = summary["chosen"].split("/", 1)
    row = next(
        r for r in summary["variants"] if r["candidate"] == candidate and r["name"] == variant
    )
    trial_id = candidate if variant == "uncompressed" else f"{candidate}-{variant}"
    reason = f"compression stage: {variant} of trial {candidate}, best trade-off"
    rule = summary.get("choice") or {"rule": "knee", "score": float("nan")}
    staged = Choice(trial_id, rule["rule"], float(rule["score"]), len(summary["pareto"]))
    if any(str(t.trial_id) == trial_id for t in trials):
        return trials, staged
    record = TrialRecord(
        trial_id=trial_id,
        params=summary["chosen_params"],
        values={
            summary["metric"]: float(row["value"]),
            "latency_ms": float(row["p95_ms"]),
            "model_bytes": float(row["size_bytes"]),
        },
        reason=reason,
    )
    return [*trials, record], staged
