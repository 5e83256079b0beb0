"""The study spec's ``stages:`` block: feature selection -> HPO -> compression, each optional.

A spec without ``stages:`` runs the HPO alone, exactly as before. ``tasks/stages.py`` runs
them; each stage is a Prefect task and its own MLflow run under the study's parent run.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureSelectionSpec(_Strict):
    """Select input columns on the training part only, inside a cross-validation of it.

    tasks/selection.py: in each fold, scikit-learn's ``permutation_importance`` ranks the
    columns from the fold's training rows alone; the top k are refit on them and scored on
    the fold's validation rows, for each k of the grid. The hold-out never takes part.
    ``objective: false`` keeps the smallest k within one standard error of the best k (the
    one-standard-error rule); ``objective: true`` makes the number of features a second
    objective: the (metric, n_features) Pareto set over k, and ``rule`` picks one of it.
    """

    method: Literal["permutation"] = "permutation"
    metric: str | None = None  # default: the study's first scored objective
    folds: int = Field(default=3, ge=2)
    repeats: int = Field(default=5, ge=1)  # permutations per column and fold
    min_features: int = Field(default=1, ge=1)
    max_features: int | None = Field(default=None, ge=1)
    k_grid: list[int] | None = None  # None: every k up to 12 columns, else a doubling grid
    objective: bool = False  # the number of features as a second objective
    rule: Literal["knee", "utility"] = "knee"  # tasks/staging.py's rules, on (metric, k)
    weights: dict[str, float] = Field(default_factory=dict)  # utility: {metric, n_features}

    @model_validator(mode="after")
    def _bounds(self) -> FeatureSelectionSpec:
        if self.max_features is not None and self.max_features < self.min_features:
            raise ValueError(
                f"max_features={self.max_features} is below min_features={self.min_features}"
            )
        if self.k_grid is not None and (not self.k_grid or min(self.k_grid) < 1):
            raise ValueError("k_grid: a non-empty list of feature counts, each >= 1")
        if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ValueError("weights: each weight is a finite number >= 0")
        if self.rule == "utility" and not any(w > 0 for w in self.weights.values()):
            raise ValueError("rule 'utility' needs a positive weight (metric or n_features)")
        return self


class HpoStageSpec(_Strict):
    """The hyperparameter search: the spec's model, objectives, optimizer and budget.

    ``hpo: null`` evaluates only the family's library defaults and the ``warm_start``
    points (no search): a selection or compression run on an untuned model.
    """


class CompressionStageSpec(_Strict):
    """Compress the study's candidates (tasks/compression.py) and choose the trade-off."""

    tolerance: float = Field(default=0.002, ge=0)  # primary metric lost, in its own units
    refit_leaves: bool = True  # fewer-leaves variants refit on the training part
    max_candidates: int | None = Field(default=None, ge=1)  # None: registration's


class StagesSpec(_Strict):
    """The stages, run in this order; one left out (or null) does not run."""

    feature_selection: FeatureSelectionSpec | None = None
    hpo: HpoStageSpec | None = Field(default_factory=HpoStageSpec)
    compression: CompressionStageSpec | None = None
