"""Gate truth for WebSocket targets (issue 12): never a success where a real client's session
fails, and the cause named right — against servers no one here wrote (websockets' and aiohttp's)
and, for what no real server does on purpose, a byte-level one (ws_raw). Plus the loop bound of
issue 13: a server flooding its session with control frames must not delay another target.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from helpers import serving
from http_servers import raw_server
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from ws_raw import close_frame, drain_input, frame, read_frame, upgrade

from probe.checks import CheckContext
from probe.checks.websocket import check
from probe.config import Config, ConfigError, Target, parse_config
from probe.credentials import Credentials
from probe.outcome import Failure, Outcome

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


# --- 1. a server that accepts the upgrade, then closes ----------------------------------------


@pytest.mark.parametrize(("code", "reason"), [(4001, "invalid token"), (1008, "policy")])
@pytest.mark.parametrize("steps", [[], [PING]])
async def test_accept_then_close_websockets(code: int, reason: str, steps: list[Any]) -> None:
    """The FastAPI way to turn down a token: accept(), then close(4001). With no messages
    this passed; with messages it raced."""
    async def accept_then_close(ws: ServerConnection) -> None:
        await ws.close(code, reason)

    async with websockets_server(accept_then_close) as url:
        outcome = await probe({"url": url, "messages": steps})
    assert outcome.failure is Failure.WS_CLOSED, outcome.detail
    assert outcome.close_code == code
    assert f'server closed the session: {code} "{reason}" after ' in outcome.detail


@pytest.mark.parametrize("steps", [[], [PING]])
async def test_accept_then_close_aiohttp(steps: list[Any]) -> None:
    async def accept_then_close(ws: web.WebSocketResponse) -> None:
        await ws.close(code=4001, message=b"invalid token")

    async with aiohttp_server(accept_then_close) as url:
        outcome = await probe({"url": url, "messages": steps})
    assert outcome.failure is Failure.WS_CLOSED, outcome.detail
    assert outcome.close_code == 4001 and "invalid token" in outcome.detail


@pytest.mark.parametrize("code", [4403, 1000])
async def test_close_in_the_same_segment_as_the_101(code: int) -> None:
    """Right after the handshake even a 1000 (Starlette's default close code) ends a session
    no client could use."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer, then=close_frame(code, "go away"))
        await drain_input(reader)

    async with raw(handler) as url:
        outcome = await probe({"url": url})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == code, outcome.detail
    assert outcome.detail.endswith("(with no steps)")


async def test_a_close_between_steps_names_the_step() -> None:
    async def one_reply(ws: web.WebSocketResponse) -> None:
        await ws.receive()
        await ws.send_json({"type": "pong"})
        await ws.close(code=4001, message=b"token expired")

    async with aiohttp_server(one_reply) as url:
        outcome = await probe({"url": url, "messages": [PING, PING]})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 4001, outcome.detail
    assert outcome.detail.endswith("(step 2, 1 message received)")


async def test_a_close_behind_a_burst_of_frames_is_still_named() -> None:
    """32k pongs, then a close frame, then EOF: parsed 256 frames a turn, the close frame at
    the end of the backlog still names the failure (not a drop)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer, then=frame(0xA) * 32768 + close_frame(4002, "bye"))
        writer.close()

    async with raw(handler) as url:
        outcome = await probe({"url": url, "messages": [PING]})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 4002, outcome.detail


async def test_a_close_crossing_the_probes_close_is_not_a_success() -> None:
    """The server's 4001 answers the probe's own close (as when both close at once): what a
    client sees is 4001, so the session failed — a success carries 1000 only."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        while (await read_frame(reader))[0] != 0x8:
            pass
        writer.write(close_frame(4001, "invalid token"))
        await writer.drain()

    async with raw(handler) as url:
        outcome = await probe({"url": url})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 4001, outcome.detail
    assert "in answer to the probe's close" in outcome.detail


async def test_a_normal_close_is_still_a_success() -> None:
    """The controls: the probe's close answered 1000 (websockets, aiohttp), and a server that
    ends the session itself with 1000 once the steps are done."""
    async def reply_then_close(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "pong"}))
        await ws.close(1000)

    async with websockets_server() as url:
        plain = await probe({"url": url, "messages": [PING]})
    async with aiohttp_server(aiohttp_pong) as url:
        aio = await probe({"url": url, "messages": [PING]})
    async with websockets_server(reply_then_close) as url:
        server_done = await probe({"url": url, "messages": [PING]})
    for outcome in (plain, aio, server_done):
        assert outcome.success, outcome.detail
        assert outcome.close_code == 1000


# --- 2. subprotocols offered, none selected ----------------------------------------------------


async def test_no_subprotocol_selected_is_ws_rejected() -> None:
    async with websockets_server() as url:  # selects no subprotocol at all
        outcome = await probe({"url": url, "subprotocols": ["chat.v1", "chat.v2"],
                               "messages": [PING]})
    assert outcome.failure is Failure.WS_REJECTED, outcome.detail
    assert outcome.detail == ("WebSocket upgrade accepted without any of the offered "
                              "subprotocols (chat.v1, chat.v2)")


async def test_credential_subprotocol_not_selected_is_ws_rejected_without_the_token() -> None:
    async with aiohttp_server(aiohttp_pong) as url:  # protocols=() ignores whatever is offered
        outcome = await probe({"url": url, "credential": "svc", "credential_in": "subprotocol",
                               "subprotocols": ["chat"]}, {"svc": {"bearer": {"token": TOKEN}}})
    assert outcome.failure is Failure.WS_REJECTED, outcome.detail
    assert "(chat, the credential subprotocol)" in outcome.detail
    assert TOKEN[:8] not in outcome.detail


# --- 3. hold and keepalive ---------------------------------------------------------------------


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
    ({"follow_redirects": True}, "follow_redirects are for http(s) targets only"),
    ({"max_redirects": 2}, "max_redirects are for http(s) targets only"),
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


# --- 4. a close frame with TCP left open, 5. HTTP after the 101 --------------------------------


async def test_close_frame_with_tcp_left_open_is_ws_closed_at_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        await read_frame(reader)
        writer.write(close_frame(1008, "go away"))
        await drain_input(reader)  # TCP stays open for as long as the probe keeps it

    async with raw(handler) as url:
        outcome = await probe({"url": url, "messages": [{**PING, "timeout": "3s"}]})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 1008, outcome.detail
    assert '1008 "go away" after ' in outcome.detail and "(step 1, 0 messages received)" in (
        outcome.detail)


HTTP_TEXT = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("when", ["after_step", "at_close"])
async def test_http_after_the_101_is_protocol(when: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        await read_frame(reader)  # the step's message, or the probe's close
        writer.write(HTTP_TEXT)
        await drain_input(reader)

    steps = [PING] if when == "after_step" else []
    async with raw(handler) as url:
        outcome = await probe({"url": url, "messages": steps})
    assert outcome.failure is Failure.PROTOCOL, outcome.detail
    assert outcome.detail.startswith("server sent an invalid frame after ")
    assert outcome.detail.endswith(": HTTP text after the 101 instead of WebSocket frames")


# --- 6. a bare 403, 7. a redirect ------------------------------------------------------------


async def test_a_bare_403_does_not_blame_the_credential() -> None:
    async def bare(conn: ServerConnection, request: Request) -> Response:
        return Response(403, "Forbidden", Headers([("Content-Length", "0")]), b"")

    async def http_only(request: web.Request) -> web.Response:
        return web.Response(status=403)

    async with websockets_server(process_request=bare) as url:
        ws_side = await probe({"url": url, "credential": "svc"},
                              {"svc": {"bearer": {"token": TOKEN}}})
    app = web.Application()
    app.router.add_get("/ws", http_only)
    async with serving(app) as base:
        aio = await probe({"url": base.replace("http", "ws") + "/ws"})
    for outcome in (ws_side, aio):
        assert outcome.failure is Failure.WS_AUTH and outcome.status_code == 403
        assert "a 403 with no body can also mean an unknown path, an HTTP-only route or a " \
               "missing subprotocol" in outcome.detail, outcome.detail
    assert "(credential svc was sent; " in ws_side.detail
    assert "(no credential was sent; " in aio.detail


async def test_a_redirect_names_its_location_without_the_query() -> None:
    async def moved(conn: ServerConnection, request: Request) -> Response:
        location = "https://user:pw@login.example/sso?session=s3cr3t-value#frag"
        return Response(302, "Found", Headers([("Location", location),
                                               ("Content-Length", "0")]), b"")

    async def login(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/login?next=%2Fws&session=s3cr3t-value")

    async with websockets_server(process_request=moved) as url:
        outcome = await probe({"url": url})
    assert outcome.failure is Failure.WS_REJECTED and outcome.status_code == 302
    assert outcome.detail == ("WebSocket upgrade rejected: HTTP 302 redirect to "
                              "https://login.example/sso (not followed for WebSocket targets)")
    app = web.Application()
    app.router.add_get("/ws", login)
    async with serving(app) as base:
        aio = await probe({"url": base.replace("http", "ws") + "/ws"})
    assert aio.failure is Failure.WS_REJECTED and aio.status_code == 301
    assert aio.detail == ("WebSocket upgrade rejected: HTTP 301 redirect to /login "
                          "(not followed for WebSocket targets)")


# --- 8. a wss TLS failure logs nothing ----------------------------------------------------------


async def test_a_wss_tls_failure_logs_no_asyncio_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from certs import make_self_signed  # tests/certs.py

    cert = make_self_signed(tmp_path)
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with serve(pong, "127.0.0.1", 0, ssl=cert.server_context()) as server:
        url = f"wss://localhost:{server.sockets[0].getsockname()[1]}/ws"
        outcome = await probe({"url": url})
        for _ in range(5):  # the failed handshake's callbacks run on the next loop turns
            await asyncio.sleep(0)
    assert outcome.failure is Failure.TLS, outcome.detail
    assert [r for r in caplog.records if r.name == "asyncio"] == []


# --- 9. a flood from one server does not steal the loop from another target ---------------------


def flooding(chunk: bytes) -> Raw:
    """Upgrades, then writes `chunk` for as long as the client reads (its frames dropped)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        reading = asyncio.create_task(drain_input(reader))
        try:
            while not reading.done():
                writer.write(chunk)
                await writer.drain()
        finally:
            reading.cancel()
    return handler


@pytest.mark.parametrize(("flood", "failure", "words"), [
    (frame(0x9) * 32768, Failure.PROTOCOL, "more than 100 pings within 1 s (ping flood)"),
    (frame(0xA) * 32768, Failure.WS_NO_REPLY, "no reply to step 1 within 2s"),
    (frame(0x1, b"x" * (10 << 20)), Failure.WS_NO_REPLY, "no matching reply to step 1"),
], ids=["pings", "pongs", "10MiB-messages"])
async def test_a_flooding_server_does_not_delay_a_neighbour(
    flood: bytes, failure: Failure, words: str
) -> None:
    """Pings (answered, then cut off as a flood), unsolicited pongs (never an error, only
    bounded per loop turn), 10 MiB messages (under a 16 MiB body_limit): the neighbour, with
    a step timeout of 1 s, is probed five times meanwhile and passes every time."""
    never = {"send": "hello", "until": {"regex": "^never$"}, "timeout": "2s"}
    step = {**PING, "timeout": "2s"} if flood[0] != 0x81 else never
    async with raw(flooding(flood)) as flood_url, websockets_server() as calm_url:
        async def neighbour() -> list[Outcome]:
            return [await probe({"url": calm_url, "messages": [{**PING, "timeout": "1s"}]})
                    for _ in range(5)]

        hostile, calm = await asyncio.gather(
            probe({"url": flood_url, "messages": [step], "body_limit": 16 << 20}), neighbour())
    assert hostile.failure is failure, hostile.detail
    assert words in hostile.detail, hostile.detail
    assert [o.failure for o in calm] == [None] * 5, [o.detail for o in calm]
