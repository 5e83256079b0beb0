"""Decide from the arms' statistics whether a challenger is promoted, retired or kept.

Why not just "promote at P(best) >= 0.95": checked after every outcome, that rule
promotes a *worse* challenger far more often than 5 % (STACK.md; 5 % vs 4 % conversion:
about 19 % in simulation), because a posterior probability is not a guarantee over
repeated looks. Here a promotion needs, on top of P(best) and expected loss:

- ``min_outcomes`` outcomes on the champion and on the challenger, and
- always-valid evidence that the challenger beats the champion: a one-sided mixture
  sequential probability ratio test (mSPRT; Robbins 1970, Johari et al. 2017) on the
  difference of means under a normal approximation. Its statistic is an e-process under
  "the challenger is not better", so by Ville's inequality the chance that it *ever*
  crosses ``1 / false_promotion_rate`` is at most ``false_promotion_rate`` however often
  ``decide`` is called. With several challengers the rate is split between them
  (Bonferroni), so it bounds the chance of promoting any challenger that is not better.

Retirement mirrors it with ``false_retirement_rate`` (laxer by default: retiring a better
challenger only costs an opportunity) plus a P(best) floor; ``benchmarks/rollout_regret.py``
measures both rates under continuous checking.

Statistics must be plain sums (discounting shrinks the evidence to ``1 / (1 - discount)``
outcomes), the champion's over the challenger's period (rollout.decisions' baselines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import log_ndtr

from rollout.policies.base import (
    REWARD_KINDS,
    ArmStats,
    Policy,
    PolicyError,
    RewardKind,
    flat_prior_draws,
    stats_arrays,
)

Action = Literal["promote", "retire", "keep"]
DEFAULT_DRAWS = 20_000


class InvalidDecisionRuleError(PolicyError):
    """A decision rule or guardrail setting is out of range."""


@dataclass(frozen=True)
class ArmSummary:
    """One arm's posterior, as ``GET /arms`` shows it."""

    arm: str
    pulls: float
    mean: float
    p_best: float
    expected_loss: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Decision:
    """What to do with one arm, and why (the registry records ``reason``)."""

    action: Action
    arm: str
    reason: str
    p_best: float = math.nan
    expected_loss: float = math.nan
    evidence: float = math.nan  # the mSPRT e-value that the arm beats the champion


def _check_kind(reward_kind: str) -> None:
    if reward_kind not in REWARD_KINDS:
        raise InvalidDecisionRuleError(
            f"reward_kind must be one of {REWARD_KINDS}, got {reward_kind=}"
        )


def posterior_draws(
    arms: Sequence[ArmStats],
    *,
    rng: np.random.Generator,
    draws: int,
    policy: Policy | None = None,
    reward_kind: RewardKind | None = None,
) -> np.ndarray:
    """Return ``draws`` joint samples (draws, arms) of the arms' mean rewards.

    From the configured policy's own posterior (its prior: ``Policy.posterior_draws``);
    without a policy, from the flat prior of ``reward_kind``.
    """
    if policy is not None:
        return np.asarray(policy.posterior_draws(arms, rng, draws), dtype=float)
    kind = _kind(policy, reward_kind)
    return flat_prior_draws(arms, kind, rng, draws)


def _kind(policy: Policy | None, reward_kind: str | None) -> RewardKind:
    kind = policy.reward_kind if policy is not None else reward_kind
    if kind is None:
        raise InvalidDecisionRuleError("pass the policy (or a reward_kind) to decide from")
    _check_kind(kind)
    return kind  # type: ignore[return-value]


def posterior_summary(
    arms: Sequence[ArmStats],
    *,
    rng: np.random.Generator,
    draws: int = DEFAULT_DRAWS,
    policy: Policy | None = None,
    reward_kind: RewardKind | None = None,
) -> dict[str, ArmSummary]:
    """Return each arm's posterior mean, P(best), expected loss and 95 % interval.

    Monte-Carlo over ``draws`` joint posterior samples. Expected loss is
    E[max_j mean_j - mean_arm]: what serving only this arm costs per outcome, in reward units.
    """
    if draws < 1:
        raise InvalidDecisionRuleError(f"draws must be >= 1, got {draws=}")
    samples = posterior_draws(arms, rng=rng, draws=draws, policy=policy, reward_kind=reward_kind)
    best = np.bincount(samples.argmax(axis=1), minlength=len(arms)) / draws
    loss = (samples.max(axis=1, keepdims=True) - samples).mean(axis=0)
    low, high = np.quantile(samples, [0.025, 0.975], axis=0)
    return {
        a.arm: ArmSummary(
            arm=a.arm,
            pulls=a.pulls,
            mean=float(samples[:, i].mean()),
            p_best=float(best[i]),
            expected_loss=float(loss[i]),
            ci_low=float(low[i]),
            ci_high=float(high[i]),
        )
        for i, a in enumerate(arms)
    }


def _variance(pulls: np.ndarray, sums: np.ndarray, sq: np.ndarray, kind: str) -> np.ndarray:
    if kind == "bernoulli":
        # Shrunk toward 1/2 so that an arm with 0 successes still has a variance.
        p = (sums + 0.5) / (pulls + 1.0)
        return p * (1.0 - p)
    safe = np.maximum(pulls, 2.0)
    return np.maximum(sq - sums**2 / np.maximum(pulls, 1.0), 0.0) / (safe - 1.0) + 1e-12


def log_superiority_evidence(
    champion: tuple[np.ndarray, np.ndarray, np.ndarray] | ArmStats,
    challenger: tuple[np.ndarray, np.ndarray, np.ndarray] | ArmStats,
    *,
    reward_kind: RewardKind,
    mixture_scale: float,
    margin: float = 0.0,
) -> np.ndarray:
    """Return log of the one-sided mSPRT e-value that challenger's mean > champion's + margin.

    Arguments are ArmStats or (pulls, reward_sum, reward_sq_sum) arrays (vectorised, for
    simulations). With Z the difference of means, v its variance and tau the mixing
    scale (``mixture_scale`` standard deviations of the reward), the normal likelihood
    ratio mixed over a half-normal(0, tau^2) prior on the lift is
    ``2 sqrt(v/(v+tau^2)) exp(tau^2 Z^2 / (2 v (v+tau^2))) Phi(Z tau / sqrt(v (v+tau^2)))``.
    """
    _check_kind(reward_kind)
    (na, sa, qa), (nb, sb, qb) = (
        (np.asarray(x.pulls), np.asarray(x.reward_sum), np.asarray(x.reward_sq_sum))
        if isinstance(x, ArmStats)
        else tuple(np.asarray(v, dtype=float) for v in x)
        for x in (champion, challenger)
    )
    var_a, var_b = _variance(na, sa, qa, reward_kind), _variance(nb, sb, qb, reward_kind)
    na, nb = np.maximum(na, 1.0), np.maximum(nb, 1.0)
    v = var_a / na + var_b / nb
    lift = sb / nb - sa / na - margin
    tau2 = mixture_scale**2 * (var_a + var_b) / 2.0
    r = tau2 / v
    z = lift / np.sqrt(v)
    return (
        math.log(2.0)
        - 0.5 * np.log1p(r)
        + z**2 * r / (2.0 * (1.0 + r))
        + log_ndtr(z * np.sqrt(r / (1.0 + r)))
    )


@dataclass(frozen=True)
class DecisionRule:
    """When a challenger is promoted or retired; validated on construction.

    - ``false_promotion_rate``: the largest chance of ever promoting a challenger that is
      not better than the champion by ``min_improvement``, under checking after every
      outcome (always-valid; split between challengers).
    - ``false_retirement_rate``: the same for retiring a challenger that is not worse.
    - ``p_best_threshold`` / ``max_expected_loss`` (reward units): the Bayesian gates a
      promotion must also pass; ``retire_p_best`` the P(best) floor for retirement.
    - ``min_outcomes``: outcomes needed on both arms before any decision (the normal
      approximation behind the sequential test needs them; 1000 suits conversion rates).
    - ``mixture_scale``: the lift, in standard deviations of the reward, the sequential
      test is tuned to detect fastest (0.05 ~ 1 point on a 5 % conversion rate).
    """

    min_outcomes: int = 1000
    p_best_threshold: float = 0.95
    max_expected_loss: float = 0.001
    false_promotion_rate: float = 0.05
    retire_p_best: float = 0.05
    false_retirement_rate: float = 0.10
    min_improvement: float = 0.0
    mixture_scale: float = 0.05
    draws: int = DEFAULT_DRAWS

    def __post_init__(self) -> None:
        checks = {
            "min_outcomes": self.min_outcomes >= 1,
            "p_best_threshold": 0.5 < self.p_best_threshold < 1.0,
            "max_expected_loss": self.max_expected_loss > 0,
            "false_promotion_rate": 0.0 < self.false_promotion_rate < 1.0,
            "retire_p_best": 0.0 <= self.retire_p_best < 0.5,
            "false_retirement_rate": 0.0 < self.false_retirement_rate < 1.0,
            "min_improvement": self.min_improvement >= 0,
            "mixture_scale": self.mixture_scale > 0,
            "draws": self.draws >= 100,
        }
        ranges = {
            "min_outcomes": ">= 1",
            "p_best_threshold": "in (0.5, 1)",
            "max_expected_loss": "> 0",
            "false_promotion_rate": "in (0, 1)",
            "retire_p_best": "in [0, 0.5)",
            "false_retirement_rate": "in (0, 1)",
            "min_improvement": ">= 0",
            "mixture_scale": "> 0",
            "draws": ">= 100",
        }
        for field, ok in checks.items():
            value = getattr(self, field)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise InvalidDecisionRuleError(f"{field} must be {ranges[field]}, got {value!r}")


def _keep(
    arm: str, reason: str, summary: ArmSummary | None = None, e: float = math.nan
) -> Decision:
    if summary is None:
        return Decision("keep", arm, reason)
    return Decision("keep", arm, reason, summary.p_best, summary.expected_loss, e)


def decide(
    champion: ArmStats,
    challengers: Sequence[ArmStats],
    rule: DecisionRule,
    rng: np.random.Generator,
    *,
    policy: Policy | None = None,
    reward_kind: RewardKind | None = None,
    blocker: Callable[[str], str | None] | None = None,
    concurrent: Mapping[str, ArmStats] | None = None,
) -> list[Decision]:
    """Return one decision per challenger (in order); at most one is "promote".

    A promotion needs P(the challenger beats the champion) >= ``p_best_threshold``, an
    expected loss (against the best of all arms) within ``max_expected_loss``, and the
    always-valid evidence. P(best) among *all* arms would block every promotion when two
    good challengers are nearly equal (each near 0.5) while both clearly beat the
    champion; the expected-loss bound still keeps a clearly worse one of them from being
    chosen. When several qualify, the one with the highest P(best) is promoted; the others
    are judged against the new champion on the next call.

    Pure: call it as often as you like; the wrong-promotion rate stays at the stated one.
    Pass the *plain* (undiscounted) statistics (``StoredStats.plain_stats``) and the
    configured policy, whose posterior gives P(best) and expected loss. ``blocker(arm)``
    may veto a promotion with a reason (``rollout.multimetric``: a guardrail metric not
    shown non-inferior); the best of the promotions it lets through is chosen.
    ``concurrent[arm]``: the champion's sums since that challenger joined (same period).
    """
    reward_kind = _kind(policy, reward_kind)
    if not challengers:
        return []
    stats_arrays([champion, *challengers])  # unique names, valid counts
    vs = {ch.arm: (concurrent or {}).get(ch.arm, champion) for ch in challengers}
    tables: dict[ArmStats, dict[str, ArmSummary]] = {}  # one per champion period
    for c in dict.fromkeys(vs.values()):
        tables[c] = posterior_summary(
            [c, *challengers], rng=rng, draws=rule.draws, policy=policy, reward_kind=reward_kind
        )
    summary = {a: tables[c][a] for a, c in vs.items()}
    bars = _Bars(
        log_promotion_bar(rule, len(challengers)),
        math.log(len(challengers) / rule.false_retirement_rate),
    )
    decisions = []
    for ch in challengers:
        head_to_head = posterior_summary(
            [vs[ch.arm], ch], rng=rng, draws=rule.draws, policy=policy, reward_kind=reward_kind
        )[ch.arm].p_best
        d = _judge(vs[ch.arm], ch, summary[ch.arm], head_to_head, rule, reward_kind, bars)
        if (veto := blocker(ch.arm) if blocker and d.action == "promote" else None) is not None:
            d = _keep(ch.arm, f"keep {ch.arm}: {veto}", summary[ch.arm], d.evidence)
        decisions.append(d)
    return _one_promotion(decisions, summary)


def log_promotion_bar(rule: DecisionRule, n_challengers: int) -> float:
    """Return the log e-value a challenger must reach: the rate split between challengers."""
    return math.log(max(n_challengers, 1) / rule.false_promotion_rate)


@dataclass(frozen=True)
class _Bars:
    """Log e-value thresholds, the error rates already split between the challengers."""

    promote: float
    retire: float


def _judge(
    champion: ArmStats,
    ch: ArmStats,
    s: ArmSummary,
    head_to_head: float,
    rule: DecisionRule,
    reward_kind: RewardKind,
    bars: _Bars,
) -> Decision:
    """Return the decision on one challenger against the champion."""
    if min(ch.pulls, champion.pulls) < rule.min_outcomes:
        return _keep(
            ch.arm,
            f"waiting for outcomes: {ch.pulls:,.0f} on {ch.arm}, {champion.pulls:,.0f} "
            f"on the champion {champion.arm}, {rule.min_outcomes:,} needed on each",
            s,
        )
    scale = rule.mixture_scale
    log_up = float(
        log_superiority_evidence(
            champion, ch, reward_kind=reward_kind, mixture_scale=scale, margin=rule.min_improvement
        )
    )
    log_down = float(
        log_superiority_evidence(ch, champion, reward_kind=reward_kind, mixture_scale=scale)
    )
    e_up = math.exp(min(log_up, 700.0))
    means = f"mean {ch.mean:.4g} vs {champion.mean:.4g} on {champion.arm}"
    counts = f"{ch.pulls:,.0f} vs {champion.pulls:,.0f} outcomes"
    if (
        log_up >= bars.promote
        and head_to_head >= rule.p_best_threshold
        and s.expected_loss <= rule.max_expected_loss
    ):
        reason = (
            f"promote {ch.arm}: P(beats {champion.arm})={head_to_head:.3f} >= "
            f"{rule.p_best_threshold}, P(best)={s.p_best:.3f}, "
            f"expected loss {s.expected_loss:.3g} <= {rule.max_expected_loss:g}, "
            f"sequential evidence it beats {champion.arm} e={e_up:.3g} >= "
            f"{math.exp(bars.promote):.3g} (always valid, wrong-promotion rate "
            f"<= {rule.false_promotion_rate:g}); {means}; {counts}"
        )
        return Decision("promote", ch.arm, reason, s.p_best, s.expected_loss, e_up)
    if log_down >= bars.retire and s.p_best <= rule.retire_p_best:
        reason = (
            f"retire {ch.arm}: P(best)={s.p_best:.3f} <= {rule.retire_p_best}, "
            f"sequential evidence it is worse than {champion.arm} "
            f"e={math.exp(min(log_down, 700.0)):.3g} >= {math.exp(bars.retire):.3g} "
            f"(wrong-retirement rate <= {rule.false_retirement_rate:g}); {means}; {counts}"
        )
        return Decision("retire", ch.arm, reason, s.p_best, s.expected_loss, e_up)
    reason = (
        f"keep {ch.arm}: P(beats {champion.arm})={head_to_head:.3f}, "
        f"P(best)={s.p_best:.3f}, expected loss "
        f"{s.expected_loss:.3g}, evidence it beats {champion.arm} e={e_up:.3g} "
        f"(promote at {math.exp(bars.promote):.3g}); {means}; {counts}"
    )
    return _keep(ch.arm, reason, s, e_up)


def _one_promotion(decisions: list[Decision], summary: dict[str, ArmSummary]) -> list[Decision]:
    """Keep only the best of several qualifying promotions (the highest P(best))."""
    promotions = [d for d in decisions if d.action == "promote"]
    if len(promotions) <= 1:
        return decisions
    chosen = max(promotions, key=lambda d: summary[d.arm].p_best)
    return [
        d
        if d.action != "promote" or d is chosen
        else _keep(
            d.arm,
            f"keep {d.arm}: qualifies too, but {chosen.arm} has the higher P(best) "
            f"({summary[chosen.arm].p_best:.3f} against {summary[d.arm].p_best:.3f})",
            summary[d.arm],
            d.evidence,
        )
        for d in decisions
    ]
