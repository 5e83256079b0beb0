"""Feature selection inside a cross-validation of the training part (never the hold-out).

The method is scikit-learn's ``permutation_importance``: a column matters by how much the
metric drops when its values are shuffled. It works on the input columns of the family's
whole pipeline (numeric and categorical alike), so what it keeps is what the registered
model's signature lists and what the rollout service reads.

:func:`select_features` runs, on ``StudyData.X_train``/``y_train`` only:

1. for each fold of a k-fold split of the training part, rank the columns from the
   fold's *training* rows alone (the family, untuned, fit on 75 % of them; importances
   measured on the other 25 %), then for each k of the grid refit on the fold's training
   rows with the top k columns and score on the fold's validation rows;
2. choose k: the smallest k whose mean score is within one standard error of the best
   (the one-standard-error rule, Hastie, Tibshirani & Friedman), or, with ``objective:
   true``, the (metric, n_features) Pareto set over k and tasks/staging.py's rule on it;
3. rank once more on the whole training part and keep its top k.

Each fold's selection is fit without that fold's validation rows, so the score of each k is
an honest estimate of "select, then fit" (what RFECV does for recursive elimination).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.metrics import direction_of, score_model, sign
from tasks.optimizers.base import dominates

if TYPE_CHECKING:
    import pandas as pd

    from tasks.data import StudyData
    from tasks.spec import StudySpec
    from tasks.spec_stages import FeatureSelectionSpec

N_FEATURES = "n_features"  # the second objective when the count is one
FULL_GRID_UP_TO = 12  # every k up to this many columns; a doubling grid above


class SelectionError(ValueError):
    """Feature selection cannot run as configured; the message says what to change."""


@dataclass
class KScore:
    """The cross-validated score of keeping the top ``k`` columns."""

    k: int
    mean: float
    se: float
    folds: list[float]


@dataclass
class SelectionResult:
    """The kept columns, the ranking they come from and the evidence for k."""

    features: list[str]  # kept, most important first
    ranking: list[str]  # every column, most important first (whole training part)
    importances: dict[str, float]  # mean metric drop when shuffled (whole training part)
    curve: list[KScore]
    k: int
    metric: str
    direction: str
    rule: str  # "one-standard-error" | "knee" | "utility"
    pareto: list[int] = field(default_factory=list)  # ks on the (metric, n_features) front
    rows_used: int = 0  # training rows (the hold-out is never passed in)

    def summary(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "k": self.k,
            "of": len(self.ranking),
            "metric": self.metric,
            "rule": self.rule,
        }

    def to_markdown(self) -> str:
        lines = [
            f"Kept {self.k} of {len(self.ranking)} columns ({self.rule}): "
            f"{', '.join(self.features)}",
            "",
            f"| k | cv {self.metric} | ± se | on the (metric, k) front |",
            "|---:|---:|---:|---|",
        ]
        front = set(self.pareto)
        for s in self.curve:
            mark = "yes" if s.k in front else ""
            lines.append(f"| {s.k} | {s.mean:.4f} | {s.se:.4f} | {mark} |")
        lines += ["", "| column | importance (whole training part) |", "|---|---:|"]
        lines += [f"| {c} | {self.importances[c]:+.4f} |" for c in self.ranking]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ScoredPoint:
    """A k as tasks/staging.py's rules see a trial."""

    trial_id: str
    values: dict[str, float]


def selection_metric(spec: StudySpec) -> str:
    """The metric selection scores: ``metric`` of the stage, else the first scored objective."""
    from tasks.compression import primary_metric
    from tasks.metrics import scored_metrics

    cfg = _config(spec)
    metric = cfg.metric or primary_metric(spec)
    if metric not in scored_metrics(spec.task):
        raise SelectionError(
            f"stages.feature_selection.metric: {metric!r} is not scored for task "
            f"{spec.task!r}; choose from {sorted(scored_metrics(spec.task))}"
        )
    return metric


def k_grid(cfg: FeatureSelectionSpec, n_columns: int) -> list[int]:
    """Return the feature counts to try, within [min_features, max_features or all]."""
    high = min(cfg.max_features or n_columns, n_columns)
    low = min(cfg.min_features, high)
    if cfg.k_grid is not None:
        grid = {k for k in cfg.k_grid if low <= k <= high}
    elif n_columns <= FULL_GRID_UP_TO:
        grid = set(range(low, high + 1))
    else:
        grid = {low, high} | {2**i for i in range(n_columns.bit_length()) if low <= 2**i <= high}
    if not grid:
        raise SelectionError(
            f"stages.feature_selection: no k of {cfg.k_grid} lies in [{low}, {high}]"
        )
    return sorted(grid)


def select_features(spec: StudySpec, data: StudyData) -> SelectionResult:
    """Choose the columns on the training part only (see the module docstring)."""
    cfg = _config(spec)
    metric = selection_metric(spec)
    X, y = data.X_train, data.y_train
    types = dict(data.feature_types)
    grid = k_grid(cfg, len(types))
    per_k: dict[int, list[float]] = {k: [] for k in grid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of untuned fits
        for train, valid in _folds(spec, y, cfg.folds):
            ranking, _ = rank_columns(spec, X.iloc[train], y.iloc[train], metric, types)
            for k in grid:
                model = _fit(spec, X.iloc[train], y.iloc[train], ranking[:k], types)
                per_k[k].append(score_model(metric, model, X.iloc[valid], y.iloc[valid], spec.task))
        ranking, importances = rank_columns(spec, X, y, metric, types)
    direction = direction_of(metric, spec.task)
    curve = [KScore(k, float(np.mean(v)), _se(v), v) for k, v in per_k.items()]
    k, rule, front = choose_k(curve, metric, direction, cfg)
    return SelectionResult(
        ranking[:k], ranking, importances, curve, k, metric, direction, rule, front, len(y)
    )


def rank_columns(
    spec: StudySpec,
    X: pd.DataFrame,
    y: pd.Series,
    metric: str,
    feature_types: Mapping[str, str],
) -> tuple[list[str], dict[str, float]]:
    """Rank the columns by permutation importance, fit and measured on these rows only."""
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import train_test_split

    cfg = _config(spec)
    stratify = y if spec.task != "regression" and y.value_counts().min() >= 2 else None
    fit_idx, score_idx = train_test_split(
        np.arange(len(y)), test_size=0.25, random_state=spec.seed, stratify=stratify
    )
    columns = list(feature_types)
    model = _fit(spec, X.iloc[fit_idx], y.iloc[fit_idx], columns, feature_types)
    loss = sign(direction_of(metric, spec.task))

    def scorer(estimator: Any, X_: Any, y_: Any) -> float:  # higher is better
        return -loss * score_model(metric, estimator, X_, y_, spec.task)

    found = permutation_importance(
        model,
        X.iloc[score_idx][columns],
        y.iloc[score_idx],
        scoring=scorer,
        n_repeats=cfg.repeats,
        random_state=spec.seed,
        n_jobs=1,
    )
    importances = {c: float(v) for c, v in zip(columns, found.importances_mean, strict=True)}
    # Most important first; ties keep the table's column order (a stable sort).
    ranking = sorted(columns, key=lambda c: -importances[c])
    return ranking, importances


def choose_k(
    curve: Sequence[KScore], metric: str, direction: str, cfg: FeatureSelectionSpec
) -> tuple[int, str, list[int]]:
    """Return (k, rule, the ks on the (metric, n_features) Pareto set)."""
    finite = [s for s in curve if math.isfinite(s.mean)]
    if not finite:
        raise SelectionError(f"every k scored NaN on {metric}: check the data and the family")
    loss = sign(direction)
    losses = {s.k: [loss * s.mean, float(s.k)] for s in finite}
    front = [k for k in losses if not any(dominates(o, losses[k]) for o in losses.values())]
    if not cfg.objective:
        best = min(finite, key=lambda s: (loss * s.mean, s.k))
        bar = loss * best.mean + (best.se if math.isfinite(best.se) else 0.0)
        k = min(s.k for s in finite if loss * s.mean <= bar + 1e-12)
        return k, "one-standard-error", sorted(front)
    from tasks.spec import ChoiceSpec
    from tasks.staging import choose

    points = [
        ScoredPoint(str(s.k), {metric: s.mean, N_FEATURES: float(s.k)})
        for s in finite
        if s.k in front
    ]
    weights = cfg.weights if cfg.rule == "utility" else {}
    choice = choose(
        points,
        {metric: direction, N_FEATURES: "minimize"},
        ChoiceSpec(rule=cfg.rule, weights=weights),
    )
    assert choice is not None  # two objectives and a non-empty front
    return int(choice.trial_id), cfg.rule, sorted(front)


def apply_selection(
    spec: StudySpec, data: StudyData, selection: SelectionResult
) -> tuple[StudySpec, StudyData]:
    """Return the spec and data with only the kept columns (``data.drop_columns`` grows).

    The dropped columns go into the spec, so the registration flow (which loads the data
    again from the logged spec) refits and signs the model with the kept columns only.
    """
    kept = set(selection.features)
    dropped = [c for c in data.feature_types if c not in kept]
    data_spec = spec.data.model_copy(update={"drop_columns": [*spec.data.drop_columns, *dropped]})
    new_spec = spec.model_copy(update={"data": data_spec})
    order = [c for c in data.feature_types if c in kept]
    new_data = replace(
        data,
        X_train=data.X_train[order],
        X_test=data.X_test[order],
        feature_types={c: data.feature_types[c] for c in order},
    )
    return new_spec, new_data


# --- helpers ------------------------------------------------------------------------------
def _config(spec: StudySpec) -> FeatureSelectionSpec:
    if spec.stages is None or spec.stages.feature_selection is None:
        raise SelectionError("the spec has no stages.feature_selection block")
    return spec.stages.feature_selection


def _folds(spec: StudySpec, y: pd.Series, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    index = np.arange(len(y))
    if spec.task != "regression" and y.value_counts().min() >= folds:
        splitter: Any = StratifiedKFold(folds, shuffle=True, random_state=spec.seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=spec.seed)
    return list(splitter.split(index, y))


def _fit(
    spec: StudySpec,
    X: pd.DataFrame,
    y: pd.Series,
    columns: list[str],
    feature_types: Mapping[str, str],
) -> Any:
    """Fit the family with its library defaults (and the spec's fixed values) on ``columns``."""
    from tasks.models import build_model, merge_params

    model = build_model(
        spec.model.family,
        merge_params(spec.model.fixed, {}),
        task=spec.task,
        feature_types={c: feature_types[c] for c in columns},  # type: ignore[misc]
        seed=spec.seed,
    )
    return model.fit(X[columns], y)


def _se(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
