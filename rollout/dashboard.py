"""The dashboard page: plain HTML + inline JS/SVG (no CDN) over /arms and /dashboard/data."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_PAGE = Path(__file__).resolve().parent / "static" / "dashboard.html"


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    """Return the page; it refreshes itself every two seconds."""
    return _PAGE.read_text(encoding="utf-8")
