"""What each decision logs beside its arm: the segment, the propensity, the policy.

A segment is the values of the declared request features (``segment_by``), e.g.
``region=north``: the unit of the per-segment report and of contextual Thompson sampling.
The propensity is the chosen arm's share in the allocation in force, which the service
computes once per statistics refresh by Monte Carlo with the policy's own sampler
(``Policy.allocation``), never per request.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rollout.policies.base import DEFAULT_ALLOCATION_DRAWS, Policy
from rollout.store import DecisionRow

if TYPE_CHECKING:
    from rollout.schemas import PredictRequest
    from rollout.service import RolloutService

MAX_SEGMENT_CHARS = 200
_POLICY_LABELS: weakref.WeakKeyDictionary[Policy, str] = weakref.WeakKeyDictionary()


def segment_of(features: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """Return the segment label of a request's features, or None when none is declared."""
    if not keys:
        return None
    label = "|".join(f"{k}={features.get(k)}" for k in keys)
    return label[:MAX_SEGMENT_CHARS]


def propensity(allocation: Mapping[str, float], arm: str) -> float:
    """Return P(the policy chose ``arm``) as the allocation in force states it.

    A Monte-Carlo share can round a rarely chosen arm to 0 though it was chosen: floor it
    at half a draw, so an inverse-propensity weight stays finite.
    """
    return max(float(allocation.get(arm, 0.0)), 0.5 / DEFAULT_ALLOCATION_DRAWS)


def policy_label(policy: Policy) -> str:
    """Return the policy's name and parameters as compact JSON (computed once per policy)."""
    label = _POLICY_LABELS.get(policy)
    if label is None:
        label = json.dumps({"name": policy.name, "params": policy.params}, default=str)[:500]
        _POLICY_LABELS[policy] = label
    return label


def decision(
    svc: RolloutService,
    request_id: str,
    arm: str,
    now: float,
    req: PredictRequest,
    features: Mapping[str, Any],
) -> DecisionRow:
    """Return the row to log for one decision: arm, unit, propensity, policy, segment."""
    return DecisionRow(
        request_id,
        arm,
        now,
        req.unit_id,
        propensity(svc.allocation, arm),
        policy_label(svc.policy),
        segment_of(features, svc.settings.segment_by),
    )
