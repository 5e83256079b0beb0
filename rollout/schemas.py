"""Request and response bodies of the rollout HTTP API (what /docs shows)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    model_validator,
)


def jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON types (anything else as its ``str``)."""
    return json.loads(json.dumps(value, default=str))


MAX_PREDICT_ROWS = 1000  # rows in one /predict batch
MAX_FEEDBACK_ROWS = 5000  # rows in one /feedback batch

Scalar = float | int | str | bool | None
Identifier = Annotated[str, Field(min_length=1, max_length=200)]
MetricName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
MetricValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]
EntityValue = Annotated[str, Field(max_length=200)] | Annotated[int, Field(ge=-(2**63), lt=2**63)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Strict):
    """One row to score: features inline, or an entity key resolved through Feast."""

    features: dict[str, Any] | None = Field(
        default=None,
        max_length=1000,
        description="Feature name -> value, as in the model's signature.",
    )
    entity: dict[Identifier, EntityValue] | None = Field(
        default=None,
        max_length=10,
        description="Entity key, e.g. {'customer_id': 100001}, looked up in Feast.",
    )
    unit_id: Identifier | None = Field(
        default=None, description="Sticky unit: the same unit gets the same arm."
    )
    request_id: Identifier | None = Field(
        default=None, description="Your own id for this request (feedback names it)."
    )

    @model_validator(mode="after")
    def _features_or_entity(self) -> PredictRequest:
        if (self.features is None) == (self.entity is None):
            raise ValueError("give exactly one of 'features' or 'entity'")
        return self


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    request_id: str
    arm: str
    model: ModelRef
    prediction: Scalar
    score: float | None = None


def _single_or_batch(value: Any) -> str:
    return "batch" if isinstance(value, list) else "single"


PredictBody = Annotated[
    Annotated[PredictRequest, Tag("single")]
    | Annotated[
        list[PredictRequest], Field(min_length=1, max_length=MAX_PREDICT_ROWS), Tag("batch")
    ],
    Discriminator(_single_or_batch),
]


class FeedbackRequest(_Strict):
    """An outcome for an earlier prediction."""

    request_id: Identifier
    reward: float = Field(
        strict=True,  # true/false or "1" are refused, not read as 1.0
        allow_inf_nan=False,
        description="In [0, 1] for Bernoulli policies, any real otherwise.",
    )
    metrics: dict[MetricName, MetricValue] | None = Field(
        default=None,
        max_length=8,
        description="Other outcomes of the same request by name (e.g. a basket value): "
        "what the guardrail metrics a promotion must not make worse read "
        "(BANDITFLOW_GUARDRAIL_METRICS).",
    )


FeedbackStatus = Literal["accepted", "duplicate", "unknown", "window_closed"]


class FeedbackResponse(BaseModel):
    request_id: str
    status: FeedbackStatus
    arm: str | None = None


FeedbackBody = Annotated[
    Annotated[FeedbackRequest, Tag("single")]
    | Annotated[
        list[FeedbackRequest], Field(min_length=1, max_length=MAX_FEEDBACK_ROWS), Tag("batch")
    ],
    Discriminator(_single_or_batch),
]


class ShadowComparison(BaseModel):
    compared: int
    agreement: float | None
    mean_abs_score_diff: float | None


class ArmReport(BaseModel):
    arm: str
    model: ModelRef
    role: str
    in_rotation: bool
    out_of_rotation_reason: str | None = None
    served: int
    pulls: float = Field(description="Outcomes counted (discounted when the policy discounts).")
    outcomes: int
    reward_sum: float
    mean: float | None
    traffic_share: float | None = Field(description="Share of decisions in the recent window.")
    intended_share: float | None = Field(description="The policy's allocation now.")
    p_best: float | None = None
    expected_loss: float | None = None
    errors: int = 0
    shadow: ShadowComparison | None = None


class Recommendation(BaseModel):
    action: str
    arm: str
    reason: str
    applied: bool = False


class ArmsResponse(BaseModel):
    model_name: str
    policy: str
    policy_params: dict[str, Any]
    frozen: bool
    auto_decisions: bool
    share_window_s: float
    arms: list[ArmReport]
    recommendations: list[Recommendation]
    # The rule's stated error rates, the SRM check and the champion's watches.
    decisions: dict[str, Any] = Field(default_factory=dict)
    # Per declared segment (segment_by): each arm's counts, mean, share and P(best).
    segments: list[dict[str, Any]] = Field(default_factory=list)


class AddArmRequest(_Strict):
    version: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^v?[0-9]+$")] = Field(
        description="Model version to add, e.g. '3' or 'v3'."
    )
    shadow: StrictBool = Field(default=False, description="Score alongside, off the response path.")


class PolicyRequest(_Strict):
    name: Identifier
    params: dict[str, Any] = Field(default_factory=dict)


class PromoteRequest(_Strict):
    arm: Annotated[str, Field(min_length=1, max_length=20, pattern=r"^v?[0-9]+$")]
    reason: Annotated[str, Field(max_length=500)] = "promoted by an operator"


class RollbackRequest(_Strict):
    reason: Annotated[str, Field(max_length=500)] = "rolled back by an operator"


class FreezeRequest(_Strict):
    frozen: StrictBool = True


class AdminResponse(BaseModel):
    ok: bool = True
    detail: str
    result: dict[str, Any] = Field(default_factory=dict)


class ErrorItem(BaseModel):
    """One problem with a rejected request: where it is and what is wrong."""

    loc: list[str | int]
    msg: str
    type: str
    input: str | None = Field(default=None, description="A short excerpt of the bad value.")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body: a code, a message; 422s also list each problem."""

    model_config = ConfigDict(extra="allow")

    error: str
    detail: str
    errors: list[ErrorItem] | None = None
