"""Off-policy evaluation: what another policy would have earned on the logged decisions.

Three estimators over logged ``(segment, arm, propensity, reward)``, each with a normal
confidence interval from its per-decision terms:

- IPS (inverse propensity scoring; Horvitz and Thompson 1952):
  ``V = mean(w_i r_i)`` with ``w_i = pi(a_i | x_i) / p_i``.
- SNIPS (self-normalised IPS; Swaminathan and Joachims 2015):
  ``V = sum(w_i r_i) / sum(w_i)``; interval by the delta method.
- DR (doubly robust; Dudik, Langford and Li 2011):
  ``V = mean(sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)))`` with ``q`` a reward
  model, here the per-(segment, arm) mean shrunk toward the arm's mean, cross-fitted over
  two folds so a decision's own reward never enters its ``q``.

Open Bandit Pipeline (obp) implements these, but its last release that installs on
Python 3.11 (0.4.1, 2021; 0.5.x needs Python < 3.11) pulls seaborn and imports torch at
import time; the three formulas are a few lines of numpy each, so they live here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from rollout.policies.base import ArmStats, Policy


class OffPolicyError(ValueError):
    """Logged data or a target policy that cannot be evaluated."""


@dataclass(frozen=True)
class Logged:
    """Logged decisions as arrays: arm index, segment index, propensity, reward."""

    arms: list[str]
    segments: list[str]
    action: np.ndarray  # (n,) int
    segment: np.ndarray  # (n,) int
    propensity: np.ndarray  # (n,) float in (0, 1]
    reward: np.ndarray  # (n,) float

    @classmethod
    def from_rows(
        cls,
        arm: Sequence[str],
        segment: Sequence[str | None],
        propensity: Sequence[float | None],
        reward: Sequence[float | None],
    ) -> Logged:
        """Build from rows; decisions without a propensity or a reward are left out."""
        keep = [
            i
            for i in range(len(arm))
            if propensity[i] is not None
            and reward[i] is not None
            and 0 < float(propensity[i]) <= 1  # type: ignore[arg-type]
            and math.isfinite(float(reward[i]))  # type: ignore[arg-type]
        ]
        if not keep:
            raise OffPolicyError("no logged decision has both a propensity and a reward")
        arms = sorted({arm[i] for i in keep})
        segs = sorted({str(segment[i] or "") for i in keep})
        a_index, s_index = {a: k for k, a in enumerate(arms)}, {s: k for k, s in enumerate(segs)}
        return cls(
            arms=arms,
            segments=segs,
            action=np.array([a_index[arm[i]] for i in keep]),
            segment=np.array([s_index[str(segment[i] or "")] for i in keep]),
            propensity=np.array([float(propensity[i]) for i in keep]),  # type: ignore[arg-type]
            reward=np.array([float(reward[i]) for i in keep]),  # type: ignore[arg-type]
        )

    @property
    def n(self) -> int:
        return len(self.action)


@dataclass(frozen=True)
class Estimate:
    """One estimator's value and confidence interval."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    n: int


def _normal(name: str, terms: np.ndarray, level: float, centre: float | None = None) -> Estimate:
    n = len(terms)
    value = float(terms.mean()) if centre is None else centre
    half = float(ndtri(0.5 + level / 2) * terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Estimate(name, value, value - half, value + half, n)


def weights(logged: Logged, target: np.ndarray) -> np.ndarray:
    """Return ``pi(a_i | x_i) / p_i`` for a target given as (segments, arms) probabilities."""
    if target.shape != (len(logged.segments), len(logged.arms)):
        raise OffPolicyError(
            f"target must give (segments, arms) = {(len(logged.segments), len(logged.arms))} "
            f"probabilities, got shape {target.shape}"
        )
    if (target < 0).any() or not np.allclose(target.sum(axis=1), 1.0):
        raise OffPolicyError("each segment's target probabilities must be >= 0 and sum to 1")
    return target[logged.segment, logged.action] / logged.propensity


def ips(logged: Logged, target: np.ndarray, level: float = 0.95) -> Estimate:
    return _normal("ips", weights(logged, target) * logged.reward, level)


def snips(logged: Logged, target: np.ndarray, level: float = 0.95) -> Estimate:
    w = weights(logged, target)
    if w.sum() <= 0:
        raise OffPolicyError("the target gives no weight to any logged decision")
    value = float((w * logged.reward).sum() / w.sum())
    influence = w * (logged.reward - value) / w.mean()
    est = _normal("snips", influence, level, centre=value)
    return est


def reward_model(logged: Logged, folds: int = 2, prior: float = 20.0, seed: int = 0) -> np.ndarray:
    """Return cross-fitted q(x_i, a) for every decision and arm: shape (n, arms).

    Per (segment, arm) mean, shrunk toward the arm's overall mean with ``prior``
    pseudo-outcomes, fitted on the other folds.
    """
    n, k, m = logged.n, len(logged.arms), len(logged.segments)
    fold = np.random.default_rng(seed).integers(folds, size=n)
    q = np.zeros((n, k))
    for f in range(folds):
        train, test = fold != f, fold == f
        a, s, r = logged.action[train], logged.segment[train], logged.reward[train]
        arm_n = np.bincount(a, minlength=k)
        arm_mean = np.bincount(a, weights=r, minlength=k) / np.maximum(arm_n, 1)
        cell = s * k + a
        cell_n = np.bincount(cell, minlength=m * k).reshape(m, k)
        cell_sum = np.bincount(cell, weights=r, minlength=m * k).reshape(m, k)
        shrunk = (cell_sum + prior * arm_mean) / (cell_n + prior)
        q[test] = shrunk[logged.segment[test]]
    return q


def doubly_robust(logged: Logged, target: np.ndarray, level: float = 0.95) -> Estimate:
    w = weights(logged, target)
    q = reward_model(logged)
    direct = (target[logged.segment] * q).sum(axis=1)
    q_logged = q[np.arange(logged.n), logged.action]
    return _normal("dr", direct + w * (logged.reward - q_logged), level)


def evaluate(logged: Logged, target: np.ndarray, level: float = 0.95) -> list[Estimate]:
    """Return the IPS, SNIPS and DR estimates of the target's mean reward per decision."""
    if not 0 < level < 1:
        raise OffPolicyError(f"level must be in (0, 1), got {level=}")
    return [
        ips(logged, target, level),
        snips(logged, target, level),
        doubly_robust(logged, target, level),
    ]


def on_policy_value(logged: Logged, level: float = 0.95) -> Estimate:
    """Return the logging policy's own mean reward (for comparison)."""
    return _normal("logged", logged.reward, level)


def policy_target(
    logged: Logged,
    policy: Policy,
    rng: np.random.Generator,
    *,
    per_segment: bool,
    arms: Sequence[str] | None = None,
) -> np.ndarray:
    """Return (segments, arms) probabilities: the policy's allocation on the logged outcomes.

    The policy as it would route now, on the plain sums of the logged rewards (of each
    segment when ``per_segment``, as a contextual policy does); ``arms`` restricts it to a
    subset of the logged arms (the others get no traffic).
    """
    keep = list(arms) if arms is not None else list(logged.arms)
    unknown = sorted(set(keep) - set(logged.arms))
    if unknown or not keep:
        raise OffPolicyError(f"arms {unknown or keep} are not among the logged {logged.arms}")
    rows = np.zeros((len(logged.segments), len(logged.arms)))
    for s in range(len(logged.segments)):
        mask = logged.segment == s if per_segment else np.ones(logged.n, dtype=bool)
        stats = []
        for name in keep:
            hit = mask & (logged.action == logged.arms.index(name))
            r = logged.reward[hit]
            stats.append(ArmStats(name, float(hit.sum()), float(r.sum()), float((r**2).sum())))
        share = policy.allocation(stats, rng)
        for name in keep:
            rows[s, logged.arms.index(name)] = share[name]
    return rows / rows.sum(axis=1, keepdims=True)
