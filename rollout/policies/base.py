"""The bandit policy interface: arms' sufficient statistics in, a chosen arm out.

A policy is pure (DESIGN.md): it holds its parameters and nothing else, so the store owns
every counter, replicas need no coordination, and a restart loses nothing.

Statistics contract with the store
----------------------------------
``ArmStats.pulls`` counts *outcomes* (rewards received), not requests served: a posterior
only learns from rewards. ``reward_sum`` and ``reward_sq_sum`` are the sums of the rewards
and of their squares. They are floats because a discounted policy shrinks them.

Discount semantics: when ``policy.discount`` is a float ``d`` in (0, 1], then on each
feedback *every* arm's ``pulls``, ``reward_sum`` and ``reward_sq_sum`` are multiplied by
``d`` before the new reward is added to its arm (one SQL ``UPDATE ... SET pulls = pulls * d
+ (arm = :arm)``, ...). An outcome seen ``k`` feedbacks ago then weighs ``d**k``, so the
policy forgets with an effective memory of about ``1 / (1 - d)`` outcomes. ``None`` means
plain sums (no forgetting).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

RewardKind = Literal["bernoulli", "gaussian"]
REWARD_KINDS: tuple[RewardKind, ...] = ("bernoulli", "gaussian")
DEFAULT_ALLOCATION_DRAWS = 4096


class PolicyError(ValueError):
    """Base class of every error raised by the policy layer."""


class UnknownPolicyError(PolicyError, LookupError):
    """No policy is registered under the requested name."""


class InvalidPolicyParamsError(PolicyError):
    """A policy's parameters are missing, unexpected or out of range."""


class InvalidArmsError(PolicyError):
    """The arms handed to a policy cannot be chosen from (none, duplicates, bad counts)."""


@dataclass(frozen=True)
class ArmStats:
    """One arm's sufficient statistics (possibly discounted, hence floats)."""

    arm: str
    pulls: float = 0.0
    reward_sum: float = 0.0
    reward_sq_sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.arm:
            raise InvalidArmsError(f"an arm needs a non-empty name, got {self.arm=}")
        for field in ("pulls", "reward_sum", "reward_sq_sum"):
            value = getattr(self, field)
            if not math.isfinite(value):
                raise InvalidArmsError(f"{field} of arm {self.arm!r} must be finite, got {value}")
        if self.pulls < 0 or self.reward_sq_sum < 0:
            raise InvalidArmsError(
                f"pulls and reward_sq_sum of arm {self.arm!r} must be >= 0, "
                f"got pulls={self.pulls}, reward_sq_sum={self.reward_sq_sum}"
            )

    @property
    def mean(self) -> float:
        """Return the mean reward (0.0 before the first outcome)."""
        return self.reward_sum / self.pulls if self.pulls > 0 else 0.0

    @property
    def failures(self) -> float:
        """Return the (discounted) count of zero rewards, for 0/1 rewards."""
        return max(self.pulls - self.reward_sum, 0.0)

    @property
    def variance(self) -> float:
        """Return the sample variance of the rewards (0.0 below two outcomes)."""
        if self.pulls < 2:
            return 0.0
        centred = self.reward_sq_sum - self.reward_sum**2 / self.pulls
        return max(centred, 0.0) / (self.pulls - 1)


def stats_arrays(arms: Sequence[ArmStats]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (pulls, reward_sum, reward_sq_sum) as float arrays after checking the arms."""
    if len(arms) == 0:
        raise InvalidArmsError("a policy needs at least one arm to choose from, got none")
    names = [a.arm for a in arms]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidArmsError(f"arm names must be unique, got duplicates {dupes}")
    pulls = np.array([a.pulls for a in arms], dtype=float)
    sums = np.array([a.reward_sum for a in arms], dtype=float)
    sq = np.array([a.reward_sq_sum for a in arms], dtype=float)
    return pulls, sums, sq


def argmax_random_ties(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return, per row of ``scores`` (n, k), the index of a maximum, ties broken at random."""
    scores = np.atleast_2d(scores)
    is_max = scores >= scores.max(axis=1, keepdims=True)
    # A uniform key per tied entry picks one of the maxima with equal probability.
    keys = np.where(is_max, rng.random(scores.shape), -1.0)
    return keys.argmax(axis=1)


def check_discount(discount: float | None) -> float | None:
    """Validate a discount factor: ``None`` or a float in (0, 1]."""
    if discount is None:
        return None
    if not (isinstance(discount, int | float) and 0.0 < discount <= 1.0):
        raise InvalidPolicyParamsError(f"discount must be in (0, 1] or None, got {discount=}")
    return float(discount)


def check_min_share(min_share: float) -> float:
    """Validate a per-arm traffic floor: a float in [0, 0.5]."""
    if not (isinstance(min_share, int | float) and 0.0 <= min_share <= 0.5):
        raise InvalidPolicyParamsError(f"min_share must be in [0, 0.5], got {min_share=}")
    return float(min_share)


def with_min_share(
    chosen: np.ndarray, n_arms: int, min_share: float, rng: np.random.Generator
) -> np.ndarray:
    """Replace a ``min_share * n_arms`` fraction of choices by uniform ones.

    Every arm then gets at least ``min_share`` of the traffic (all of it uniform when
    ``min_share * n_arms >= 1``).
    """
    if min_share <= 0:
        return chosen
    uniform = rng.random(chosen.shape) < min(min_share * n_arms, 1.0)
    return np.where(uniform, rng.integers(n_arms, size=chosen.shape), chosen)


def check_positive(name: str, value: float) -> float:
    """Validate a strictly positive finite float parameter."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidPolicyParamsError(f"{name} must be a positive number, got {name}={value!r}")
    return float(value)


class Policy(ABC):
    """A bandit policy: chooses an arm from the arms' statistics and a random generator.

    Subclasses implement ``choose_indices`` (vectorised: ``size`` independent choices from
    the same statistics) and ``params``. ``choose`` and ``allocation`` follow from it;
    override ``allocation`` where the split is known exactly.
    """

    name: ClassVar[str]
    reward_kind: RewardKind = "bernoulli"
    discount: float | None = None

    @property
    def reward_range(self) -> tuple[float, float] | None:
        """Return the rewards this policy accepts: (0.0, 1.0), or None for any real."""
        return (0.0, 1.0) if self.reward_kind == "bernoulli" else None

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Return the constructor's keyword arguments (JSON-friendly), to persist or show."""

    @abstractmethod
    def choose_indices(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, size: int
    ) -> np.ndarray:
        """Return ``size`` independent choices (indices into ``arms``) from these statistics."""

    def posterior_draws(
        self, arms: Sequence[ArmStats], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        """Return ``draws`` joint samples (draws, arms) of the arms' mean rewards.

        What the decision rule and ``GET /arms`` summarise. A policy with a posterior of its
        own (Thompson) overrides this with its prior; the default is the flat prior of the
        reward kind: Beta(1, 1) for 0/1 rewards, a weak normal-inverse-gamma for real ones.
        """
        return flat_prior_draws(arms, self.reward_kind, rng, draws)

    def choose(self, arms: Sequence[ArmStats], rng: np.random.Generator) -> str:
        """Return the name of the arm to serve next."""
        return arms[int(self.choose_indices(arms, rng, 1)[0])].arm

    def allocation(
        self,
        arms: Sequence[ArmStats],
        rng: np.random.Generator,
        *,
        draws: int = DEFAULT_ALLOCATION_DRAWS,
    ) -> dict[str, float]:
        """Return the traffic share each arm gets under these statistics (sums to 1).

        The default is Monte-Carlo over ``draws`` choices; exact where a subclass knows it.
        """
        if draws < 1:
            raise InvalidPolicyParamsError(f"draws must be >= 1, got {draws=}")
        counts = np.bincount(self.choose_indices(arms, rng, draws), minlength=len(arms))
        return {a.arm: float(c) / draws for a, c in zip(arms, counts, strict=True)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def beta_draws(
    arms: Sequence[ArmStats], prior_a: float, prior_b: float, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """Return (draws, arms) samples of Beta(prior_a + successes, prior_b + failures)."""
    pulls, sums, _ = stats_arrays(arms)
    # Clip: 0/1 rewards keep 0 <= sum <= pulls, but a float store may round past it.
    successes = np.clip(sums, 0.0, pulls)
    return rng.beta(prior_a + successes, prior_b + pulls - successes, size=(draws, len(arms)))


def normal_inverse_gamma_posterior(
    pulls: np.ndarray,
    sums: np.ndarray,
    sq_sums: np.ndarray,
    *,
    prior_mean: float,
    prior_pulls: float,
    prior_shape: float,
    prior_rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the conjugate update (mean, pulls, shape, rate) from sufficient statistics."""
    kappa = prior_pulls + pulls
    mean = (prior_pulls * prior_mean + sums) / kappa
    safe = np.where(pulls > 0, pulls, 1.0)
    sample_mean = np.where(pulls > 0, sums / safe, prior_mean)
    # Within-arm sum of squares; clipped because float round-off can push it below zero.
    centred = np.clip(sq_sums - sums * sample_mean, 0.0, None)
    shift = prior_pulls * pulls * (sample_mean - prior_mean) ** 2 / kappa
    return mean, kappa, prior_shape + pulls / 2.0, prior_rate + 0.5 * (centred + shift)


def student_t_draws(
    posterior: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
    draws: int,
) -> np.ndarray:
    """Return (draws, arms) samples of the Student t marginal of each arm's mean."""
    mean, kappa, shape, rate = posterior
    scale = np.sqrt(rate / (shape * kappa))
    return mean + scale * rng.standard_t(2.0 * shape, size=(draws, len(mean)))


def flat_prior_draws(
    arms: Sequence[ArmStats], reward_kind: RewardKind, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """Return posterior samples of the arms' means under the reward kind's flat prior."""
    if reward_kind == "bernoulli":
        return beta_draws(arms, 1.0, 1.0, rng, draws)
    posterior = normal_inverse_gamma_posterior(
        *stats_arrays(arms), prior_mean=0.0, prior_pulls=0.01, prior_shape=1.0, prior_rate=1.0
    )
    return student_t_draws(posterior, rng, draws)
