"""Contextual Thompson sampling: one Beta posterior per (segment, arm), pooled toward the arm.

The segment's counts come from the store's per-segment counters; each arm's posterior in a
segment starts from a prior centred on the arm's pooled rate worth ``pool_weight``
pseudo-outcomes (a small hierarchical shrinkage), so a segment with few outcomes routes
like the pooled policy and a well-measured one by its own evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rollout.policies.base import (
    ArmStats,
    InvalidArmsError,
    Policy,
    beta_draws,
    check_min_share,
    check_positive,
    stats_arrays,
    with_min_share,
)


class ContextualThompson(Policy):
    """Thompson sampling with per-segment Beta posteriors (0/1 rewards).

    Without a segment (``choose_indices``) it is pooled Thompson with a Beta(prior_a,
    prior_b) prior; ``choose_in_segment`` routes one segment. ``min_share`` as for
    ``ThompsonBernoulli``.
    """

    name = "contextual-thompson"
    reward_kind = "bernoulli"
    contextual = True

    def __init__(
        self,
        *,
        prior_a: float = 1.0,
        prior_b: float = 1.0,
        pool_weight: float = 20.0,
        min_share: float = 0.0,
    ) -> None:
        self.prior_a = check_positive("prior_a", prior_a)
        self.prior_b = check_positive("prior_b", prior_b)
        self.pool_weight = check_positive("pool_weight", pool_weight)
        self.min_share = check_min_share(min_share)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "prior_a": self.prior_a,
            "prior_b": self.prior_b,
            "pool_weight": self.pool_weight,
            "min_share": self.min_share,
        }

    def posterior_draws(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        return beta_draws(arms, self.prior_a, self.prior_b, rng, draws)

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        chosen = self.posterior_draws(arms, rng, size).argmax(axis=1)
        return with_min_share(chosen, len(arms), self.min_share, rng)

    def segment_draws(
        self,
        segment: Sequence[ArmStats],
        pooled: Sequence[ArmStats],
        rng: np.random.Generator,
        draws: int,
    ) -> np.ndarray:
        """Return (draws, arms) samples of each arm's rate in this segment."""
        if [a.arm for a in segment] != [a.arm for a in pooled]:
            raise InvalidArmsError("segment and pooled statistics must name the same arms")
        n_all, s_all, _ = stats_arrays(pooled)
        n, s, _ = stats_arrays(segment)
        rate = (self.prior_a + s_all) / (self.prior_a + self.prior_b + n_all)
        a = self.pool_weight * rate + np.clip(s, 0.0, n)
        b = self.pool_weight * (1.0 - rate) + n - np.clip(s, 0.0, n)
        return rng.beta(a, b, size=(draws, len(segment)))

    def choose_in_segment(
        self,
        segment: Sequence[ArmStats],
        pooled: Sequence[ArmStats],
        rng: np.random.Generator,
        size: int,
    ) -> np.ndarray:
        """Return ``size`` choices (indices) for requests of one segment."""
        chosen = self.segment_draws(segment, pooled, rng, size).argmax(axis=1)
        return with_min_share(chosen, len(segment), self.min_share, rng)

    def segment_allocation(
        self,
        segment: Sequence[ArmStats],
        pooled: Sequence[ArmStats],
        rng: np.random.Generator,
        draws: int = 4096,
    ) -> dict[str, float]:
        """Return the traffic share of each arm in this segment (the logged propensities)."""
        counts = np.bincount(
            self.choose_in_segment(segment, pooled, rng, draws), minlength=len(segment)
        )
        return {a.arm: float(c) / draws for a, c in zip(segment, counts, strict=True)}
