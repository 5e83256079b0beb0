"""One decision over several metrics: better on the success metric, not worse on the others.

A challenger is promoted only when the success metric's always-valid superiority test
passes (``rollout.decide``) AND, for each declared guardrail metric (error rate, p99
latency, a second business metric), an always-valid non-inferiority test passes: the
mSPRT e-value that the challenger is not worse than the champion by more than the metric's
``margin`` reaches ``k / false_promotion_rate`` (k challengers). Promotion is the
intersection of the rejections, so by the intersection-union principle (Berger 1982) the
chance of promoting a challenger for which *any* of the nulls holds (not better, or worse
than a margin on some guardrail) is at most the rate of the test of that null: the stated
``false_promotion_rate`` holds over the whole family with no further split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rollout.decide import DecisionRule, InvalidDecisionRuleError, log_superiority_evidence
from rollout.policies.base import ArmStats, RewardKind

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class GuardrailMetric:
    """A metric a promotion must not make worse than ``margin`` (in the metric's units)."""

    name: str
    margin: float
    better: Direction = "lower"
    kind: RewardKind = "gaussian"
    mixture_scale: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise InvalidDecisionRuleError(
                f"margin of {self.name!r} must be > 0, got {self.margin}"
            )
        if self.better not in ("lower", "higher"):
            raise InvalidDecisionRuleError(
                f"better of {self.name!r} must be 'lower' or 'higher', got {self.better!r}"
            )

    def log_evidence(self, champion: ArmStats, challenger: ArmStats) -> float:
        """Return the log e-value that the challenger is not worse than ``margin``."""
        if self.better == "lower":
            # H1: challenger < champion + margin, i.e. champion beats challenger - margin.
            e = log_superiority_evidence(
                challenger,
                champion,
                reward_kind=self.kind,
                mixture_scale=self.mixture_scale,
                margin=-self.margin,
            )
        else:
            e = log_superiority_evidence(
                champion,
                challenger,
                reward_kind=self.kind,
                mixture_scale=self.mixture_scale,
                margin=-self.margin,
            )
        return float(e)


def guardrail_blocker(
    metrics: Sequence[GuardrailMetric],
    stats: Mapping[str, Mapping[str, ArmStats]],
    champion: str,
    rule: DecisionRule,
    challengers: int,
) -> Callable[[str], str | None]:
    """Return ``decide``'s ``blocker``: why an arm may not be promoted on the guardrails.

    ``stats[metric][arm]``: each metric's sums per arm (count, sum, sum of squares).
    """
    bar = math.log(max(challengers, 1) / rule.false_promotion_rate)

    def block(arm: str) -> str | None:
        for m in metrics:
            per_arm = stats.get(m.name, {})
            if arm not in per_arm or champion not in per_arm:
                return f"no {m.name} measured on {arm} and the champion {champion}"
            log_e = m.log_evidence(per_arm[champion], per_arm[arm])
            if log_e < bar:
                mean_ch, mean_champ = per_arm[arm].mean, per_arm[champion].mean
                return (
                    f"{m.name} not shown within {m.margin:g} of the champion's "
                    f"({mean_ch:.4g} vs {mean_champ:.4g}; non-inferiority e="
                    f"{math.exp(min(log_e, 700.0)):.3g} < {math.exp(bar):.3g})"
                )
        return None

    return block
