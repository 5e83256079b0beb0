"""UCB1 (Auer, Cesa-Bianchi and Fischer, 2002): optimism in the face of uncertainty."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rollout.policies.base import (
    ArmStats,
    Policy,
    argmax_random_ties,
    check_positive,
    stats_arrays,
)


class UCB1(Policy):
    """Serve the arm with the largest ``mean + exploration * sqrt(ln(total) / pulls)``.

    Rewards must lie in [0, 1] (the bound UCB1's guarantee assumes). An arm with no
    outcome yet has an infinite index, so each arm is played once before any other rule
    applies; ties (including among unplayed arms) are broken at random, which keeps
    concurrent requests from piling onto one arm while feedback is in flight. The
    classic UCB1 is ``exploration = sqrt(2)``.
    """

    name = "ucb1"
    reward_kind = "bernoulli"

    def __init__(self, *, exploration: float = float(np.sqrt(2.0))) -> None:
        self.exploration = check_positive("exploration", exploration)

    @property
    def params(self) -> dict[str, Any]:
        return {"exploration": self.exploration}

    def index(self, arms: Sequence[ArmStats]) -> np.ndarray:
        """Return each arm's upper confidence bound (inf for an unplayed arm)."""
        pulls, sums, _ = stats_arrays(arms)
        total = pulls.sum()
        played = pulls > 0
        safe = np.where(played, pulls, 1.0)
        bonus = self.exploration * np.sqrt(np.log(max(total, 1.0)) / safe)
        return np.where(played, sums / safe + bonus, np.inf)

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        scores = np.broadcast_to(self.index(arms), (size, len(arms)))
        return argmax_random_ties(scores, rng)

    def allocation(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, *, draws: int = 0
    ) -> dict[str, float]:
        """Return the exact split: all traffic to the best index, shared among ties."""
        idx = self.index(arms)
        best = idx >= idx.max()
        return {a.arm: float(b) / int(best.sum()) for a, b in zip(arms, best, strict=True)}
