"""The HTTP answers of test_http_curl.py that uvicorn plays: a login redirect that sets a
session cookie, and a route that tells how its URL was written (raw path and query as sent).
Run: uvicorn http_app:app
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]
SIGNED = b"X-Amz-Signature=ab%2Bcd%3D&X-Amz-Credential=AK%2F20260101%2Fus"


async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
    if scope["type"] != "http":
        return
    path, raw = scope["path"], scope["raw_path"]
    headers = dict(scope["headers"])
    if path == "/login":
        await _answer(send, 302, b"", [(b"location", b"/app/home"),
                                       (b"set-cookie", b"session=s3; Path=/app; HttpOnly")])
    elif path.startswith("/app/"):
        ok = b"session=s3" in headers.get(b"cookie", b"")
        await _answer(send, 200 if ok else 401, b"in" if ok else b"out")
    elif path.startswith("/files/"):  # 200 only when %2F and %7E arrived as written
        ok = raw == b"/files/a%2Fb/%7Euser"
        await _answer(send, 200 if ok else 404, raw)
    elif path == "/signed":  # a signature over the query as written
        ok = scope["query_string"] == SIGNED
        await _answer(send, 200 if ok else 403, scope["query_string"])
    else:
        await _answer(send, 404, b"")


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
