"""A feature view's change is placed by its daily snapshots, and a retrain before any label
of it learns from the served outcomes alone (the generator's world, a real Feast store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tasks.datagen import ACTIVITY_FEATURES, DRIFTED_FEATURES, GeneratorConfig, generate
from tasks.retrain_window import learnt_before
from tasks.spec import DriftSpec, StudySpec
from tasks.view_change import MIN_SNAPSHOT_ROWS, snapshot_change

START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_AT = START + timedelta(days=20)


def _activity(folder: Path, drift_at: datetime | None, customers: int = 1_500) -> pd.DataFrame:
    config = GeneratorConfig(
        seed=4, n_customers=customers, rows=20_000, days=30, start=START, drift_at=drift_at
    )
    generate(config, folder)
    return pd.read_parquet(folder / "activity.parquet")


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _activity(tmp_path_factory.mktemp("view-drifted"), DRIFT_AT)


def _days(rows: pd.DataFrame, lo: datetime, hi: datetime) -> pd.DataFrame:
    stamps = rows["event_timestamp"]
    return rows[(stamps >= pd.Timestamp(lo)) & (stamps <= pd.Timestamp(hi))]


def test_the_change_is_the_day_whose_snapshot_moved_from_the_day_before(
    drifted: pd.DataFrame,
) -> None:
    # The day the drifted snapshot arrives: it is the newest row of the window.
    rows = _days(drifted, DRIFT_AT - timedelta(days=7), DRIFT_AT)
    found = snapshot_change(rows, ACTIVITY_FEATURES, DriftSpec(), timestamp="event_timestamp")
    assert found.start == DRIFT_AT, found
    assert found.features and set(found.features) <= set(DRIFTED_FEATURES), found
    # Days later, with new-world snapshots after it, the change stays where it began.
    rows = _days(drifted, DRIFT_AT - timedelta(days=4), DRIFT_AT + timedelta(days=5))
    later = snapshot_change(rows, ACTIVITY_FEATURES, DriftSpec(), timestamp="event_timestamp")
    assert later.start == DRIFT_AT and later.features == found.features


def test_a_window_after_the_change_or_a_world_without_one_places_nothing(
    drifted: pd.DataFrame, tmp_path: Path
) -> None:
    after = _days(drifted, DRIFT_AT + timedelta(days=1), DRIFT_AT + timedelta(days=9))
    found = snapshot_change(after, ACTIVITY_FEATURES, DriftSpec(), timestamp="event_timestamp")
    assert found.start is None and "no snapshot moved" in found.detail
    # Thirty days of day-to-day noise (each customer's AR(1) engagement walk): no false alarm.
    calm = _activity(tmp_path, None)
    found = snapshot_change(calm, ACTIVITY_FEATURES, DriftSpec(), timestamp="event_timestamp")
    assert found.start is None, found


def test_a_push_of_a_few_rows_is_no_snapshot(drifted: pd.DataFrame) -> None:
    rows = _days(drifted, DRIFT_AT - timedelta(days=3), DRIFT_AT - timedelta(days=1))
    # A handful of drifted rows pushed on the next day: too few to say the world moved.
    few = _days(drifted, DRIFT_AT, DRIFT_AT).head(MIN_SNAPSHOT_ROWS - 1)
    both = pd.concat([rows, few], ignore_index=True)
    found = snapshot_change(both, ACTIVITY_FEATURES, DriftSpec(), timestamp="event_timestamp")
    assert found.start is None, found
    empty = snapshot_change(rows, ["no_such_feature"], DriftSpec(), timestamp="event_timestamp")
    assert empty.start is None and "no feature to compare" in empty.detail


def test_a_version_that_learnt_from_the_change_on_is_not_stale_for_it() -> None:
    def spec(start: datetime | None) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(start=start))

    assert learnt_before(spec(None), DRIFT_AT)  # the whole history: before the change
    assert learnt_before(spec(DRIFT_AT - timedelta(days=7)), DRIFT_AT)
    assert not learnt_before(spec(DRIFT_AT), DRIFT_AT)
    assert not learnt_before(spec(datetime(2026, 1, 22)), DRIFT_AT)  # naive: read as UTC


# --- against a real Feast store ---------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from tasks.features import apply_repository
    from tasks.settings import PipelineSettings

    settings = PipelineSettings(home=tmp_path_factory.mktemp("view-store")).ensure_dirs()
    config = GeneratorConfig(
        seed=5, n_customers=800, rows=16_000, days=30, start=START, drift_at=DRIFT_AT
    )
    generate(config, settings.data_dir)
    apply_repository(settings)
    return SimpleNamespace(settings=settings)


@pytest.mark.slow
def test_the_views_own_rows_place_the_change_a_day_before_any_label(
    store: SimpleNamespace,
) -> None:
    from tasks.retrain_window import stale_view
    from tasks.view_change import view_change

    settings = store.settings
    found = view_change(settings, DriftSpec(), DRIFT_AT, 7.0)
    assert found.start == DRIFT_AT and "customer_activity" in found.detail, found
    assert set(found.features) <= set(DRIFTED_FEATURES)
    # Columns no arm uses are not compared; with none left, nothing is placed.
    assert (
        view_change(settings, DriftSpec(), DRIFT_AT, 7.0, exclude=ACTIVITY_FEATURES).start is None
    )
    # Before the drifted snapshot arrived, nothing moved.
    assert view_change(settings, DriftSpec(), DRIFT_AT - timedelta(days=1), 7.0).start is None

    def arm(start: datetime | None) -> SimpleNamespace:
        return SimpleNamespace(spec=SimpleNamespace(data=SimpleNamespace(start=start)))

    spec = StudySpec.parse({"name": "view"})
    assert stale_view([arm(None), arm(DRIFT_AT)], spec, settings, DRIFT_AT, []).start == DRIFT_AT
    fresh = stale_view([arm(DRIFT_AT)], spec, settings, DRIFT_AT, [])
    assert fresh.start is None and "every serving arm learnt from it on" in fresh.detail


@pytest.mark.slow
def test_the_checks_drifted_arms_are_those_that_learnt_before_the_change(
    store: SimpleNamespace,
) -> None:
    from tasks.drift_check import _view_drift
    from tasks.retrain import RetrainOutcome

    def arm(version: str, start: datetime | None) -> SimpleNamespace:
        spec = StudySpec.parse({"name": "view", "data": {"start": start}})
        return SimpleNamespace(version=version, spec=spec)

    window = {"start": (DRIFT_AT - timedelta(days=7)).isoformat(), "end": DRIFT_AT.isoformat()}

    def check(arms: list[SimpleNamespace]) -> dict[str, list[str]]:
        outcome = RetrainOutcome("conversion", "not-drifted", arms[0].version, "s", window)
        outcome.arms = {a.version: {"drifted_features": []} for a in arms}
        _view_drift(outcome, arms, store.settings)  # type: ignore[arg-type]
        return {v: i["drifted_features"] for v, i in outcome.arms.items()}

    # A champion that learnt from the change on, beside a stale arm: only the stale one moved.
    after = check([arm("4", DRIFT_AT), arm("2", None)])
    assert after["4"] == [] and after["2"] and set(after["2"]) <= set(DRIFTED_FEATURES), after
    # Every arm learnt before it: each is drifted; every arm learnt after it: none.
    assert all(check([arm("2", None), arm("3", DRIFT_AT - timedelta(days=9))]).values())
    assert not any(check([arm("4", DRIFT_AT)]).values())


@pytest.mark.slow
def test_a_retrain_before_any_label_learns_and_holds_out_from_the_served_outcomes(
    store: SimpleNamespace,
) -> None:
    from tasks.data import labels_only, load_study_data
    from tasks.features import build_training_set, load_labels
    from tasks.retrain_window import served_only, served_since, with_served_outcomes

    settings = store.settings
    labels = load_labels(settings)
    # The offers served on the day of the change, an hour after some of its sessions.
    stamps = labels["event_timestamp"]
    day = labels[
        (stamps >= pd.Timestamp(DRIFT_AT))
        & (stamps < pd.Timestamp(DRIFT_AT) + pd.Timedelta(days=1))
    ]
    visits = day[["customer_id", "event_timestamp", "converted"]].copy()
    visits["event_timestamp"] += pd.Timedelta(hours=1)
    visits = visits[visits["event_timestamp"] < pd.Timestamp(DRIFT_AT) + pd.Timedelta(days=1)]
    visits.reset_index(drop=True).to_parquet(settings.outcomes_path)
    hi = DRIFT_AT + timedelta(days=1)
    outcome = SimpleNamespace(reason=None)
    feast = StudySpec.parse({"name": "served"})
    file_spec = StudySpec.parse({"name": "f", "data": {"source": "file", "path": "x.csv"}})
    assert served_since(DRIFT_AT, hi, settings, outcome, file_spec) == 0  # no key to join
    assert served_since(DRIFT_AT, hi, settings, outcome, feast) == len(visits) > 0
    # The live alarm's own retrain never learns from them: when it reads the log is load's.
    alarm = SimpleNamespace(reason="banditflow.performance.degraded")
    assert served_since(DRIFT_AT, hi, settings, alarm, feast) == 0
    off = settings.model_copy(update={"retrain_outcomes": False})
    assert served_since(DRIFT_AT, hi, off, outcome, feast) == 0

    window = {"start": DRIFT_AT.isoformat(), "end": hi.isoformat(), "history_days": 7}
    spec = served_only(StudySpec.parse({"name": "served", "data": window}), settings)
    data = load_study_data(spec, settings)
    # Every row, training and hold-out, is a served outcome joined at its own moment; the
    # hold-out is the latest of them; the prior stays the labels of the week before.
    want = build_training_set(visits, settings=settings).sort_values("event_timestamp")
    assert len(data.X_train) + len(data.X_test) == len(want)
    assert data.outcome_rows == len(data.X_train)
    assert data.timestamps_test.min() >= data.timestamps_train.max()
    assert pd.to_datetime(data.timestamps_train, utc=True).min() >= pd.Timestamp(DRIFT_AT)
    prior = stamps[
        (stamps >= pd.Timestamp(DRIFT_AT) - pd.Timedelta(days=7))
        & (stamps < pd.Timestamp(DRIFT_AT))
    ]
    assert data.history_rows == len(prior) > 0
    # The retrain adds no outcome twice, and the drift checks' sample stays labels.
    again = with_served_outcomes(spec, data, settings)
    assert again[1] is data and "no label" in again[2]
    assert labels_only(spec).data.served_only is False and labels_only(spec).data.outcomes is None
    with pytest.raises(ValueError, match="served_only learns from data.outcomes"):
        StudySpec.parse({"name": "x", "data": {"served_only": True}})
