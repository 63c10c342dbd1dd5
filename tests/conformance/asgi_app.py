"""A raw ASGI app for the conformance suite, served by uvicorn (websockets and wsproto) and
hypercorn. No framework: the paths do what Starlette / FastAPI apps do with the ASGI messages
(a route that turns a WebSocket down before accepting it sends `websocket.close`, which the
server answers with a bare 403; a denial with a body uses the `websocket.http.response`
extension where the server has it).

Run as `uvicorn asgi_app:app` / `hypercorn asgi_app:app` from this directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

CUT_AFTER = 1.0  # /cut-1s: the app ends every session after this long (a session lifetime cap)


async def _deny(scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]],
                body: bytes) -> None:
    """An HTTP answer to an upgrade (ASGI's WebSocket Denial Response), or a bare close (403)
    where the server does not offer the extension."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read until the client disconnects (the server answers pings itself)."""
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _echo(receive: Receive, send: Send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    await receive()  # websocket.connect
    if path == "/reject":
        await _deny(scope, send, 403, [(b"content-type", b"text/plain")], b"bad token")
        return
    if path in ("/redirect", "/moved"):
        status = 302 if path == "/redirect" else 301
        await _deny(scope, send, status, [(b"location", b"/echo?token=redirect-secret")], b"")
        return
    if path not in ("/echo", "/subprotocol", "/close-4001", "/close-1008-after-msg",
                    "/crash-after-msg", "/silent", "/cut-1s"):
        await send({"type": "websocket.close"})  # Starlette's answer to a path it has no route for
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if path == "/subprotocol" and "chat.v1" in scope.get("subprotocols", []):
        accept["subprotocol"] = "chat.v1"
    await send(accept)
    if path in ("/echo", "/subprotocol"):
        await _echo(receive, send)
    elif path == "/close-4001":
        await send({"type": "websocket.close", "code": 4001, "reason": "bad token"})
    elif path == "/close-1008-after-msg":
        await receive()
        await send({"type": "websocket.close", "code": 1008, "reason": "policy violation"})
    elif path == "/crash-after-msg":
        await receive()
        raise RuntimeError("conformance: the app crashes after the first message")
    elif path == "/silent":
        await _drain(receive)
    else:  # /cut-1s
        try:
            async with asyncio.timeout(CUT_AFTER):
                await _drain(receive)
                return
        except TimeoutError:
            await send({"type": "websocket.close", "code": 1001, "reason": "session expired"})


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    found = scope["path"] == "/http"
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"plain http\n" if found else b"not found\n"})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
