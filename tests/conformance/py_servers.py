"""The aiohttp web server, the `websockets` server and tornado as third-party servers for the
conformance suite, each written the way its library documents, serving the case paths of
asgi_app.

Run as a child process: `python py_servers.py aiohttp|websockets|tornado PORT`; prints
"listening PORT" once it listens and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from http import HTTPStatus

import tornado.web
import tornado.websocket
from aiohttp import WSMsgType, web
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

CUT_AFTER = 1.0  # /cut-1s ends every session after this long
KEEP_OPEN = 3.0  # /close-open: how long the TCP connection stays open after the close frame
REDIRECT = "/echo?token=redirect-secret"


# --- aiohttp -----------------------------------------------------------------------------------


async def _aiohttp_ws(request: web.Request) -> web.WebSocketResponse:
    path = request.path
    ws = web.WebSocketResponse(protocols=("chat.v1",) if path == "/subprotocol" else ())
    await ws.prepare(request)
    if path == "/close-4001":
        await ws.close(code=4001, message=b"bad token")
    elif path == "/close-1008-after-msg":
        await ws.receive()
        await ws.close(code=1008, message=b"policy violation")
    elif path == "/crash-after-msg":
        await ws.receive()
        raise RuntimeError("conformance: the handler crashes after the first message")
    elif path == "/cut-1s":
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CUT_AFTER):
                async for _ in ws:
                    pass
        await ws.close(code=1001, message=b"session expired")
    else:  # /echo, /subprotocol, /silent
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and path != "/silent":
                await ws.send_str(msg.data)
    return ws


async def _aiohttp_reject(request: web.Request) -> web.Response:
    raise web.HTTPForbidden(text="bad token")


async def _aiohttp_redirect(request: web.Request) -> web.Response:
    if request.path == "/moved":
        raise web.HTTPMovedPermanently(REDIRECT)
    raise web.HTTPFound(REDIRECT)


async def _aiohttp_http(request: web.Request) -> web.Response:
    return web.Response(text="plain http\n")


def aiohttp_app() -> web.Application:
    app = web.Application()
    for path in ("/echo", "/subprotocol", "/close-4001", "/close-1008-after-msg",
                 "/crash-after-msg", "/silent", "/cut-1s"):
        app.router.add_get(path, _aiohttp_ws)
    app.router.add_get("/reject", _aiohttp_reject)
    app.router.add_get("/redirect", _aiohttp_redirect)
    app.router.add_get("/moved", _aiohttp_redirect)
    app.router.add_get("/http", _aiohttp_http)
    return app


async def run_aiohttp(port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(aiohttp_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"listening {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


# --- websockets -------------------------------------------------------------------------------


WS_PATHS = ("/echo", "/subprotocol", "/close-4001", "/close-1008-after-msg", "/crash-after-msg",
            "/silent", "/cut-1s", "/close-open")


def _respond(status: HTTPStatus, headers: list[tuple[str, str]], body: bytes) -> Response:
    all_headers = Headers([*headers, ("Content-Length", str(len(body))),
                           ("Connection", "close")])
    return Response(status.value, status.phrase, all_headers, body)


async def _ws_route(conn: ServerConnection, request: Request) -> Response | None:
    """websockets' process_request: HTTP answers before the handshake (its documented way to
    serve health checks and turn requests down)."""
    path = request.path.partition("?")[0]
    if path == "/reject":
        return _respond(HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"bad token")
    if path == "/redirect":
        return _respond(HTTPStatus.FOUND, [("Location", REDIRECT)], b"")
    if path == "/moved":
        return _respond(HTTPStatus.MOVED_PERMANENTLY, [("Location", REDIRECT)], b"")
    if path == "/http":
        return _respond(HTTPStatus.OK, [("Content-Type", "text/plain")], b"plain http\n")
    if path not in WS_PATHS:
        return _respond(HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain")], b"not found\n")
    return None


def _ws_select(conn: ServerConnection, offered: list[Subprotocol]) -> Subprotocol | None:
    """chat.v1 on /subprotocol only: every other path accepts without selecting one."""
    if conn.request is not None and conn.request.path == "/subprotocol" and "chat.v1" in offered:
        return Subprotocol("chat.v1")
    return None


async def _ws_handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    path = ws.request.path.partition("?")[0]
    if path == "/close-4001":
        await ws.close(4001, "bad token")
    elif path == "/close-1008-after-msg":
        await ws.recv()
        await ws.close(1008, "policy violation")
    elif path == "/crash-after-msg":
        await ws.recv()
        raise RuntimeError("conformance: the handler crashes after the first message")
    elif path == "/cut-1s":
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CUT_AFTER):
                await ws.wait_closed()
        await ws.close(1001, "session expired")
    elif path == "/close-open":
        # After the first message, a close frame instead of a reply, then the TCP connection
        # held open without reading (so the client's close reply is never acted on):
        # websockets' Sans-I/O layer lets a server do that.
        await ws.recv()
        ws.transport.pause_reading()
        ws.protocol.send_close(4000, "closing but holding")
        for data in ws.protocol.data_to_send():
            if data:
                ws.transport.write(data)
        await asyncio.sleep(KEEP_OPEN)  # the behaviour under test (a server that lingers)
        ws.transport.abort()
    else:  # /echo, /subprotocol, /silent
        async for message in ws:
            if path != "/silent":
                await ws.send(message)


async def run_websockets(port: int, stop: asyncio.Event) -> None:
    async with serve(_ws_handler, "127.0.0.1", port, process_request=_ws_route,
                     select_subprotocol=_ws_select) as server:
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()


# --- tornado ----------------------------------------------------------------------------------


class _TornadoWS(tornado.websocket.WebSocketHandler):
    cut: asyncio.TimerHandle | None = None

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return "chat.v1" if self.request.path == "/subprotocol" and "chat.v1" in subprotocols \
            else None

    def open(self) -> None:  # type: ignore[override]
        if self.request.path == "/close-4001":
            self.close(4001, "bad token")
        elif self.request.path == "/cut-1s":
            loop = asyncio.get_running_loop()
            self.cut = loop.call_later(CUT_AFTER, self.close, 1001, "session expired")

    def on_message(self, message: str | bytes) -> None:
        path = self.request.path
        if path == "/close-1008-after-msg":
            self.close(1008, "policy violation")
        elif path == "/crash-after-msg":
            raise RuntimeError("conformance: the handler crashes after the first message")
        elif path in ("/echo", "/subprotocol"):
            self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.cut is not None:
            self.cut.cancel()


class _TornadoReject(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_status(403)
        self.write("bad token")


class _TornadoRedirect(tornado.web.RequestHandler):
    def get(self) -> None:
        self.redirect(REDIRECT, permanent=self.request.path == "/moved")


class _TornadoHttp(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("plain http\n")


async def run_tornado(port: int, stop: asyncio.Event) -> None:
    ws_paths = "|".join(p.lstrip("/") for p in WS_PATHS if p != "/close-open")
    app = tornado.web.Application([
        (rf"/(?:{ws_paths})", _TornadoWS), (r"/reject", _TornadoReject),
        (r"/(?:redirect|moved)", _TornadoRedirect), (r"/http", _TornadoHttp),
    ])
    server = app.listen(port, "127.0.0.1")
    print(f"listening {port}", flush=True)
    await stop.wait()
    server.stop()


async def main(kind: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    run = {"aiohttp": run_aiohttp, "websockets": run_websockets, "tornado": run_tornado}[kind]
    await run(port, stop)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
