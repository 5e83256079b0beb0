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

In the live service (``BANDITFLOW_GUARDRAIL_METRICS``) the guardrails read the store's
counts since each arm joined (``rollout.store_health``): ``error_rate`` is failed
predictions over predictions made; ``latency_p99`` is the share of predictions slower than
``threshold_ms`` (default: ``BANDITFLOW_GUARDRAIL_MAX_P99_MS``), a rate like any other, and
``p99 <= threshold_ms`` exactly when that share is at most 1 %. The threshold is fixed in
advance on purpose: choosing it from the data (say, the champion's running p99) would move
the null between looks and void the e-process's guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
    threshold_ms: float | None = None  # latency_p99: the share slower than this is tested

    def __post_init__(self) -> None:
        if not (isinstance(self.margin, int | float) and math.isfinite(self.margin)) or not (
            self.margin > 0
        ):
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


def verdict(
    m: GuardrailMetric, champion: ArmStats | None, challenger: ArmStats | None, log_bar: float
) -> dict[str, Any]:
    """Return one guardrail's verdict on a challenger: pass / fail / no data, and why."""
    if champion is None or challenger is None or min(champion.pulls, challenger.pulls) <= 0:
        return {"verdict": "no data", "margin": m.margin, "e_value": None, "bar": math.exp(log_bar)}
    log_e = m.log_evidence(champion, challenger)
    return {
        "verdict": "pass" if log_e >= log_bar else "fail",
        "challenger": challenger.mean,
        "champion": champion.mean,
        "counts": [challenger.pulls, champion.pulls],
        "margin": m.margin,
        "better": m.better,
        "threshold_ms": m.threshold_ms,
        "e_value": math.exp(min(log_e, 700.0)),
        "bar": math.exp(log_bar),
    }


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
            v = verdict(m, per_arm.get(champion), per_arm.get(arm), bar)
            if v["verdict"] == "no data":
                return f"no {m.name} measured on {arm} and the champion {champion}"
            if v["verdict"] == "fail":
                return (
                    f"{m.name} not shown within {m.margin:g} of the champion's "
                    f"({v['challenger']:.4g} vs {v['champion']:.4g}; non-inferiority e="
                    f"{v['e_value']:.3g} < {v['bar']:.3g})"
                )
        return None

    return block


BUILT_IN = ("error_rate", "latency_p99")
_PARAMS = {"margin", "threshold_ms", "scale", "better"}


def from_settings(
    spec: Mapping[str, Mapping[str, Any]], default_threshold_ms: float
) -> list[GuardrailMetric]:
    """Return the live guardrail metrics ``BANDITFLOW_GUARDRAIL_METRICS`` declares.

    ``{"error_rate": {"margin": 0.01}, "latency_p99": {"margin": 0.01, "threshold_ms":
    250}, "basket": {"margin": 0.5, "better": "higher"}}``: the two the service measures
    are "lower is better" rates (margins in rate points); any other name is an outcome
    that feedback reports under ``metrics`` (margin in its units). Raises
    ``InvalidDecisionRuleError`` naming what to fix.
    """
    out = []
    for name, params in spec.items():
        if not isinstance(params, Mapping) or set(params) - _PARAMS or "margin" not in params:
            raise InvalidDecisionRuleError(
                f"guardrail metric {name!r} takes a margin (and threshold_ms, better, scale), "
                f"got {params!r}"
            )
        scale = params.get("scale", 0.1)
        if not (isinstance(scale, int | float) and scale > 0):
            raise InvalidDecisionRuleError(f"scale of {name!r} must be > 0, got {scale!r}")
        if name not in BUILT_IN:
            out.append(
                GuardrailMetric(
                    name,
                    margin=params["margin"],
                    better=params.get("better", "higher"),
                    mixture_scale=float(scale),
                )
            )
            continue
        threshold = (
            None if name == "error_rate" else params.get("threshold_ms", default_threshold_ms)
        )
        if name != "error_rate" and not (isinstance(threshold, int | float) and threshold > 0):
            raise InvalidDecisionRuleError(
                f"threshold_ms of {name!r} must be > 0, got {threshold!r}"
            )
        if params.get("better", "lower") != "lower":
            raise InvalidDecisionRuleError(f"{name} is a rate where lower is better")
        out.append(
            GuardrailMetric(
                name,
                margin=params["margin"],
                kind="bernoulli",
                mixture_scale=float(scale),
                threshold_ms=None if threshold is None else float(threshold),
            )
        )
    return out


def live_stats(
    metrics: Sequence[GuardrailMetric],
    attempts: Mapping[str, tuple[int, int]],
    latency: Mapping[str, Mapping[int, int]],
    reported: Mapping[str, Mapping[str, tuple[int, float, float]]] | None = None,
) -> dict[str, dict[str, ArmStats]]:
    """Return each live metric's sums per arm from the store's counts since the arm joined.

    ``attempts``: ``{arm: (predictions made, failed)}``; ``latency``: ``{arm: {bucket: n}}``
    (both rates of 0/1 outcomes: the sum of squares is the sum); ``reported``: the other
    outcomes feedback reported, ``{metric: {arm: (count, sum, sum of squares)}}``.
    """
    from rollout.store_health import slower_than

    out: dict[str, dict[str, ArmStats]] = {}
    for m in metrics:
        if m.name not in BUILT_IN:
            cells = (reported or {}).get(m.name, {})
            out[m.name] = {
                a: ArmStats(a, float(n), s, max(q, 0.0)) for a, (n, s, q) in cells.items()
            }
        elif m.name == "error_rate":
            out[m.name] = {
                a: ArmStats(a, float(n), float(e), float(e)) for a, (n, e) in attempts.items()
            }
        else:
            assert m.threshold_ms is not None
            per_arm = {}
            for a, buckets in latency.items():
                slow = float(slower_than(buckets, m.threshold_ms)[0])
                per_arm[a] = ArmStats(a, float(sum(buckets.values())), slow, slow)
            out[m.name] = per_arm
    return out
