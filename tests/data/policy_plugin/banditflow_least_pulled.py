"""An example third-party policy: serve the arm with the fewest outcomes (round-robin-like)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rollout.policies.base import (
    ArmStats,
    InvalidPolicyParamsError,
    Policy,
    argmax_random_ties,
    stats_arrays,
)


class LeastPulled(Policy):
    """Serve the arm with the fewest outcomes so far (ties at random), up to ``slack``."""

    name = "least-pulled"

    def __init__(self, *, slack: float = 0.0) -> None:
        if slack < 0:
            raise InvalidPolicyParamsError(f"slack must be >= 0, got {slack=}")
        self.slack = float(slack)

    @property
    def params(self) -> dict[str, Any]:
        return {"slack": self.slack}

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        pulls, _, _ = stats_arrays(arms)
        scores = np.where(pulls <= pulls.min() + self.slack, 1.0, 0.0)
        return argmax_random_ties(np.broadcast_to(scores, (size, len(arms))), rng)
