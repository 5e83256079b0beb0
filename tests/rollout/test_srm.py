"""The sequential sample-ratio test: quiet on a true split, quick on a mismatch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from rollout_helpers import ADMIN, FEATURES, make_settings
from scipy.special import gammaln

from rollout.app import create_app
from rollout.srm import InvalidSrmSettingsError, SampleRatioTest


def run(seed: int, true_share: float, batches: int, stated: float = 0.5) -> int | None:
    gen = np.random.default_rng(seed)
    test = SampleRatioTest()
    for i in range(batches):
        a = int(gen.binomial(100, true_share))
        if test.update({"a": a, "b": 100 - a}, {"a": stated, "b": 1 - stated}):
            return (i + 1) * 100
    return None


def test_a_true_split_raises_no_alarm_under_continuous_checking() -> None:
    assert [run(seed, 0.5, 1000) for seed in range(20)] == [None] * 20


def test_a_mismatch_is_found() -> None:
    found = [run(seed, 0.42, 1000) for seed in range(10)]
    assert all(f is not None and f <= 20_000 for f in found), found


def test_the_e_value_is_the_dirichlet_multinomial_bayes_factor() -> None:
    test = SampleRatioTest(concentration=10.0)
    test.update({"a": 7, "b": 3}, {"a": 0.5, "b": 0.5})
    alpha = np.array([5.0, 5.0])
    x = np.array([7.0, 3.0])

    def log_b(a: np.ndarray) -> float:
        return float(gammaln(a).sum() - gammaln(a.sum()))

    expected = log_b(alpha + x) - log_b(alpha) - 10 * math.log(0.5)
    assert test.log_e == pytest.approx(expected)
    # Order does not matter: two batches give the same e-value as one.
    split = SampleRatioTest(concentration=10.0)
    split.update({"a": 4, "b": 1}, {"a": 0.5, "b": 0.5})
    split.update({"a": 3, "b": 2}, {"a": 0.5, "b": 0.5})
    assert split.log_e == pytest.approx(expected)


def test_a_changing_stated_split_is_followed_and_a_new_arm_set_restarts() -> None:
    gen = np.random.default_rng(5)
    test = SampleRatioTest()
    for i in range(500):
        share = 0.2 + 0.6 * (i % 10) / 10  # a bandit whose split moves
        a = int(gen.binomial(100, share))
        assert not test.update({"a": a, "b": 100 - a}, {"a": share, "b": 1 - share})
    test.update({"a": 1, "c": 1}, {"a": 0.5, "c": 0.5})
    assert test.arms == ["a", "c"] and test.units == 2
    assert test.update({"a": 1, "c": 1}, {"a": 1.0, "c": 0.0})  # c should get none
    assert "mismatch" in test.describe()


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(InvalidSrmSettingsError, match="alpha_level"):
        SampleRatioTest(alpha_level=2.0)
    with pytest.raises(InvalidSrmSettingsError, match="no stated share"):
        SampleRatioTest().update({"a": 1, "z": 3}, {"a": 1.0})


def test_logged_propensities_of_a_moving_split_raise_no_alarm_and_a_bias_does() -> None:
    gen = np.random.default_rng(9)
    honest, biased = SampleRatioTest(), SampleRatioTest()
    for i in range(400):
        share = 0.2 + 0.6 * (i % 10) / 10  # the bandit's stated P(a) for this batch
        a = int(gen.binomial(100, share))
        log_p = a * math.log(share) + (100 - a) * math.log(1 - share)
        assert not honest.update_logged({"a": a, "b": 100 - a}, log_p)
        # A split logged as 50/50 that is really 45/55 (the mixture's alternative is a
        # fixed split: it has little power against a bias that moves with a bandit's split).
        a2 = int(gen.binomial(100, 0.45))
        biased.update_logged({"a": a2, "b": 100 - a2}, 100 * math.log(0.5))
    assert biased.mismatch and not honest.mismatch


# --- through the service: the unit of the test is the unit -----------------------------------


def _decide_and_read(client: Any) -> dict[str, Any]:
    assert client.post("/admin/decide", headers=ADMIN).status_code == 200
    return dict(client.get("/arms").json()["decisions"])


def test_the_service_counts_each_sticky_unit_once_and_each_plain_request(
    rollout_home: Path,
) -> None:
    with TestClient(create_app(make_settings(rollout_home))) as client:
        for visit in range(5):  # 200 units come back five times each
            for lo in range(0, 200, 20):
                rows = [{"features": FEATURES, "unit_id": f"u{i}"} for i in range(lo, lo + 20)]
                assert client.post("/predict", json=rows).status_code == 200, visit
        status = _decide_and_read(client)
        assert status["srm"]["units"] == 200 and status["srm"]["mismatch"] is False
        for _ in range(5):  # 50 requests without a unit: 50 draws
            assert client.post("/predict", json=[{"features": FEATURES}] * 10).status_code == 200
        status = _decide_and_read(client)
        assert status["srm"]["units"] == 250 and status["automatic"] is True


def test_a_sticky_assignment_gone_wrong_freezes_decisions(rollout_home: Path) -> None:
    with TestClient(create_app(make_settings(rollout_home))) as client:
        store = client.app.state.service.store
        # A router that stores every new unit on v1 while it states a third for each arm.
        for i in range(3000):
            store.assign_unit(f"u{i}", "arm-set", "v1", 1 / 3)
        status = _decide_and_read(client)
        assert status["srm"]["units"] == 3000 and status["srm"]["mismatch"] is True
        assert status["automatic"] is False
        assert status["frozen_reason"].startswith("sample ratio mismatch: mismatch")
