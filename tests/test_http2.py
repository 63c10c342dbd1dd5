"""HTTP/2 (`http_version: "2"`, h2c with prior knowledge) against peers played with the `h2`
library's server side on loopback: what such a peer can do to the probe is named and bounded
(a reset stream, a GOAWAY, a flood of frames that are not the answer, a body past the limit).
nghttpd and nginx over TLS are in tests/conformance/test_http_curl.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from http_servers import raw_server
from test_http_wire import BODY, failed, ok, probe

from probe.outcome import Failure

Play = Callable[[h2.connection.H2Connection, asyncio.StreamWriter], None]


def server(play: Play) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]:
    """A raw h2c server: on the request's headers, `play` answers on the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    play(conn, writer)
            writer.write(conn.data_to_send())
            await writer.drain()

    return handle


def answer(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter) -> None:
    conn.send_headers(1, [(":status", "200"), ("content-type", "application/json"),
                          ("x-build", "4.5.6")])
    conn.send_data(1, BODY, end_stream=True)


def reset(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter) -> None:
    conn.reset_stream(1, h2.errors.ErrorCodes.INTERNAL_ERROR)


def goaway(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter) -> None:
    conn.send_headers(1, [(":status", "200")])
    conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)


def ping_flood(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter) -> None:
    conn.send_headers(1, [(":status", "200")])
    for i in range(20000):  # 17 bytes each, never the body: past the framing allowance
        conn.ping(i.to_bytes(8, "big"))


def big(conn: h2.connection.H2Connection, writer: asyncio.StreamWriter) -> None:
    conn.send_headers(1, [(":status", "200")])
    for _ in range(4):  # 64 KiB: the initial window; more would wait for WINDOW_UPDATE
        conn.send_data(1, b"x" * 16000)


async def play(how: Play, **target: object) -> object:
    async with raw_server(server(how)) as port:
        return await probe(f"http://127.0.0.1:{port}/health", http_version="2", **target)


async def test_h2c_answer_is_read_like_http1() -> None:
    out = ok(await play(answer, expect={"json": {"status": "healthy"},
                                        "headers": {"X-Build": r"4\.5\.6"}}))
    assert out.http is not None and out.http.version == 2.0


@pytest.mark.parametrize(("how", "failure", "detail"), [
    (reset, Failure.DISCONNECTED, "HTTP/2 stream reset by the server (INTERNAL_ERROR)"),
    (goaway, Failure.DISCONNECTED, "HTTP/2 connection ended by the server (GOAWAY"
                                   " ENHANCE_YOUR_CALM)"),
    (ping_flood, Failure.PROTOCOL, "not valid HTTP: chunked framing (chunk extensions or"
                                   " trailer) exceeds 64 KiB without ending"),
    (big, Failure.BODY_TOO_LARGE, "body exceeds the 10 KiB limit"),
], ids=["reset", "goaway", "ping-flood", "body-limit"])
async def test_what_an_h2_peer_does_is_named(how: Play, failure: Failure, detail: str) -> None:
    out = await play(how, body_limit=10 * 1024)
    assert failed(out, failure).startswith(detail)
