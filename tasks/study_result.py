"""What a study found: its trial records and the one builder of ``StudyResult``.

The same builder serves a finished study (from the optimizer's history) and an unfinished
one rebuilt from its MLflow runs, so "best", "top" and "Pareto" mean one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from tasks.optimizers.base import dominates, loss_sign

RESULT_ARTIFACT = "study_result.json"
PRUNE_SCORE = "prune_score"  # running score at the pruning fold, kept for resume
COMPUTE_SAVED = "compute_saved_seconds"
CPU_SECONDS = "cpu_seconds"  # a trial's own CPU time, measured where it ran
SUGGEST_SECONDS = "suggest_seconds"
STATUSES = ("completed", "failed", "pruned")


class TrialRecord(BaseModel):
    """One finished trial: what registration and reports need."""

    trial_id: str
    params: dict[str, Any]
    values: dict[str, float] = Field(default_factory=dict)
    status: str = "completed"
    reason: str | None = None
    run_id: str | None = None
    role: str = "search"  # "defaults" | "warm_start" | "search"


class StudyResult(BaseModel):
    """What an ``optimize`` run found, and where its records are."""

    study_name: str
    experiment_id: str
    parent_run_id: str
    objectives: dict[str, str]
    best: TrialRecord | None = None  # single objective
    pareto: list[TrialRecord] = Field(default_factory=list)  # several objectives
    top: list[TrialRecord] = Field(default_factory=list)  # by the primary objective
    defaults: TrialRecord | None = None  # the family's library defaults, evaluated first
    # best - defaults on the primary objective, positive when tuning won (None: not measured)
    tuning_gain: float | None = None
    defaults_notes: list[str] = Field(default_factory=list)  # defaults moved into the space
    n_trials: int = 0
    n_completed: int = 0
    n_failed: int = 0
    n_pruned: int = 0
    compute_saved_seconds: float = 0.0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    stop_reason: str = ""
    state_path: str = ""
    resumed: bool = False


def _losses(record: TrialRecord, objectives: Mapping[str, str]) -> list[float]:
    return [loss_sign(d) * record.values[k] for k, d in objectives.items()]


def pareto_front(
    records: Sequence[TrialRecord], objectives: Mapping[str, str]
) -> list[TrialRecord]:
    """Return the non-dominated records (each objective in its own direction), in order."""
    losses = [_losses(r, objectives) for r in records]
    return [
        r
        for i, r in enumerate(records)
        if not any(dominates(losses[j], losses[i]) for j in range(len(records)) if j != i)
    ]


def build_result(
    records: Sequence[TrialRecord],
    *,
    study_name: str,
    experiment_id: str,
    parent_run_id: str,
    objectives: Mapping[str, str],
    **extra: Any,
) -> StudyResult:
    """Rank ``records`` and count them; ``extra`` are StudyResult's bookkeeping fields."""
    objectives = dict(objectives)
    metric, direction = next(iter(objectives.items()))
    sign = loss_sign(direction)
    completed = [
        r for r in records if r.status == "completed" and all(k in r.values for k in objectives)
    ]
    ranked = sorted(completed, key=lambda r: sign * r.values[metric])
    single = len(objectives) == 1
    defaults = next((r for r in records if r.role == "defaults"), None)
    best = ranked[0] if ranked and single else None
    gain = None
    if best is not None and defaults is not None and defaults in completed:
        gain = -sign * (best.values[metric] - defaults.values[metric])
    counts = {s: sum(1 for r in records if r.status == s) for s in STATUSES}
    return StudyResult(
        study_name=study_name,
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        objectives=objectives,
        best=best,
        pareto=[] if single else pareto_front(ranked, objectives),
        top=ranked[:10],
        defaults=defaults,
        tuning_gain=gain,
        n_trials=len(records),
        n_completed=counts["completed"],
        n_failed=counts["failed"],
        n_pruned=counts["pruned"],
        compute_saved_seconds=sum(r.values.get(COMPUTE_SAVED, 0.0) for r in records),
        **({"cpu_seconds": sum(r.values.get(CPU_SECONDS, 0.0) for r in records)} | extra),
    )
