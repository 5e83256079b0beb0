"""What a retrain keeps of the world before the change: the old labels, as a weighted prior.

After a change a retrain has one to three days of labels (``tasks/retrain_window.py``):
too few for a model of a few dozen columns, which then earns 0.7-0.8x the feature oracle
(``benchmarks/retrain_quality.py``). Most of what the old world taught still holds: a drift
moves some coefficients, not all. So the retrain also fits the labels of the
``retrain_history_days`` before the change, each with the weight ``history_weight`` beside
the new rows' 1 — the old likelihood raised to that power (a power prior, Ibrahim & Chen
2000). The weight is searched like any hyperparameter, on a log scale, and judged as every
trial is, by cross-validation on the change's own rows only (the prior rows are never
scored), so the data decide how much of the past to keep: near 0 after a change that broke
everything, near 1 when little moved. The served model is the family's own pipeline
(plain logistic regression, say): nothing changes for ONNX, the gates or the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.models import HISTORY_WEIGHT, ModelFamilyError, build_model, default_space

if TYPE_CHECKING:
    from tasks.settings import PipelineSettings
    from tasks.spec import StudySpec

# The searched range: 0.001 keeps ~2 % of two weeks of old rows' pull against one new day;
# 1 pools them. Log-uniform: the useful weights span orders of magnitude.
WEIGHT_RANGE = (1e-3, 1.0)
# The warm start's weight: what cross-validation picked on the demo's generator for one to
# three days after its drift, on every seed (benchmarks/retrain_quality.py).
WARM_WEIGHT = 0.03


def takes_weights(spec: StudySpec, data: Any) -> bool:
    """Whether ``spec``'s family fits sample weights (a prior needs them)."""
    from sklearn.utils.validation import has_fit_parameter

    try:
        model = build_model(
            spec.model.family, dict(spec.model.fixed), task=spec.task, X=data.X_train.head(5)
        )
    except ModelFamilyError:
        return False
    return bool(has_fit_parameter(model.steps[-1][1], "sample_weight"))


def with_prior(
    spec: StudySpec, warm_start: list[dict[str, Any]], days: float
) -> tuple[StudySpec, list[dict[str, Any]]]:
    """Return ``spec`` fitting ``days`` of labels before its window as weighted prior rows.

    Its search space gains ``history_weight`` (log-uniform over ``WEIGHT_RANGE``, whose
    geometric centre, the library-defaults trial's value, is about ``WARM_WEIGHT``); each
    warm-start point without one gets ``WARM_WEIGHT``.
    """
    from tasks.spec import ParamSpec

    if days <= 0 or spec.data.start is None:
        return spec, warm_start
    space = dict(spec.model.space or {})
    if not space:
        family_space = default_space(spec.model.family, fixed=list(spec.model.fixed))
        space = {k: ParamSpec(**v) for k, v in family_space.items()}
    low, high = WEIGHT_RANGE
    space[HISTORY_WEIGHT] = ParamSpec(type="float", low=low, high=high, log=True)
    model = spec.model.model_copy(update={"space": space})
    data = spec.data.model_copy(update={"history_days": days})
    warm = [{**p, HISTORY_WEIGHT: p.get(HISTORY_WEIGHT, WARM_WEIGHT)} for p in warm_start]
    return spec.model_copy(update={"model": model, "data": data, "warm_start": warm}), warm


def add_prior(
    spec: StudySpec,
    warm_start: list[dict[str, Any]],
    data: Any,
    settings: PipelineSettings,
) -> tuple[StudySpec, list[dict[str, Any]], Any, str]:
    """Return the retrain study with its prior: spec, warm start, ``data`` with prior rows.

    Only the prior period is loaded (the window's rows are ``data`` already). No prior when
    ``settings.retrain_history_days`` is 0 or the family takes no sample weights: then
    everything comes back as it was, with an empty note.
    """
    from tasks.data import with_history

    days = settings.retrain_history_days
    if days <= 0 or spec.data.start is None or not takes_weights(spec, data):
        return spec, warm_start, data, ""
    spec, warm = with_prior(spec, warm_start, days)
    data = with_history(data, spec, settings)
    note = (
        f"prior rows: {data.history_rows:,} labels of the {days:g} days before "
        f"{spec.data.start:%Y-%m-%d}, their weight searched ({HISTORY_WEIGHT})"
    )
    return spec, warm, data, note
