"""The study plots Optuna's dashboard users expect, and the key metrics as runs-table columns.

Logged to each study's parent MLflow run under ``plots/``:

- ``param_importance.png`` (and ``.json``): scikit-learn's permutation importance of a
  random forest fitted to (parameters -> primary objective) over the completed trials,
  normalized to sum to 1. scikit-learn is already a dependency; Optuna's fANOVA evaluator
  fits the same kind of forest but would make Optuna a run-time dependency for one plot.
- ``parallel_coordinates.png``: one line per trial across every parameter and the
  objective, each axis scaled to [0, 1], coloured by the objective.
- ``slice.png``: the objective against each parameter, one panel each, coloured by trial.

Parameters come from the trials' records: numbers as they are (a log axis when every value
is positive and they span two decades or more, as a log-scale search dimension does),
anything else as categories. With several objectives the plots show the primary one.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.study_result import StudyResult, TrialRecord

if TYPE_CHECKING:
    from mlflow import MlflowClient

PLOTS = "plots"


@dataclass
class ParamColumn:
    """One parameter over the completed trials: plotted values and how to label them."""

    name: str
    values: np.ndarray  # numbers (log10 when ``log``), category codes, NaN when absent
    log: bool = False
    categories: list[str] | None = None

    def scaled(self) -> np.ndarray:
        """Return the values in [0, 1] (absent ones stay NaN)."""
        finite = self.values[np.isfinite(self.values)]
        if finite.size == 0:
            return self.values
        low, high = float(finite.min()), float(finite.max())
        return (self.values - low) / (high - low) if high > low else self.values * 0 + 0.5


def completed(result: StudyResult, records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Return the completed trials that carry the primary objective, by trial number."""
    metric = next(iter(result.objectives))
    done = [r for r in records if r.status == "completed" and _finite(r.values.get(metric))]
    return sorted(done, key=lambda r: _order(r.trial_id))


def param_columns(records: Sequence[TrialRecord]) -> list[ParamColumn]:
    """Return one column per parameter any record has (in first-seen order)."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r.params))
    columns = []
    for name in names:
        raw = [r.params.get(name) for r in records]
        numbers = [v for v in raw if _number(v)]
        if len(numbers) == sum(v is not None for v in raw) and numbers:
            arr = np.array([float(v) if _number(v) else np.nan for v in raw])  # type: ignore[arg-type]
            positive = arr[np.isfinite(arr)]
            log = bool((positive > 0).all() and positive.max() >= 100 * positive.min())
            columns.append(ParamColumn(name, np.log10(arr) if log else arr, log=log))
        else:
            labels = sorted({str(v) for v in raw if v is not None})
            codes = np.array([labels.index(str(v)) if v is not None else np.nan for v in raw])
            columns.append(ParamColumn(name, codes.astype(float), categories=labels))
    return columns


def param_importance(
    columns: Sequence[ParamColumn], scores: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """Return each parameter's share of the permutation importance (sums to 1, or all 0)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    if not columns or len(scores) < 3:
        return {c.name: 0.0 for c in columns}
    # An absent (conditional) parameter gets a value outside its range: trees split it off.
    X = np.column_stack([np.nan_to_num(c.scaled(), nan=-1.0) for c in columns])
    # 32 trees and 4 repeats: the shares moved by at most 0.002 against 64 and 8 (five
    # synthetic 40-trial studies), for a third of the CPU at the end of every study.
    forest = RandomForestRegressor(n_estimators=32, min_samples_leaf=1, random_state=seed, n_jobs=1)
    forest.fit(X, scores)
    found = permutation_importance(forest, X, scores, n_repeats=4, random_state=seed, n_jobs=1)
    raw = np.clip(found.importances_mean, 0.0, None)
    total = float(raw.sum())
    shares = raw / total if total > 0 else raw * 0
    return {c.name: float(s) for c, s in zip(columns, shares, strict=True)}


def log_study_metrics(client: MlflowClient, result: StudyResult) -> dict[str, float]:
    """Log the study's key numbers on its parent run: they show as runs-table columns.

    ``log_result`` logs the counts, ``best_<metric>`` of a single-objective study and the
    tuning gain; this adds the trials asked for, the Pareto set's size and, with several
    objectives, the best primary value (the top of the ranking ``build_result`` made).
    """
    from mlflow.entities import Metric

    metric = next(iter(result.objectives))
    values: dict[str, float] = {"n_trials": float(result.n_trials)}
    if len(result.objectives) > 1:
        values["pareto_size"] = float(len(result.pareto))
        if result.top and _finite(result.top[0].values.get(metric)):
            values[f"best_{metric}"] = float(result.top[0].values[metric])
    stamp = int(time.time() * 1000)
    client.log_batch(
        result.parent_run_id, metrics=[Metric(k, v, stamp, 0) for k, v in values.items()]
    )
    return values


def log_study_plots(
    client: MlflowClient, result: StudyResult, records: Sequence[TrialRecord], seed: int = 0
) -> list[str]:
    """Log the key metrics, then importance, parallel coordinates and slices; return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_study_metrics(client, result)
    done = completed(result, records)
    columns = param_columns(done)
    if not done or not columns:
        return []
    metric = next(iter(result.objectives))
    scores = np.array([r.values[metric] for r in done], dtype=float)
    importance = param_importance(columns, scores, seed)
    client.log_text(
        result.parent_run_id, json.dumps(importance, indent=2), f"{PLOTS}/param_importance.json"
    )
    logged = []
    for name, fig in (
        ("param_importance", importance_figure(result, importance)),
        ("parallel_coordinates", parallel_figure(result, columns, scores)),
        ("slice", slice_figure(result, columns, scores, done)),
    ):
        path = f"{PLOTS}/{name}.png"
        client.log_figure(result.parent_run_id, fig, path)
        plt.close(fig)
        logged.append(path)
    return logged


def importance_figure(result: StudyResult, importance: dict[str, float]) -> Any:
    import matplotlib.pyplot as plt

    ranked = sorted(importance.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(ranked) + 1.6))
    ax.barh([k for k, _ in ranked], [v for _, v in ranked], color="C0")
    for i, (_, v) in enumerate(ranked):
        ax.text(v, i, f" {v:.2f}", va="center")
    metric = next(iter(result.objectives))
    ax.set_xlabel(f"share of permutation importance for {metric}")
    ax.set_title(f"{result.study_name}: hyperparameter importance")
    ax.set_xlim(0, max(1e-9, max(importance.values(), default=0)) * 1.2)
    fig.tight_layout()
    return fig


def parallel_figure(result: StudyResult, columns: Sequence[ParamColumn], scores: Any) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    metric, direction = next(iter(result.objectives.items()))
    axes_values = [c.scaled() for c in columns]
    low, high = float(np.min(scores)), float(np.max(scores))
    axes_values.append((scores - low) / (high - low) if high > low else scores * 0 + 0.5)
    labels = [_label(c) for c in columns] + [f"{metric}\n({direction})"]
    norm = Normalize(low, high if high > low else low + 1)
    cmap = plt.get_cmap("viridis" if direction == "maximize" else "viridis_r")
    fig, ax = plt.subplots(figsize=(1.8 * len(labels) + 2, 4.5))
    xs = np.arange(len(labels))
    for i in np.argsort(scores if direction == "maximize" else -scores):  # best drawn last
        ys = [v[i] for v in axes_values]
        ax.plot(xs, ys, color=cmap(norm(scores[i])), alpha=0.8, lw=1.2)
    for x in xs:
        ax.axvline(float(x), color="0.3", lw=0.8)
    ax.set_xticks(xs, labels)
    ax.set_yticks([0, 1], ["min", "max"])
    ax.set_title(f"{result.study_name}: parallel coordinates ({len(scores)} trials)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    fig.tight_layout()
    return fig


def slice_figure(
    result: StudyResult,
    columns: Sequence[ParamColumn],
    scores: Any,
    done: Sequence[TrialRecord],
) -> Any:
    import matplotlib.pyplot as plt

    metric = next(iter(result.objectives))
    fig, axes = plt.subplots(
        1, len(columns), figsize=(3.6 * len(columns), 3.6), squeeze=False, sharey=True
    )
    order = np.arange(len(done))
    for ax, column in zip(axes[0], columns, strict=True):
        shown = np.isfinite(column.values)
        xs = 10 ** column.values[shown] if column.log else column.values[shown]
        points = ax.scatter(xs, scores[shown], c=order[shown], cmap="Blues", edgecolors="0.3")
        if column.log:
            ax.set_xscale("log")
        if column.categories is not None:
            ax.set_xticks(range(len(column.categories)), column.categories)
        ax.set_xlabel(column.name)
    axes[0][0].set_ylabel(metric)
    fig.colorbar(points, ax=axes[0].tolist(), label="trial")
    fig.suptitle(f"{result.study_name}: slice plot")
    return fig


def _label(column: ParamColumn) -> str:
    return f"{column.name}\n(log)" if column.log else column.name


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _finite(value: Any) -> bool:
    return value is not None and _number(value) and math.isfinite(float(value))


def _order(trial_id: str) -> tuple[int, str]:
    return (int(trial_id), "") if str(trial_id).isdigit() else (1 << 30, str(trial_id))
