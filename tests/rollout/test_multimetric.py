"""The multi-metric rule: better on success AND non-inferior on every guardrail metric."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.decide import DecisionRule, InvalidDecisionRuleError, decide
from rollout.multimetric import GuardrailMetric, guardrail_blocker
from rollout.policies import ArmStats, get_policy

METRICS = [
    GuardrailMetric("latency_ms", margin=2.0, better="lower"),
    GuardrailMetric("error_rate", margin=0.005, better="lower", kind="bernoulli"),
    GuardrailMetric("basket", margin=0.05, better="higher"),
]
RULE = DecisionRule(min_outcomes=500, draws=200)


def sums(x: np.ndarray, arm: str) -> ArmStats:
    return ArmStats(arm, float(len(x)), float(x.sum()), float((x**2).sum()))


def run(seed: int, latency_gap: float, checks: int = 30, step: int = 1000) -> bool:
    """Return whether a 6 % challenger against a 5 % champion is ever promoted."""
    gen = np.random.default_rng(seed)
    n = checks * step
    data = {
        "a": {
            "reward": gen.random(n) < 0.05,
            "latency_ms": gen.normal(20.0, 10.0, n),
            "error_rate": gen.random(n) < 0.01,
            "basket": gen.normal(1.0, 1.0, n),
        },
        "b": {
            "reward": gen.random(n) < 0.06,
            "latency_ms": gen.normal(20.0 + latency_gap, 10.0, n),
            "error_rate": gen.random(n) < 0.01,
            "basket": gen.normal(1.0, 1.0, n),
        },
    }
    policy = get_policy("thompson")
    for i in range(1, checks + 1):
        upto = i * step
        arms = {a: sums(d["reward"][:upto].astype(float), a) for a, d in data.items()}
        stats = {
            m.name: {a: sums(d[m.name][:upto].astype(float), a) for a, d in data.items()}
            for m in METRICS
        }
        block = guardrail_blocker(METRICS, stats, "a", RULE, challengers=1)
        (d,) = decide(arms["a"], [arms["b"]], RULE, gen, policy=policy, blocker=block)
        if d.action == "promote":
            return True
    return False


def test_family_wise_false_promotions_stay_under_the_stated_rate() -> None:
    # Better on reward but exactly `margin` slower: a null of the family holds.
    promoted = sum(run(seed, latency_gap=2.0) for seed in range(60))
    # Stated rate 5 %; 60 paths: at most 7 (binomial tail above that < 5 %).
    assert promoted <= 7, promoted


def test_a_challenger_better_and_no_worse_anywhere_is_promoted() -> None:
    assert sum(run(seed, latency_gap=0.0) for seed in range(10)) >= 8


def test_the_veto_names_the_metric() -> None:
    stats = {
        "latency_ms": {
            "a": ArmStats("a", 5000, 100_000, 2.5e6),
            "b": ArmStats("b", 5000, 150_000, 5e6),
        },
    }
    block = guardrail_blocker(METRICS[:1], stats, "a", RULE, challengers=1)
    reason = block("b")
    assert reason is not None and reason.startswith("latency_ms not shown within 2 of")
    assert guardrail_blocker(METRICS[1:2], {}, "a", RULE, 1)("b") == (
        "no error_rate measured on b and the champion a"
    )
    with pytest.raises(InvalidDecisionRuleError, match="margin"):
        GuardrailMetric("x", margin=0.0)
