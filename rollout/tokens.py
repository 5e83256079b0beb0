"""Signed request ids: the id names its arm and time, so feedback needs no decision lookup."""

from __future__ import annotations

import base64
import hmac
import os
import re

_ARM_RE = re.compile(r"^v[0-9]+$")


class RequestTokens:
    """Issue and verify ``<arm>.<ms hex>.<nonce>.<signature>`` request ids (HMAC-SHA256)."""

    def __init__(self, secret: str | bytes) -> None:
        self._key = secret.encode() if isinstance(secret, str) else secret

    def _sign(self, payload: str) -> str:
        digest = hmac.digest(self._key, payload.encode(), "sha256")[:16]  # one-shot, in C
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, arm: str, at: float) -> str:
        """Return a new request id for a decision for ``arm`` at epoch seconds ``at``."""
        payload = f"{arm}.{int(at * 1000):x}.{os.urandom(6).hex()}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, request_id: str) -> tuple[str, float] | None:
        """Return ``(arm, issued_at)`` of a genuine token, or None (not one of ours)."""
        parts = request_id.split(".")
        if len(parts) != 4 or not _ARM_RE.match(parts[0]):
            return None
        payload = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(payload), parts[3]):
            return None
        try:
            return parts[0], int(parts[1], 16) / 1000.0
        except ValueError:
            return None
