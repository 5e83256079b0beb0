"""Thompson sampling: serve each arm with the probability that it is the best one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rollout.policies.base import (
    ArmStats,
    InvalidPolicyParamsError,
    Policy,
    beta_draws,
    check_discount,
    check_min_share,
    check_positive,
    normal_inverse_gamma_posterior,
    stats_arrays,
    student_t_draws,
    with_min_share,
)

__all__ = ["ThompsonBernoulli", "ThompsonGaussian", "normal_inverse_gamma_posterior"]


class ThompsonBernoulli(Policy):
    """Thompson sampling for 0/1 rewards with a Beta(prior_a, prior_b) prior per arm.

    With ``discount`` set, the store shrinks every arm's counts before each new reward
    (see ``rollout.policies.base``); the prior is added after shrinking, so an arm whose
    evidence has faded returns to the prior rather than to nothing.

    ``min_share`` keeps at least that share of traffic on every arm (uniform choices
    mixed in). Plain Thompson starves the losing arm, which is its point, but also
    starves the promotion rule of evidence about the champion: with a 5 % champion
    and a 6 % challenger, a floor of 0.2 lets ``rollout.decide`` promote about as fast as
    an A/B test (benchmarks/rollout_regret.py).
    """

    name = "thompson"
    reward_kind = "bernoulli"

    def __init__(
        self,
        *,
        prior_a: float = 1.0,
        prior_b: float = 1.0,
        discount: float | None = None,
        min_share: float = 0.0,
    ) -> None:
        self.prior_a = check_positive("prior_a", prior_a)
        self.prior_b = check_positive("prior_b", prior_b)
        self.discount = check_discount(discount)
        self.min_share = check_min_share(min_share)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "prior_a": self.prior_a,
            "prior_b": self.prior_b,
            "discount": self.discount,
            "min_share": self.min_share,
        }

    def posterior(self, arms: Sequence[ArmStats]) -> tuple[np.ndarray, np.ndarray]:
        """Return the Beta posterior parameters (a, b) of each arm."""
        pulls, sums, _ = stats_arrays(arms)
        # Clip: 0/1 rewards keep 0 <= sum <= pulls, but a float store may round past it.
        successes = np.clip(sums, 0.0, pulls)
        return self.prior_a + successes, self.prior_b + (pulls - successes)

    def posterior_draws(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        return beta_draws(arms, self.prior_a, self.prior_b, rng, draws)

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        chosen = self.posterior_draws(arms, rng, size).argmax(axis=1)
        return with_min_share(chosen, len(arms), self.min_share, rng)


class ThompsonGaussian(Policy):
    """Thompson sampling for real rewards with a normal-inverse-gamma prior per arm.

    Each arm's rewards are modelled as Normal(mu, sigma^2) with both unknown, under the
    conjugate prior mu | sigma^2 ~ Normal(prior_mean, sigma^2 / prior_pulls) and
    sigma^2 ~ InverseGamma(prior_shape, prior_rate). The posterior of mu is then a
    Student t with 2 * shape degrees of freedom, which ``choose`` samples with numpy's
    ``standard_t``. ``prior_pulls`` is how many pseudo-outcomes the prior mean is worth:
    keep it small so the reward's scale comes from the data. ``discount`` and
    ``min_share`` as for ``ThompsonBernoulli``.
    """

    name = "thompson-gaussian"
    reward_kind = "gaussian"

    def __init__(
        self,
        *,
        prior_mean: float = 0.0,
        prior_pulls: float = 0.01,
        prior_shape: float = 1.0,
        prior_rate: float = 1.0,
        discount: float | None = None,
        min_share: float = 0.0,
    ) -> None:
        if not isinstance(prior_mean, int | float) or not np.isfinite(prior_mean):
            raise InvalidPolicyParamsError(f"prior_mean must be a finite number, got {prior_mean=}")
        self.prior_mean = float(prior_mean)
        self.prior_pulls = check_positive("prior_pulls", prior_pulls)
        self.prior_shape = check_positive("prior_shape", prior_shape)
        self.prior_rate = check_positive("prior_rate", prior_rate)
        self.discount = check_discount(discount)
        self.min_share = check_min_share(min_share)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "prior_mean": self.prior_mean,
            "prior_pulls": self.prior_pulls,
            "prior_shape": self.prior_shape,
            "prior_rate": self.prior_rate,
            "discount": self.discount,
            "min_share": self.min_share,
        }

    def posterior(
        self, arms: Sequence[ArmStats]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return the posterior (mean, pulls, shape, rate) of each arm."""
        return normal_inverse_gamma_posterior(
            *stats_arrays(arms),
            prior_mean=self.prior_mean,
            prior_pulls=self.prior_pulls,
            prior_shape=self.prior_shape,
            prior_rate=self.prior_rate,
        )

    def posterior_draws(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        return student_t_draws(self.posterior(arms), rng, draws)

    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        draws = self.posterior_draws(arms, rng, size)
        return with_min_share(draws.argmax(axis=1), len(arms), self.min_share, rng)
