"""Loopback servers for the HTTP check tests: a well-behaved aiohttp app and raw TCP peers.

The aiohttp app remembers what it was sent; the raw server lets a test play any misbehaving
peer (garbage, reset, silence) and ends its handler tasks cleanly afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from aiohttp import web

MIB = 1 << 20
DOC = {"status": "healthy", "version": "1.2.3", "ready": True, "items": [{"id": 5}, {"id": 7}]}


class App:
    """The well-behaved server; it remembers what it was sent and from which client port."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.peer_ports: list[int] = []
        self.stream_cut = asyncio.Event()
        self.release = asyncio.Event()
        self.app = web.Application()
        r = self.app.router
        r.add_get("/ok", self.ok)
        r.add_get("/status/{code}", self.status)
        r.add_get("/json", self.json)
        r.add_get("/html", self.html)
        r.add_get("/redirect", self.redirect)
        r.add_get("/chain/{n}", self.chain)
        r.add_post("/echo", self.echo)
        r.add_get("/echo", self.echo)
        r.add_get("/big", self.big)
        r.add_get("/stream", self.stream)
        r.add_get("/stall", self.stall)
        r.add_get("/whoami", self.whoami)

    async def ok(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peer_ports.append(peer[1])
        return web.Response(text="all good")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def json(self, request: web.Request) -> web.Response:
        return web.json_response(DOC, headers={"X-Build": "1.2.3"})

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Service Unavailable</body></html>",
                            content_type="text/html")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/json?session=abc123")

    async def chain(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n <= 0:
            return web.Response(text="end of chain")
        raise web.HTTPFound(f"/chain/{n - 1}")

    async def echo(self, request: web.Request) -> web.Response:
        self.seen.append({
            "method": request.method,
            "headers": dict(request.headers),
            "query": dict(request.query),
            "body": await request.read(),
        })
        return web.json_response({"received": True})

    async def whoami(self, request: web.Request) -> web.Response:
        """A careless endpoint that echoes the caller's credential back."""
        return web.Response(text=f"you are {request.headers.get('Authorization')}")

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (2 * MIB))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Endless (well, 256 MiB) chunked body: a client that reads it all would time out."""
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"y" * 65536
        try:
            for _ in range(4096):
                await resp.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            self.stream_cut.set()
            raise
        return resp

    async def stall(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"z" * 100)
        with suppress(asyncio.CancelledError):
            await self.release.wait()
        return resp


@asynccontextmanager
async def serve_app(ssl_ctx: Any = None) -> AsyncIterator[tuple[App, int]]:
    app = App()
    runner = web.AppRunner(app.app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield app, port
    finally:
        app.release.set()
        await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A TCP server on `host` speaking whatever `handler` writes; its tasks are ended cleanly
    afterwards."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(run, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")
