"""The promotion rule: posterior summaries, decisions and their reasons, guardrails."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import integrate
from scipy.special import ndtr

from rollout.decide import (
    DecisionRule,
    InvalidDecisionRuleError,
    decide,
    log_superiority_evidence,
    posterior_summary,
)
from rollout.policies import ArmStats, get_policy


def bernoulli(arm: str, n: int, rate: float) -> ArmStats:
    successes = round(n * rate)
    return ArmStats(arm, n, successes, successes)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- posterior summary -------------------------------------------------------------------


def test_posterior_summary_of_bernoulli_arms() -> None:
    arms = [bernoulli("a", 8000, 0.05), bernoulli("b", 8000, 0.065), bernoulli("c", 10, 0.1)]
    summary = posterior_summary(arms, reward_kind="bernoulli", rng=rng())
    assert list(summary) == ["a", "b", "c"]
    assert summary["a"].p_best < 0.01
    assert summary["b"].mean == pytest.approx(521 / 8002, abs=5e-4)  # Beta(1 + s, 1 + f)
    # E[max - a] = E[max - b] + (mean b - mean a): a pays b's loss (from c's uncertainty)
    # plus the 1.5 points it trails b by.
    assert summary["a"].expected_loss == pytest.approx(0.015 + summary["b"].expected_loss, abs=2e-3)
    assert summary["b"].expected_loss > 0.05  # c (Beta(2, 10)) may well beat b
    # The arm with 10 outcomes is uncertain: wide interval, a real chance of being best.
    assert summary["c"].ci_high - summary["c"].ci_low > 0.3
    assert 0.7 < summary["c"].p_best < 0.95  # Beta(2, 10): P(rate > ~0.065) ~ 0.85
    assert summary["a"].ci_low < 0.05 < summary["a"].ci_high


def test_posterior_summary_of_real_rewards() -> None:
    gen = np.random.default_rng(1)
    a, b = gen.normal(10.0, 3.0, 2000), gen.normal(10.5, 3.0, 2000)
    arms = [ArmStats(n, len(x), x.sum(), (x**2).sum()) for n, x in (("a", a), ("b", b))]
    summary = posterior_summary(arms, reward_kind="gaussian", rng=rng())
    assert summary["a"].mean == pytest.approx(a.mean(), abs=0.01)
    # Gap 0.5, standard error sqrt(2 * 9 / 2000) = 0.095: P(b best) = Phi(5.3) ~ 1.
    assert summary["b"].p_best > 0.999
    assert summary["a"].expected_loss == pytest.approx(b.mean() - a.mean(), abs=0.02)


def test_unknown_reward_kind_is_rejected() -> None:
    with pytest.raises(InvalidDecisionRuleError, match="reward_kind='poisson'"):
        posterior_summary([ArmStats("a")], reward_kind="poisson", rng=rng())  # type: ignore[arg-type]


# --- the sequential test -----------------------------------------------------------------


def test_superiority_evidence_is_the_half_normal_mixture_likelihood_ratio() -> None:
    champion, challenger = bernoulli("a", 5000, 0.05), bernoulli("b", 4000, 0.058)
    got = float(
        log_superiority_evidence(champion, challenger, reward_kind="bernoulli", mixture_scale=0.05)
    )
    # Recompute by integrating the normal likelihood ratio over the half-normal prior.
    pa, pb = (250 + 0.5) / 5001, (232 + 0.5) / 4001
    va, vb = pa * (1 - pa), pb * (1 - pb)
    v = va / 5000 + vb / 4000
    z = 232 / 4000 - 250 / 5000
    tau = 0.05 * math.sqrt((va + vb) / 2)

    def integrand(theta: float) -> float:
        ratio = math.exp((theta * z - theta**2 / 2) / v)
        return ratio * 2 * math.exp(-(theta**2) / (2 * tau**2)) / (tau * math.sqrt(2 * math.pi))

    expected, _ = integrate.quad(integrand, 0, 20 * tau)
    assert got == pytest.approx(math.log(expected), abs=1e-6)


def test_continuous_checking_keeps_wrong_promotions_at_the_stated_rate() -> None:
    """Equal arms, 50/50 traffic, checked after every one of 20,000 outcomes, 200 seeds."""
    rule = DecisionRule()
    wrong = naive = 0
    for seed in range(200):
        gen = np.random.default_rng(seed)
        to_b = gen.random(20_000) < 0.5
        reward = gen.random(20_000) < 0.05
        n_b, s_b = np.cumsum(to_b), np.cumsum(reward & to_b)
        n_a, s_a = np.arange(1, 20_001) - n_b, np.cumsum(reward & ~to_b)
        a, b = (n_a, s_a, s_a), (n_b, s_b, s_b)
        evidence = log_superiority_evidence(a, b, reward_kind="bernoulli", mixture_scale=0.05)
        enough = np.minimum(n_a, n_b) >= rule.min_outcomes
        wrong += bool(np.any(enough & (evidence >= math.log(1 / rule.false_promotion_rate))))
        ma, mb = (1 + s_a) / (2 + n_a), (1 + s_b) / (2 + n_b)
        p_best = ndtr((mb - ma) / np.sqrt(ma * (1 - ma) / (3 + n_a) + mb * (1 - mb) / (3 + n_b)))
        naive += bool(np.any((np.minimum(n_a, n_b) >= 100) & (p_best >= 0.95)))
    # Ville's inequality bounds the rate at 5 %; 200 seeds give a standard error of 1.5 %.
    # The naive rule crosses on about half of these paths (measured: ~45 %).
    assert wrong / 200 <= 0.05
    assert naive / 200 >= 0.3


# --- decisions ---------------------------------------------------------------------------


def test_promotes_a_clearly_better_challenger_and_says_why() -> None:
    champion = bernoulli("v1", 8000, 0.05)
    (d,) = decide(
        champion, [bernoulli("v2", 8000, 0.065)], DecisionRule(), rng(), reward_kind="bernoulli"
    )
    assert d.action == "promote" and d.arm == "v2"
    assert d.p_best > 0.99 and d.evidence >= 20
    for phrase in ("promote v2", "P(best)=", "expected loss", "beats v1", "8,000 vs 8,000"):
        assert phrase in d.reason


def test_never_promotes_with_too_few_outcomes() -> None:
    rule = DecisionRule(min_outcomes=1000, draws=1000)
    gen = np.random.default_rng(3)
    for _ in range(60):
        n_ch, n_champ = int(gen.integers(1, 1000)), int(gen.integers(1, 20_000))
        challenger = ArmStats("new", n_ch, n_ch, n_ch)  # every outcome a success
        champion = bernoulli("old", n_champ, 0.01)
        (d,) = decide(champion, [challenger], rule, gen, reward_kind="bernoulli")
        assert d.action == "keep"
        assert d.reason.startswith("waiting for outcomes")
    (d,) = decide(
        bernoulli("old", 999, 0.01),
        [bernoulli("new", 50_000, 0.5)],
        rule,
        rng(),
        reward_kind="bernoulli",
    )
    assert d.action == "keep" and "999 on the champion old, 1,000 needed" in d.reason


def test_retires_a_clearly_worse_challenger() -> None:
    (d,) = decide(
        bernoulli("v1", 8000, 0.05),
        [bernoulli("v2", 8000, 0.035)],
        DecisionRule(),
        rng(),
        reward_kind="bernoulli",
    )
    assert d.action == "retire" and d.arm == "v2"
    assert d.reason.startswith("retire v2: P(best)=") and "worse than v1" in d.reason


def test_keeps_a_challenger_while_the_evidence_is_unclear() -> None:
    (d,) = decide(
        bernoulli("v1", 5000, 0.05),
        [bernoulli("v2", 5000, 0.053)],
        DecisionRule(),
        rng(),
        reward_kind="bernoulli",
    )
    assert d.action == "keep"
    assert d.reason.startswith("keep v2: P(beats v1)=") and "(promote at 20)" in d.reason


def test_promotes_the_best_of_several_challengers_and_splits_the_error_rate() -> None:
    champion = bernoulli("v1", 10_000, 0.05)
    challengers = [bernoulli("v2", 10_000, 0.07), bernoulli("v3", 10_000, 0.09)]
    decisions = decide(champion, challengers, DecisionRule(), rng(), reward_kind="bernoulli")
    # v2 beats the champion too, but P(best) >= threshold > 0.5 admits one arm only.
    assert [d.action for d in decisions] == ["keep", "promote"]
    assert decisions[0].p_best < 0.01
    # Two challengers: each is tested at 0.05 / 2, so the bar is 1 / 0.025 = 40.
    assert ">= 40 (always valid" in decisions[1].reason


def test_two_nearly_equal_challengers_that_beat_the_champion_do_not_block_each_other() -> None:
    # Each has P(best) near 0.5 among all arms, yet both clearly beat the champion.
    champion = bernoulli("v1", 10_000, 0.05)
    challengers = [bernoulli("v2", 10_000, 0.0700), bernoulli("v3", 10_000, 0.0702)]
    decisions = decide(
        champion,
        challengers,
        DecisionRule(max_expected_loss=0.002),
        rng(),
        reward_kind="bernoulli",
    )
    assert all(0.3 < d.p_best < 0.7 for d in decisions), decisions
    assert sorted(d.action for d in decisions) == ["keep", "promote"]
    promoted = next(d for d in decisions if d.action == "promote")
    kept = next(d for d in decisions if d.action == "keep")
    assert promoted.p_best >= kept.p_best
    assert "P(beats v1)=1.000" in promoted.reason
    assert f"{promoted.arm} has the higher P(best)" in kept.reason


def test_decides_on_real_valued_rewards() -> None:
    gen = np.random.default_rng(2)
    a, b = gen.normal(10.0, 3.0, 3000), gen.normal(10.6, 3.0, 3000)
    arms = [ArmStats(n, len(x), x.sum(), (x**2).sum()) for n, x in (("a", a), ("b", b))]
    rule = DecisionRule(max_expected_loss=0.05)
    (d,) = decide(arms[0], [arms[1]], rule, rng(), reward_kind="gaussian")
    assert d.action == "promote"
    (d,) = decide(arms[1], [arms[0]], rule, rng(), reward_kind="gaussian")
    assert d.action == "retire"


def test_no_challengers_means_no_decisions() -> None:
    assert decide(ArmStats("v1"), [], DecisionRule(), rng(), reward_kind="bernoulli") == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_outcomes", 0, "min_outcomes must be >= 1, got 0"),
        ("p_best_threshold", 1.0, r"p_best_threshold must be in \(0.5, 1\), got 1.0"),
        ("p_best_threshold", 0.5, r"p_best_threshold must be in \(0.5, 1\), got 0.5"),
        ("false_promotion_rate", 0.0, r"false_promotion_rate must be in \(0, 1\)"),
        ("false_retirement_rate", 1.5, r"false_retirement_rate must be in \(0, 1\)"),
        ("max_expected_loss", -1.0, "max_expected_loss must be > 0"),
        ("retire_p_best", 0.7, r"retire_p_best must be in \[0, 0.5\)"),
        ("mixture_scale", float("nan"), "mixture_scale must be > 0, got nan"),
        ("draws", 10, "draws must be >= 100"),
    ],
)
def test_bad_rules_get_clear_errors(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidDecisionRuleError, match=message):
        DecisionRule(**{field: value})


def test_posteriors_come_from_the_configured_policy_prior() -> None:
    """A strong Beta(50, 50) prior pulls an arm with 10 outcomes to about 1/2."""
    arms = [bernoulli("a", 8000, 0.05), bernoulli("c", 10, 0.1)]
    flat = posterior_summary(arms, policy=get_policy("thompson"), rng=rng())
    strong = posterior_summary(
        arms, policy=get_policy("thompson", prior_a=50.0, prior_b=50.0), rng=rng()
    )
    assert flat["c"].mean == pytest.approx(2 / 12, abs=5e-3)
    assert strong["c"].mean == pytest.approx(51 / 110, abs=5e-3)
    assert strong["c"].p_best > 0.999 > flat["c"].p_best
    # A policy with no posterior of its own (UCB1) gets the flat prior of its reward kind.
    ucb = posterior_summary(arms, policy=get_policy("ucb1"), rng=rng())
    assert ucb["c"].mean == pytest.approx(flat["c"].mean, abs=5e-3)


def test_decide_needs_a_policy_or_a_reward_kind() -> None:
    with pytest.raises(InvalidDecisionRuleError, match="pass the policy"):
        decide(bernoulli("a", 10, 0.1), [bernoulli("b", 10, 0.1)], DecisionRule(), rng())
