"""Build the rollout service's FastAPI app from settings (no globals at import time).

``uvicorn rollout.app:create_app --factory`` and ``banditflow serve`` both call
``create_app()``, which reads ``BANDITFLOW_*`` settings from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rollout import api
from rollout.admin_api import admin_router
from rollout.errors import RolloutError
from rollout.metrics import MetricsMiddleware
from rollout.service import RolloutService
from rollout.settings import RolloutSettings

_log = logging.getLogger(__name__)


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
    )
    app.state.service = service
    app.state.settings = settings
    app.include_router(api.router)
    app.include_router(admin_router)

    @app.exception_handler(RolloutError)
    async def _rollout_error(_request: Request, exc: RolloutError) -> JSONResponse:
        if exc.status >= 500:
            _log.warning("%s: %s", exc.code, exc.message)
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        summary = "; ".join(_describe(e) for e in errors[:10])
        return JSONResponse(
            {"error": "bad_input", "detail": summary or "invalid request", "errors": errors},
            status_code=422,
        )

    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


def _describe(error: dict) -> str:
    location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
    message = error.get("msg", "invalid")
    return f"{location}: {message}" if location else message
