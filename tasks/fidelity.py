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
from tasks.metrics import predictions, score_all

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
    """Evaluate rung by rung; return pruned at a rung the pruner stops, else completed.

    A rung below the full fidelity scores only the pruning metric (all that the pruner
    reads); the last rung scores every metric, as a plain CV does.
    """
    schedule = config.fidelity
    assert schedule is not None and config.pruning_metric is not None
    metric = config.pruning_metric[0]
    labels = None if config.task == "regression" else np.asarray(data.y_train)
    full = _full_value(pipeline, schedule.param) if schedule.kind == "iterations" else 0
    fold_models = [
        _FoldModel(
            pipeline,
            schedule.kind,
            data,
            (train_idx, valid_idx),
            nested_order(train_idx, None if labels is None else labels[train_idx], config.seed + i),
        )
        for i, (train_idx, valid_idx) in enumerate(splits)
    ]
    for step in schedule.steps:
        fraction = schedule.fraction(step)
        last = step == schedule.max_resource
        rung_started = time.perf_counter()
        names = list(folds.per_fold) if last else [metric]
        scores: dict[str, list[float]] = {m: [] for m in names}
        for fold in fold_models:
            fold.fit(schedule.param, max(1, round(full * fraction)), fraction)
            for name, value in fold.score(names, config.task).items():
                scores[name].append(value)
        value = float(np.mean(scores[metric]))
        folds.running.append(value)
        folds.fold_seconds.append(time.perf_counter() - rung_started)
        _check(config, value, metric, step, started)
        fit = [f.fit_seconds for f in fold_models]
        if last:
            folds.per_fold, folds.fit_seconds = scores, fit
            return _completed(
                config, params, folds, len(splits), fold_models[-1].model, data.X_train
            )
        if pruner.should_prune(step, value):
            return _pruned(params, folds, metric, value, schedule, step, pruner.rule, fit)
    raise AssertionError("a rung schedule ends at its max_resource")  # pragma: no cover


class _FoldModel:
    """One fold's model at growing fidelity.

    ``iterations``: the pipeline's preprocessing is fitted once on the fold's training rows
    (it does not depend on the fidelity) and the final estimator grows by warm start on the
    transformed rows, so a rung costs its iterations (plus the estimator's own set-up),
    not a refit of the whole pipeline. The fitted steps are the pipeline's own objects: at
    the last rung ``model`` is the fitted pipeline a plain ``fit`` makes.
    ``rows``: a fresh pipeline fitted on a prefix of ``order`` at each rung.
    """

    def __init__(
        self,
        pipeline: Any,
        kind: str,
        data: StudyData,
        split: tuple[np.ndarray, np.ndarray],
        order: np.ndarray,
    ) -> None:
        self.kind, self.order, self.fit_seconds = kind, order, 0.0
        self.X, self.y = data.X_train, data.y_train
        self.train_idx, self.valid_idx = split
        self.model = _fresh(pipeline)
        self._inputs: tuple[Any, Any] | None = None  # iterations: transformed train, valid

    def _estimator(self) -> Any:
        return self.model.steps[-1][1] if hasattr(self.model, "steps") else self.model

    def fit(self, param: str | None, iterations: int, fraction: float) -> None:
        """Fit at this rung: ``iterations`` of ``param``, or ``fraction`` of the rows."""
        t0 = time.perf_counter()
        if self.kind == "iterations":
            assert param is not None, "an iterations fidelity names its parameter"
            y_train = self.y.iloc[self.train_idx]
            if self._inputs is None:
                self._estimator().set_params(warm_start=True)
                X_train = self.X.iloc[self.train_idx]
                self._inputs = _transform_once(self.model, X_train, y_train, self.valid_idx, self.X)
            self._estimator().set_params(**{param: iterations})
            self._estimator().fit(self._inputs[0], y_train)
        else:
            self.model = _fresh(self.model)
            rows = self.order[: max(MIN_ROWS, round(len(self.train_idx) * fraction))]
            self.model.fit(self.X.iloc[rows], self.y.iloc[rows])
        self.fit_seconds += time.perf_counter() - t0

    def score(self, names: list[str], task: str) -> dict[str, float]:
        """Score ``names`` on the fold's full validation rows."""
        y_valid = self.y.iloc[self.valid_idx]
        if self._inputs is None:
            return {
                k: v
                for k, v in score_fold(
                    self.model, self.X.iloc[self.valid_idx], y_valid, task
                ).items()
                if k in names
            }
        estimator = self._estimator()
        classes = None if task == "regression" else np.asarray(estimator.classes_)
        out = predictions(estimator, self._inputs[1], task)  # type: ignore[arg-type]
        return score_all(names, np.asarray(y_valid), out, classes=classes, task=task)  # type: ignore[arg-type]


def _transform_once(
    model: Any, X_train: Any, y_train: Any, valid_idx: np.ndarray, X: Any
) -> tuple[Any, Any]:
    """Fit the pipeline's steps before its estimator; return the transformed train, valid."""
    if not hasattr(model, "steps") or len(model.steps) == 1:
        return X_train, X.iloc[valid_idx]
    pre = model[:-1]  # the same step objects: fitting them fits the pipeline's
    return pre.fit_transform(X_train, y_train), pre.transform(X.iloc[valid_idx])


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


def _full_value(pipeline: Any, param: str | None) -> int:
    value = pipeline.get_params().get(f"model__{param}")
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"fidelity parameter {param!r} is {value!r}, not a positive count")
    return int(value)
