"""/docs and /redoc work offline: every asset they load is served by the app itself."""

from __future__ import annotations

import re
from typing import Any

import pytest


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_the_app_serves(shared_client: Any, page: str) -> None:
    response = shared_client.get(page)
    assert response.status_code == 200
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", response.text)
    urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", response.text)  # Swagger's spec URL
    urls += re.findall(r"""spec-url=["']([^"']+)["']""", response.text)  # ReDoc's
    assert urls, response.text[:500]
    off_host = [u for u in urls if re.match(r"^(https?:)?//", u)]
    assert not off_host, f"{page} loads assets from elsewhere: {off_host}"
    for url in urls:
        asset = shared_client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    assert any(u.endswith(".js") for u in urls)
