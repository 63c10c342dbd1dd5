"""Serves the /status page: three static files, no data in them.

The page is static on purpose: everything it shows comes from `/api/v1/status`, fetched by the
page's own script with the gate token when one is set, so the HTML itself can be served to anyone
and cached, and carries nothing secret. A strict Content-Security-Policy (same-origin script,
style and fetch; no inline script) makes any escaping slip in the page inert, and keeps it working
offline: there is nothing to fetch from anywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_FILES = {
    "/status": ("status.html", "text/html"),
    "/status.js": ("status.js", "text/javascript"),
    "/status.css": ("status.css", "text/css"),
}


def _read(name: str) -> bytes:
    return resources.files("probe").joinpath("static", name).read_bytes()


def _handler(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )

    return handle


def add_status_routes(app: web.Application) -> None:
    """Add GET /status, /status.js and /status.css to `app` (files read once, at startup)."""
    for path, (name, content_type) in _FILES.items():
        app.router.add_get(path, _handler(_read(name), content_type))
