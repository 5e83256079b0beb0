"""The retrain's window starts at the change, and waits for labels from after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tasks.datagen import DRIFTED_FEATURES, FEATURES, GeneratorConfig, generate, labelled_sessions
from tasks.retrain_window import change_start, rows_since, shared_drop_columns
from tasks.spec import DriftSpec

START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=20)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    folder: Path = tmp_path_factory.mktemp("window-data")
    config = GeneratorConfig(
        seed=2, n_customers=1_500, rows=24_000, days=30, drift_at=DRIFT_AT, drift_strength=2.0
    )
    generate(config, folder)
    return labelled_sessions(folder)


def _study_data(frame: pd.DataFrame) -> SimpleNamespace:
    # The shape of tasks.data.StudyData the window needs: rows and their timestamps.
    half = len(frame) * 4 // 5
    return SimpleNamespace(
        X_train=frame[list(FEATURES)].iloc[:half].reset_index(drop=True),
        X_test=frame[list(FEATURES)].iloc[half:].reset_index(drop=True),
        timestamps_train=frame["event_timestamp"].iloc[:half].reset_index(drop=True),
        timestamps_test=frame["event_timestamp"].iloc[half:].reset_index(drop=True),
    )


def _window(frame: pd.DataFrame, lo: datetime, hi: datetime) -> pd.DataFrame:
    stamps = frame["event_timestamp"]
    return frame[(stamps >= pd.Timestamp(lo)) & (stamps < pd.Timestamp(hi))]


def test_the_window_starts_on_the_day_the_drift_began(sessions: pd.DataFrame) -> None:
    reference = _window(sessions, START, DRIFT_AT - timedelta(days=7))[list(FEATURES)]
    recent = _window(sessions, DRIFT_AT - timedelta(days=5), DRIFT_AT + timedelta(days=3))
    found = change_start(_study_data(recent), reference, DRIFTED_FEATURES, DriftSpec())
    assert found.start == DRIFT_AT, found
    n = rows_since(_study_data(recent), found.start)
    assert n == int((recent["event_timestamp"] >= pd.Timestamp(DRIFT_AT)).sum()) > 0


def test_no_change_is_placed_before_a_label_from_after_it(sessions: pd.DataFrame) -> None:
    reference = _window(sessions, START, DRIFT_AT - timedelta(days=7))[list(FEATURES)]
    # The features drifted, but the labelled rows all predate the drift (labels lag).
    recent = _window(sessions, DRIFT_AT - timedelta(days=7), DRIFT_AT)
    found = change_start(_study_data(recent), reference, DRIFTED_FEATURES, DriftSpec())
    assert found.start is None and "has not moved" in found.detail
    # A feature that never moved places nothing either; an unknown one is ignored.
    assert change_start(_study_data(recent), reference, ["region"], DriftSpec()).start is None
    none = change_start(_study_data(recent), reference, ["not-a-column"], DriftSpec())
    assert none.start is None and "no drifted feature" in none.detail


def test_the_retrain_drops_only_what_every_arm_dropped() -> None:
    def spec(drop: list[str]) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(drop_columns=drop))

    baseline = spec(["sessions_7d", "cart_adds_7d", "age_band"])
    assert shared_drop_columns([baseline, spec(["age_band"])]) == ["age_band"]
    assert shared_drop_columns([baseline, spec([])]) == []
    assert shared_drop_columns([baseline]) == ["sessions_7d", "cart_adds_7d", "age_band"]
    assert shared_drop_columns([]) == []


def test_a_challenger_that_learnt_from_the_change_on_means_the_change_is_handled() -> None:
    from tasks.retrain_window import challenger_since
    from tasks.spec import StudySpec

    def arm(alias: str, version: str, start: datetime | None) -> SimpleNamespace:
        spec = StudySpec.parse({"name": "m", "data": {"start": start}})
        return SimpleNamespace(alias=alias, version=version, study=f"s{version}", spec=spec)

    history = arm("champion", "2", None)
    on_probation = arm("challenger-1", "1", START)
    first_retrain = arm("challenger-2", "5", DRIFT_AT)
    # The champion's own window never counts; nor does a challenger from before the change.
    assert challenger_since([arm("champion", "9", DRIFT_AT), on_probation], DRIFT_AT) is None
    assert challenger_since([history, on_probation, first_retrain], DRIFT_AT) is first_retrain
    # A later change (a second drift): the earlier retrain learnt from before it.
    assert challenger_since([history, first_retrain], DRIFT_AT + timedelta(days=3)) is None
    # A naive start is read as UTC, as the spec's data window is.
    naive = arm("challenger-3", "6", (DRIFT_AT + timedelta(days=1)).replace(tzinfo=None))
    assert challenger_since([history, naive], DRIFT_AT) is naive


def test_a_recent_window_is_the_labels_never_a_versions_served_outcomes(tmp_path: Path) -> None:
    # A retrained version's spec names the outcome log it fitted; the drift checks' windows
    # and reference samples come from the same spec and must not include those rows.
    from tasks.data import labels_only
    from tasks.retrain import retrain_spec, windowed
    from tasks.spec import StudySpec

    spec = StudySpec.parse({"name": "m", "data": {"outcomes": str(tmp_path / "o.parquet")}})
    assert windowed(spec, START, DRIFT_AT).data.outcomes is None
    assert labels_only(spec).data.outcomes is None
    assert retrain_spec(spec, "m", START, DRIFT_AT, []).data.outcomes is None
