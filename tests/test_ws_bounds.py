"""One WebSocket target's traffic must not steal the event loop from the others (issue 13):
frames are parsed a bounded number per loop turn, a ping flood is named, and a neighbour
probed meanwhile passes. The loop lag itself is measured in bench/ws_hostile.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from ws_raw import close_frame, drain_input, frame, upgrade
from ws_servers import PING, Raw, probe, raw, websockets_server

from probe.outcome import Failure, Outcome


async def test_a_close_behind_a_burst_over_tls_is_still_named(tmp_path: Path) -> None:
    """The same burst from websockets' server over TLS, written on its transport at once."""
    from certs import make_self_signed  # tests/certs.py

    async def burst(ws: ServerConnection) -> None:
        ws.transport.write(frame(0xA) * 32768 + close_frame(4002, "bye"))
        ws.transport.close()

    cert = make_self_signed(tmp_path)
    async with serve(burst, "127.0.0.1", 0, ssl=cert.server_context()) as server:
        url = f"wss://localhost:{server.sockets[0].getsockname()[1]}/ws"
        outcome = await probe({"url": url, "messages": [PING], "ca_file": str(cert.cert_file)})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 4002, outcome.detail


async def test_a_close_behind_a_burst_of_frames_is_still_named() -> None:
    """32k pongs, then a close frame, then EOF: parsed 256 frames a turn, the close frame at
    the end of the backlog still names the failure (not a drop)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer, then=frame(0xA) * 32768 + close_frame(4002, "bye"))
        writer.close()

    async with raw(handler) as url:
        outcome = await probe({"url": url, "messages": [PING]})
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 4002, outcome.detail


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
