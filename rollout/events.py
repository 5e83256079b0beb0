"""Prefect events from the rollout service: an HTTP POST to <api>/events, no Prefect import."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import contract
from rollout.metrics import Metrics
from rollout.schemas import jsonable
from rollout.settings import RolloutSettings

_log = logging.getLogger(__name__)


async def emit(
    settings: RolloutSettings,
    metrics: Metrics,
    event: str,
    version: str,
    reason: str,
    result: dict[str, Any],
) -> None:
    """POST one event about ``version`` of the served model; failures are logged, not raised."""
    url = settings.prefect_api_url
    if not url:
        return
    import httpx

    body = [
        {
            "occurred": datetime.now(UTC).isoformat(),
            "event": event,
            "resource": {
                "prefect.resource.id": contract.model_resource_id(settings.model_name, version),
                "prefect.resource.name": settings.model_name,
            },
            "related": [],
            "payload": {"reason": reason, **jsonable(result)},
            "id": str(uuid.uuid4()),
        }
    ]
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.post(url.rstrip("/") + "/events", json=body)
            response.raise_for_status()
    except Exception as exc:
        metrics.errors.labels("event", "").inc()
        _log.error("could not emit %s to %s: %s", event, url, exc)
