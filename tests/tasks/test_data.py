"""Study data: the hold-out never overlaps training, time order, determinism, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.data import DataError, DataNotFoundError, load_study_data
from tasks.spec import StudySpec


def _frame(n: int = 400, *, timestamps: bool = True, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "row": np.arange(n),
            "x": rng.normal(size=n),
            "flag": rng.random(n) < 0.5,
            "age_band": rng.choice(["18-24", "25-34", None], n),
            "label": (rng.random(n) < 0.3).astype(int),
        }
    )
    if timestamps:
        stamps = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
            rng.permutation(n), unit="h"
        )
        frame["event_timestamp"] = stamps
    return frame


def _spec(path: Path, **data) -> StudySpec:
    raw = {
        "name": "t",
        "data": {"source": "file", "path": str(path), "target": "label", **data},
        "evaluation": {"test_fraction": 0.25},
    }
    return StudySpec.parse(raw)


def test_time_stamped_file_holds_out_the_latest_rows(tmp_path: Path, settings) -> None:
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path)
    data = load_study_data(_spec(path, drop_columns=["row"]), settings)
    assert len(data.X_test) == 100 and len(data.X_train) == 300
    assert data.time_ordered
    assert data.timestamps_train.is_monotonic_increasing
    assert data.timestamps_train.max() < data.timestamps_test.min()
    assert set(data.X_train["x"]).isdisjoint(set(data.X_test["x"]))
    assert "row" not in data.X_train.columns and "row" in data.test_frame.columns
    assert "event_timestamp" not in data.feature_columns
    assert data.feature_types == {"x": "numeric", "flag": "numeric", "age_band": "categorical"}
    # Categoricals are strings, missing ones named, so ONNX conversion sees only strings.
    assert set(data.X_train["age_band"]) == {"18-24", "25-34", "missing"}
    assert data.X_train["flag"].dtype == np.int64


def test_untimed_split_is_stratified_disjoint_and_seeded(tmp_path: Path, settings) -> None:
    path = tmp_path / "d.csv"
    _frame(timestamps=False).to_csv(path, index=False)
    spec = _spec(path, timestamp_column=None)
    a = load_study_data(spec, settings)
    b = load_study_data(spec, settings)
    assert not a.time_ordered
    pd.testing.assert_frame_equal(a.X_test, b.X_test)  # deterministic for a seed
    assert len(set(a.test_frame["row"])) == 100 and len(a.X_train) == 300
    # Rows are identified by x (continuous, unique): no overlap between the parts.
    assert set(a.X_train["x"]).isdisjoint(set(a.X_test["x"]))
    # Stratified: the positive rate is the same in both parts within one row.
    assert abs(a.y_train.mean() - a.y_test.mean()) < 0.01
    other = load_study_data(spec.model_copy(update={"seed": 1}), settings)
    assert not a.X_test["x"].equals(other.X_test["x"])


def test_window_and_max_rows_keep_the_latest(tmp_path: Path, settings) -> None:
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path)
    spec = _spec(path, start="2026-01-02T00:00:00Z", max_rows=200)
    data = load_study_data(spec, settings)
    assert len(data.X_train) + len(data.X_test) == 200
    assert data.timestamps_train.min() >= pd.Timestamp("2026-01-02", tz="UTC")
    # The latest 200 of the 400 hourly rows.
    assert data.timestamps_train.min() == pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(
        hours=200
    )


def test_sensitive_attribute_stays_in_test_frame_when_dropped(tmp_path: Path, settings) -> None:
    path = tmp_path / "d.parquet"
    _frame().to_parquet(path)
    data = load_study_data(_spec(path, drop_columns=["age_band"]), settings)
    assert "age_band" not in data.feature_columns
    assert len(data.test_frame["age_band"]) == len(data.y_test)


def test_errors_say_what_to_fix(tmp_path: Path, settings) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_study_data(_spec(tmp_path / "nope.csv"), settings)
    path = tmp_path / "d.csv"
    _frame().drop(columns="label").to_csv(path, index=False)
    with pytest.raises(DataError, match="target column 'label' is not in the data"):
        load_study_data(_spec(path), settings)
    feast = StudySpec.parse({"name": "f", "data": {"source": "feast"}})
    with pytest.raises(DataNotFoundError, match="run `banditflow generate`"):
        load_study_data(feast, settings)
    three = _frame()
    three["label"] = np.arange(len(three)) % 3
    three.to_csv(path, index=False)
    with pytest.raises(DataError, match="exactly 2 classes"):
        load_study_data(_spec(path), settings)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_specs_parse(path: Path) -> None:
    from tasks.models import get_family

    spec = StudySpec.from_yaml(path)
    get_family(spec.model.family)


def test_breast_cancer_example_loads(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)  # the example's path is relative to the project root
    spec = StudySpec.from_yaml(EXAMPLES / "breast-cancer-file.yaml")
    data = load_study_data(spec, settings)
    assert len(data.X_train) + len(data.X_test) == 569
    assert len(data.feature_columns) == 30 and not data.time_ordered


def test_served_outcomes_join_the_training_rows_never_the_hold_out(
    tmp_path: Path, settings
) -> None:
    labels, outcomes = tmp_path / "d.parquet", tmp_path / "o.parquet"
    _frame().to_parquet(labels)
    served = _frame(120, seed=1).assign(row=lambda f: f["row"] + 10_000)
    served.to_parquet(outcomes)
    start, end = pd.Timestamp("2026-01-03", tz="UTC"), pd.Timestamp("2026-01-15", tz="UTC")
    window = {"start": start.isoformat(), "end": end.isoformat()}
    plain = load_study_data(_spec(labels, **window), settings)
    data = load_study_data(_spec(labels, outcomes=str(outcomes), **window), settings)

    pd.testing.assert_frame_equal(plain.X_test, data.X_test)  # the labels' own hold-out
    in_window = served[(served.event_timestamp >= start) & (served.event_timestamp < end)]
    assert data.outcome_rows == len(in_window) > 0
    assert len(data.X_train) == len(plain.X_train) + len(in_window)
    assert sorted(data.X_train["row"]) == sorted([*plain.X_train["row"], *in_window["row"]])
    assert data.timestamps_train is not None and data.timestamps_train.is_monotonic_increasing
    assert data.summary()["rows_outcomes"] == data.outcome_rows
    # The rows' own labels came along with them.
    got = dict(zip(data.X_train["row"], data.y_train, strict=True))
    assert all(got[r] == y for r, y in zip(in_window["row"], in_window["label"], strict=True))


def test_outcomes_outside_the_window_or_none_leave_the_data_as_it_was(
    tmp_path: Path, settings
) -> None:
    labels, outcomes = tmp_path / "d.parquet", tmp_path / "o.parquet"
    _frame().to_parquet(labels)
    _frame(50, seed=2).assign(event_timestamp=pd.Timestamp("2027-01-01", tz="UTC")).to_parquet(
        outcomes
    )
    plain = load_study_data(_spec(labels), settings)
    data = load_study_data(
        _spec(labels, outcomes=str(outcomes), end="2026-06-01T00:00:00+00:00"), settings
    )
    assert data.outcome_rows == 0 and "rows_outcomes" not in data.summary()
    pd.testing.assert_frame_equal(plain.X_train, data.X_train)


def test_outcomes_errors_say_what_to_fix(tmp_path: Path, settings) -> None:
    from tasks.data import labels_only

    labels = tmp_path / "d.parquet"
    _frame().to_parquet(labels)
    with pytest.raises(ValueError, match="data.outcomes must be a .csv or .parquet"):
        _spec(labels, outcomes="served.json")
    with pytest.raises(DataNotFoundError, match="data.outcomes"):
        load_study_data(_spec(labels, outcomes=str(tmp_path / "none.parquet")), settings)
    odd = tmp_path / "odd.parquet"
    _frame(40).assign(label=7).to_parquet(odd)
    with pytest.raises(DataError, match=r"target values \['7'\] are not among the labels"):
        load_study_data(_spec(labels, outcomes=str(odd)), settings)
    short = tmp_path / "short.parquet"
    _frame(40).drop(columns="x").to_parquet(short)
    with pytest.raises(DataError, match=r"lacks the columns \['x'\]"):
        load_study_data(_spec(labels, outcomes=str(short)), settings)
    spec = _spec(labels, outcomes=str(odd))
    assert labels_only(spec).data.outcomes is None and spec.data.outcomes == str(odd)
