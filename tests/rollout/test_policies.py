"""Bandit policies: one contract class over every policy, then each policy's own behaviour."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rollout.policies import (
    ArmStats,
    InvalidArmsError,
    InvalidPolicyParamsError,
    Policy,
    UnknownPolicyError,
    available_policies,
    get_policy,
)
from rollout.policies.thompson import ThompsonGaussian
from rollout.policies.ucb import UCB1

PLUGIN_SOURCE = Path(__file__).parents[1] / "data" / "policy_plugin"

# A new policy is tested by the contract class by adding one line here.
POLICY_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("thompson", {}),
    ("thompson", {"prior_a": 2.0, "prior_b": 5.0, "discount": 0.99}),
    ("thompson", {"min_share": 0.2}),
    ("thompson-gaussian", {}),
    ("thompson-gaussian", {"prior_mean": 1.0, "discount": 0.995}),
    ("ucb1", {}),
    ("epsilon-greedy", {"epsilon": 0.2}),
    ("fixed", {}),
    ("fixed", {"weights": {"a": 3.0, "b": 1.0, "c": 0.0}}),
    ("contextual-thompson", {"pool_weight": 10.0, "min_share": 0.1}),
]

ARM_SETS: dict[str, list[ArmStats]] = {
    "fresh": [ArmStats("a"), ArmStats("b"), ArmStats("c")],
    "some-data": [ArmStats("a", 40, 10, 10), ArmStats("b", 50, 20, 20), ArmStats("c", 3, 1, 1)],
    "one-unplayed": [ArmStats("a", 400, 100, 100), ArmStats("b", 0), ArmStats("c", 300, 90, 90)],
    "discounted": [
        ArmStats("a", 12.5, 3.25, 3.25),
        ArmStats("b", 80.1, 40.7, 40.7),
        ArmStats("c", 0.3, 0.1, 0.1),
    ],
}


def simulate(
    policy: Policy,
    means: list[float],
    *,
    pulls: int,
    seed: int,
    batch: int = 20,
    means_after: list[float] | None = None,
    switch_at: int | None = None,
) -> tuple[float, np.ndarray]:
    """Play Bernoulli arms; return the pseudo-regret and the arm index of every pull.

    The policy sees statistics refreshed every ``batch`` pulls (delayed feedback, as in
    the service). Discounting is applied exactly per pull, as the store does.
    """
    rng = np.random.default_rng(seed)
    k = len(means)
    names = [f"arm{i}" for i in range(k)]
    n, s = np.zeros(k), np.zeros(k)
    d = policy.discount or 1.0
    weights = d ** np.arange(batch)[::-1]  # weight of the j-th pull of a batch at its end
    regret, chosen = 0.0, []
    for start in range(0, pulls, batch):
        mu = np.asarray(means_after if switch_at is not None and start >= switch_at else means)
        arms = [ArmStats(names[i], n[i], s[i], s[i]) for i in range(k)]
        idx = policy.choose_indices(arms, rng, batch)
        rewards = (rng.random(batch) < mu[idx]).astype(float)
        onehot = np.eye(k)[idx]
        n = n * d**batch + weights @ onehot
        s = s * d**batch + (weights * rewards) @ onehot
        regret += float((mu.max() - mu[idx]).sum())
        chosen.append(idx)
    return regret, np.concatenate(chosen)


@pytest.mark.parametrize(
    ("name", "params"), POLICY_SPECS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(POLICY_SPECS)]
)
class TestPolicyContract:
    """What every policy, built-in or third-party, must do."""

    @pytest.mark.parametrize("arm_set", sorted(ARM_SETS))
    def test_choose_returns_a_known_arm(self, name: str, params: dict, arm_set: str) -> None:
        policy = get_policy(name, **params)
        arms = ARM_SETS[arm_set]
        for seed in range(20):
            assert policy.choose(arms, np.random.default_rng(seed)) in {a.arm for a in arms}

    @pytest.mark.parametrize("arm_set", sorted(ARM_SETS))
    def test_allocation_is_a_distribution_over_the_arms(
        self, name: str, params: dict, arm_set: str
    ) -> None:
        arms = ARM_SETS[arm_set]
        share = get_policy(name, **params).allocation(arms, np.random.default_rng(0))
        assert list(share) == [a.arm for a in arms]
        assert all(0.0 <= v <= 1.0 for v in share.values())
        assert sum(share.values()) == pytest.approx(1.0, abs=1e-9)

    def test_allocation_matches_how_choose_splits_traffic(self, name: str, params: dict) -> None:
        policy, arms = get_policy(name, **params), ARM_SETS["some-data"]
        share = policy.allocation(arms, np.random.default_rng(1), draws=20_000)
        counts = np.bincount(policy.choose_indices(arms, np.random.default_rng(2), 20_000), None, 3)
        # Two independent 20k-draw estimates: a standard error of at most 0.0035 each.
        np.testing.assert_allclose(counts / 20_000, list(share.values()), atol=0.02)

    def test_is_pure(self, name: str, params: dict) -> None:
        policy, arms = get_policy(name, **params), ARM_SETS["some-data"]
        before = policy.params
        first = [policy.choose(arms, np.random.default_rng(s)) for s in range(30)]
        again = [policy.choose(arms, np.random.default_rng(s)) for s in range(30)]
        assert first == again
        assert policy.params == before

    def test_params_rebuild_the_same_policy(self, name: str, params: dict) -> None:
        policy = get_policy(name, **params)
        rebuilt = get_policy(name, **policy.params)
        assert type(rebuilt) is type(policy) and rebuilt.params == policy.params
        assert policy.name == name

    def test_declares_its_rewards_and_discount(self, name: str, params: dict) -> None:
        policy = get_policy(name, **params)
        assert policy.reward_kind in ("bernoulli", "gaussian")
        expected = (0.0, 1.0) if policy.reward_kind == "bernoulli" else None
        assert policy.reward_range == expected
        assert policy.discount is None or 0.0 < policy.discount <= 1.0

    def test_rejects_no_arms_and_duplicate_arms(self, name: str, params: dict) -> None:
        policy, rng = get_policy(name, **params), np.random.default_rng(0)
        with pytest.raises(InvalidArmsError, match="at least one arm"):
            policy.choose([], rng)
        with pytest.raises(InvalidArmsError, match="duplicates"):
            policy.choose([ArmStats("a"), ArmStats("a")], rng)


# --- regret on simulated traffic ------------------------------------------------------

REGRET_MEANS = [0.3, 0.4, 0.5]
REGRET_SEEDS = range(4)


def mean_regret(name: str, **params: Any) -> float:
    policy = get_policy(name, **params)
    return float(
        np.mean([simulate(policy, REGRET_MEANS, pulls=20_000, seed=s)[0] for s in REGRET_SEEDS])
    )


def test_thompson_regret_is_well_below_fixed_split_and_epsilon_greedy() -> None:
    thompson = mean_regret("thompson")
    fixed = mean_regret("fixed")
    greedy = mean_regret("epsilon-greedy", epsilon=0.1)
    # Expected: fixed split 0.1 * 20k = 2000; epsilon-greedy >= 0.1 * 0.1 * 20k = 200 from
    # exploring alone; Thompson ~ log(T) / KL terms, well under 150.
    assert fixed == pytest.approx(2000, rel=0.05)
    assert thompson < 0.1 * fixed
    assert thompson < 0.6 * greedy


def test_discounted_thompson_recovers_after_the_best_arm_changes() -> None:
    def share_of_new_best_after_switch(discount: float | None) -> float:
        policy = get_policy("thompson", discount=discount)
        shares = []
        for seed in range(3):
            _, chosen = simulate(
                policy,
                [0.6, 0.4],
                means_after=[0.4, 0.6],
                switch_at=6_000,
                pulls=8_000,
                seed=seed,
            )
            shares.append(np.mean(chosen[6_000:] == 1))
        return float(np.mean(shares))

    # With ~6,000 outcomes at 0.6 behind it, plain Thompson keeps serving the old best
    # for thousands of pulls; a memory of ~1/(1-0.99) = 100 outcomes moves to the new
    # best within a few hundred (measured: ~0.85 against ~0.01 over the 2,000 pulls).
    assert share_of_new_best_after_switch(0.99) > 0.75
    assert share_of_new_best_after_switch(None) < 0.2


# --- each policy's own definition ----------------------------------------------------


def test_ucb1_plays_every_arm_once_first_then_follows_its_index() -> None:
    ucb = get_policy("ucb1")
    assert isinstance(ucb, UCB1)
    arms = [ArmStats("a", 10, 9, 9), ArmStats("b", 0), ArmStats("c", 0)]
    picks = {ucb.choose(arms, np.random.default_rng(s)) for s in range(40)}
    assert picks == {"b", "c"}  # both unplayed arms, never the played one
    assert ucb.allocation(arms, np.random.default_rng(0)) == {"a": 0.0, "b": 0.5, "c": 0.5}

    arms = [ArmStats("a", 100, 60, 60), ArmStats("b", 10, 5, 5), ArmStats("c", 50, 31, 31)]
    total = 160
    index = {a.arm: a.mean + np.sqrt(2 * np.log(total) / a.pulls) for a in arms}
    np.testing.assert_allclose(ucb.index(arms), list(index.values()))
    assert ucb.choose(arms, np.random.default_rng(0)) == max(index, key=index.__getitem__) == "b"


def test_ucb1_exploration_zero_is_greedy() -> None:
    ucb = get_policy("ucb1", exploration=1e-12)
    arms = [ArmStats("a", 100, 60, 60), ArmStats("b", 10, 5, 5)]
    assert ucb.choose(arms, np.random.default_rng(0)) == "a"


def test_epsilon_greedy_explores_epsilon_of_the_time_uniformly() -> None:
    policy = get_policy("epsilon-greedy", epsilon=0.3)
    arms = [ArmStats("a", 100, 20, 20), ArmStats("b", 100, 50, 50), ArmStats("c", 100, 30, 30)]
    assert policy.allocation(arms, np.random.default_rng(0)) == pytest.approx(
        {"a": 0.1, "b": 0.8, "c": 0.1}
    )
    counts = np.bincount(policy.choose_indices(arms, np.random.default_rng(3), 30_000), None, 3)
    np.testing.assert_allclose(counts / 30_000, [0.1, 0.8, 0.1], atol=0.01)

    greedy = get_policy("epsilon-greedy", epsilon=0.0)
    assert {greedy.choose(arms, np.random.default_rng(s)) for s in range(50)} == {"b"}
    uniform = get_policy("epsilon-greedy", epsilon=1.0)
    assert uniform.allocation(arms, np.random.default_rng(0)) == pytest.approx(
        dict.fromkeys("abc", 1 / 3)
    )


def test_epsilon_greedy_tries_an_unplayed_arm() -> None:
    policy = get_policy("epsilon-greedy", epsilon=0.0)
    arms = [ArmStats("a", 100, 90, 90), ArmStats("new", 0)]
    assert policy.choose(arms, np.random.default_rng(0)) == "new"


def test_fixed_split_follows_its_weights_whatever_the_outcomes() -> None:
    policy = get_policy("fixed", weights={"a": 3, "b": 1})
    arms = [ArmStats("a", 1000, 1, 1), ArmStats("b", 1000, 999, 999), ArmStats("c", 0)]
    assert policy.allocation(arms, np.random.default_rng(0)) == {"a": 0.75, "b": 0.25, "c": 0.0}
    with pytest.raises(InvalidArmsError, match="positive weight"):
        policy.choose([ArmStats("c")], np.random.default_rng(0))


def test_thompson_bernoulli_prefers_the_better_posterior() -> None:
    policy = get_policy("thompson")
    arms = [ArmStats("a", 1000, 100, 100), ArmStats("b", 1000, 150, 150)]
    share = policy.allocation(arms, np.random.default_rng(0), draws=10_000)
    assert share["b"] > 0.99


def test_thompson_min_share_keeps_a_floor_of_traffic_on_every_arm() -> None:
    arms = [ArmStats("a", 5000, 250, 250), ArmStats("b", 5000, 400, 400)]
    plain = get_policy("thompson").allocation(arms, np.random.default_rng(0), draws=20_000)
    floored = get_policy("thompson", min_share=0.2).allocation(
        arms, np.random.default_rng(0), draws=20_000
    )
    assert plain["a"] < 0.001
    # 0.4 of the traffic is uniform: 0.2 per arm, plus Thompson's ~0 for "a".
    assert floored["a"] == pytest.approx(0.2, abs=0.01)


def test_thompson_gaussian_learns_real_valued_rewards_on_any_scale() -> None:
    policy = get_policy("thompson-gaussian")
    assert isinstance(policy, ThompsonGaussian)
    rng = np.random.default_rng(0)
    a, b = rng.normal(100.0, 20.0, 400), rng.normal(104.0, 20.0, 400)
    arms = [ArmStats(n, len(x), x.sum(), (x**2).sum()) for n, x in (("a", a), ("b", b))]
    mean, _, _, _ = policy.posterior(arms)
    np.testing.assert_allclose(mean, [a.mean(), b.mean()], rtol=1e-4)
    share = policy.allocation(arms, np.random.default_rng(1), draws=20_000)
    # The gap is 4 with a standard error of sqrt(2 * 20**2 / 400) = 1.41: P(b best) ~ 0.99.
    assert 0.95 < share["b"] < 1.0
    fresh = policy.allocation([ArmStats("x"), ArmStats("y")], np.random.default_rng(2))
    assert fresh["x"] == pytest.approx(0.5, abs=0.05)


# --- lookup and errors ---------------------------------------------------------------


def test_builtins_are_registered_as_entry_points() -> None:
    from importlib.metadata import entry_points

    registered = {ep.name for ep in entry_points(group="banditflow.policies")}
    assert {"thompson", "thompson-gaussian", "ucb1", "epsilon-greedy", "fixed"} <= registered
    assert set(available_policies()) >= registered


def test_unknown_policy_lists_the_known_names() -> None:
    with pytest.raises(UnknownPolicyError, match=r"'thomson'.*thompson, thompson-gaussian"):
        get_policy("thomson")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("thompson", {"discount": 1.5}, r"discount must be in \(0, 1\].*discount=1.5"),
        ("thompson", {"discount": 0}, r"discount=0"),
        ("thompson", {"prior_a": -1}, r"prior_a must be a positive number.*prior_a=-1"),
        ("thompson", {"alpha": 1}, r"unexpected parameter\(s\) \['alpha'\].*prior_a, prior_b"),
        ("thompson", {"min_share": 0.6}, r"min_share must be in \[0, 0.5\].*min_share=0.6"),
        ("thompson-gaussian", {"prior_rate": 0.0}, r"prior_rate=0.0"),
        ("thompson-gaussian", {"prior_mean": float("nan")}, r"prior_mean must be a finite"),
        ("ucb1", {"exploration": -0.5}, r"exploration=-0.5"),
        ("epsilon-greedy", {"epsilon": 1.2}, r"epsilon must be in \[0, 1\].*epsilon=1.2"),
        ("epsilon-greedy", {"reward_kind": "poisson"}, r"reward_kind='poisson'"),
        ("fixed", {"weights": {"a": -1.0}}, r"finite and >= 0.*'a': -1.0"),
        ("fixed", {"weights": {}}, r"non-empty mapping"),
    ],
)
def test_bad_params_get_clear_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(InvalidPolicyParamsError, match=message):
        get_policy(name, **params)


def test_constructors_are_keyword_only() -> None:
    from rollout.policies.thompson import ThompsonBernoulli

    with pytest.raises(TypeError):
        ThompsonBernoulli(1.0, 1.0)  # type: ignore[misc]


def test_arm_stats_reject_impossible_counts() -> None:
    with pytest.raises(InvalidArmsError, match="pulls and reward_sq_sum"):
        ArmStats("a", pulls=-1)
    with pytest.raises(InvalidArmsError, match="finite"):
        ArmStats("a", pulls=float("nan"))
    assert ArmStats("a", 4, 2, 2).mean == 0.5
    assert ArmStats("a").mean == 0.0
    assert ArmStats("a", 4, 2, 2).variance == pytest.approx(1 / 3)


# --- a third-party policy through the entry point -------------------------------------


@pytest.fixture(scope="module")
def installed_plugin(
    tmp_path_factory: pytest.TempPathFactory, pip_installed: Any
) -> Iterator[Path]:
    """Install tests/data/policy_plugin with pip into a private folder on sys.path."""
    with pip_installed(PLUGIN_SOURCE, tmp_path_factory.mktemp("plugin")) as target:
        try:
            yield target
        finally:
            sys.modules.pop("banditflow_least_pulled", None)


@pytest.mark.slow
def test_get_policy_finds_a_third_party_policy(installed_plugin: Path) -> None:
    assert "least-pulled" in available_policies()
    policy = get_policy("least-pulled", slack=0.0)
    assert type(policy).__module__ == "banditflow_least_pulled"
    arms = [ArmStats("a", 5), ArmStats("b", 2), ArmStats("c", 9)]
    assert policy.choose(arms, np.random.default_rng(0)) == "b"
    assert policy.allocation(arms, np.random.default_rng(0), draws=100) == {
        "a": 0.0,
        "b": 1.0,
        "c": 0.0,
    }
    with pytest.raises(InvalidPolicyParamsError, match="slack=-1"):
        get_policy("least-pulled", slack=-1)


def test_contextual_thompson_routes_each_segment_by_its_own_evidence() -> None:
    from rollout.policies.contextual import ContextualThompson

    policy = get_policy("contextual-thompson")
    assert isinstance(policy, ContextualThompson)
    pooled = [ArmStats("a", 20_000, 1_200), ArmStats("b", 20_000, 1_000)]
    north = [ArmStats("a", 5_000, 200), ArmStats("b", 5_000, 400)]  # b wins here
    empty = [ArmStats("a"), ArmStats("b")]
    rng = np.random.default_rng(0)
    assert policy.segment_allocation(north, pooled, rng)["b"] > 0.99
    # A segment with no outcomes follows the pooled rates (a: 6 % against 5 %), shrunk.
    share = policy.segment_allocation(empty, pooled, rng)["a"]
    assert 0.5 < share < 0.9
    with pytest.raises(InvalidArmsError, match="same arms"):
        policy.segment_draws(north, pooled[::-1], rng, 10)
