"""Epsilon-greedy: explore uniformly with probability epsilon, otherwise exploit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rollout.policies.base import (
    REWARD_KINDS,
    ArmStats,
    InvalidPolicyParamsError,
    Policy,
    RewardKind,
    argmax_random_ties,
    stats_arrays,
)


class EpsilonGreedy(Policy):
    """With probability ``epsilon`` serve a uniformly random arm, else the best mean.

    An arm with no outcome yet counts as the best (as if burnt in with one pull), so a
    new challenger is tried; ties are broken at random. ``reward_kind`` only says which
    rewards the service should accept: the rule itself works on any real reward.
    """

    name = "epsilon-greedy"

    def __init__(self, *, epsilon: float = 0.1, reward_kind: RewardKind = "bernoulli") -> None:
        if not (isinstance(epsilon, int | float) and 0.0 <= epsilon <= 1.0):
            raise InvalidPolicyParamsError(f"epsilon must be in [0, 1], got {epsilon=}")
        if reward_kind not in REWARD_KINDS:
            raise InvalidPolicyParamsError(
                f"reward_kind must be one of {REWARD_KINDS}, got {reward_kind=}"
            )
        self.epsilon = float(epsilon)
        self.reward_kind = reward_kind

    @property
    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "reward_kind": self.reward_kind}

    def greedy_scores(self, arms: Sequence[ArmStats]) -> np.ndarray:
        """Return each arm's mean reward, +inf for an arm not played yet."""
        pulls, sums, _ = stats_arrays(arms)
        return np.where(pulls > 0, sums / np.where(pulls > 0, pulls, 1.0), np.inf)

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        scores = self.greedy_scores(arms)
        greedy = argmax_random_ties(np.broadcast_to(scores, (size, len(arms))), rng)
        explore = rng.random(size) < self.epsilon
        return np.where(explore, rng.integers(len(arms), size=size), greedy)

    def allocation(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, *, draws: int = 0
    ) -> dict[str, float]:
        """Return the exact split: epsilon / k each, plus 1 - epsilon shared by the best."""
        scores = self.greedy_scores(arms)
        best = scores >= scores.max()
        k, n_best = len(arms), int(best.sum())
        return {
            a.arm: self.epsilon / k + (1.0 - self.epsilon) * float(b) / n_best
            for a, b in zip(arms, best, strict=True)
        }
