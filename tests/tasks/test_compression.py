"""Compression on real models: quantized MLPs, pruned forests and boosting, the Pareto set."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.compression import (
    CompressionResult,
    Variant,
    compress_candidates,
    compress_candidates_task,
    compress_model,
    pareto_set,
)
from tasks.models import build_model

FEATURES: dict[str, Any] = {"x1": "numeric", "x2": "numeric", "x3": "numeric", "c": "categorical"}


def make_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n)),
            "x3": rng.normal(size=n),
            "c": rng.choice(["a", "b", "c"], n),
        }
    )
    logit = 1.3 * X.x1 - 0.8 * X.x2.fillna(0) + 0.5 * X.x1 * X.x3 + 0.6 * (X.c == "a")
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()


@pytest.fixture(scope="module")
def frames():
    X, y = make_frame(1500, seed=1)
    Xh, yh = make_frame(600, seed=2)
    return X, y, Xh, yh


def _fit(family: str, params: dict[str, Any], frames) -> Any:
    X, y, _, _ = frames
    return build_model(family, params, task="binary", feature_types=FEATURES).fit(X, y)


def _by_name(variants: list[Variant]) -> dict[str, Variant]:
    return {v.name: v for v in variants}


def test_an_mlp_is_quantized_smaller_within_the_tolerance(frames):
    _, _, Xh, yh = frames
    model = _fit("mlp", {"hidden_units": 64, "layers": 2, "learning_rate_init": 0.01}, frames)
    variants = _by_name(compress_model(model, Xh, yh, task="binary", metric="roc_auc"))
    base, quantized = variants["uncompressed"], variants["quantized"]
    assert base.flavour == quantized.flavour == "onnx" and quantized.model is None
    assert quantized.size_bytes * 2 <= base.size_bytes  # int8 weights: at least 2x smaller
    assert abs(quantized.lost) <= 0.002 and quantized.within_tolerance
    assert quantized.lost == pytest.approx(base.value - quantized.value)


def test_a_linear_graph_without_matrix_products_is_not_quantized(frames):
    _, _, Xh, yh = frames
    model = _fit("logistic_regression", {"C": 1.0}, frames)
    variants = compress_model(model, Xh, yh, task="binary", metric="roc_auc")
    assert [v.name for v in variants] == ["uncompressed"]  # skl2onnx's LinearClassifier op


def test_a_forest_keeps_its_first_trees_and_fewer_leaves(frames):
    X, y, Xh, yh = frames
    model = _fit("random_forest", {"n_estimators": 40, "max_depth": 10}, frames)
    variants = _by_name(
        compress_model(model, Xh, yh, task="binary", metric="roc_auc", train=(X, y))
    )
    assert {"trees=20", "trees=10", "trees=5"} <= set(variants)
    half = variants["trees=20"]
    forest = half.model.steps[-1][1]
    rows = model[:-1].transform(Xh)
    expected = np.mean([t.predict_proba(rows) for t in model[-1].estimators_[:20]], axis=0)
    np.testing.assert_allclose(forest.predict_proba(rows), expected)  # a prefix, no refit
    assert half.size_bytes < 0.6 * variants["uncompressed"].size_bytes
    leaves = [v for name, v in variants.items() if name.startswith("leaves<=")]
    assert leaves and all(
        max(t.get_n_leaves() for t in v.model[-1].estimators_) <= int(v.name.split("=")[1])
        for v in leaves
    )
    for v in variants.values():  # the stated tolerance decides what is kept
        assert v.within_tolerance == (v.lost <= 0.002)


def test_boosting_keeps_its_first_iterations(frames):
    _, _, Xh, yh = frames
    model = _fit("hist_gradient_boosting", {"max_iter": 60, "learning_rate": 0.1}, frames)
    variants = _by_name(compress_model(model, Xh, yh, task="binary", metric="log_loss"))
    pruned = variants["trees=30"].model[-1]
    assert pruned.n_iter_ == 30
    rows = model[:-1].transform(Xh)
    staged = list(model[-1].staged_predict_proba(rows))[29]
    np.testing.assert_allclose(pruned.predict_proba(rows), staged)
    # log_loss is minimized: a variant with a higher loss has lost something.
    v = variants["trees=15"]
    assert v.lost == pytest.approx(v.value - variants["uncompressed"].value)


def test_the_pareto_set_keeps_only_undominated_variants_within_tolerance():
    def v(name: str, value: float, ms: float, size: int, kept: bool = True) -> Variant:
        return Variant("0", name, "onnx", "roc_auc", value, 0.0, ms, size, kept)

    base = v("uncompressed", 0.90, 1.0, 1000)
    smaller = v("trees=50", 0.899, 1.0, 500)
    dominated = v("trees=70", 0.898, 1.1, 700)
    worse_but_out = v("trees=10", 0.80, 0.1, 10, kept=False)
    front = pareto_set([base, smaller, dominated, worse_but_out], "maximize")
    assert front == [base, smaller]


def test_compress_candidates_takes_the_study_metric_and_runs_as_a_task_too(frames):
    from tasks.data import split_study_data
    from tasks.spec import StudySpec

    X, y, _, _ = frames
    spec = StudySpec.parse(
        {
            "name": "c",
            "data": {"source": "file", "path": "x.csv", "target": "y", "timestamp_column": None},
            "model": {"family": "random_forest"},
            "objectives": {"log_loss": "minimize"},
            "evaluation": {"latency_calls": 20},
        }
    )
    data = split_study_data(X.assign(y=y), spec)
    model = build_model(
        "random_forest", {"n_estimators": 8}, task="binary", feature_types=data.feature_types
    ).fit(data.X_train, data.y_train)
    result = compress_candidates(spec, [("7", model)], data, refit_leaves=False)
    assert isinstance(result, CompressionResult)
    assert result.metric == "log_loss" and result.direction == "minimize"
    assert [v.name for v in result.variants] == ["uncompressed", "trees=4", "trees=2", "trees=1"]
    assert all(v.candidate == "7" for v in result.variants)
    assert result.pareto and all(v.within_tolerance for v in result.pareto)
    assert "| 7 | trees=4 |" in result.to_markdown()
    assert compress_candidates_task.fn is compress_candidates
