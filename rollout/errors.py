"""The rollout service's exception tree; one handler maps it to HTTP status codes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

EXCERPT_CHARS = 80  # an error body quotes at most this much of a bad value


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """Return a short, always-encodable description of ``value`` for an error message."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf: not JSON, but fine inside a message string
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # repr() of a huge int may raise
    try:
        text = repr(value)
    except Exception:  # a repr that fails (very long ints): describe the type only
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listing(names: Sequence[str], limit: int = 10) -> str:
    """Join names for a message, at most ``limit`` of them (each cut to a short excerpt)."""
    shown = [n if len(n) <= 40 else n[:37] + "..." for n in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


class RolloutError(Exception):
    """Base of every error the service reports to a client; ``status`` is its HTTP code."""

    status = 500
    code = "rollout_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.message}
        if self.details:
            body.update(self.details)
        return body


class BadInput(RolloutError):
    """The request is well-formed JSON but its values cannot be used (422)."""

    status = 422
    code = "bad_input"


class FeatureError(BadInput):
    """Features are missing, unexpected or of the wrong type for the model's signature."""

    code = "bad_features"


class RewardOutOfRange(BadInput):
    """A reward lies outside the range the policy accepts."""

    code = "reward_out_of_range"


class UnknownRequest(RolloutError):
    """Feedback names a request id this service never issued or recorded (404)."""

    status = 404
    code = "unknown_request_id"


class UnknownArm(RolloutError):
    """An admin call names an arm or model version that does not exist (404)."""

    status = 404
    code = "unknown_arm"


class FeedbackWindowClosed(RolloutError):
    """Feedback arrived after the configured window closed (410)."""

    status = 410
    code = "feedback_window_closed"


class Conflict(RolloutError):
    """The admin action conflicts with the current arm set (409)."""

    status = 409
    code = "conflict"


class NotAuthenticated(RolloutError):
    """No bearer token on an admin route (401)."""

    status = 401
    code = "not_authenticated"


class Forbidden(RolloutError):
    """A wrong bearer token, or admin routes disabled (403)."""

    status = 403
    code = "forbidden"


class NoModelAvailable(RolloutError):
    """No arm can serve: the champion failed to load or predict (503)."""

    status = 503
    code = "no_model_available"


class EntityLookupError(RolloutError):
    """Entity lookups are not configured, or the entity was not found (422)."""

    status = 422
    code = "entity_lookup_failed"


class StoreUnavailable(RolloutError):
    """The state store cannot be reached (503)."""

    status = 503
    code = "store_unavailable"
