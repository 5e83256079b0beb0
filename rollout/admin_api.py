"""The admin routes: one router behind the bearer-token dependency; each calls rollout.admin."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rollout import admin
from rollout.api import Service
from rollout.errors import Forbidden, NotAuthenticated, UnknownArm
from rollout.pool import version_of
from rollout.schemas import (
    AddArmRequest,
    AdminResponse,
    ErrorResponse,
    FreezeRequest,
    PolicyRequest,
    PromoteRequest,
    RollbackRequest,
)

_bearer = HTTPBearer(auto_error=False, description="The admin token from settings.")


async def require_admin(
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a bearer token, 403 with a wrong one (or when no token is configured)."""
    check_token(service.settings.admin_token, credentials.credentials if credentials else None)


def check_token(expected: str, given: str | None) -> None:
    """Raise 401/403 unless ``given`` is the admin token (also before a body is parsed)."""
    if not given:
        raise NotAuthenticated("admin routes need 'Authorization: Bearer <token>'")
    if not expected:
        raise Forbidden("admin routes are disabled: set BANDITFLOW_ROLLOUT_ADMIN_TOKEN")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("wrong admin token")


def bearer_of(request: Request) -> str | None:
    """The bearer token of a request, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)
}

admin_router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=_ADMIN_ERRORS,
)


@admin_router.post(
    "/arms",
    response_model=AdminResponse,
)
async def add_arm(body: AddArmRequest, service: Service) -> AdminResponse:
    """Add a model version as a challenger, or as a shadow arm (``shadow: true``)."""
    result = await admin.add_arm(service, body.version, shadow=body.shadow)
    return AdminResponse(detail=f"added {result['arm']} as {result['role']}", result=result)


@admin_router.delete(
    "/arms/{arm}",
    response_model=AdminResponse,
)
async def retire_arm(arm: str, service: Service, reason: str = "retired by an operator") -> Any:
    """Retire a challenger or a shadow arm."""
    result = await admin.retire_arm(service, _arm_param(arm), reason)
    return AdminResponse(detail=f"retired {result['arm']}", result=result)


@admin_router.post(
    "/arms/{arm}/restore",
    response_model=AdminResponse,
)
async def restore_arm(arm: str, service: Service) -> AdminResponse:
    """Put an arm that was pulled from rotation back in."""
    result = await admin.restore_arm(service, _arm_param(arm))
    return AdminResponse(detail=f"{result['arm']} is back in rotation", result=result)


@admin_router.put(
    "/policy",
    response_model=AdminResponse,
)
async def set_policy(body: PolicyRequest, service: Service) -> AdminResponse:
    """Change the policy and its parameters (every replica picks it up)."""
    result = await admin.set_policy(service, body.name, body.params)
    return AdminResponse(detail=f"policy is now {body.name}", result=result)


@admin_router.post(
    "/promote",
    response_model=AdminResponse,
)
async def promote(body: PromoteRequest, service: Service) -> AdminResponse:
    """Make an arm's version the champion (the old one becomes previous-champion)."""
    result = await admin.promote(service, body.arm, body.reason)
    return AdminResponse(detail=f"v{result['champion']} is the champion", result=result)


@admin_router.post(
    "/rollback",
    response_model=AdminResponse,
)
async def rollback(body: RollbackRequest, service: Service) -> AdminResponse:
    """Give the champion alias back to the previous champion."""
    result = await admin.rollback(service, body.reason)
    return AdminResponse(detail=f"v{result['champion']} is the champion again", result=result)


@admin_router.post(
    "/freeze",
    response_model=AdminResponse,
)
async def freeze(body: FreezeRequest, service: Service) -> AdminResponse:
    """Route everything to the champion (``frozen: false`` resumes the bandit)."""
    result = await admin.set_frozen(service, body.frozen)
    return AdminResponse(detail="frozen" if body.frozen else "unfrozen", result=result)


@admin_router.post(
    "/decide",
    response_model=AdminResponse,
)
async def decide_now(service: Service) -> AdminResponse:
    """Run the decision rule now (acting on it only when automatic decisions are on)."""
    recs = await service.run_decisions()
    return AdminResponse(
        detail=f"{len(recs)} recommendation(s)",
        result={"recommendations": [r.model_dump() for r in recs]},
    )


@admin_router.post(
    "/reload",
    response_model=AdminResponse,
)
async def reload(service: Service) -> AdminResponse:
    """Re-read the registry's aliases now: new challengers serve at once, not at the next poll."""
    await service.reload()
    arms = sorted(service.pool.snapshot.arms)
    return AdminResponse(detail=f"{len(arms)} arm(s) loaded", result={"arms": arms})


def _arm_param(arm: str) -> str:
    try:
        version_of(arm)
    except ValueError as exc:
        raise UnknownArm(str(exc)) from exc
    return arm
