"""Gate truth for WebSocket targets (issue 12): never a success where a real client's session
fails, and the cause named right — against servers no one here wrote (websockets' and aiohttp's)
and, for what no real server does on purpose, a byte-level one (ws_raw). Hold and keepalive are
in test_ws_hold.py, the loop bounds against flooding servers in test_ws_bounds.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import serving
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from ws_raw import close_frame, drain_input, read_frame, upgrade
from ws_servers import (
    PING,
    TOKEN,
    aiohttp_pong,
    aiohttp_server,
    pong,
    probe,
    raw,
    websockets_server,
)

from probe.outcome import Failure

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


async def test_accept_then_close_1000_with_no_steps() -> None:
    """`await websocket.close()` right after accept() sends 1000 (Starlette's and aiohttp's
    default): no client gets a session out of it, so neither does the probe."""
    async def bye(ws: ServerConnection) -> None:
        await ws.close(1000)

    async def aio_bye(ws: web.WebSocketResponse) -> None:
        await ws.close()

    async with websockets_server(bye) as url:
        plain = await probe({"url": url})
    async with aiohttp_server(aio_bye) as url:
        aio = await probe({"url": url})
    for outcome in (plain, aio):
        assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 1000, outcome.detail
        assert outcome.detail.endswith("(with no steps)")


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
