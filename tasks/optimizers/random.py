"""Random search: seeded uniform (log-uniform) sampling, the baseline the others must beat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tasks.optimizers.base import Optimizer, Trial, TrialResult


class RandomOptimizer(Optimizer):
    """Draw each point independently; inactive conditional parameters are skipped."""

    name = "random"
    deterministic_resume = True

    def __init__(
        self, space: Mapping[str, Any], objectives: Mapping[str, str], seed: int = 0, **options: Any
    ) -> None:
        if options:
            raise TypeError(f"the random optimizer takes no options, got {sorted(options)}")
        super().__init__(space, objectives, seed)
        self._rng = np.random.default_rng(self.seed)

    def _suggest(self, n: int) -> list[dict[str, Any]]:
        return [self.space.sample(self._rng) for _ in range(n)]

    def _register(self, trial: Trial) -> None:
        """Nothing to do: random search ignores history."""

    def _observe(self, result: TrialResult) -> None:
        """Nothing to do: random search ignores results."""

    def _backend_state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def _restore_backend_state(self, state: Mapping[str, Any]) -> None:
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
