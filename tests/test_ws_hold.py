"""`hold:` and `keepalive:` on WebSocket targets (issue 12): a session held open after its steps,
pinged while held, fails as soon as the server (or a load balancer) ends it, and says how long
it had lasted; `probe validate` checks that the timeout covers the hold.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from websockets.asyncio.server import ServerConnection
from ws_servers import PING, AiohttpHandler, aiohttp_server, pong, probe, websockets_server

from probe.config import ConfigError, parse_config
from probe.outcome import Failure

HOLD = {"hold": "1500ms", "timeout": "5s"}


async def test_hold_sees_a_server_that_closes_the_session_later() -> None:
    """A session cut 300 ms in (an LB's backend timeout): without hold the probe has closed
    before and passes; held, it is `ws_closed`, with how long the session had lasted."""
    async def cut_later(ws: ServerConnection) -> None:
        try:
            async with asyncio.timeout(0.3):
                await pong(ws)
        except TimeoutError:
            await ws.close(1001, "backend timeout")

    async with websockets_server(cut_later) as url:
        quick = await probe({"url": url, "messages": [PING]})
        held = await probe({"url": url, "messages": [PING], **HOLD})
    assert quick.success, quick.detail
    assert held.failure is Failure.WS_CLOSED and held.close_code == 1001, held.detail
    assert '1001 "backend timeout" after ' in held.detail
    assert "(while held, " in held.detail and " of 1.5s, 1 message received)" in held.detail


async def test_hold_sees_a_dropped_connection() -> None:
    async def drop(ws: web.WebSocketResponse) -> None:
        await ws.receive()
        await ws.send_json({"type": "pong"})
        try:
            async with asyncio.timeout(0.3):
                await ws.receive()
        except TimeoutError:
            assert ws._req is not None and ws._req.transport is not None
            ws._req.transport.abort()

    async with aiohttp_server(drop) as url:
        outcome = await probe({"url": url, "messages": [PING], **HOLD})
    assert outcome.failure is Failure.WS_DROPPED and outcome.close_code == 1006, outcome.detail
    assert "without a close frame (1006) after " in outcome.detail
    assert "(while held, " in outcome.detail


async def test_keepalive_pings_while_held_and_expects_pongs() -> None:
    """aiohttp without autoping shows each ping: answered, the held session passes; ignored,
    it is `ws_no_reply` for the pong."""
    pings: list[bytes] = []

    def session(answer: bool) -> AiohttpHandler:
        async def run(ws: web.WebSocketResponse) -> None:
            async for msg in ws:
                if msg.type is WSMsgType.PING:
                    pings.append(msg.data)
                    if answer:
                        await ws.pong(msg.data)
        return run

    fields = {"hold": "1s", "keepalive": "250ms", "timeout": "3s"}
    async with aiohttp_server(session(True), autoping=False) as url:
        answered = await probe({"url": url, **fields})
    assert answered.success, answered.detail
    assert len(pings) >= 2
    async with aiohttp_server(session(False), autoping=False) as url:
        ignored = await probe({"url": url, **fields})
    assert ignored.failure is Failure.WS_NO_REPLY, ignored.detail
    assert ignored.detail.startswith("no pong to the keepalive ping within 250ms after ")


async def test_hold_drops_what_the_server_pushes_meanwhile() -> None:
    async def chatty(ws: ServerConnection) -> None:
        for i in range(50):
            await ws.send(json.dumps({"type": "tick", "n": i}))
        await ws.wait_closed()

    async with websockets_server(chatty) as url:
        outcome = await probe({"url": url, "hold": "300ms", "timeout": "3s"})
    assert outcome.success, outcome.detail


@pytest.mark.parametrize(("fields", "words"), [
    ({"hold": "45s", "timeout": "30s", "interval": "60s"},
     "target chat: timeout (30s) must cover hold (45s) + 1s to connect and close: at least 46s"),
    ({"hold": "45s", "timeout": "47s", "interval": "60s", "messages": [PING]},
     "hold (45s) + the longest step's timeout (2s) + 1s"),
    ({"hold": "10s"}, "must cover hold (10s)"),
    ({"keepalive": "5s", "timeout": "5s"}, "keepalive pings while held"),
    ({"hold": "5s", "keepalive": "10s", "timeout": "7s"}, "keepalive pings while held"),
    ({"hold": "5s", "keepalive": "5s", "timeout": "7s"}, "shorter than hold"),
    ({"follow_redirects": True}, "follow_redirects is for http(s) targets only"),
    ({"max_redirects": 2}, "max_redirects is for http(s) targets only"),
])
def test_config_rejects(fields: dict[str, Any], words: str) -> None:
    target = {"name": "chat", "url": "wss://chat.example/ws", **fields}
    with pytest.raises(ConfigError) as err:
        parse_config(json.dumps({"targets": [target]}))
    assert any(words in e for e in err.value.errors), err.value.errors


def test_config_accepts_hold_and_inherited_http_defaults() -> None:
    cfg = parse_config(json.dumps({
        "defaults": {"follow_redirects": True, "max_redirects": 3},
        "targets": [
            {"name": "chat", "url": "wss://chat.example/ws", "hold": "45s", "keepalive": "15s",
             "timeout": "55s", "interval": "60s", "messages": [PING]},
            {"name": "web", "url": "https://chat.example/"},
        ]}))
    chat, web_ = cfg.targets
    assert (chat.hold, chat.keepalive, chat.follow_redirects) == (45.0, 15.0, False)
    assert (web_.follow_redirects, web_.max_redirects) == (True, 3)
    with pytest.raises(ConfigError, match="hold and keepalive are for WebSocket targets only"):
        parse_config(json.dumps({"targets": [{"name": "w", "url": "http://h/", "hold": "1s"}]}))
