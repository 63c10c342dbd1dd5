"""Real WebSocket servers on loopback for the gate-truth tests (websockets' own, aiohttp's, and
the byte-level one of ws_raw on http_servers.raw_server), and the probe call they share."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import WSMsgType, web
from helpers import serving
from http_servers import raw_server
from websockets.asyncio.server import ServerConnection, serve

from probe.checks import CheckContext
from probe.checks.websocket import check
from probe.config import Config, Target
from probe.credentials import Credentials
from probe.outcome import Outcome

PING = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "2s"}
TOKEN = "tok-secret-0123456789abcdef"
Handler = Callable[[ServerConnection], Awaitable[None]]
Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def setup(fields: dict[str, Any], credentials: dict[str, Any] | None = None
          ) -> tuple[Target, CheckContext]:
    fields = {"name": "ws", "timeout": "5s", "interval": "10s", **fields}
    cfg = Config.model_validate({"targets": [fields], "credentials": credentials or {}})
    return cfg.targets[0], CheckContext(Credentials(cfg.credentials))


async def probe(fields: dict[str, Any], credentials: dict[str, Any] | None = None) -> Outcome:
    target, ctx = setup(fields, credentials)
    try:
        return await check(target, ctx)
    finally:
        await ctx.credentials.aclose()


async def pong(ws: ServerConnection) -> None:
    async for raw in ws:
        if json.loads(raw).get("type") == "ping":
            await ws.send(json.dumps({"type": "pong"}))


@asynccontextmanager
async def websockets_server(handler: Handler = pong, **kwargs: Any) -> AsyncIterator[str]:
    """websockets' own server on 127.0.0.1: its ws:// URL."""
    async with serve(handler, "127.0.0.1", 0, ping_interval=None, **kwargs) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


AiohttpHandler = Callable[[web.WebSocketResponse], Awaitable[None]]


@asynccontextmanager
async def aiohttp_server(session: AiohttpHandler, **ws_kwargs: Any) -> AsyncIterator[str]:
    """aiohttp's server with one WebSocket route at /ws running `session` once prepared."""
    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(**ws_kwargs)
        await ws.prepare(request)
        await session(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    async with serving(app) as base:
        yield base.replace("http://", "ws://") + "/ws"


@asynccontextmanager
async def raw(handler: Raw) -> AsyncIterator[str]:
    async with raw_server(handler) as port:
        yield f"ws://127.0.0.1:{port}/ws"


async def aiohttp_pong(ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.TEXT and json.loads(msg.data).get("type") == "ping":
            await ws.send_json({"type": "pong"})
