"""Feature tasks against a real Feast store (DuckDB offline, SQLite online) in a tmp folder.

Feast takes ~10 s to import, so each data folder is applied once per module.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tasks.datagen import GeneratorConfig, conversion_probability, generate
from tasks.features import (
    DataNotGeneratedError,
    FeatureError,
    FeatureStoreError,
    LabelsError,
    NotMaterializedError,
    RepositoryNotAppliedError,
    UnknownFeatureServiceError,
    apply_repository,
    build_training_set,
    get_online_features,
    load_labels,
)
from tasks.ingest import materialize_incremental, push_activity, push_activity_update
from tasks.settings import PipelineSettings

pytestmark = pytest.mark.slow


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _customers() -> pd.DataFrame:
    stamps = [ts("2026-01-01"), ts("2026-01-01"), ts("2026-03-01")]
    return pd.DataFrame(
        {
            "customer_id": np.array([1, 2, 3], dtype=np.int64),
            "event_timestamp": stamps,
            "created_timestamp": stamps,
            "age_band": ["18-24", "55+", "35-44"],
            "region": ["north", "south", "east"],
            "signup_channel": ["organic", "email", "social"],
            "tenure_days": np.array([10, 400, 50], dtype=np.int64),
            "is_premium": np.array([0, 1, 0], dtype=np.int64),
        }
    )


def _activity() -> pd.DataFrame:
    rows = [
        # customer, event time, created time, sessions_7d
        (1, "2026-01-10", "2026-01-10 00:05", 10),
        (1, "2026-01-12", "2026-01-12 00:05", 12),
        # Two rows at one time: the later-created one is the correction that counts.
        (2, "2026-01-20", "2026-01-20 00:05", 20),
        (2, "2026-01-20", "2026-01-20 09:00", 21),
    ]
    frame = pd.DataFrame(rows, columns=["customer_id", "event_timestamp", "created", "s"])
    return pd.DataFrame(
        {
            "customer_id": frame["customer_id"].astype(np.int64),
            "event_timestamp": pd.to_datetime(frame["event_timestamp"], utc=True),
            "created_timestamp": pd.to_datetime(frame["created"], utc=True),
            "sessions_7d": frame["s"].astype(np.int64),
            "pageviews_7d": (frame["s"] * 3).astype(np.int64),
            "cart_adds_7d": np.array([1, 2, 3, 4], dtype=np.int64),
            "minutes_7d": [5.5, np.nan, 7.0, 7.5],
            "days_since_last_purchase": [np.nan, 3.0, 1.0, 1.0],
            "discount_rate_7d": [0.1, 0.2, 0.3, 0.35],
        }
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> PipelineSettings:
    """A hand-built data folder, applied once."""
    settings = PipelineSettings(home=tmp_path_factory.mktemp("tiny")).ensure_dirs()
    _customers().to_parquet(settings.data_dir / "customers.parquet", index=False)
    _activity().to_parquet(settings.data_dir / "activity.parquet", index=False)
    applied = apply_repository(settings)
    assert "FeatureService:conversion_model_v1" in applied
    assert "PushSource:activity_push" in applied
    return settings


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineSettings, GeneratorConfig]:
    """A small generated data folder, applied once."""
    settings = PipelineSettings(home=tmp_path_factory.mktemp("generated")).ensure_dirs()
    config = GeneratorConfig(
        n_customers=150, rows=3_000, days=20, seed=3, drift_at=datetime(2026, 1, 12, tzinfo=UTC)
    )
    generate(config, settings.data_dir)
    apply_repository(settings)
    return settings, config


def _labels(*rows: tuple[int, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "event_timestamp": [ts(r[1]) for r in rows],
            "converted": [i % 2 for i in range(len(rows))],
            "session_id": range(len(rows)),
            "p_true": 0.5,
        }
    )


def test_point_in_time_join_never_leaks_and_respects_ttl(tiny: PipelineSettings) -> None:
    labels = _labels(
        (1, "2026-01-11 12:00"),  # 0: Jan 10 value; Jan 12 is in its future
        (1, "2026-01-12 06:00"),  # 1: Jan 12 value
        (1, "2026-01-15 00:00:01"),  # 2: Jan 12 value is > 2 days old: activity TTL
        (3, "2026-02-01"),  # 3: profile stamped Mar 1, after the label: none
        (2, "2026-01-20 12:00"),  # 4: the later-created correction
        (2, "2026-01-11"),  # 5: profile yes, no activity yet
        (1, "2027-01-05"),  # 6: profile over a year old: profile TTL
        (1, "2026-01-11 12:00"),  # 7: the same pair as row 0 (two sessions in a second)
    )
    got = build_training_set(labels, settings=tiny)
    assert len(got) == len(labels)
    assert got.loc[7, "sessions_7d"] == 10
    assert list(got.columns[:3]) == ["customer_id", "event_timestamp", "converted"]
    assert "p_true" not in got.columns and "session_id" not in got.columns
    # Labels' order and values kept.
    assert got["customer_id"].tolist() == labels["customer_id"].tolist()
    assert got["converted"].tolist() == labels["converted"].tolist()
    sessions = got["sessions_7d"].tolist()
    assert sessions[0] == 10
    assert sessions[1] == 12
    assert pd.isna(sessions[2])
    assert sessions[4] == 21
    assert pd.isna(sessions[5])
    assert got.loc[5, "age_band"] == "55+"
    assert pd.isna(got.loc[3, "age_band"])
    assert got.loc[0, "age_band"] == "18-24"
    assert pd.isna(got.loc[6, "age_band"])
    # NaN features stay NaN (minutes were not tracked on Jan 12).
    assert pd.isna(got.loc[1, "minutes_7d"]) and got.loc[0, "minutes_7d"] == 5.5


def test_nanosecond_label_times_join_as_their_microsecond(tiny: PipelineSettings) -> None:
    # A served visit's moment from the application's clock has nanoseconds; Feast stores
    # microseconds and refused the cast, so no retrain could read the outcome log.
    labels = _labels((1, "2026-01-11 12:00"), (1, "2026-01-12 06:00"))
    fine = labels.assign(event_timestamp=labels["event_timestamp"] + pd.Timedelta(789, "ns"))
    got = build_training_set(fine, settings=tiny)
    want = build_training_set(labels, settings=tiny)
    assert got["sessions_7d"].tolist() == want["sessions_7d"].tolist() == [10, 12]


def test_file_store_agrees_where_it_works_and_refuses_to_drop_rows(
    tiny: PipelineSettings,
) -> None:
    complete = _labels((1, "2026-01-11 12:00"), (1, "2026-01-12 06:00"), (2, "2026-01-20 12:00"))
    via_file = build_training_set(complete, settings=tiny, offline_store="file")
    pd.testing.assert_frame_equal(via_file, build_training_set(complete, settings=tiny))
    # Feast 0.67's file (Dask) store drops label rows that lack a view's values; losing
    # training rows silently is worse than failing, so the task refuses.
    gaps = _labels((1, "2026-01-11 12:00"), (2, "2026-01-11"))
    with pytest.raises(FeatureStoreError, match="returned 1 rows for 2"):
        build_training_set(gaps, settings=tiny, offline_store="file")


def test_training_set_matches_the_generators_truth(
    generated: tuple[PipelineSettings, GeneratorConfig],
) -> None:
    settings, config = generated
    labels = load_labels(settings)
    got = build_training_set(labels, settings=settings)
    assert len(got) == len(labels)
    assert got[["sessions_7d", "age_band"]].notna().all().all()
    # The Feast join reproduces the features the generator drew each label from.
    p = conversion_probability(got, got["event_timestamp"], config)
    np.testing.assert_allclose(p, labels["p_true"].to_numpy(), rtol=1e-9)


def test_materialize_then_online_lookup_returns_latest_then_push_updates(
    tiny: PipelineSettings,
) -> None:
    first = materialize_incremental(datetime(2026, 2, 1, tzinfo=UTC), settings=tiny)
    assert {u["feature_view"] for u in first} == {"customer_profile", "customer_activity"}
    activity = next(u for u in first if u["feature_view"] == "customer_activity")
    assert activity["rows"] == 2 and activity["source_rows"] == 4
    online = get_online_features([{"customer_id": 1}, {"customer_id": 2}], settings=tiny)
    assert online["sessions_7d"].tolist() == [12, 21]
    assert online["age_band"].tolist() == ["18-24", "55+"]
    # Customer 3's profile is stamped after the first window: the next increment brings it.
    with pytest.raises(NotMaterializedError, match="materialize"):
        get_online_features([{"customer_id": 3}], settings=tiny)
    second = materialize_incremental(datetime(2026, 4, 1, tzinfo=UTC), settings=tiny)
    profile = next(u for u in second if u["feature_view"] == "customer_profile")
    assert profile["start"] == "2026-02-01T00:00:00+00:00" and profile["rows"] == 1
    assert get_online_features([{"customer_id": 3}], settings=tiny)["region"].tolist() == ["east"]

    pushed = (
        _activity()
        .iloc[[1]]
        .assign(
            event_timestamp=ts("2026-04-02"), created_timestamp=ts("2026-04-02"), sessions_7d=99
        )
    )
    assert push_activity(pushed, settings=tiny) == 1
    online = get_online_features([{"customer_id": 1}, {"customer_id": 2}], settings=tiny)
    assert online["sessions_7d"].tolist() == [99, 21]

    # Online and offline: the parquet source gains the row with its own column types, and
    # a point-in-time join after it sees the pushed value.
    source = tiny.data_dir / "activity.parquet"
    before = pd.read_parquet(source)
    later = pushed.assign(
        event_timestamp=ts("2026-04-03"), created_timestamp=ts("2026-04-03"), sessions_7d=77
    )
    assert push_activity(later, settings=tiny, to="online_and_offline") == 1
    after = pd.read_parquet(source)
    assert len(after) == len(before) + 1
    assert after.dtypes.to_dict() == before.dtypes.to_dict()
    labels = pd.DataFrame(
        {"customer_id": [1], "event_timestamp": [ts("2026-04-04")], "converted": [1]}
    )
    joined = build_training_set(labels, settings=tiny)
    assert joined["sessions_7d"].tolist() == [77]


def test_unknown_feature_service_lists_the_known_ones(tiny: PipelineSettings) -> None:
    with pytest.raises(UnknownFeatureServiceError, match="conversion_model_v1"):
        build_training_set(_labels((1, "2026-01-11")), "conversion_model_v9", settings=tiny)
    with pytest.raises(UnknownFeatureServiceError, match="known: conversion_model_v1"):
        get_online_features([{"customer_id": 1}], "nope", settings=tiny)


@pytest.mark.parametrize("column", ["customer_id", "event_timestamp", "converted"])
def test_labels_without_a_key_column_are_refused(tiny: PipelineSettings, column: str) -> None:
    labels = _labels((1, "2026-01-11")).drop(columns=[column])
    with pytest.raises(LabelsError, match=column):
        build_training_set(labels, settings=tiny)


def test_bad_entity_rows_are_refused(tiny: PipelineSettings) -> None:
    with pytest.raises(LabelsError, match="customer_id"):
        get_online_features([{"id": 1}], settings=tiny)
    with pytest.raises(NotMaterializedError, match=r"\[424242\].*materialize"):
        get_online_features([{"customer_id": 424242}], settings=tiny)
    with pytest.raises(LabelsError, match="lack the columns"):
        push_activity(pd.DataFrame({"customer_id": [1]}), settings=tiny)


def test_missing_data_and_unapplied_registry_say_what_to_run(tmp_path: Path) -> None:
    empty = PipelineSettings(home=tmp_path / "empty").ensure_dirs()
    with pytest.raises(DataNotGeneratedError, match="banditflow generate"):
        apply_repository(empty)
    with pytest.raises(DataNotGeneratedError, match="banditflow generate"):
        build_training_set(_labels((1, "2026-01-11")), settings=empty)
    with pytest.raises(DataNotGeneratedError, match="banditflow generate"):
        load_labels(empty)
    _customers().to_parquet(empty.data_dir / "customers.parquet", index=False)
    _activity().to_parquet(empty.data_dir / "activity.parquet", index=False)
    with pytest.raises(RepositoryNotAppliedError, match="banditflow features apply"):
        build_training_set(_labels((1, "2026-01-11")), settings=empty)
    with pytest.raises(RepositoryNotAppliedError, match="banditflow features apply"):
        materialize_incremental(settings=empty)
    assert issubclass(RepositoryNotAppliedError, FeatureError)


def test_cli_training_set_and_clear_errors(
    generated: tuple[PipelineSettings, GeneratorConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from banditflow.cli import app
    from tasks.settings import get_settings

    settings, _ = generated
    runner = CliRunner()
    monkeypatch.setenv("BANDITFLOW_HOME", str(settings.home))
    get_settings.cache_clear()
    out = tmp_path / "train.parquet"
    result = runner.invoke(app, ["features", "training-set", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) == 3_000

    monkeypatch.setenv("BANDITFLOW_HOME", str(tmp_path / "nothing"))
    get_settings.cache_clear()
    result = runner.invoke(app, ["features", "apply"])
    assert result.exit_code == 1
    assert "banditflow generate" in result.output
    get_settings.cache_clear()


def test_cli_materialize_and_push_say_which_event_or_why_none(
    generated: tuple[PipelineSettings, GeneratorConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from banditflow.cli import app
    from tasks.settings import get_settings

    settings, _ = generated
    runner = CliRunner()
    monkeypatch.setenv("BANDITFLOW_HOME", str(settings.home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # The CLI sets Prefect's home once per process; an earlier command in this test process
    # may have set it for its own data folder.
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    get_settings.cache_clear()
    try:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            first = runner.invoke(app, ["features", "materialize"])
            again = runner.invoke(app, ["features", "materialize"])
            rows = pd.read_parquet(settings.data_dir / "activity.parquet").tail(3)
            rows.to_csv(tmp_path / "fresh.csv", index=False)
            pushed = runner.invoke(app, ["features", "push", str(tmp_path / "fresh.csv")])
            missing = runner.invoke(app, ["features", "push", str(tmp_path / "none.csv")])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0, first.output
    assert "customer_activity:" in first.output
    assert "no event: no Prefect API" in first.output and "make up" in first.output
    assert again.exit_code == 0, again.output
    assert "no event: no new rows" in again.output
    assert pushed.exit_code == 0, pushed.output
    assert "customer_activity: 3 rows" in pushed.output
    assert "no event: no Prefect API" in pushed.output
    assert missing.exit_code == 1 and "is not a file" in missing.output
    # Prefect's home is the data folder's, not ~/.prefect.
    assert os.environ["PREFECT_HOME"] == str(settings.home / "prefect")


@pytest.mark.integration
def test_materialize_and_push_emit_features_updated(
    prefect_harness: None, tiny: PipelineSettings
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from contract import EVENT_FEATURES_UPDATED
    from tasks.ingest import flush_events

    resource = "banditflow.feature_view.customer_activity"
    pushed = (
        _activity()
        .iloc[[0]]
        .assign(event_timestamp=ts("2026-05-01"), created_timestamp=ts("2026-05-01"), sessions_7d=7)
    )
    update = push_activity_update(pushed, settings=tiny)
    flush_events()
    assert update["event"] == EVENT_FEATURES_UPDATED and update["no_event"] is None
    wanted = EventFilter(
        event=EventNameFilter(name=[EVENT_FEATURES_UPDATED]),
        resource=EventResourceFilter(id=[resource]),
    )
    deadline, events = time.monotonic() + 30, []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            events = [
                e
                for e in client.read_events(filter=wanted, limit=50).events
                if e.payload.get("end") == ts("2026-05-01").isoformat()
            ]
            if events:
                break
            time.sleep(0.5)
    assert events, f"no {EVENT_FEATURES_UPDATED} event for {resource} reached the Prefect API"
    payload = events[0].payload
    assert str(events[0].id) == update["event_id"]
    assert payload["feature_view"] == "customer_activity" and payload["rows"] == 1
    assert set(payload) >= {"feature_view", "start", "end", "rows"}


@pytest.mark.integration
def test_training_set_task_runs_in_a_flow(prefect_harness: None, tiny: PipelineSettings) -> None:
    from prefect import flow

    from tasks.features import build_training_set_task

    @flow
    def training_flow() -> pd.DataFrame:
        return build_training_set_task(_labels((1, "2026-01-11 12:00")), settings=tiny)

    frame = training_flow()
    assert frame is not None and frame["sessions_7d"].tolist() == [10]


def test_served_outcomes_are_joined_as_labels_are_and_a_retrain_fits_them(
    generated: tuple[PipelineSettings, GeneratorConfig], tmp_path: Path
) -> None:
    from tasks.data import load_study_data
    from tasks.retrain_window import with_served_outcomes
    from tasks.spec import StudySpec

    settings, config = generated
    labels = load_labels(settings)
    lo, hi = pd.Timestamp("2026-01-05", tz="UTC"), pd.Timestamp("2026-01-15", tz="UTC")
    # Served offers: visits of the same customers an hour after some sessions.
    visits = labels.iloc[::7][["customer_id", "event_timestamp", "converted"]].copy()
    visits["event_timestamp"] += pd.Timedelta(hours=1)
    path = tmp_path / "outcomes.parquet"
    visits.to_parquet(path)
    window = {"start": lo.isoformat(), "end": hi.isoformat()}
    spec = StudySpec.parse({"name": "served", "data": window})
    plain = load_study_data(spec, settings)
    served = spec.model_copy(update={"data": spec.data.model_copy(update={"outcomes": str(path)})})
    data = load_study_data(served, settings)
    stamps = visits["event_timestamp"]
    expected = visits[(stamps >= lo) & (stamps < hi)]
    assert data.outcome_rows == len(expected) > 0
    pd.testing.assert_frame_equal(plain.X_test, data.X_test)
    # Joined as label rows at their own moment: the same features a labels table gets.
    from tasks.data import clean_features

    want = clean_features(build_training_set(expected, settings=settings)[data.feature_columns])
    assert len(data.X_train) == len(plain.X_train) + len(want)
    for column in data.feature_columns:
        counts = data.X_train[column].value_counts(dropna=False)
        both = pd.concat([plain.X_train[column], want[column]]).value_counts(dropna=False)
        pd.testing.assert_series_equal(counts.sort_index(), both.sort_index(), check_names=False)

    # The retrain adds the application's log when it exists and the setting is on.
    off = settings.model_copy(update={"retrain_outcomes": False})
    assert with_served_outcomes(spec, plain, off)[2] == ""
    assert with_served_outcomes(spec, plain, settings)[2] == ""  # no log yet
    settings.outcomes_path.write_bytes(path.read_bytes())
    try:
        new_spec, new_data, note = with_served_outcomes(spec, plain, settings)
    finally:
        settings.outcomes_path.unlink()
    assert new_spec.data.outcomes == str(settings.outcomes_path)
    assert new_data.outcome_rows == len(expected) and f"{len(expected):,} served outcomes" in note
