"""The champion's watches: the reward change detector, the rollback watch, the guardrail."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.decide import InvalidDecisionRuleError
from rollout.policies import ArmStats
from rollout.watch import ChampionWatch, RewardWatch


def run_watch(seed: int, rates: list[tuple[int, float]], batch: int = 20) -> int | None:
    """Feed batches at ``rates`` ((outcomes, rate) phases); return outcomes at the alarm."""
    gen = np.random.default_rng(seed)
    watch = RewardWatch()
    seen = 0
    for outcomes, rate in rates:
        for _ in range(outcomes // batch):
            s = float(gen.binomial(batch, rate))
            seen += batch
            if watch.update(batch, s, s):
                return seen
    return None


def test_no_more_false_alarms_than_stated_on_a_stationary_stream() -> None:
    # 3,000 checks per run; at most 3,000 / threshold + 1 % alarms expected per run: 0.31.
    alarms = [run_watch(seed, [(65_000, 0.05)]) for seed in range(10)]
    assert sum(a is not None for a in alarms) <= 3


def test_a_fall_of_the_reward_is_detected_within_the_stated_outcomes() -> None:
    delays = []
    for seed in range(10):
        at = run_watch(100 + seed, [(5_000, 0.05), (40_000, 0.035)])
        assert at is not None and at > 5_000, f"seed {seed}: alarm at {at}"
        delays.append(at - 5_000)
    assert max(delays) <= 20_000  # a 30 % fall of a 5 % rate, after a 5,000-outcome reference
    assert float(np.median(delays)) <= 8_000


def test_real_valued_rewards_and_reset() -> None:
    gen = np.random.default_rng(3)
    watch = RewardWatch(reward_kind="gaussian", reference_outcomes=500)
    for _ in range(50):
        x = gen.normal(10.0, 2.0, 20)
        assert not watch.update(20, x.sum(), (x**2).sum())
    alarm = False
    for _ in range(200):
        x = gen.normal(9.0, 2.0, 20)  # half a standard deviation lower
        if watch.update(20, x.sum(), (x**2).sum()):
            alarm = True
            break
    assert alarm and "earlier rate" in watch.describe()
    watch.reset()
    assert watch.statistic == 0.0 and watch.ref_n == 0.0


def test_bad_watch_settings_are_clear_errors() -> None:
    with pytest.raises(InvalidDecisionRuleError, match="drops must lie in"):
        RewardWatch(drops=(1.5,))
    with pytest.raises(InvalidDecisionRuleError, match="false_rollback_rate"):
        ChampionWatch(false_rollback_rate=0.0)


def simulate_champion(seed: int, rate: float, replaced: ArmStats, watch: ChampionWatch) -> int:
    """Return the outcomes the new champion served until rolled back (or the horizon)."""
    gen = np.random.default_rng(seed)
    n = s = 0
    while not watch.finished(ArmStats("v2", n, s, s)):
        k = int(gen.binomial(100, rate))
        n, s = n + 100, s + k
        if watch.check(ArmStats("v2", n, s, s), replaced, reward_kind="bernoulli"):
            return n
    return n


def test_a_worse_champion_promoted_by_chance_is_rolled_back_within_10000_outcomes() -> None:
    watch = ChampionWatch()
    replaced = ArmStats("v1", 20_000, 1_000, 1_000)  # 5 % over 20,000 outcomes
    outcomes = [simulate_champion(seed, 0.04, replaced, watch) for seed in range(20)]
    assert max(outcomes) <= 10_000, outcomes
    # An equally good champion is kept to the end of the watch on (nearly) every seed.
    kept = [simulate_champion(seed, 0.05, replaced, watch) for seed in range(20)]
    assert sum(k >= watch.horizon_outcomes for k in kept) >= 19


def test_a_guardrail_breach_of_the_champion_means_roll_back() -> None:
    watch = ChampionWatch()
    good, old = ArmStats("v2", 10, 1, 1), ArmStats("v1", 1000, 50, 50)
    why = watch.check(good, old, reward_kind="bernoulli", guardrail_breach="error rate 0.4 > 0.05")
    assert why == "guardrail on the champion v2: error rate 0.4 > 0.05"
    assert watch.check(good, old, reward_kind="bernoulli") is None


def simulate_settling(seed: int, rate: float, replaced_rate: float, watch: ChampionWatch) -> int:
    """Return the outcomes after which the watch settles (both arms served alike), or the
    horizon when it never does."""
    gen = np.random.default_rng(seed)
    n = s = s0 = 0
    while n < watch.horizon_outcomes:
        k, k0 = int(gen.binomial(100, rate)), int(gen.binomial(100, replaced_rate))
        n, s, s0 = n + 100, s + k, s0 + k0
        if watch.settled(
            ArmStats("v2", n, s, s), ArmStats("v1", n, s0, s0), reward_kind="bernoulli"
        ):
            return n
    return n


def test_a_better_champion_ends_its_probation_early_and_an_equal_one_rarely_does() -> None:
    watch = ChampionWatch()
    # 6 % against the 4 % it replaced: shown better, the replaced champion leaves rotation.
    better = [simulate_settling(seed, 0.06, 0.04, watch) for seed in range(20)]
    assert max(better) <= 10_000, better
    # Equally good: the watch runs to its horizon on (nearly) every seed (rate <= 0.05).
    equal = [simulate_settling(seed, 0.05, 0.05, watch) for seed in range(20)]
    assert sum(n >= watch.horizon_outcomes for n in equal) >= 19, equal
    # Not before both arms have min_outcomes.
    few = ArmStats("v2", watch.min_outcomes - 1, 100, 100)
    assert not watch.settled(few, ArmStats("v1", 10_000, 0, 0), reward_kind="bernoulli")
