"""Arms that read different features: one request row serves them all."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_helpers import FEATURES, _train

from rollout.errors import FeatureError
from rollout.pool import ArmEntry, Column, PoolSnapshot, ServingModel, sklearn_predictor


def _serving(version: str, model: Any, columns: list[Column]) -> ServingModel:
    return ServingModel(
        name="m",
        version=version,
        flavour="sklearn",
        columns=columns,
        predict_rows=sklearn_predictor(model, columns),
    )


@pytest.fixture(scope="module")
def snapshot() -> PoolSnapshot:
    wide, frame = _train(seed=0, c=1.0)  # x1, x2, region
    from sklearn.linear_model import LogisticRegression

    narrow = LogisticRegression().fit(frame[["x1"]], (frame["x1"] > 0).astype(int))
    all_columns = [Column("x1", "double"), Column("x2", "double"), Column("region", "string")]
    arms = {
        "v1": ArmEntry("v1", "1", "champion", _serving("1", narrow, all_columns[:1])),
        "v2": ArmEntry("v2", "2", "challenger-1", _serving("2", wide, all_columns)),
    }
    return PoolSnapshot(arms=arms, champion="v1")


def test_a_row_with_every_arms_features_is_accepted_and_each_model_reads_its_own(
    snapshot: PoolSnapshot,
) -> None:
    assert [c.name for c in snapshot.input_columns] == ["x1", "x2", "region"]
    snapshot.check_row(FEATURES, snapshot.arms["v1"].model)  # type: ignore[arg-type]
    for arm in ("v1", "v2"):
        model = snapshot.arms[arm].model
        assert model is not None
        labels, scores = model.predict([FEATURES, {**FEATURES, "x1": -2.0}])
        assert len(labels) == 2 and all(0 <= s <= 1 for s in scores if s is not None)
    # The narrow champion reads x1 only: the other features cannot change its score.
    champion = snapshot.arms["v1"].model
    assert champion is not None
    a = champion.predict([FEATURES])[1][0]
    b = champion.predict([{**FEATURES, "x2": 5.0, "region": "east"}])[1][0]
    assert a == pytest.approx(b)


def test_what_no_arm_reads_or_the_champion_lacks_is_still_422(snapshot: PoolSnapshot) -> None:
    champion = snapshot.arms["v1"].model
    assert champion is not None
    with pytest.raises(FeatureError, match="unexpected features: x9"):
        snapshot.check_row({**FEATURES, "x9": 1.0}, champion)
    with pytest.raises(FeatureError, match="missing features: x1"):
        snapshot.check_row({"x2": 1.0, "region": "north"}, champion)
    with pytest.raises(FeatureError, match="wrongly typed features: region"):
        snapshot.check_row({**FEATURES, "region": 3}, champion)
    # A challenger-only feature may be left out: the champion can still serve the row.
    snapshot.check_row({"x1": 0.3}, champion)
