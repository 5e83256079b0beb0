"""Off-policy estimators: their formulas, their coverage on simulated logs, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.ope import (
    Logged,
    OffPolicyError,
    doubly_robust,
    evaluate,
    ips,
    policy_target,
    snips,
)
from rollout.policies import get_policy

TRUTH = np.array([[0.2, 0.5], [0.6, 0.3]])  # P(reward | segment, arm)


def simulate(seed: int, n: int) -> Logged:
    """Log n decisions from a segment-dependent split: 70/30 in segment 0, 20/80 in 1."""
    gen = np.random.default_rng(seed)
    seg = gen.integers(2, size=n)
    p_arm1 = np.where(seg == 0, 0.3, 0.8)
    action = (gen.random(n) < p_arm1).astype(int)
    prop = np.where(action == 1, p_arm1, 1 - p_arm1)
    reward = (gen.random(n) < TRUTH[seg, action]).astype(float)
    return Logged(["a", "b"], ["s0", "s1"], action, seg, prop, reward)


def test_ips_and_snips_are_the_textbook_formulas() -> None:
    logged = Logged(
        ["a", "b"],
        [""],
        np.array([0, 1, 1]),
        np.zeros(3, int),
        np.array([0.5, 0.25, 0.5]),
        np.array([1.0, 0.0, 1.0]),
    )
    target = np.array([[0.0, 1.0]])
    w = np.array([0.0, 4.0, 2.0])
    assert ips(logged, target).value == pytest.approx((w * logged.reward).mean())
    assert snips(logged, target).value == pytest.approx(2.0 / 6.0)


def test_estimates_cover_the_truth_of_a_target_the_log_never_followed() -> None:
    target = np.array([[0.0, 1.0], [1.0, 0.0]])  # the best arm of each segment
    truth = 0.5 * 0.5 + 0.5 * 0.6
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for seed in range(40):
        for est in evaluate(simulate(seed, 4000), target):
            covered[est.estimator] += est.ci_low <= truth <= est.ci_high
            assert abs(est.value - truth) < 0.06, (seed, est)
    # 95 % intervals over 40 logs: at least 34 cover (binomial tail below 1 % otherwise).
    assert min(covered.values()) >= 34, covered


def test_doubly_robust_is_tighter_than_ips_when_the_reward_model_is_good() -> None:
    logged = simulate(1, 20_000)
    target = np.array([[0.0, 1.0], [1.0, 0.0]])
    dr, plain = doubly_robust(logged, target), ips(logged, target)
    assert dr.ci_high - dr.ci_low < plain.ci_high - plain.ci_low


def test_a_policy_as_target_and_bad_targets() -> None:
    logged = simulate(2, 2000)
    fixed = policy_target(logged, get_policy("fixed"), np.random.default_rng(0), per_segment=False)
    assert np.allclose(fixed, 0.5)
    only_b = policy_target(
        logged, get_policy("fixed"), np.random.default_rng(0), per_segment=True, arms=["b"]
    )
    assert np.allclose(only_b, [[0.0, 1.0], [0.0, 1.0]])
    greedy = policy_target(
        logged,
        get_policy("epsilon-greedy", epsilon=0.0),
        np.random.default_rng(0),
        per_segment=True,
    )
    assert np.allclose(greedy, [[0.0, 1.0], [1.0, 0.0]])  # each segment's best arm
    with pytest.raises(OffPolicyError, match="sum to 1"):
        ips(logged, np.array([[0.5, 0.6], [0.5, 0.5]]))
    with pytest.raises(OffPolicyError, match="shape"):
        ips(logged, np.array([[1.0, 0.0]]))
    with pytest.raises(OffPolicyError, match="not among the logged"):
        policy_target(
            logged, get_policy("fixed"), np.random.default_rng(0), per_segment=False, arms=["z"]
        )


def test_rows_without_a_propensity_or_reward_are_left_out() -> None:
    logged = Logged.from_rows(["a", "b", "a"], ["x", None, "x"], [0.5, None, 0.5], [1.0, 1.0, None])
    assert logged.n == 1 and logged.arms == ["a"]
    with pytest.raises(OffPolicyError, match="no logged decision"):
        Logged.from_rows(["a"], [None], [None], [1.0])
