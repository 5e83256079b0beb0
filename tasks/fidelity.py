"""A trial's cross-validation at growing fidelity: rows or iterations, rung by rung.

At each rung of ``config.fidelity`` every fold's model is trained at that fidelity and
scored on the fold's full validation rows; the mean goes to the trial's pruner (Optuna's
ASHA or Hyperband, tasks/pruners.py), which says whether the trial stops there.

- ``iterations``: the family's parameter (``max_iter`` of boosting, ``n_estimators`` of a
  forest) grows by warm start, so reaching the full fidelity costs what one full fit
  costs, and a trial stopped at 1/9 cost about 1/9 of one.
- ``rows``: each fold trains on a stratified prefix of its training rows (the prefixes are
  nested), fitted afresh at each rung.

The last rung is the full evaluation: its outcome is built as a plain CV's is.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.evaluate import (
    FIDELITY_FRACTION,
    EvalConfig,
    TrialOutcome,
    TrialTimeout,
    _completed,
    _Folds,
    score_fold,
)

if TYPE_CHECKING:
    from tasks.data import StudyData

MIN_ROWS = 20  # fewer training rows than this at a rung: take this many


def nested_order(train_idx: np.ndarray, y: np.ndarray | None, seed: int) -> np.ndarray:
    """Return ``train_idx`` ordered so that every prefix keeps the classes' shares."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_idx))
    if y is None:
        return train_idx[order]
    labels = y[order]
    keys = np.empty(len(order))
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        keys[where] = (np.arange(len(where)) + rng.random()) / len(where)
    return train_idx[order[np.argsort(keys, kind="stable")]]


def evaluate_rungs(
    config: EvalConfig,
    params: dict[str, Any],
    data: StudyData,
    pipeline: Any,
    splits: list[tuple[np.ndarray, np.ndarray]],
    pruner: Any,
    folds: _Folds,
    started: float,
) -> TrialOutcome:
    """Evaluate rung by rung; return pruned at a rung the pruner stops, else completed."""
    schedule = config.fidelity
    assert schedule is not None and config.pruning_metric is not None
    metric = config.pruning_metric[0]
    X, y = data.X_train, data.y_train
    labels = None if config.task == "regression" else np.asarray(y)
    models = _start_models(pipeline, schedule, len(splits))
    full = _full_value(pipeline, schedule.param) if schedule.kind == "iterations" else 0
    orders = [
        nested_order(tr, None if labels is None else labels[tr], config.seed + i)
        for i, (tr, _) in enumerate(splits)
    ]
    fit = [0.0] * len(splits)
    for step in schedule.steps:
        fraction = schedule.fraction(step)
        rung_started = time.perf_counter()
        scores: dict[str, list[float]] = {m: [] for m in folds.per_fold}
        for i, (train_idx, valid_idx) in enumerate(splits):
            if schedule.kind == "iterations":
                models[i].set_params(**{f"model__{schedule.param}": max(1, round(full * fraction))})
                rows = train_idx
            else:
                models[i] = _fresh(pipeline)
                rows = orders[i][: max(MIN_ROWS, round(len(train_idx) * fraction))]
            t0 = time.perf_counter()
            models[i].fit(X.iloc[rows], y.iloc[rows])
            fit[i] += time.perf_counter() - t0
            for name, value in score_fold(
                models[i], X.iloc[valid_idx], y.iloc[valid_idx], config.task
            ).items():
                if name in scores:
                    scores[name].append(value)
        value = float(np.mean(scores[metric]))
        folds.running.append(value)
        folds.fold_seconds.append(time.perf_counter() - rung_started)
        _check(config, value, metric, step, started)
        if step == schedule.max_resource:
            folds.per_fold = scores
            folds.fit_seconds = fit
            return _completed(config, params, folds, len(splits), models[-1], X)
        if pruner.should_prune(step, value):
            return _pruned(params, folds, metric, value, schedule, step, pruner.rule, fit)
    raise AssertionError("a rung schedule ends at its max_resource")  # pragma: no cover


def _check(config: EvalConfig, value: float, metric: str, step: int, started: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{metric} is NaN at fidelity step {step}")
    elapsed = time.perf_counter() - started
    if config.timeout_seconds is not None and elapsed > config.timeout_seconds:
        raise TrialTimeout(
            f"timeout: {elapsed:.1f} s at fidelity step {step} exceeds "
            f"budget.trial_timeout_seconds={config.timeout_seconds:g}"
        )


def _pruned(
    params: dict[str, Any],
    folds: _Folds,
    metric: str,
    value: float,
    schedule: Any,
    step: int,
    rule: str,
    fit: list[float],
) -> TrialOutcome:
    fraction = schedule.fraction(step)
    spent = float(sum(folds.fold_seconds))
    # What finishing would have cost at this trial's pace: iterations grow on (the rest of
    # one fit), rows refit at each remaining rung (their fractions of a full fit).
    per_full = (
        spent / fraction if schedule.kind == "iterations" else folds.fold_seconds[-1] / fraction
    )
    rest = [schedule.fraction(s) for s in schedule.steps if s > step]
    saved = per_full * (1 - fraction) if schedule.kind == "iterations" else per_full * sum(rest)
    return TrialOutcome(
        params,
        "pruned",
        values={metric: value, "fit_seconds": float(np.mean(fit)), FIDELITY_FRACTION: fraction},
        reason=f"{rule}: {metric}={value:.4g} at {fraction:.3g} of the {schedule.kind} fidelity",
        running_scores=folds.running,
        folds_done=len(fit),
        compute_saved_seconds=saved,
    )


def _fresh(pipeline: Any) -> Any:
    from sklearn.base import clone

    return clone(pipeline)


def _start_models(pipeline: Any, schedule: Any, n: int) -> list[Any]:
    if schedule.kind != "iterations":
        return [None] * n
    return [_fresh(pipeline).set_params(model__warm_start=True) for _ in range(n)]


def _full_value(pipeline: Any, param: str | None) -> int:
    value = pipeline.get_params().get(f"model__{param}")
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"fidelity parameter {param!r} is {value!r}, not a positive count")
    return int(value)
