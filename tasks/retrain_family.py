"""Which model family a retrain learns with: chosen by cross-validation on its own window.

The retrain used to keep the champion's family. After a change it has a few thousand
labelled rows at most (one to three days of the demo's labels), and what wins on 20,000
rows of history need not win on them: measured on the demo's generator
(``benchmarks/retrain_quality.py``), gradient boosting retrained on one day after the drift
earns a tenth of the feature oracle, a logistic regression on Yeo-Johnson-transformed counts
about four fifths. So before the study, :func:`choose_family` cross-validates every family
registered for the task (the champion's with its study's best points too) on the retrain's
own training rows, with the study's own objective and folds, and the study searches the
family that scores best. Nothing names the winner: a family a package registers competes
like the shipped ones, and with many rows the champion's family keeps its place if it earns it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.spec import StudySpec


@dataclass(frozen=True)
class FamilyScore:
    """One screened point: a family, its parameters and its cross-validated objective."""

    family: str
    params: dict[str, Any]
    value: float  # NaN: the trial failed
    reason: str | None = None


@dataclass
class FamilyChoice:
    """The family the retrain study searches, the points to start from, and the screen."""

    family: str
    warm_start: list[dict[str, Any]]
    scores: list[FamilyScore] = field(default_factory=list)
    metric: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.scores) and self.family != self.scores[0].family

    def detail(self) -> str:
        """Return the screen as one line: best first, the objective and rows."""
        best: dict[str, float] = {}
        for s in self.scores:
            if math.isfinite(s.value) and (s.family not in best or s.value < best[s.family]):
                best[s.family] = s.value
        ranked = sorted(best.items(), key=lambda kv: kv[1])
        text = ", ".join(f"{f} {v:.4g}" for f, v in ranked)
        return f"family screen ({self.metric} as a loss, cross-validated): {text}"


def top_points(trials: list[Any], spec: StudySpec, k: int) -> list[dict[str, Any]]:
    """Return the params of the ``k`` best completed trials, best first, without duplicates."""
    if k <= 0:
        return []
    from tasks.metrics import sign as loss_sign

    metric, direction = spec.primary_objective
    sign = loss_sign(direction)
    scored = []
    for t in trials:
        status = getattr(t, "status", "completed")
        value = (getattr(t, "values", None) or {}).get(metric)
        if status != "completed" or value is None or not math.isfinite(float(value)):
            continue
        scored.append((sign * float(value), dict(t.params)))
    scored.sort(key=lambda pair: pair[0])
    out: list[dict[str, Any]] = []
    for _, params in scored:
        if params not in out:
            out.append(params)
        if len(out) == k:
            break
    return out


def screened_families(task: str, first: str, only: Sequence[str] | None = None) -> list[str]:
    """Return ``first`` (the champion's family), then every other family for ``task``.

    ``only``: screen these families (the ``retrain_families`` setting), not every one.
    """
    from tasks.models import families, get_family, load_family_plugins

    load_family_plugins()
    names = list(only) if only else families()
    others = [f for f in names if f != first and task in get_family(f).tasks]
    return [first, *others]


def choose_family(
    spec: StudySpec,
    data: Any,
    warm_start: list[dict[str, Any]],
    *,
    folds: int | None = None,
    only: Sequence[str] | None = None,
) -> FamilyChoice:
    """Return the family whose cross-validated objective is best on ``data``'s training rows.

    ``spec`` is the champion's study (family, fixed values, objective, folds, seed);
    ``warm_start`` its best points, screened with its family beside that family's defaults.
    Every other family is screened at its library defaults. The winner's screened points
    become the retrain study's warm start. A system objective (latency, bytes) or a
    screen where nothing completes keeps the champion's family.
    """
    from tasks.evaluate import EvalConfig, evaluate_trial
    from tasks.metrics import SYSTEM_METRICS, sign

    metric, direction = spec.primary_objective
    own = spec.model.family
    if metric in SYSTEM_METRICS:
        return FamilyChoice(own, list(warm_start), metric=metric)
    scores: list[FamilyScore] = []
    for family in screened_families(spec.task, own, only):
        points = [{}, *warm_start] if family == own else [{}]
        config = EvalConfig(
            family=family,
            task=spec.task,
            objectives={metric: direction},
            fixed=dict(spec.model.fixed) if family == own else {},
            folds=folds or spec.evaluation.folds,
            latency_calls=10,
            seed=spec.seed,
            timeout_seconds=spec.budget.trial_timeout_seconds,
        )
        for params in points:
            outcome = evaluate_trial(config, params, data)
            value = outcome.values.get(metric, math.nan)
            ok = outcome.status == "completed" and math.isfinite(value)
            loss = sign(direction) * value if ok else math.nan
            scores.append(FamilyScore(family, dict(params), loss, outcome.reason))
    finite = [s for s in scores if math.isfinite(s.value)]
    if not finite:
        return FamilyChoice(own, list(warm_start), scores, metric)
    winner = min(finite, key=lambda s: s.value).family
    ranked = sorted((s for s in finite if s.family == winner), key=lambda s: s.value)
    warm = [s.params for s in ranked if s.params]
    return FamilyChoice(winner, warm, scores, metric)


def with_family(spec: StudySpec, choice: FamilyChoice) -> StudySpec:
    """Return ``spec`` searching ``choice.family``: its default space when the family changed."""
    if choice.family == spec.model.family:
        return spec.model_copy(update={"warm_start": choice.warm_start})
    from tasks.spec import ModelSpec

    model = ModelSpec(family=choice.family)
    return spec.model_copy(update={"model": model, "warm_start": choice.warm_start})
