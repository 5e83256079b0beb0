"""The HTTP routes: parse, call the service, return a schema. Nothing else lives here."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter

from rollout.errors import Forbidden, NotAuthenticated
from rollout.schemas import (
    AddArmRequest,
    AdminResponse,
    ArmsResponse,
    ErrorResponse,
    FeedbackBody,
    FeedbackResponse,
    FreezeRequest,
    PolicyRequest,
    PredictBody,
    PredictResponse,
    PromoteRequest,
    RollbackRequest,
)
from rollout.service import RolloutService

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}

router = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="The admin token from settings.")


async def get_service(request: Request) -> RolloutService:
    # async: a plain ``def`` dependency would run in the thread pool on every request.
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[RolloutService, Depends(get_service)]


async def require_admin(
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a bearer token, 403 with a wrong one (or when no token is configured)."""
    if credentials is None or not credentials.credentials:
        raise NotAuthenticated("admin routes need 'Authorization: Bearer <token>'")
    expected = service.settings.admin_token
    if not expected:
        raise Forbidden("admin routes are disabled: set BANDITFLOW_ROLLOUT_ADMIN_TOKEN")
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Forbidden("wrong admin token")


Admin = Depends(require_admin)


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
        return _json(_FEEDBACK_LIST.dump_json(await service.feedback_many(body)))
    return _json((await service.feedback(body)).model_dump_json().encode())


@router.get("/arms", response_model=ArmsResponse, tags=["rollout"])
async def arms(service: Service) -> ArmsResponse:
    """Each arm's statistics, traffic share, P(best) and expected loss."""
    return await service.arms_report()


@router.get("/arms/history", tags=["rollout"])
async def arms_history(
    service: Service,
    minutes: Annotated[float, Query(gt=0, le=7 * 24 * 60)] = 30.0,
    buckets: Annotated[int, Query(ge=1, le=500)] = 60,
) -> dict[str, Any]:
    """Traffic share over time and cumulative reward per arm (what the dashboard draws)."""
    return await service.history(minutes, buckets)


@router.post(
    "/admin/arms",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def add_arm(body: AddArmRequest, service: Service) -> AdminResponse:
    """Add a model version as a challenger, or as a shadow arm (``shadow: true``)."""
    result = await service.add_arm(body.version, shadow=body.shadow)
    return AdminResponse(detail=f"added {result['arm']} as {result['role']}", result=result)


@router.delete(
    "/admin/arms/{arm}",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def retire_arm(arm: str, service: Service, reason: str = "retired by an operator") -> Any:
    """Retire a challenger or a shadow arm."""
    result = await service.retire_arm(_arm_param(arm), reason)
    return AdminResponse(detail=f"retired {result['arm']}", result=result)


@router.post(
    "/admin/arms/{arm}/restore",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def restore_arm(arm: str, service: Service) -> AdminResponse:
    """Put an arm that was pulled from rotation back in."""
    result = await service.restore_arm(_arm_param(arm))
    return AdminResponse(detail=f"{result['arm']} is back in rotation", result=result)


@router.put(
    "/admin/policy",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def set_policy(body: PolicyRequest, service: Service) -> AdminResponse:
    """Change the policy and its parameters (every replica picks it up)."""
    result = await service.set_policy(body.name, body.params)
    return AdminResponse(detail=f"policy is now {body.name}", result=result)


@router.post(
    "/admin/promote",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def promote(body: PromoteRequest, service: Service) -> AdminResponse:
    """Make an arm's version the champion (the old one becomes previous-champion)."""
    result = await service.promote(body.arm, body.reason)
    return AdminResponse(detail=f"v{result['champion']} is the champion", result=result)


@router.post(
    "/admin/rollback",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def rollback(body: RollbackRequest, service: Service) -> AdminResponse:
    """Give the champion alias back to the previous champion."""
    result = await service.rollback(body.reason)
    return AdminResponse(detail=f"v{result['champion']} is the champion again", result=result)


@router.post(
    "/admin/freeze",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def freeze(body: FreezeRequest, service: Service) -> AdminResponse:
    """Route everything to the champion (``frozen: false`` resumes the bandit)."""
    result = await service.set_frozen(body.frozen)
    return AdminResponse(detail="frozen" if body.frozen else "unfrozen", result=result)


@router.post(
    "/admin/decide",
    response_model=AdminResponse,
    responses=_ADMIN_ERRORS,
    dependencies=[Admin],
    tags=["admin"],
)
async def decide_now(service: Service) -> AdminResponse:
    """Run the decision rule now (acting on it only when automatic decisions are on)."""
    recs = await service.run_decisions()
    return AdminResponse(
        detail=f"{len(recs)} recommendation(s)",
        result={"recommendations": [r.model_dump() for r in recs]},
    )


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
async def readyz(service: Service) -> JSONResponse:
    """Models loaded and store reachable (503 with the reason otherwise)."""
    import asyncio

    ready, detail = await asyncio.to_thread(service.readiness)
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


def _arm_param(arm: str) -> str:
    from rollout.errors import UnknownArm
    from rollout.pool import version_of

    try:
        version_of(arm)
    except ValueError as exc:
        raise UnknownArm(str(exc)) from exc
    return arm
