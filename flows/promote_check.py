"""The promote-check flow: apply the rollout's decision rule when the service does not.

On a schedule it reads the rollout service's ``GET /arms``. The service computes its
recommendations with ``rollout.decide`` (P(best), expected loss and an always-valid
sequential test); when its automatic decisions are on it acts on them itself and this flow
only records them. When they are off, this flow calls the admin routes: ``POST
/admin/promote`` for a "promote" and ``DELETE /admin/arms/{arm}`` for a "retire". It talks
to the service over HTTP only (DESIGN.md: the halves meet through contracts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from prefect import flow, get_run_logger

from tasks.settings import get_settings


class PromoteCheckError(RuntimeError):
    """The rollout service refused an admin call; the message has its answer."""


@dataclass
class PromoteCheckOutcome:
    """What the check saw and did."""

    status: str  # unreachable | automatic | applied | nothing-to-do
    model: str | None = None
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""


def apply_recommendations(
    arms: dict[str, Any], client: httpx.Client, *, dry_run: bool = False
) -> PromoteCheckOutcome:
    """Act on ``/arms``' recommendations through the admin routes (at most one promotion)."""
    recs = [r for r in arms.get("recommendations", []) if not r.get("applied")]
    outcome = PromoteCheckOutcome("nothing-to-do", arms.get("model_name"), recommendations=recs)
    if arms.get("auto_decisions"):
        outcome.status, outcome.detail = "automatic", "the service applies its own decisions"
        return outcome
    actionable = [r for r in recs if r.get("action") in {"promote", "retire"}]
    # A promotion changes the champion the other recommendations were computed against:
    # apply it alone, and let the next check re-decide the rest.
    promotions = [r for r in actionable if r["action"] == "promote"][:1]
    todo = promotions or [r for r in actionable if r["action"] == "retire"]
    for rec in todo:
        arm = str(rec["arm"])
        reason = f"promote-check: {rec.get('reason', '')}"[:500]
        if not dry_run:
            if rec["action"] == "promote":
                response = client.post("/admin/promote", json={"arm": arm, "reason": reason})
            else:
                response = client.delete(f"/admin/arms/{arm}", params={"reason": reason})
            if response.status_code >= 400:
                raise PromoteCheckError(
                    f"{rec['action']} {arm} was refused ({response.status_code}): "
                    f"{response.text[:300]}; check BANDITFLOW_ROLLOUT_ADMIN_TOKEN"
                )
        outcome.applied.append({"action": rec["action"], "arm": arm, "reason": reason})
    if outcome.applied:
        outcome.status = "applied"
    return outcome


@flow(name="promote-check", log_prints=True)
def promote_check(
    rollout_url: str | None = None, dry_run: bool = False, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Read ``/arms`` and promote or retire arms by the service's decision rule."""
    settings = get_settings()
    url = (rollout_url or settings.rollout_url).rstrip("/")
    log = get_run_logger()
    headers = {}
    if settings.rollout_admin_token:
        headers["Authorization"] = f"Bearer {settings.rollout_admin_token}"
    with httpx.Client(base_url=url, headers=headers, timeout=timeout_s) as client:
        try:
            response = client.get("/arms")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("rollout service at %s is not reachable: %s", url, exc)
            return asdict(PromoteCheckOutcome("unreachable", detail=f"{url}: {exc}"))
        outcome = apply_recommendations(response.json(), client, dry_run=dry_run)
    for item in outcome.applied:
        log.info("%s %s (%s)", item["action"], item["arm"], item["reason"])
    log.info("promote-check: %s", outcome.status)
    return asdict(outcome)
