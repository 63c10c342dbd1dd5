"""Review of the one-deadline WebSocket check (issue 8): what a probe leaves behind when it is
cancelled while closing a failed session, and how a bad ca_file is named. A raw TCP peer on
loopback plays the server, so it can do what websockets' own server never does (leave a close
frame unanswered).
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from pathlib import Path

from helpers import until
from http_servers import raw_server
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response
from ws_raw import frame, read_frame, upgrade

from probe.checks import CheckContext
from probe.checks.websocket import check
from probe.config import Config, Target
from probe.outcome import Failure


def target(url: str, **kw: object) -> Target:
    fields = {"name": "ws", "url": url, "timeout": "5s", "interval": "10s", **kw}
    return Config.model_validate({"targets": [fields]}).targets[0]


class DeafPeer:
    """Upgrades, answers the first message with one that fails the step, then reads on and never
    answers the probe's close frame: the probe sits in its polite close until cut off."""

    def __init__(self) -> None:
        self.close_seen = asyncio.Event()
        self.gone = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await upgrade(reader, writer)
            answered = False
            while True:
                opcode, _ = await read_frame(reader)
                if opcode == 0x8:
                    self.close_seen.set()
                elif not answered:
                    writer.write(frame(0x1, b"nope"))
                    answered = True
        except (asyncio.IncompleteReadError, ConnectionError):
            self.gone.set()  # EOF or reset: the probe let go of the connection
        finally:
            writer.close()


async def test_a_probe_cancelled_while_closing_a_failed_session_drops_the_connection() -> None:
    """SIGTERM (or the scheduler's backstop) while the check politely closes a failed session:
    the connection is cut, not left open until the server or the garbage collector ends it."""
    peer = DeafPeer()
    async with raw_server(peer) as port:
        t = target(f"ws://127.0.0.1:{port}/ws", messages=[
            {"send": "ping", "expect": {"regex": "^pong$"}, "timeout": "2s"}])
        task = asyncio.create_task(check(t, CheckContext()))
        await until(peer.close_seen.is_set, "the probe's close frame", within=5)
        assert not task.done()  # still waiting for the server's half of the close
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await until(peer.gone.is_set, "the connection dropped after the cancellation", within=3)


async def test_a_ca_file_that_cannot_load_is_tls(tmp_path: Path) -> None:
    """As the HTTP check names it: a `tls` failure, not a crash of the check (which the
    scheduler reports as an internal error and logs with a traceback)."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    outcome = await check(target("wss://127.0.0.1:1/ws", ca_file=str(bad)), CheckContext())
    assert outcome.failure is Failure.TLS
    assert outcome.detail == f"cannot load ca_file {bad}: no certificate or crl found"


async def test_a_url_fragment_is_not_sent_and_does_not_crash_the_check() -> None:
    """Config accepts `ws://host/ws?x=1#frag` (the HTTP check ignores the fragment, as every
    client does); websockets refuses a URI with one, which used to escape check() as an
    InvalidURI carrying the whole URL, query credential included."""
    paths: list[str] = []

    async def record(_conn: ServerConnection, request: Request) -> Response | None:
        paths.append(request.path)
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=record) as server:
        port = server.sockets[0].getsockname()[1]
        outcome = await check(target(f"ws://127.0.0.1:{port}/ws?x=1#frag"), CheckContext())
    assert outcome.success, outcome.detail
    assert paths == ["/ws?x=1"]


async def test_a_port_out_of_range_is_protocol_not_a_crash() -> None:
    outcome = await check(target("ws://127.0.0.1:99999/ws?token=abcdefgh123"), CheckContext())
    assert outcome.failure is Failure.PROTOCOL
    assert outcome.detail.startswith("cannot build the request: ValueError")
    assert "abcdefgh123" not in outcome.detail


async def test_a_configured_host_header_replaces_the_urls() -> None:
    """One Host line, the configured one (as the HTTP check sends it); websockets adds extra
    headers to its own, and two Host lines are a 400 from any proxy."""
    hosts: list[list[str]] = []

    async def record(_conn: ServerConnection, request: Request) -> Response | None:
        hosts.append(request.headers.get_all("Host"))
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=record) as server:
        port = server.sockets[0].getsockname()[1]
        t = target(f"ws://127.0.0.1:{port}/ws", headers={"host": "chat.staging.example"})
        outcome = await check(t, CheckContext())
    assert outcome.success, outcome.detail
    assert hosts == [["chat.staging.example"]]


async def test_a_reply_nested_too_deeply_is_a_mismatch_not_a_crash() -> None:
    """`[[[[...` past Python's recursion limit made json.loads raise RecursionError, which
    escaped the step as an internal error with a traceback; it is the server's answer that is
    wrong, so it is named like any other message that is not the JSON asked for."""
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send("[" * 100_000)
        await ws.wait_closed()

    step = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "2s"}
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        outcome = await check(target(f"ws://127.0.0.1:{port}/ws", messages=[step]),
                              CheckContext())
    assert outcome.failure is not None and outcome.failure is not Failure.PROTOCOL, outcome
    assert "nested too deeply" in outcome.detail, outcome.detail
