"""The HTTP routes: parse, call the service, return a schema. Nothing else lives here."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import TypeAdapter

from rollout import reports
from rollout.feedback import record_many, record_one
from rollout.schemas import (
    ArmsResponse,
    ErrorResponse,
    FeedbackBody,
    FeedbackResponse,
    PredictBody,
    PredictResponse,
)
from rollout.service import RolloutService

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
router = APIRouter()


async def get_service(request: Request) -> RolloutService:
    # async: a plain ``def`` dependency would run in the thread pool on every request.
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[RolloutService, Depends(get_service)]


# The hot routes serialize with pydantic's own dump_json: FastAPI's response_model would
# validate the union a second time and go through jsonable_encoder (slower per request).
# The schemas stay in the OpenAPI document through ``responses``.
_PREDICT_LIST: TypeAdapter[list[PredictResponse]] = TypeAdapter(list[PredictResponse])
_FEEDBACK_LIST: TypeAdapter[list[FeedbackResponse]] = TypeAdapter(list[FeedbackResponse])


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.post(
    "/predict",
    response_model=None,
    responses={200: {"model": PredictResponse | list[PredictResponse]}, **_ERRORS},
    tags=["rollout"],
)
async def predict(body: PredictBody, service: Service) -> Response:
    """Score one row (or a list of rows) with the arm the policy chooses."""
    if isinstance(body, list):
        return _json(_PREDICT_LIST.dump_json(await service.predict_many(body)))
    return _json((await service.predict(body)).model_dump_json().encode())


@router.post(
    "/feedback",
    response_model=None,
    responses={
        200: {"model": FeedbackResponse | list[FeedbackResponse]},
        **_ERRORS,
        410: {"model": ErrorResponse},
    },
    tags=["rollout"],
)
async def feedback(body: FeedbackBody, service: Service) -> Response:
    """Record the outcome of an earlier prediction (a list: one status per row)."""
    if isinstance(body, list):
        return _json(_FEEDBACK_LIST.dump_json(await record_many(service, body)))
    return _json((await record_one(service, body)).model_dump_json().encode())


@router.get("/arms", response_model=ArmsResponse, tags=["rollout"])
async def arms(service: Service) -> ArmsResponse:
    """Each arm's statistics, traffic share, P(best) and expected loss."""
    return await reports.arms_report(service)


@router.get("/arms/history", tags=["rollout"])
async def arms_history(
    service: Service,
    minutes: Annotated[float, Query(gt=0, le=7 * 24 * 60)] = 30.0,
    buckets: Annotated[int, Query(ge=1, le=500)] = 60,
) -> dict[str, Any]:
    """Traffic share over time and cumulative reward per arm (what the dashboard draws)."""
    return await reports.history(service, minutes, buckets)


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
async def readyz(service: Service) -> JSONResponse:
    """Models loaded and store reachable (503 with the reason otherwise)."""
    ready, detail = await asyncio.to_thread(reports.readiness, service)
    return JSONResponse(detail, status_code=200 if ready else 503)


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(service: Service) -> Response:
    """Prometheus metrics."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/dashboard", response_class=HTMLResponse, tags=["ops"])
async def dashboard() -> HTMLResponse:
    """A page that shows each arm's posterior, traffic share and cumulative reward."""
    from rollout.dashboard import dashboard_html

    return HTMLResponse(dashboard_html())
