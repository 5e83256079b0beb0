"""The demo data generator: deterministic, balanced, drift only where it says, true p exact."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from typer.testing import CliRunner

from tasks.datagen import (
    ACTIVITY_FEATURES,
    AGE_BANDS,
    DRIFTED_FEATURES,
    FEATURES,
    PROFILE_FEATURES,
    GeneratorConfig,
    conversion_probability,
    features_at,
    generate,
    load_config,
)

SMALL = {"n_customers": 800, "rows": 8_000, "days": 40}
DRIFT_AT = datetime(2026, 1, 21, tzinfo=UTC)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(paths: dict[str, Path]) -> dict[str, pd.DataFrame]:
    return {k: pd.read_parquet(v) for k, v in paths.items() if v.suffix == ".parquet"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    return _read(generate(GeneratorConfig(**SMALL), tmp_path_factory.mktemp("plain")))


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    config = GeneratorConfig(**SMALL, drift_at=DRIFT_AT)
    return _read(generate(config, tmp_path_factory.mktemp("drifted")))


def _session_features(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Rebuild each session's features independently: merge_asof on the activity."""
    sessions = frames["sessions"].sort_values("event_timestamp")
    activity = frames["activity"].sort_values("event_timestamp")
    joined = pd.merge_asof(
        sessions, activity, on="event_timestamp", by="customer_id", direction="backward"
    )
    return joined.merge(
        frames["customers"][["customer_id", *PROFILE_FEATURES]], on="customer_id", how="left"
    )


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    config = GeneratorConfig(n_customers=200, rows=1_000, days=10, seed=7)
    first = generate(config, tmp_path / "a" / "nested")  # folder is created
    second = generate(config, tmp_path / "b")
    other = generate(config.model_copy(update={"seed": 8}), tmp_path / "c")
    for name in ("customers", "activity", "sessions", "config"):
        assert _digest(first[name]) == _digest(second[name]), name
    assert _digest(first["sessions"]) != _digest(other["sessions"])
    assert load_config(tmp_path / "b") == config


def test_schema_and_realism(plain: dict[str, pd.DataFrame]) -> None:
    customers, activity, sessions = plain["customers"], plain["activity"], plain["sessions"]
    assert customers["customer_id"].dtype == np.int64
    assert set(customers["age_band"]) == set(AGE_BANDS)
    assert str(customers["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert len(activity) == SMALL["n_customers"] * SMALL["days"]
    assert set(ACTIVITY_FEATURES) <= set(activity.columns)
    # Missing values where the brief says, and activity that changes day to day.
    assert 0.02 < activity["minutes_7d"].isna().mean() < 0.15
    assert 0.1 < activity["days_since_last_purchase"].isna().mean() < 0.4
    per_customer_days = activity.groupby("customer_id")["sessions_7d"].nunique()
    assert per_customer_days.median() > 1
    assert sessions["session_id"].is_unique
    assert set(sessions["converted"].unique()) == {0, 1}
    assert sessions["event_timestamp"].is_monotonic_increasing


@pytest.mark.parametrize(
    "overrides",
    [{}, {"age_effect": 0.0}, {"age_effect": 1.0}, {"drift_at": datetime(2026, 3, 1, tzinfo=UTC)}],
)
def test_class_balance_between_5_and_15_percent(tmp_path: Path, overrides: dict) -> None:
    # Default size: 60,000 sessions, so the rate's standard error is about 0.1 %.
    sessions = pd.read_parquet(generate(GeneratorConfig(**overrides), tmp_path)["sessions"])
    assert 0.05 <= sessions["converted"].mean() <= 0.15


def test_p_true_equals_conversion_probability(drifted: dict[str, pd.DataFrame]) -> None:
    joined = _session_features(drifted)
    config = GeneratorConfig(**SMALL, drift_at=DRIFT_AT)
    expected = conversion_probability(joined, joined["event_timestamp"], config)
    np.testing.assert_allclose(joined["p_true"].to_numpy(), expected, rtol=1e-12)
    # And the draws follow it: observed vs expected conversions within 4 standard errors.
    p = joined["p_true"].to_numpy()
    assert abs(joined["converted"].sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())


def test_drift_changes_exactly_the_drifted_features(
    plain: dict[str, pd.DataFrame], drifted: dict[str, pd.DataFrame]
) -> None:
    before, after = plain["activity"], drifted["activity"]
    late = before["event_timestamp"] >= DRIFT_AT
    for feature in ACTIVITY_FEATURES:
        x, y = before[feature], after[feature]
        if feature not in DRIFTED_FEATURES:
            # Independent random streams: the other features are value-for-value equal.
            pd.testing.assert_series_equal(x, y)
            continue
        # Same law before drift_at (KS < 0.02 on ~16k values), shifted after (KS > 0.1).
        assert ks_2samp(x[~late].dropna(), y[~late].dropna()).statistic < 0.02, feature
        assert ks_2samp(x[late].dropna(), y[late].dropna()).statistic > 0.1, feature
    pd.testing.assert_frame_equal(plain["customers"], drifted["customers"])


def test_drift_is_visible_to_a_detector_in_one_dataset(drifted: dict[str, pd.DataFrame]) -> None:
    activity = drifted["activity"]
    stamp = activity["event_timestamp"]
    window = timedelta(days=14)
    pre = activity[(stamp >= DRIFT_AT - window) & (stamp < DRIFT_AT)]
    post = activity[(stamp >= DRIFT_AT) & (stamp < DRIFT_AT + window)]
    flagged = {
        f for f in ACTIVITY_FEATURES if ks_2samp(pre[f].dropna(), post[f].dropna()).statistic > 0.06
    }
    assert flagged == set(DRIFTED_FEATURES)


def test_ground_truth_moves_after_drift_at_only(plain: dict[str, pd.DataFrame]) -> None:
    rows = _session_features(plain).head(500)
    still = GeneratorConfig(**SMALL)
    moving = GeneratorConfig(**SMALL, drift_at=DRIFT_AT)
    early, late = DRIFT_AT - timedelta(seconds=1), DRIFT_AT + timedelta(days=1)
    np.testing.assert_array_equal(
        conversion_probability(rows, early, still), conversion_probability(rows, early, moving)
    )
    shift = np.abs(
        conversion_probability(rows, late, moving) - conversion_probability(rows, late, still)
    )
    assert shift.mean() > 0.005
    # Per-row times: the same switch, row by row.
    times = pd.Series([early, late] * 250)
    per_row = conversion_probability(rows, times, moving)
    np.testing.assert_array_equal(per_row[::2], conversion_probability(rows, early, still)[::2])


def test_age_effect_zero_removes_the_sensitive_attribute(plain: dict[str, pd.DataFrame]) -> None:
    rows = _session_features(plain).head(200)
    at = datetime(2026, 1, 5, tzinfo=UTC)
    for effect, should_matter in ((0.0, False), (0.8, True)):
        config = GeneratorConfig(**SMALL, age_effect=effect)
        young = conversion_probability(rows.assign(age_band="18-24"), at, config)
        old = conversion_probability(rows.assign(age_band="55+"), at, config)
        assert (not np.allclose(young, old)) is should_matter


def test_conversion_probability_names_missing_columns(plain: dict[str, pd.DataFrame]) -> None:
    rows = _session_features(plain).head(5).drop(columns=["minutes_7d"])
    with pytest.raises(ValueError, match="minutes_7d"):
        conversion_probability(rows, DRIFT_AT, GeneratorConfig())


def test_features_at_returns_latest_values_as_of(plain: dict[str, pd.DataFrame]) -> None:
    ids = [100_001, 100_002, 999_999]
    at = datetime(2026, 1, 10, 15, tzinfo=UTC)
    got = features_at(plain, ids, at)
    assert got["customer_id"].tolist() == ids
    assert list(got.columns) == ["customer_id", *FEATURES]
    activity = plain["activity"]
    for cid in ids[:2]:
        rows = activity[(activity["customer_id"] == cid) & (activity["event_timestamp"] <= at)]
        want = rows.sort_values("event_timestamp").iloc[-1]
        have = got.set_index("customer_id").loc[cid]
        assert have["sessions_7d"] == want["sessions_7d"]
        assert have["discount_rate_7d"] == want["discount_rate_7d"]
    assert got.set_index("customer_id").loc[999_999, list(ACTIVITY_FEATURES)].isna().all()
    # Before the first activity day: profile yes, activity no.
    early = features_at(plain, ids[:1], datetime(2025, 12, 31, 12, tzinfo=UTC))
    assert early.loc[0, "age_band"] in AGE_BANDS and np.isnan(early.loc[0, "sessions_7d"])


def test_naive_datetimes_are_read_as_utc() -> None:
    config = GeneratorConfig(drift_at=datetime(2026, 2, 1))
    assert config.drift_at == datetime(2026, 2, 1, tzinfo=UTC)


def test_generate_command_writes_the_files(tmp_path: Path) -> None:
    from banditflow.cli import app

    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--rows",
            "300",
            "--customers",
            "30",
            "--days",
            "5",
            "--seed",
            "3",
            "--drift-at",
            "2026-01-03",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sessions.parquet" in result.output
    config = load_config(tmp_path)
    assert (config.rows, config.n_customers, config.seed) == (300, 30, 3)
    assert config.drift_at == datetime(2026, 1, 3, tzinfo=UTC)
    assert len(pd.read_parquet(tmp_path / "sessions.parquet")) == 300
