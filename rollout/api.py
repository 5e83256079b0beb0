"""The HTTP routes: parse, call the service, return a schema. Nothing else lives here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from rollout import dashboard_data, reports
from rollout.feedback import record_many, record_one
from rollout.limits import parse_body
from rollout.schemas import (
    MAX_FEEDBACK_ROWS,
    MAX_PREDICT_ROWS,
    ArmsResponse,
    ErrorResponse,
    FeedbackBody,
    FeedbackResponse,
    PredictBody,
    PredictResponse,
)
from rollout.service import RolloutService

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422, 503)
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


_PREDICT_BODY: TypeAdapter[Any] = TypeAdapter(PredictBody)
_FEEDBACK_BODY: TypeAdapter[Any] = TypeAdapter(FeedbackBody)


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _body_doc(adapter: TypeAdapter[Any]) -> dict[str, Any]:
    """The request body as the OpenAPI document shows it (the route parses it by hand)."""
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # the app's openapi() adds them to components (rollout.app)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def _parse(
    request: Request, service: RolloutService, adapter: TypeAdapter[Any], n: int
) -> Any:
    s = service.settings
    return await parse_body(request, adapter, max_items=n, in_thread_from=s.parse_in_thread_bytes)


class OwnBodyRoute(APIRoute):
    """A route whose endpoint takes the request and returns the Response itself.

    FastAPI's per-request handler (dependency solving, query parsing, response validation)
    does nothing for an endpoint that reads, bounds and validates its own body, yet cost
    about a fifth of /predict's time; this route calls the endpoint directly (FastAPI's
    documented ``get_route_handler`` extension point). Errors still reach the app's
    handlers; the OpenAPI document is unchanged (``responses``, ``openapi_extra``).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint  # type: ignore[no-any-return]


async def predict(request: Request) -> Response:
    """Score one row (or a list of rows) with the arm the policy chooses."""
    service: RolloutService = request.app.state.service
    body = await _parse(request, service, _PREDICT_BODY, MAX_PREDICT_ROWS)
    if isinstance(body, list):
        return _json(_PREDICT_LIST.dump_json(await service.predict_many(body)))
    return _json((await service.predict(body)).model_dump_json().encode())


async def feedback(request: Request) -> Response:
    """Record the outcome of an earlier prediction (a list: one status per row)."""
    service: RolloutService = request.app.state.service
    body = await _parse(request, service, _FEEDBACK_BODY, MAX_FEEDBACK_ROWS)
    if isinstance(body, list):
        return _json(_FEEDBACK_LIST.dump_json(await record_many(service, body)))
    return _json((await record_one(service, body)).model_dump_json().encode())


router.add_api_route(
    "/predict",
    predict,
    methods=["POST"],
    response_model=None,
    responses={200: {"model": PredictResponse | list[PredictResponse]}, **_ERRORS},
    tags=["rollout"],
    openapi_extra=_body_doc(_PREDICT_BODY),
    route_class_override=OwnBodyRoute,
)
router.add_api_route(
    "/feedback",
    feedback,
    methods=["POST"],
    response_model=None,
    responses={
        200: {"model": FeedbackResponse | list[FeedbackResponse]},
        **_ERRORS,
        410: {"model": ErrorResponse},
    },
    tags=["rollout"],
    openapi_extra=_body_doc(_FEEDBACK_BODY),
    route_class_override=OwnBodyRoute,
)


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


router.add_api_route("/dashboard/data", dashboard_data.route, methods=["GET"], tags=["ops"])
