"""Evaluate one trial: cross-validate a model family's pipeline, measure latency and size.

``evaluate_trial`` is a plain function that never raises: an exception, a NaN metric or a
timeout comes back as a failed ``TrialOutcome`` with the reason, so one bad trial never
ends a study. The flow maps it as a Prefect task (one task per trial, not per fold).
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.metrics import SYSTEM_METRICS, better, metrics_for, predictions, score_all
from tasks.pruners import RungSchedule, schedule_for
from tasks.timing import model_predictor, serialized_bytes, single_row_latency_ms

if TYPE_CHECKING:
    import pandas as pd

    from tasks.data import StudyData
    from tasks.spec import StudySpec

# Measured on every trial besides the task's metrics (not objectives: bookkeeping).
TIMING_METRICS = ("fit_seconds", "eval_seconds", "cpu_seconds")
FIDELITY_FRACTION = "fidelity_fraction"  # of a pruned trial: the share of fidelity it used


@dataclass(frozen=True)
class EvalConfig:
    """What ``evaluate_trial`` needs from a spec (small, so it pickles cheaply)."""

    family: str
    task: str
    objectives: dict[str, str]
    fixed: dict[str, Any] = field(default_factory=dict)
    method: str = "cv"
    folds: int = 5
    holdout_fraction: float = 0.2
    latency_calls: int = 200
    seed: int = 0
    timeout_seconds: float | None = None
    prune_after_folds: int | None = None
    # asha / hyperband: where a trial reports to its pruner (tasks/pruners.py)
    fidelity: RungSchedule | None = None

    @classmethod
    def from_spec(cls, spec: StudySpec) -> EvalConfig:
        pruning = spec.budget.pruning
        return cls(
            family=spec.model.family,
            task=spec.task,
            objectives=dict(spec.objectives),
            fixed=dict(spec.model.fixed),
            method=spec.evaluation.method,
            folds=spec.evaluation.folds,
            holdout_fraction=spec.evaluation.holdout_fraction,
            latency_calls=spec.evaluation.latency_calls,
            seed=spec.seed,
            timeout_seconds=spec.budget.trial_timeout_seconds,
            prune_after_folds=pruning.after_folds if pruning and pruning.rule == "median" else None,
            fidelity=schedule_for(spec),
        )

    @property
    def pruning_metric(self) -> tuple[str, str] | None:
        """The first objective measured per fold (latency and size are not)."""
        for name, direction in self.objectives.items():
            if name not in SYSTEM_METRICS:
                return name, direction
        return None


@dataclass
class TrialOutcome:
    """A trial's result: status, every metric (fold means) and what pruning saved."""

    params: dict[str, Any]
    status: str  # "completed" | "failed" | "pruned"
    values: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    trial_id: str | None = None
    # The pruning metric's running mean after each fold (the median rule compares these).
    running_scores: list[float] = field(default_factory=list)
    folds_done: int = 0
    compute_saved_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrialTimeout(Exception):
    """A trial ran past ``budget.trial_timeout_seconds``."""


def evaluate_trial(
    spec_or_parts: StudySpec | EvalConfig,
    params: Mapping[str, Any],
    data: StudyData,
    *,
    prune_threshold: float | None = None,
    trial_id: str | None = None,
    pruner: Any = None,
) -> TrialOutcome:
    """Cross-validate ``params`` on the training rows; never raise into the flow.

    ``prune_threshold`` is the median running score of completed trials after
    ``budget.pruning.after_folds`` folds: a trial worse than it there stops (``pruned``).
    ``pruner`` (a ``tasks.pruners.RungPruner``) takes the score at each rung of
    ``config.fidelity`` instead, and says whether the trial stops there.
    """
    config = (
        spec_or_parts
        if isinstance(spec_or_parts, EvalConfig)
        else EvalConfig.from_spec(spec_or_parts)
    )
    started, cpu_started = time.perf_counter(), time.thread_time()  # this trial's own CPU
    try:
        with warnings.catch_warnings():
            # Convergence and similar warnings are a trial's business, not the log's.
            warnings.simplefilter("ignore")
            outcome = _evaluate(config, dict(params), data, prune_threshold, started, pruner)
    except TrialTimeout as exc:
        outcome = TrialOutcome(dict(params), "failed", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed trial is a result, never a crash
        where = traceback.extract_tb(exc.__traceback__)[-1]
        outcome = TrialOutcome(
            dict(params),
            "failed",
            reason=f"{type(exc).__name__}: {exc} (at {where.name}:{where.lineno})",
        )
    outcome.trial_id = trial_id
    outcome.values.setdefault("eval_seconds", time.perf_counter() - started)
    outcome.values.setdefault("cpu_seconds", time.thread_time() - cpu_started)
    return outcome


@dataclass
class _Folds:
    """What the fold loop has measured so far."""

    per_fold: dict[str, list[float]]
    fit_seconds: list[float] = field(default_factory=list)
    fold_seconds: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)


def _evaluate(
    config: EvalConfig,
    params: dict[str, Any],
    data: StudyData,
    prune_threshold: float | None,
    started: float,
    pruner: Any = None,
) -> TrialOutcome:
    from sklearn.base import clone

    from tasks.models import ModelFamilyError, build_model, fit_model, history_weight, merge_params

    X, y = data.X_train, data.y_train
    history = data.history
    pipeline = build_model(
        config.family,
        merge_params(config.fixed, params),
        task=config.task,  # type: ignore[arg-type]
        feature_types=data.feature_types,
        seed=config.seed,
    )
    splits = _splits(config, data)
    metric_names = [m for m in metrics_for(config.task) if m not in SYSTEM_METRICS]  # type: ignore[arg-type]
    folds = _Folds({m: [] for m in metric_names})
    rungs = config.fidelity if pruner is not None else None
    if rungs is not None and rungs.kind != "folds":
        from tasks.fidelity import evaluate_rungs

        if history_weight(params) > 0 and data.history_rows:
            raise ModelFamilyError(
                f"a {rungs.kind} fidelity pruner fits without the prior rows: drop "
                "history_weight from the space or use the median rule"
            )

        return evaluate_rungs(config, params, data, pipeline, splits, pruner, folds, started)
    fitted = None
    for fold, (train_idx, valid_idx) in enumerate(splits, start=1):
        fold_started = time.perf_counter()
        fitted = clone(pipeline)
        t0 = time.perf_counter()
        fit_model(fitted, X.iloc[train_idx], y.iloc[train_idx], params, history)
        folds.fit_seconds.append(time.perf_counter() - t0)
        scores = score_fold(fitted, X.iloc[valid_idx], y.iloc[valid_idx], config.task)
        for name in metric_names:
            folds.per_fold[name].append(scores[name])
        folds.fold_seconds.append(time.perf_counter() - fold_started)
        elapsed = time.perf_counter() - started
        stop = _stop_early(config, params, folds, fold, len(splits), prune_threshold)
        if stop is None and rungs is not None and fold < len(splits):
            stop = _rung_stop(params, folds, fold, len(splits), pruner, config)
        if stop is not None:
            return stop
        if config.timeout_seconds is not None and elapsed > config.timeout_seconds:
            raise TrialTimeout(
                f"timeout: {elapsed:.1f} s after {fold} of {len(splits)} folds exceeds "
                f"budget.trial_timeout_seconds={config.timeout_seconds:g}"
            )
    assert fitted is not None  # at least one split
    return _completed(config, params, folds, len(splits), fitted, X)


def _stop_early(
    config: EvalConfig,
    params: dict[str, Any],
    folds: _Folds,
    fold: int,
    n_folds: int,
    prune_threshold: float | None,
) -> TrialOutcome | None:
    """Fail a NaN pruning metric; prune by the median rule; else None (go on)."""
    pruning = config.pruning_metric
    if pruning is None:
        return None
    metric, direction = pruning
    folds.running.append(float(np.mean(folds.per_fold[metric])))
    if not math.isfinite(folds.per_fold[metric][-1]):
        return TrialOutcome(
            params,
            "failed",
            reason=f"{metric} is NaN on fold {fold}",
            running_scores=folds.running,
            folds_done=fold,
        )
    if (
        prune_threshold is None
        or config.prune_after_folds is None
        or fold != config.prune_after_folds
        or fold >= n_folds
        or not better(prune_threshold, folds.running[-1], direction)
    ):
        return None
    return TrialOutcome(
        params,
        "pruned",
        values={metric: folds.running[-1], "fit_seconds": float(np.mean(folds.fit_seconds))},
        reason=(
            f"median rule: {metric}={folds.running[-1]:.4g} after {fold} folds is "
            f"worse than the median {prune_threshold:.4g} of completed trials"
        ),
        running_scores=folds.running,
        folds_done=fold,
        # The folds not run, at this trial's own pace (+ the latency measurement).
        compute_saved_seconds=(n_folds - fold) * float(np.mean(folds.fold_seconds)),
    )


def _rung_stop(
    params: dict[str, Any], folds: _Folds, fold: int, n_folds: int, pruner: Any, config: EvalConfig
) -> TrialOutcome | None:
    """The folds fidelity: the running CV mean after ``fold`` folds goes to the pruner."""
    if not pruner.should_prune(fold, folds.running[-1]):
        return None
    metric = config.pruning_metric[0]  # type: ignore[index]
    return TrialOutcome(
        params,
        "pruned",
        values={
            metric: folds.running[-1],
            "fit_seconds": float(np.mean(folds.fit_seconds)),
            FIDELITY_FRACTION: fold / n_folds,
        },
        reason=f"{pruner.rule}: {metric}={folds.running[-1]:.4g} after {fold} of {n_folds} folds",
        running_scores=folds.running,
        folds_done=fold,
        compute_saved_seconds=(n_folds - fold) * float(np.mean(folds.fold_seconds)),
    )


def _completed(
    config: EvalConfig,
    params: dict[str, Any],
    folds: _Folds,
    n_folds: int,
    fitted: Any,
    X: pd.DataFrame,
) -> TrialOutcome:
    means = {name: float(np.mean(v)) for name, v in folds.per_fold.items()}
    values = {k: v for k, v in means.items() if math.isfinite(v)}
    # A NaN objective fails the trial; a NaN metric nobody optimizes is just left out.
    nan = sorted(k for k in config.objectives if k in means and k not in values)
    if nan:
        return TrialOutcome(
            params,
            "failed",
            values=values,
            reason=f"NaN objective(s): {', '.join(nan)}",
            running_scores=folds.running,
            folds_done=n_folds,
        )
    # The last fold's model stands in for the final one: same family and params, one fit
    # fewer per trial; size and latency barely depend on 20 % more rows.
    values["latency_ms"] = single_row_latency_ms(
        model_predictor(fitted, config.task),  # type: ignore[arg-type]
        X,
        calls=config.latency_calls,
    )
    values["model_bytes"] = float(serialized_bytes(fitted))
    values["fit_seconds"] = float(np.mean(folds.fit_seconds))
    return TrialOutcome(
        params, "completed", values=values, running_scores=folds.running, folds_done=n_folds
    )


def _splits(config: EvalConfig, data: StudyData) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    y = data.y_train
    n = len(y)
    index = np.arange(n)
    if config.method == "holdout":
        n_valid = max(1, int(round(n * config.holdout_fraction)))
        if data.time_ordered:  # rows are oldest first: validate on the most recent
            return [(index[: n - n_valid], index[n - n_valid :])]
        stratify = y if config.task != "regression" and y.value_counts().min() >= 2 else None
        train, valid = train_test_split(
            index, test_size=n_valid, random_state=config.seed, stratify=stratify
        )
        return [(np.sort(train), np.sort(valid))]
    if config.task != "regression" and y.value_counts().min() >= config.folds:
        splitter: Any = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    else:
        splitter = KFold(config.folds, shuffle=True, random_state=config.seed)
    return list(splitter.split(index, y))


def score_fold(model: Any, X: pd.DataFrame, y: pd.Series, task: str) -> dict[str, float]:
    """Return every metric the task supports for a fitted model on validation rows."""
    names = [m for m in metrics_for(task) if m not in SYSTEM_METRICS]  # type: ignore[arg-type]
    classes = None if task == "regression" else np.asarray(model.classes_)
    out = predictions(model, X, task)  # type: ignore[arg-type]
    return score_all(names, np.asarray(y), out, classes=classes, task=task)  # type: ignore[arg-type]
