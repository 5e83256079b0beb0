"""Generate the demo data: an e-commerce conversion problem with a known ground truth.

Three parquet files feed the Feast repository (``customers``: profiles, ``activity``: one
row per customer and day, ``sessions``: labelled sessions) and ``generator.json`` keeps the
config, so a simulator can rebuild the truth with :func:`conversion_probability`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.signal import lfilter

from tasks.truth import (
    ACTIVITY_FEATURES,
    AGE_BANDS,
    DRIFTED_FEATURES,
    FEATURES,
    PROFILE_FEATURES,
    REGIONS,
    SIGNUP_CHANNELS,
    conversion_probability,
    feature_oracle_probability,
)

__all__ = [
    "ACTIVITY_FEATURES",
    "AGE_BANDS",
    "DRIFTED_FEATURES",
    "FEATURES",
    "FILES",
    "PROFILE_FEATURES",
    "REGIONS",
    "SIGNUP_CHANNELS",
    "GeneratorConfig",
    "conversion_probability",
    "feature_oracle_probability",
    "features_at",
    "generate",
    "labelled_sessions",
    "load_config",
]


FILES = {
    "customers": "customers.parquet",
    "activity": "activity.parquet",
    "sessions": "sessions.parquet",
    "config": "generator.json",
}


class GeneratorConfig(BaseModel):
    """What to generate; written to ``generator.json`` next to the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    n_customers: int = Field(default=5_000, ge=1)
    rows: int = Field(default=60_000, ge=1)  # labelled sessions
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    days: int = Field(default=120, ge=2)
    # Shifts every log-odds: the base conversion rate (about 9 % with the defaults).
    intercept_shift: float = 0.0
    # How far the age band moves the true log-odds from youngest to oldest band / 2.
    age_effect: float = 0.4
    drift_at: datetime | None = None
    drift_strength: float = Field(default=1.0, ge=0.0)

    @field_validator("start", "drift_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @property
    def end(self) -> datetime:
        """Return the end of the generated period (exclusive)."""
        return self.start + timedelta(days=self.days)

    @property
    def profile_time(self) -> datetime:
        """Return when the customer profiles were snapshotted (a day before ``start``)."""
        return self.start - timedelta(days=1)


def _customers(config: GeneratorConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = config.n_customers
    tenure = np.minimum(rng.lognormal(np.log(240.0), 1.0, n), 3_650).astype(np.int64)
    premium_p = 1.0 / (1.0 + np.exp(-(np.log1p(tenure / 30.0) - 3.0)))
    stamp = pd.Timestamp(config.profile_time)
    return pd.DataFrame(
        {
            "customer_id": np.arange(100_001, 100_001 + n, dtype=np.int64),
            "event_timestamp": pd.DatetimeIndex(np.full(n, stamp.value)).tz_localize(UTC),
            "created_timestamp": pd.DatetimeIndex(np.full(n, stamp.value)).tz_localize(UTC),
            "age_band": np.asarray(AGE_BANDS)[
                rng.choice(5, size=n, p=[0.16, 0.30, 0.24, 0.17, 0.13])
            ],
            "region": np.asarray(REGIONS)[rng.choice(5, size=n, p=[0.2, 0.25, 0.2, 0.2, 0.15])],
            "signup_channel": np.asarray(SIGNUP_CHANNELS)[
                rng.choice(5, size=n, p=[0.35, 0.25, 0.2, 0.1, 0.1])
            ],
            "tenure_days": tenure,
            "is_premium": (rng.random(n) < premium_p).astype(np.int64),
        }
    )


def _activity(
    config: GeneratorConfig,
    rng: np.random.Generator,
    drift_rng: np.random.Generator,
    engagement: np.ndarray,
) -> pd.DataFrame:
    """Return one row per customer and day, customer-major (row = customer * days + day).

    The drifted features draw from ``drift_rng`` only, so the drift knob leaves every
    other feature's values exactly as they are without drift.
    """
    n, days = config.n_customers, config.days
    shape = (n, days)
    # Day-to-day engagement: an AR(1) walk around each customer's level.
    walk = lfilter([1.0], [1.0, -0.8], rng.normal(0.0, 0.25, shape), axis=1)
    sessions = rng.poisson(np.exp(engagement[:, None] + walk))
    pageviews = sessions * 3 + rng.poisson(sessions * 2.0 + 0.5)
    stamps = pd.Timestamp(config.start) + pd.to_timedelta(np.arange(days), unit="D")
    after = np.zeros(shape, dtype=bool)
    if config.drift_at is not None:
        after[:, np.asarray(stamps >= pd.Timestamp(config.drift_at))] = True
    shift = after * config.drift_strength

    # Drifted features: drift raises their level from drift_at on.
    cart_p = np.clip(0.06 * (1.0 + 0.8 * shift), 0.0, 0.95)
    cart_adds = drift_rng.binomial(pageviews, cart_p)
    minutes = sessions * drift_rng.gamma(2.0, 3.0, shape) * (1.0 + 0.6 * shift)
    minutes[drift_rng.random(shape) < 0.06] = np.nan  # tracking gaps
    discount = drift_rng.beta(1.2 + 1.5 * shift, 8.0, shape)

    # Days since the last purchase: NaN for the customers who never buy. Starting from
    # the stationary law (geometric) keeps its distribution the same on every day.
    never = rng.random(n) < 0.25
    buy_p = np.where(never, 0.0, np.clip(0.02 * np.exp(engagement), 0.002, 0.5))
    first = np.minimum(rng.geometric(np.maximum(buy_p, 0.002)) - 1, 730).astype(np.float64)
    since = np.where(never, np.nan, first)
    bought = rng.random(shape) < buy_p[:, None]
    since_days = np.empty(shape)
    for day in range(days):
        since = np.where(bought[:, day], 0.0, since + 1.0)
        since_days[:, day] = since

    ids = np.arange(100_001, 100_001 + n, dtype=np.int64)
    event_ts = pd.DatetimeIndex(np.tile(stamps.as_unit("ns").asi8, n)).tz_localize(UTC)
    return pd.DataFrame(
        {
            "customer_id": np.repeat(ids, days),
            "event_timestamp": event_ts,
            "created_timestamp": event_ts + pd.Timedelta(minutes=5),
            "sessions_7d": sessions.ravel().astype(np.int64),
            "pageviews_7d": pageviews.ravel().astype(np.int64),
            "cart_adds_7d": cart_adds.ravel().astype(np.int64),
            "minutes_7d": np.round(minutes.ravel(), 2),
            "days_since_last_purchase": since_days.ravel(),
            "discount_rate_7d": np.round(discount.ravel(), 4),
        }
    )


def _sessions(
    config: GeneratorConfig,
    rng: np.random.Generator,
    customers: pd.DataFrame,
    activity: pd.DataFrame,
    engagement: np.ndarray,
) -> pd.DataFrame:
    n, days, rows = config.n_customers, config.days, config.rows
    weights = np.exp(engagement)
    cust_idx = rng.choice(n, size=rows, p=weights / weights.sum())
    # Strictly inside a day (never on the midnight snapshot), so "as of" is unambiguous.
    offset_s = rng.integers(1, days * 86_400, size=rows)
    offset_s[offset_s % 86_400 == 0] += 1
    day = offset_s // 86_400
    order = np.argsort(offset_s, kind="stable")
    cust_idx, offset_s, day = cust_idx[order], offset_s[order], day[order]
    stamps = pd.Timestamp(config.start) + pd.to_timedelta(offset_s, unit="s")

    act = activity.iloc[cust_idx * days + day].reset_index(drop=True)
    prof = customers.iloc[cust_idx].reset_index(drop=True)
    feats = pd.concat(
        [prof[["customer_id", *PROFILE_FEATURES]], act[list(ACTIVITY_FEATURES)]], axis=1
    )
    p_true = conversion_probability(feats, pd.Series(stamps), config)
    return pd.DataFrame(
        {
            "session_id": np.arange(1, rows + 1, dtype=np.int64),
            "customer_id": prof["customer_id"].to_numpy(),
            "event_timestamp": stamps,
            "converted": (rng.random(rows) < p_true).astype(np.int64),
            "p_true": p_true,
        }
    )


def generate(config: GeneratorConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write customers, activity, sessions and ``generator.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Independent streams: changing one part of the config leaves the others' draws alone.
    streams = np.random.SeedSequence(config.seed).spawn(4)
    rng_customers, rng_activity, rng_drift, rng_sessions = map(np.random.default_rng, streams)
    customers = _customers(config, rng_customers)
    # Latent engagement: drives activity and how often a customer shows up in sessions.
    engagement = rng_customers.normal(0.0, 0.6, config.n_customers)
    engagement = engagement + 0.15 * customers["is_premium"].to_numpy()
    activity = _activity(config, rng_activity, rng_drift, engagement)
    sessions = _sessions(config, rng_sessions, customers, activity, engagement)

    paths = {name: out / filename for name, filename in FILES.items()}
    customers.to_parquet(paths["customers"], index=False)
    activity.to_parquet(paths["activity"], index=False)
    sessions.to_parquet(paths["sessions"], index=False)
    paths["config"].write_text(config.model_dump_json(indent=2) + "\n")
    return paths


def load_config(out_dir: str | Path) -> GeneratorConfig:
    """Read back the config a data folder was generated with."""
    path = Path(out_dir) / FILES["config"]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `banditflow generate` first")
    return GeneratorConfig.model_validate(json.loads(path.read_text()))


def features_at(
    out_dir_or_frames: str | Path | dict[str, pd.DataFrame],
    customer_ids: Any,
    at: datetime,
) -> pd.DataFrame:
    """Return each customer's latest profile and activity values as of ``at`` (pandas only).

    ``out_dir_or_frames`` is a generated folder or ``{"customers": df, "activity": df}``.
    Customers with no row at or before ``at`` get NaN/None in the missing columns.
    """
    if isinstance(out_dir_or_frames, dict):
        customers, activity = out_dir_or_frames["customers"], out_dir_or_frames["activity"]
    else:
        folder = Path(out_dir_or_frames)
        customers = pd.read_parquet(folder / FILES["customers"])
        activity = pd.read_parquet(folder / FILES["activity"])
    stamp = pd.Timestamp(at)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    ids = pd.DataFrame({"customer_id": np.asarray(customer_ids, dtype=np.int64)})

    def latest(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
        frame = frame[frame["customer_id"].isin(ids["customer_id"])]
        frame = frame[frame["event_timestamp"] <= stamp]
        frame = frame.sort_values(["customer_id", "event_timestamp", "created_timestamp"])
        return frame.drop_duplicates("customer_id", keep="last")[["customer_id", *columns]]

    out = ids.merge(latest(customers, PROFILE_FEATURES), on="customer_id", how="left")
    return out.merge(latest(activity, ACTIVITY_FEATURES), on="customer_id", how="left")


def labelled_sessions(out_dir: str | Path) -> pd.DataFrame:
    """Return each labelled session with its customer's features as of the session (pandas).

    A plain point-in-time join (the latest activity at or before the session, no TTL), for
    tests and offline checks that should not need Feast.
    """
    folder = Path(out_dir)
    customers = pd.read_parquet(folder / FILES["customers"])
    activity = pd.read_parquet(folder / FILES["activity"]).sort_values("event_timestamp")
    sessions = pd.read_parquet(folder / FILES["sessions"]).sort_values("event_timestamp")
    joined = pd.merge_asof(
        sessions,
        activity.drop(columns="created_timestamp"),
        on="event_timestamp",
        by="customer_id",
        direction="backward",
    )
    profile = customers.drop(columns=["event_timestamp", "created_timestamp"])
    return joined.merge(profile, on="customer_id", how="left")
