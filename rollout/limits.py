"""Bounds at the edge: a request body limit in front of parsing, and parsing that keeps the
event loop free (large bodies are parsed and validated in a worker thread, list lengths are
checked before any item is validated)."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic_core
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError


class BodyTooLarge(HTTPException):
    """The request body is over the configured limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the {limit:,}-byte limit")


class BodyLimitMiddleware:
    """Refuse a body over ``limit`` bytes: at once from Content-Length, or as it streams in."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await _send_413(send, self.limit)
                return
            # The server reads exactly Content-Length bytes (h11 and httptools refuse more),
            # so a declared length within the limit needs no count as the body streams in.
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _send_413(send: Any, limit: int) -> None:
    body = pydantic_core.to_json(
        {"error": "body_too_large", "detail": f"request body is over the {limit:,}-byte limit"}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def parse_body(
    request: Request, adapter: TypeAdapter[Any], *, max_items: int, in_thread_from: int
) -> Any:
    """Parse and validate a JSON body (in a worker thread from ``in_thread_from`` bytes).

    A list longer than ``max_items`` is refused before any of its items is validated.
    """
    body = await request.body()
    if len(body) >= in_thread_from:
        return await asyncio.to_thread(_parse, body, adapter, max_items)
    return _parse(body, adapter, max_items)


def _parse(body: bytes, adapter: TypeAdapter[Any], max_items: int) -> Any:
    try:
        value = pydantic_core.from_json(body, allow_inf_nan=True)  # NaN: refused, with a message
    except ValueError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}"}]
        ) from None
    if isinstance(value, list) and len(value) > max_items:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body",),
                    "msg": f"a batch holds at most {max_items} rows, got {len(value)}",
                }
            ]
        )
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for e in errors:
            e["loc"] = ("body", *e["loc"])
        raise RequestValidationError(errors) from None
