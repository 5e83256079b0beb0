"""The feature oracle is the truth with the per-customer effect integrated out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tasks.datagen import (
    GeneratorConfig,
    conversion_probability,
    feature_oracle_probability,
    generate,
    labelled_sessions,
)

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratorConfig, object]:
    folder: Path = tmp_path_factory.mktemp("oracle-data")
    config = GeneratorConfig(
        seed=5, n_customers=1_000, rows=20_000, days=30, drift_at=START + timedelta(days=15)
    )
    generate(config, folder)
    return config, labelled_sessions(folder)


def test_it_is_the_truth_averaged_over_customers(sessions: tuple) -> None:
    config, frame = sessions
    rows = frame.iloc[[0, 1, 2, 3]]
    n = 200_000
    for _, row in rows.iterrows():
        # The same features for many customers: the mean of their true probabilities is the
        # probability given the features alone (Monte Carlo over the hashed effects).
        many = frame.iloc[[0] * n].copy()
        for column in row.index:
            many[column] = [row[column]] * n
        many["customer_id"] = np.arange(1, n + 1)
        truth = conversion_probability(many, row["event_timestamp"], config)
        expected = float(truth.mean())
        se = float(truth.std()) / np.sqrt(n)
        got = feature_oracle_probability(many.iloc[:1], row["event_timestamp"], config)[0]
        assert abs(got - expected) < 5 * se + 1e-6, (got, expected, se)


def test_it_ignores_the_customer_and_follows_the_drift(sessions: tuple) -> None:
    config, frame = sessions
    rows = frame.head(500)
    at = rows["event_timestamp"]
    a = feature_oracle_probability(rows, at, config)
    b = feature_oracle_probability(rows.assign(customer_id=rows["customer_id"] + 7), at, config)
    np.testing.assert_array_equal(a, b)
    late = feature_oracle_probability(rows, START + timedelta(days=20), config)
    assert np.abs(late - feature_oracle_probability(rows, START, config)).max() > 0.01
    # The truth still differs customer by customer: that part no feature carries.
    truth = conversion_probability(rows, at, config)
    assert np.abs(truth - a).mean() > 0.005


def test_its_offers_earn_the_most_given_the_features(sessions: tuple) -> None:
    config, frame = sessions
    cost = 0.08
    at = frame["event_timestamp"]
    oracle = feature_oracle_probability(frame, at, config)
    truth = conversion_probability(frame, at, config)

    # Expected reward of offering when a score >= cost, measured with the full truth:
    # thresholding the feature oracle beats any reweighting of it by a constant factor.
    def earn(score: np.ndarray) -> float:
        return float(np.where(score >= cost, truth - cost, 0.0).sum())

    best = earn(oracle)
    for factor in (0.6, 0.8, 1.25, 1.6):
        assert earn(oracle * factor) < best
    assert earn(truth) > best  # knowing each customer's own effect earns more still
