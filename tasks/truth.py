"""The demo world's truth: its schema, its coefficients and each visitor's true probability.

Kept apart from the generator (``tasks/datagen.py``, which re-exports these names) so that
the truth is one small module: the simulator and the report read it, nothing trains on it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tasks.datagen import GeneratorConfig

AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
SIGNUP_CHANNELS: tuple[str, ...] = ("organic", "paid_search", "social", "referral", "email")

PROFILE_FEATURES: tuple[str, ...] = (
    "age_band",
    "region",
    "signup_channel",
    "tenure_days",
    "is_premium",
)
ACTIVITY_FEATURES: tuple[str, ...] = (
    "sessions_7d",
    "pageviews_7d",
    "cart_adds_7d",
    "minutes_7d",
    "days_since_last_purchase",
    "discount_rate_7d",
)
FEATURES: tuple[str, ...] = PROFILE_FEATURES + ACTIVITY_FEATURES
# The features whose distribution `drift_at` shifts; every other feature keeps its own.
DRIFTED_FEATURES: tuple[str, ...] = ("cart_adds_7d", "minutes_7d", "discount_rate_7d")

# Where each age band sits on the sensitive attribute's axis; `age_effect` scales it.
_AGE_SCORE = dict(zip(AGE_BANDS, (-1.0, -0.5, 0.0, 0.5, 1.0), strict=True))
_REGION_EFFECT = dict(zip(REGIONS, (0.05, -0.10, 0.00, 0.10, -0.05), strict=True))
_CHANNEL_EFFECT = dict(zip(SIGNUP_CHANNELS, (0.15, -0.10, -0.20, 0.30, 0.05), strict=True))

# Ground-truth logistic coefficients before drift, and how drift moves them (per unit of
# drift_strength). Tuned so that the default data converts at about 9 %.
_COEF: dict[str, float] = {
    "intercept": -3.9,
    "log_sessions": 0.45,
    "log_cart_adds": 0.55,
    "log_minutes": 0.20,
    "discount": 1.2,
    "cart_x_discount": 0.9,  # interaction: discounts convert carts
    "recency": -0.015,  # per day since the last purchase (capped at 120)
    "never_purchased": -0.45,
    "log_tenure": 0.12,
    "premium": 0.35,
    "premium_x_discount": -0.6,  # premium customers care less about discounts
    "customer_noise": 0.35,  # sd of a per-customer effect no feature explains
}
_DRIFT_DELTA: dict[str, float] = {
    "log_cart_adds": -0.45,
    "discount": -1.6,
    "log_minutes": 0.05,
    "cart_x_discount": 0.3,
}
_MINUTES_FILL = 2.5  # log1p(minutes) assumed where tracking missed the minutes


def _customer_noise(customer_ids: np.ndarray, seed: int) -> np.ndarray:
    """Return each customer's unexplained log-odds effect, a pure function of (id, seed)."""
    # A SplitMix64-style hash: the same id gives the same effect whatever the row order.
    with np.errstate(over="ignore"):
        x = customer_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    u = np.clip(u, 1e-12, 1 - 1e-12)
    # Box-Muller needs two uniforms; a second hash of the first is enough for this purpose.
    v = np.modf(u * 7919.0)[0]
    v = np.clip(v, 1e-12, 1 - 1e-12)
    return np.sqrt(-2.0 * np.log(u)) * np.cos(2.0 * np.pi * v)


def _after_drift(at: datetime | pd.Series | Any, n: int, config: GeneratorConfig) -> np.ndarray:
    if config.drift_at is None:
        return np.zeros(n, dtype=bool)
    drift_at = pd.Timestamp(config.drift_at)
    if isinstance(at, pd.Series | pd.Index | np.ndarray):
        stamps = pd.to_datetime(pd.Series(np.asarray(at)), utc=True)
        if len(stamps) != n:
            raise ValueError(f"`at` has {len(stamps)} timestamps for {n} feature rows")
        return (stamps >= drift_at).to_numpy()
    stamp = pd.Timestamp(at)
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return np.full(n, stamp >= drift_at, dtype=bool)


def _explained_logit(
    features: pd.DataFrame, at: datetime | pd.Series, config: GeneratorConfig
) -> np.ndarray:
    """Return the true log-odds of feature rows without the per-customer effect."""
    missing = [c for c in ("customer_id", *FEATURES) if c not in features.columns]
    if missing:
        raise ValueError(f"conversion_probability needs the columns {missing}; got those missing")
    n = len(features)
    drifted = _after_drift(at, n, config).astype(np.float64) * config.drift_strength

    def coef(name: str) -> np.ndarray | float:
        return _COEF[name] + drifted * _DRIFT_DELTA.get(name, 0.0)

    sessions = features["sessions_7d"].to_numpy(np.float64)
    cart = features["cart_adds_7d"].to_numpy(np.float64)
    minutes = features["minutes_7d"].to_numpy(np.float64)
    discount = features["discount_rate_7d"].to_numpy(np.float64)
    since = features["days_since_last_purchase"].to_numpy(np.float64)
    premium = features["is_premium"].to_numpy(np.float64)
    tenure = features["tenure_days"].to_numpy(np.float64)
    log_cart = np.log1p(cart)
    log_minutes = np.where(np.isnan(minutes), _MINUTES_FILL, np.log1p(np.nan_to_num(minutes)))
    never = np.isnan(since)

    return np.asarray(
        _COEF["intercept"]
        + config.intercept_shift
        + _COEF["log_sessions"] * np.log1p(sessions)
        + coef("log_cart_adds") * log_cart
        + coef("log_minutes") * log_minutes
        + coef("discount") * discount
        + coef("cart_x_discount") * log_cart * discount
        + _COEF["recency"] * np.minimum(np.nan_to_num(since), 120.0)
        + _COEF["never_purchased"] * never
        + _COEF["log_tenure"] * np.log1p(tenure / 30.0)
        + _COEF["premium"] * premium
        + _COEF["premium_x_discount"] * premium * discount
        + features["region"].map(_REGION_EFFECT).fillna(0.0).to_numpy(np.float64)
        + features["signup_channel"].map(_CHANNEL_EFFECT).fillna(0.0).to_numpy(np.float64)
        + config.age_effect * features["age_band"].map(_AGE_SCORE).fillna(0.0).to_numpy(np.float64),
        dtype=np.float64,
    )


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-logit)))


def conversion_probability(
    features: pd.DataFrame, at: datetime | pd.Series, config: GeneratorConfig
) -> np.ndarray:
    """Return the ground-truth P(convert) of feature rows at a time (or a time per row).

    ``features`` holds ``customer_id`` and the profile and activity columns of
    :data:`FEATURES`; from ``config.drift_at`` on, the coefficients move by
    ``drift_strength`` times their drift. The truth includes each customer's own effect,
    which no feature carries (see :func:`feature_oracle_probability`).
    """
    logit = _explained_logit(features, at, config)
    noise = _customer_noise(features["customer_id"].to_numpy(np.int64), config.seed)
    return _sigmoid(logit + _COEF["customer_noise"] * noise)


# Gauss-Hermite nodes for E[f(Z)], Z ~ N(0, 1): 40 points integrate the logistic of a
# normal to about 1e-12, far below any reward difference the report shows.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def feature_oracle_probability(
    features: pd.DataFrame, at: datetime | pd.Series, config: GeneratorConfig
) -> np.ndarray:
    """Return P(convert | the observable features) at a time: the best any model can know.

    The generator's truth with the per-customer effect (normal, sd ``customer_noise`` on
    the log-odds, carried by no feature) integrated out. A policy that offers when this is
    at least the cost is the best policy given the features: the report's achievable
    reference. ``customer_id`` is not used (the effect is averaged over customers).
    """
    frame = features if "customer_id" in features.columns else features.assign(customer_id=0)
    logit = _explained_logit(frame, at, config)
    spread = _COEF["customer_noise"] * _GH_NODES
    return np.asarray(_sigmoid(logit[:, None] + spread[None, :]) @ _GH_WEIGHTS)
