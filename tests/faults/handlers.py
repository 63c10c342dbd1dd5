"""One coroutine per fault: what the server does with each accepted connection.

Every handler is bounded: it ends when the client goes away, when the server stops (the
connection task is cancelled), or after a fixed amount of work. Names are `kind` or `kind:arg`
(e.g. `ws_close:1011`); `FAULTS` maps the kind to its handler. The HTTP faults are here, the
WebSocket ones in handlers_ws.py.
"""

from __future__ import annotations

import asyncio
import select
import socket
import struct

from .conn import CHUNK, Conn, Handler
from .echo import ECHO_FAULTS
from .handlers_ws import WS_FAULTS, ws_ok_session
from .wire import json_response, read_request, response

BIG_HTTP_BODY = 50 * 1024 * 1024


async def ok(c: Conn) -> None:
    """A healthy endpoint with keep-alive: JSON status and version."""
    while (req := await read_request(c.reader)) is not None:
        if req.is_upgrade:
            await ws_ok_session(c, req)
            return
        await c.send(json_response(200, {"status": "healthy", "version": c.arg or "1.0"}))


async def status(c: Conn) -> None:
    while await read_request(c.reader) is not None:
        await c.send(json_response(int(c.arg or 500), {"status": "error"}))


async def accept_no_read(c: Conn) -> None:
    """Accept, then neither read nor write; end only once the client hangs up.

    The unread request sits in the socket, so EOF cannot be seen by reading; POLLRDHUP tells
    that the peer shut down anyway, so a long soak does not pile up dead connections here.
    """
    sock = c.writer.get_extra_info("socket")
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    while not poller.poll(0):  # noqa: ASYNC110 (kernel state; no event to await)
        await asyncio.sleep(0.25)


async def no_answer(c: Conn) -> None:
    """Read the request, never answer; end when the client gives up."""
    await read_request(c.reader)
    await c.until_eof()


async def stall_body(c: Conn) -> None:
    """Send the head and a little of the body, then nothing more."""
    await read_request(c.reader)
    await c.send(response(200, b"", Content_Type="text/plain").replace(
        b"Content-Length: 0", b"Content-Length: 1000") + b"partial...")
    await c.until_eof()


async def drip(c: Conn) -> None:
    """Answer one byte a second, status line included."""
    await read_request(c.reader)
    for byte in json_response(200, {"status": "healthy"}):
        await c.send(bytes([byte]))
        await asyncio.sleep(1.0)


async def big_body(c: Conn) -> None:
    """Stream 50 MB, generated as it goes; `big_body:length` declares it up front instead."""
    await read_request(c.reader)
    declared = c.arg == "length"
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        + (f"Content-Length: {BIG_HTTP_BODY}\r\n" if declared
           else "Transfer-Encoding: chunked\r\n")
        + "\r\n"
    )
    await c.send(head.encode())
    block = b"x" * CHUNK
    chunk = block if declared else f"{CHUNK:x}\r\n".encode() + block + b"\r\n"
    for _ in range(BIG_HTTP_BODY // CHUNK):
        await c.send(chunk)
    if not declared:
        await c.send(b"0\r\n\r\n")


async def garbage(c: Conn) -> None:
    """Answer with bytes that are not HTTP at all."""
    await read_request(c.reader)
    await c.send(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x01\x02\x03\r\n\r\n")
    await c.until_eof()


async def header_flood(c: Conn) -> None:
    """A status line, then header lines without end (bounded here at 16 MB); `header_flood:long`
    sends one header line that never ends instead."""
    req = await read_request(c.reader)
    head = b"HTTP/1.1 101 Switching Protocols\r\n" if req and req.is_upgrade else (
        b"HTTP/1.1 200 OK\r\n")
    await c.send(head)
    if c.arg == "long":
        await c.send(b"X-Long: ")
        line = b"a" * CHUNK
    else:
        line = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 40) for i in range(1000))
    for _ in range(16 * 1024 * 1024 // len(line)):
        await c.send(line)
    await c.until_eof()


async def bad_chunk(c: Conn) -> None:
    """A chunked body whose chunk-size line is not hex: broken framing, not a cut connection."""
    await read_request(c.reader)
    await c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                 b"zz-not-hex\r\nmore\r\n0\r\n\r\n")
    await c.until_eof()


async def reset(c: Conn) -> None:
    """Start a response, then reset the connection (SO_LINGER 0 then close sends RST).

    `reset:chunked` starts a chunked body instead of one with a Content-Length; `reset:fin`
    (or `reset:chunked,fin`) hangs up with an orderly FIN instead of a RST.
    """
    await read_request(c.reader)
    opts = set((c.arg or "").split(","))
    if "chunked" in opts:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        await c.send(head + b"3e8\r\n" + b"y" * 1000 + b"\r\n")
    else:
        await c.send(response(200, b"", Content_Type="text/plain").replace(
            b"Content-Length: 0", b"Content-Length: 100000") + b"y" * 1000)
    await c.delivered()  # the partial answer reaches the client before the RST or FIN
    if "fin" in opts:
        c.writer.close()
        return
    sock = c.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.writer.transport.abort()


async def redirect_loop(c: Conn) -> None:
    """/a -> /b -> /a ... forever, on a kept-alive connection."""
    while (req := await read_request(c.reader)) is not None:
        nxt = "/b" if req.path.rstrip("/").endswith("/a") else "/a"
        await c.send(response(302, b"", Location=nxt))


async def trailer_flood(c: Conn) -> None:
    """A chunked body that ends (`0` chunk), then trailer lines without end (bounded here at
    64 MB); `trailer_flood:long` sends one trailer line that never ends instead."""
    await read_request(c.reader)
    await c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
    if c.arg == "long":
        await c.send(b"X-Trailer: ")
        line = b"t" * CHUNK
    else:
        line = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"t" * 40) for i in range(1000))
    await _flood(c, line)


async def chunk_ext_flood(c: Conn) -> None:
    """A chunked body whose first chunk-size line carries extensions without end (bounded here
    at 64 MB): `5;a=b;a=b;...` never reaching its CRLF."""
    await read_request(c.reader)
    await c.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5")
    await _flood(c, b";ext=value" * (CHUNK // 10))


async def slowloris(c: Conn) -> None:
    """A status line, then one short header line every 50 ms, never ending the head (bounded
    here at 10 minutes): each byte arrives well inside any read timeout, only the probe's own
    deadline ends it."""
    await read_request(c.reader)
    await c.send(b"HTTP/1.1 200 OK\r\n")
    for i in range(12_000):
        await c.send(b"X-Slow-%d: s\r\n" % i)
        await asyncio.sleep(0.05)


async def _flood(c: Conn, block: bytes, total: int = 64 * 1024 * 1024) -> None:
    """Send `block` until `total` bytes went out or the client hung up, then wait for EOF."""
    for _ in range(total // len(block)):
        await c.send(block)
    await c.until_eof()


FAULTS: dict[str, Handler] = {
    "ok": ok, "status": status, "accept_no_read": accept_no_read, "no_answer": no_answer,
    "stall_body": stall_body, "drip": drip, "big_body": big_body, "garbage": garbage,
    "bad_chunk": bad_chunk, "header_flood": header_flood,
    "reset": reset, "redirect_loop": redirect_loop, "trailer_flood": trailer_flood,
    "chunk_ext_flood": chunk_ext_flood, "slowloris": slowloris, **WS_FAULTS, **ECHO_FAULTS,
}
