"""A sequential sample-ratio-mismatch (SRM) test on the assignment, valid under continuous checks.

Lindon and Malek (2022, "Anytime-valid inference for multinomial count data") test that
units are assigned with the stated probabilities by a Dirichlet-multinomial mixture: the
e-value is the probability of the observed assignments under the Dirichlet mixture's
predictive, ``(alpha_i + x_i) / (sum(alpha) + n)`` for the next unit, divided by their
probability under the stated split. Under the null each factor has expectation 1 whatever
the stated split was at that moment (it may change between batches, as a bandit's does), so
the product is a test martingale and by Ville's inequality it *ever* reaches
``1 / alpha_level`` with probability at most ``alpha_level``. Within a batch of the same
stated split the product over its units is, in closed form,
``B(alpha + X + x) / B(alpha + X) / prod q_i ** x_i`` (``B`` the multivariate beta).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaln

from rollout.policies.base import PolicyError


class InvalidSrmSettingsError(PolicyError):
    """An SRM setting or input is out of range."""


def _log_multibeta(a: np.ndarray) -> float:
    return float(gammaln(a).sum() - gammaln(a.sum()))


@dataclass
class SampleRatioTest:
    """The running e-value that assignments do not follow the stated split.

    ``concentration``: the Dirichlet prior's total weight, centred on the first stated
    split; about ``1 / deviation**2`` is most powerful against a deviation of that size
    (1,000 suits a 2-point mismatch). ``alpha_level``: the false-alarm rate over an
    unbounded number of checks.
    """

    alpha_level: float = 0.001
    concentration: float = 1000.0
    arms: list[str] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prior: np.ndarray = field(default_factory=lambda: np.zeros(0))
    log_e: float = 0.0
    units: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha_level < 1:
            raise InvalidSrmSettingsError(
                f"alpha_level must be in (0, 1), got {self.alpha_level!r}"
            )
        if not (math.isfinite(self.concentration) and self.concentration > 0):
            raise InvalidSrmSettingsError(f"concentration must be > 0, got {self.concentration!r}")

    @property
    def e_value(self) -> float:
        return math.exp(min(self.log_e, 700.0))

    @property
    def mismatch(self) -> bool:
        return self.log_e >= math.log(1.0 / self.alpha_level)

    def reset(self, arms: list[str] | None = None) -> None:
        """Start again (the arm set changed): a new martingale from 1."""
        self.arms = list(arms or [])
        self.counts = np.zeros(len(self.arms))
        self.prior = np.zeros(0)
        self.log_e = 0.0
        self.units = 0

    def update(self, assigned: Mapping[str, int], stated: Mapping[str, float]) -> bool:
        """Add a batch of assignments made under the ``stated`` split; return ``mismatch``.

        Arms with a stated share of 0 that got units are a mismatch at once. A new arm set
        restarts the test.
        """
        arms = sorted(stated)
        if arms != self.arms:
            self.reset(arms)
        x = np.array([float(assigned.get(a, 0)) for a in arms])
        q = np.array([float(stated[a]) for a in arms])
        if (x < 0).any() or not np.isfinite(q).all() or (q < 0).any() or q.sum() <= 0:
            raise InvalidSrmSettingsError(f"bad batch: assigned {dict(assigned)}, stated {stated}")
        extra = set(assigned) - set(arms)
        if any(assigned[a] > 0 for a in extra):
            raise InvalidSrmSettingsError(f"units assigned to arms with no stated share: {extra}")
        if x.sum() == 0:
            return self.mismatch
        q = q / q.sum()
        if ((q == 0) & (x > 0)).any():
            self.log_e = math.inf
            return True
        if self.prior.size == 0:
            # Centred on the first split, every arm given some weight.
            self.prior = self.concentration * np.maximum(q, 1.0 / (100 * len(q)))
        a = self.prior + self.counts
        used = x > 0
        self.log_e += _log_multibeta(a + x) - _log_multibeta(a)
        self.log_e -= float((x[used] * np.log(q[used])).sum())
        self.counts += x
        self.units += int(x.sum())
        return self.mismatch

    def update_logged(self, assigned: Mapping[str, int], sum_log_propensity: float) -> bool:
        """Add a batch of logged decisions: counts per arm and the sum of log P(chosen arm).

        For a policy whose split moves between decisions (a bandit): each decision's factor
        is the mixture's predictive of its arm over the propensity it was logged with, so
        only the chosen arm's probability is needed. Valid whatever the split did; its power
        is against a split that is in fact fixed (a fixed split, a settled bandit, sticky
        routing gone wrong), not against a bias that moves with the split. A new arm
        restarts the test.
        """
        if any(v < 0 for v in assigned.values()) or not math.isfinite(sum_log_propensity):
            raise InvalidSrmSettingsError(f"bad batch: {dict(assigned)}, {sum_log_propensity}")
        arms = sorted(set(self.arms) | {a for a, v in assigned.items() if v > 0})
        if arms != self.arms:
            self.reset(arms)
        x = np.array([float(assigned.get(a, 0)) for a in arms])
        if x.sum() == 0:
            return self.mismatch
        if self.prior.size == 0:
            self.prior = np.full(len(arms), self.concentration / len(arms))
        a = self.prior + self.counts
        self.log_e += _log_multibeta(a + x) - _log_multibeta(a) - sum_log_propensity
        self.counts += x
        self.units += int(x.sum())
        return self.mismatch

    def describe(self) -> str:
        observed = self.counts / max(self.counts.sum(), 1.0)
        shares = ", ".join(f"{a} {s:.3f}" for a, s in zip(self.arms, observed, strict=True))
        verdict = "mismatch" if self.mismatch else "no mismatch"
        return (
            f"{verdict}: e={self.e_value:.3g} (alarm at {1 / self.alpha_level:g}, always valid) "
            f"over {self.units:,} units; observed shares {shares}"
        )
