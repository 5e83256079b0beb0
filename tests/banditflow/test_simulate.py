"""The traffic simulator draws outcomes from the ground truth, and its baselines replay it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from banditflow.simulate import (
    SimulationError,
    TrafficOptions,
    build_stream,
    feature_rows,
    offer_reward,
    oracle_reward,
    split_replay,
)
from tasks.datagen import FEATURES, GeneratorConfig, generate

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sim-data")
    config = GeneratorConfig(
        seed=3, n_customers=800, rows=5_000, days=30, drift_at=START + timedelta(days=20)
    )
    generate(config, folder)
    return folder


def test_outcomes_follow_the_ground_truth(data_dir: Path) -> None:
    stream = build_stream(
        data_dir, n=60_000, start=START + timedelta(days=2), end=START + timedelta(days=28), seed=1
    )
    converted = stream["u"] < stream["p_true"]
    # Calibration over many draws: in each decile of the true probability the observed
    # conversion rate matches the mean probability within 4 binomial standard errors.
    deciles = pd.qcut(stream["p_true"], 10, labels=False, duplicates="drop")
    for _, group in stream.groupby(deciles):
        p = group["p_true"].mean()
        observed = converted[group.index].mean()
        se = np.sqrt(p * (1 - p) / len(group))
        assert abs(observed - p) < 4 * se + 1e-3, (observed, p, len(group))
    assert 0.03 < converted.mean() < 0.2


def test_stream_is_deterministic_and_drift_aware(data_dir: Path) -> None:
    kwargs = dict(n=4_000, start=START + timedelta(days=10), end=START + timedelta(days=30), seed=7)
    a, b = build_stream(data_dir, **kwargs), build_stream(data_dir, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    assert a["at"].is_monotonic_increasing
    assert list(a["seq"]) == list(range(len(a)))
    after = a["at"] >= pd.Timestamp(START + timedelta(days=20))
    assert after.any() and (~after).any()
    # The drift moves the truth: the same visitors' probability is not the same model.
    assert not np.isclose(a.loc[after, "p_true"].mean(), a.loc[~after, "p_true"].mean(), rtol=1e-3)


def test_rewards_and_baselines(data_dir: Path) -> None:
    options = TrafficOptions(offer_cost=0.1)
    stream = build_stream(
        data_dir, n=3_000, start=START + timedelta(days=3), end=START + timedelta(days=9)
    )
    offered, reward = offer_reward([0.05, 0.1, 0.5], [True, True, False], 0.1)
    assert offered.tolist() == [False, True, True]
    assert reward.tolist() == pytest.approx([0.0, 0.9, -0.1])
    oracle = oracle_reward(stream, options.offer_cost)
    truth = lambda frame: stream.loc[frame.index, "p_true"].to_numpy()  # noqa: E731
    never = lambda frame: np.zeros(len(frame))  # noqa: E731
    # The oracle is a fixed split of itself; a model that never offers earns nothing.
    assert split_replay(stream, [truth, truth], options.offer_cost) == pytest.approx(oracle)
    half = split_replay(stream, [truth, never], options.offer_cost)
    assert half.sum() < oracle.sum()
    assert (half[stream["seq"].to_numpy() % 2 == 1] == 0).all()
    rows = feature_rows(stream.head(50))
    assert set(rows[0]) == set(FEATURES)
    assert all(
        v is None or not (isinstance(v, float) and np.isnan(v)) for r in rows for v in r.values()
    )


def test_clear_errors(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(SimulationError, match="banditflow generate"):
        build_stream(tmp_path, n=10, start=START, end=START + timedelta(days=1))
    with pytest.raises(SimulationError, match="empty"):
        build_stream(data_dir, n=10, start=START, end=START)
    with pytest.raises(ValueError, match="feedback_loss"):
        TrafficOptions(feedback_loss=1.5)


def test_feedback_falls_due_in_simulated_time() -> None:
    from banditflow.simulate import PendingFeedback

    pending = PendingFeedback()
    t0 = pd.Timestamp(START)
    for minutes, rid in [(90, "c"), (10, "a"), (30, "b"), (60 * 30, "next-day")]:
        pending.add(t0 + pd.Timedelta(minutes=minutes), rid, 1.0)
    assert pending.pop_due(t0, 100) == []
    first = pending.pop_due(t0 + pd.Timedelta(hours=1), 100)
    assert [r["request_id"] for r in first] == ["a", "b"]
    assert [r["request_id"] for r in pending.pop_due(t0 + pd.Timedelta(days=1), 1)] == ["c"]
    # What is due after the day's end stays for the next day.
    assert len(pending) == 1
    assert pending.pop_due(t0 + pd.Timedelta(hours=30), 100)[0]["request_id"] == "next-day"


def test_rewards_fit_the_services_policy() -> None:
    from banditflow.simulate import fit_reward_to_service, reward_mismatch, service_reward_kind

    bernoulli = {"policy": "thompson", "policy_params": {}}
    gaussian = {"policy": "thompson-gaussian", "policy_params": {"discount": 0.99}}
    net = TrafficOptions(offer_cost=0.08)
    assert service_reward_kind(bernoulli) == "bernoulli"
    assert service_reward_kind(gaussian) == "gaussian"
    assert service_reward_kind(
        {"policy": "ucb1", "policy_params": {"reward_kind": "gaussian"}}
    ) == ("gaussian")
    message = reward_mismatch(bernoulli, net)
    assert message is not None and "BANDITFLOW_POLICY=thompson-gaussian" in message
    assert reward_mismatch(gaussian, net) is None
    assert fit_reward_to_service(bernoulli, net).reward == "converted"
    assert fit_reward_to_service(gaussian, net).reward == "net"
    assert reward_mismatch(bernoulli, fit_reward_to_service(bernoulli, net)) is None
    with pytest.raises(ValueError, match="delay"):
        TrafficOptions(feedback_delay_mean_s=-1.0)
