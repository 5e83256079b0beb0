"""Build the rollout service's FastAPI app from settings (no globals at import time).

``uvicorn rollout.app:create_app --factory`` and ``banditflow serve`` both call
``create_app()``, which reads ``BANDITFLOW_*`` settings from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from rollout import api
from rollout.admin_api import admin_router, bearer_of, check_token
from rollout.docs import mount_docs
from rollout.errors import RolloutError, StoreUnavailable, excerpt
from rollout.limits import BodyLimitMiddleware
from rollout.metrics import MetricsMiddleware
from rollout.schemas import ErrorResponse
from rollout.service import RolloutService
from rollout.settings import RolloutSettings

_log = logging.getLogger(__name__)
RETRY_AFTER_S = 5  # what a 503 tells a client to wait before it tries again


def create_app(
    settings: RolloutSettings | None = None, *, clock: Callable[[], float] | None = None
) -> FastAPI:
    """Return the rollout app; the lifespan loads models and state and starts the writer.

    ``clock`` (epoch seconds, default ``time.time``) is the service's notion of now.
    """
    settings = settings or RolloutSettings()
    service = RolloutService(settings) if clock is None else RolloutService(settings, clock=clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="banditflow rollout",
        description="Split live traffic between the champion and its challengers with a "
        "bandit, take outcomes back, promote or roll back.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # rollout.docs serves them from installed assets (offline)
        redoc_url=None,
        responses={"default": {"model": ErrorResponse, "description": "An error"}},
    )
    app.state.service = service
    app.state.settings = settings
    app.include_router(api.router)
    app.include_router(admin_router)
    mount_docs(app)
    _install_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def _install_handlers(app: FastAPI) -> None:
    """One shape for every error body (``ErrorResponse``); never a 500."""

    @app.exception_handler(RolloutError)
    async def _rollout_error(_request: Request, exc: RolloutError) -> JSONResponse:
        if exc.status >= 500:
            _log.warning("%s: %s", exc.code, exc.message)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path.startswith("/admin"):
            # FastAPI decodes a JSON body before the admin dependency runs: the token first.
            try:
                check_token(request.app.state.settings.admin_token, bearer_of(request))
            except RolloutError as denied:
                return JSONResponse(denied.to_json(), status_code=denied.status)
        return JSONResponse(validation_body(exc.errors()), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        body = {"error": f"http_{exc.status_code}", "detail": excerpt_text(str(exc.detail))}
        if exc.status_code == 413:
            body["error"] = "body_too_large"
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A failing dependency (the store, most often) is a 503 with Retry-After, not a 500.
        _log.exception("unexpected error")
        failure = StoreUnavailable(
            f"a dependency failed ({type(exc).__name__}); retry in {RETRY_AFTER_S} s"
        )
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse(failure.to_json(), status_code=503, headers=headers)


def excerpt_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_body(errors: Any) -> dict[str, Any]:
    """A 422 body that quotes at most a short excerpt of each bad value (always valid JSON)."""
    items = []
    for e in list(errors)[:20]:
        loc = [p if isinstance(p, int) else excerpt_text(str(p), 60) for p in e.get("loc", ())]
        item: dict[str, Any] = {
            "loc": loc,
            "msg": excerpt_text(str(e.get("msg", "invalid")), 200),
            "type": str(e.get("type", "invalid")),
        }
        if "input" in e and not isinstance(e["input"], dict | list):
            item["input"] = excerpt(e["input"])
        items.append(item)
    summary = "; ".join(_describe(i) for i in items[:10])
    return {"error": "bad_input", "detail": summary or "invalid request", "errors": items}


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
    message = error.get("msg", "invalid")
    return f"{location}: {message}" if location else message


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the schemas of the bodies the hot routes parse by hand."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for adapter in (api._PREDICT_BODY, api._FEEDBACK_BODY):
            defs = adapter.json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
            for name, definition in defs.items():
                components.setdefault(name, definition)
        app.openapi_schema = schema
    return app.openapi_schema
