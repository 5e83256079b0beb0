"""The gates judge with their uncertainty: what a small hold-out can show, and what it cannot.

Real sklearn models, fairlearn's point values and scipy's intervals; each test pairs a case
the point rule gets wrong on few rows with the same rule on many rows, so a gate that
passed everything (or failed everything) would fail one side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.gate_checks import EQUALIZED_ODDS, PERFORMANCE, fairness_gates
from tasks.gate_stats import parity_gap_bounds
from tasks.gates import Holdout, run_gates
from tasks.models import build_model
from tasks.spec import GatesSpec

GROUPS = ["18-24", "25-34", "35-44", "45-54", "55+"]
FEATURES: dict[str, Any] = {"x1": "numeric", "x2": "numeric"}


def rows(n: int, seed: int, *, bias: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """About 5 % positives; the label depends on x1, x2 and, with ``bias``, on the group."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {"x1": rng.normal(size=n), "x2": rng.normal(size=n), "band": rng.choice(GROUPS, n)}
    )
    logit = -3.4 + 1.1 * X.x1 + 0.6 * X.x2 + bias * (X.band == "55+")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int).to_numpy()
    return X, y


def fitted(features: dict[str, Any], X: pd.DataFrame, y: np.ndarray, C: float = 1.0) -> Any:
    model = build_model("logistic_regression", {"C": C}, task="binary", feature_types=features)
    return model.fit(X, y)


def eod_result(model: Any, holdout: Holdout, limit: float) -> Any:
    results, _ = fairness_gates(
        model,
        holdout,
        max_demographic_parity_difference=1.0,
        max_equalized_odds_difference=limit,
        task="binary",
        decision_threshold=0.08,
    )
    return next(r for r in results if r.name == EQUALIZED_ODDS)


@pytest.fixture(scope="module")
def blind_model() -> Any:
    """A model that never sees the group: any gap in its decisions is the rows' noise."""
    X, y = rows(10_000, seed=1)
    return fitted(FEATURES, X, y)


def test_a_model_blind_to_the_groups_is_not_failed_for_the_noise_of_a_few_positives(blind_model):
    X, y = rows(300, seed=2)  # a day's post-drift hold-out: ~15 positives over five bands
    holdout = Holdout(X, y, X["band"])
    result = eod_result(blind_model, holdout, limit=0.6)
    assert result.value > 0.6, "the point estimate alone would fail it (the old gate)"
    assert result.passed, result.note
    assert "at least 0 " in result.note


def test_the_same_model_on_many_rows_is_judged_by_its_small_true_gap(blind_model):
    X, y = rows(20_000, seed=3)
    holdout = Holdout(X, y, X["band"])
    result = eod_result(blind_model, holdout, limit=0.6)
    assert result.value < 0.1 and result.passed


def test_a_model_that_favours_a_group_fails_on_a_small_hold_out_too():
    features = FEATURES | {"band": "categorical"}
    X, y = rows(10_000, seed=4, bias=4.0)  # the oldest band converts far more often
    model = fitted(features, X, y)
    Xh, yh = rows(1_000, seed=5, bias=4.0)  # three days' post-drift hold-out
    result = eod_result(model, Holdout(Xh, yh, Xh["band"]), limit=0.6)
    assert not result.passed, result.note
    bounds = parity_gap_bounds(
        yh, model.predict_proba(Xh)[:, 1] >= 0.08, Xh["band"].to_numpy(), confidence=0.95
    )
    assert 0.6 < bounds["equalized_odds"] <= result.value


def test_row_terms_average_to_the_metric_the_gates_score():
    from tasks.metrics import row_terms, score

    rng = np.random.default_rng(12)
    y = np.where(rng.random(500) < 0.1, "yes", "no")
    p = np.r_[0.0, 1.0, rng.random(498)]
    for dtype in (np.float64, np.float32):
        proba = np.c_[1 - p, p].astype(dtype)
        for metric in ("log_loss", "brier"):
            terms = row_terms(metric, y, proba, classes=np.array(["no", "yes"]))
            assert terms is not None and len(terms) == 500
            expected = score(metric, y, proba, classes=np.array(["no", "yes"]), task="binary")
            assert terms.mean() == pytest.approx(expected, abs=1e-7)
    assert row_terms("roc_auc", y, proba, classes=np.array(["no", "yes"])) is None


def test_the_shown_gap_approaches_the_point_gap_with_many_rows():
    rng = np.random.default_rng(6)
    n = 200_000
    groups = rng.choice(["a", "b"], n)
    y_true = (rng.random(n) < 0.3).astype(int)
    rate = np.where(groups == "a", 0.7, 0.4)  # selection 0.7 against 0.4, whatever the label
    y_pred = (rng.random(n) < rate).astype(int)
    bounds = parity_gap_bounds(y_true, y_pred, groups, confidence=0.95)
    assert 0.29 < bounds["demographic_parity"] < 0.3
    assert 0.28 < bounds["equalized_odds"] < 0.3


PERF = GatesSpec.model_validate(
    {"performance": {"metric": "log_loss", "max_regression": 0.002, "floor": None}}
)


@pytest.fixture(scope="module")
def champion_and_shrunk() -> tuple[Any, Any]:
    """A champion, and a candidate over-regularized into a slightly worse log loss."""
    X, y = rows(8_000, seed=7)
    return fitted(FEATURES, X, y), fitted(FEATURES, X, y, C=0.0015)


def perf_result(candidate: Any, champion: Any, n: int, seed: int) -> Any:
    X, y = rows(n, seed=seed)
    report = run_gates(
        PERF, candidate, Holdout(X, y), task="binary", champion=champion, latency_calls=10
    )
    return report.by_name()[PERFORMANCE]


def test_a_slightly_worse_candidate_passes_on_few_rows_and_fails_on_many(champion_and_shrunk):
    champion, shrunk = champion_and_shrunk
    few = perf_result(shrunk, champion, 400, seed=8)
    assert few.value > few.threshold, "worse than the margin on the point: the old gate failed it"
    assert few.passed and "not shown worse" in few.note, few.note
    many = perf_result(shrunk, champion, 8_000, seed=9)
    assert not many.passed and "shown worse" in many.note, many.note


def test_a_candidate_far_worse_than_the_champion_fails_on_few_rows(champion_and_shrunk):
    champion, _ = champion_and_shrunk
    X, y = rows(8_000, seed=10)
    wrong = fitted(FEATURES, X.assign(x1=-X.x1), y)  # learnt the strongest effect backwards
    result = perf_result(wrong, champion, 400, seed=11)
    assert not result.passed, result.note
    better = perf_result(champion, wrong, 400, seed=11)  # the other way round
    assert better.passed and better.value < better.threshold
