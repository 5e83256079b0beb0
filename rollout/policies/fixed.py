"""A fixed traffic split: the A/B test the bandit policies are measured against."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rollout.policies.base import (
    REWARD_KINDS,
    ArmStats,
    InvalidArmsError,
    InvalidPolicyParamsError,
    Policy,
    RewardKind,
    stats_arrays,
)


class FixedSplit(Policy):
    """Serve arms in proportion to fixed ``weights``, whatever their outcomes.

    ``weights=None`` splits traffic equally between the arms present. With weights, an
    arm they do not name gets no traffic; weights are renormalised over the arms present.
    """

    name = "fixed"

    def __init__(
        self,
        *,
        weights: Mapping[str, float] | None = None,
        reward_kind: RewardKind = "bernoulli",
    ) -> None:
        if weights is not None:
            if not isinstance(weights, Mapping) or not weights:
                raise InvalidPolicyParamsError(
                    f"weights must be a non-empty mapping arm -> weight, got {weights=}"
                )
            bad = {
                k: v
                for k, v in weights.items()
                if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0)
            }
            if bad:
                raise InvalidPolicyParamsError(f"weights must be finite and >= 0, got {bad}")
            weights = {str(k): float(v) for k, v in weights.items()}
        if reward_kind not in REWARD_KINDS:
            raise InvalidPolicyParamsError(
                f"reward_kind must be one of {REWARD_KINDS}, got {reward_kind=}"
            )
        self.weights = weights
        self.reward_kind = reward_kind

    @property
    def params(self) -> dict[str, Any]:
        return {"weights": self.weights, "reward_kind": self.reward_kind}

    def shares(self, arms: Sequence[ArmStats]) -> np.ndarray:
        """Return each arm's traffic share (sums to 1)."""
        stats_arrays(arms)  # validates the arms
        if self.weights is None:
            return np.full(len(arms), 1.0 / len(arms))
        w = np.array([self.weights.get(a.arm, 0.0) for a in arms])
        if w.sum() <= 0:
            raise InvalidArmsError(
                f"no arm present has a positive weight: arms {[a.arm for a in arms]}, "
                f"weights {self.weights}"
            )
        return w / w.sum()

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        return rng.choice(len(arms), size=size, p=self.shares(arms))

    def allocation(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, *, draws: int = 0
    ) -> dict[str, float]:
        """Return the exact split."""
        return {a.arm: float(s) for a, s in zip(arms, self.shares(arms), strict=True)}
