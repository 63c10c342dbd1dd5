"""One coroutine per fault: what the server does with each accepted connection.

Every handler is bounded: it ends when the client goes away, when the server stops (the
connection task is cancelled), or after a fixed amount of work. Names are `kind` or `kind:arg`
(e.g. `ws_close:1011`); `FAULTS` maps the kind to its handler.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import select
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_frame,
    frame,
    frame_header,
    json_response,
    read_frame,
    read_request,
    response,
    upgrade_response,
)

CHUNK = 64 * 1024
BIG_HTTP_BODY = 50 * 1024 * 1024
BIG_WS_MESSAGE = 20 * 1024 * 1024


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    arg: str | None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def delivered(self, within: float = 5.0) -> None:
        """Return once the client's kernel has acknowledged every byte written so far.

        Our send queue (SIOCOUTQ: bytes not yet ACKed by the peer) and the transport's own
        buffer both empty: what was sent is in the client's receive queue, so whatever we do
        next (a RST) comes after it. There is no event for this, so it polls the kernel every
        millisecond (loopback ACKs at once), bounded by `within`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        fd = self.writer.get_extra_info("socket").fileno()
        while self.writer.transport.get_write_buffer_size() or _unacked(fd):
            if loop.time() > deadline:
                return  # the client stopped reading (window full): RST it as it is
            await asyncio.sleep(0.001)

    async def until_eof(self) -> None:
        """Read (and discard) whatever the client sends until it hangs up."""
        while await self.reader.read(CHUNK):
            pass


Handler = Callable[[Conn], Awaitable[None]]


def _unacked(fd: int) -> int:
    """Bytes in this socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])


# --- HTTP ------------------------------------------------------------------------------------


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


# --- WebSocket -------------------------------------------------------------------------------


async def _upgrade(c: Conn) -> bool:
    req = await read_request(c.reader)
    if req is None:
        return False
    await c.send(upgrade_response(req))
    return True


async def _first_message(c: Conn) -> None:
    """Wait (bounded) for the client's first data frame, so a fault hits mid-session."""
    try:
        async with asyncio.timeout(30):
            while True:
                opcode, _ = await read_frame(c.reader)
                if opcode != OP_PING:
                    return
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        return


async def ws_ok_session(c: Conn, _req: object = None) -> None:
    """Answer {"type": "ping"} with {"type": "pong"}, echo anything else, honour close."""
    if _req is None:
        if not await _upgrade(c):
            return
    else:
        await c.send(upgrade_response(_req))
    while True:
        try:
            opcode, data = await read_frame(c.reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        if opcode == OP_CLOSE:
            await c.send(frame(OP_CLOSE, data[:2]))
            return
        if opcode == OP_PING:
            await c.send(frame(OP_PONG, data))
        elif opcode == OP_TEXT:
            try:
                msg = json.loads(data)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("type") == "ping":
                data = json.dumps({"type": "pong"}).encode()
            await c.send(frame(OP_TEXT, data))


async def ws_ok(c: Conn) -> None:
    await ws_ok_session(c)


async def ws_reject(c: Conn) -> None:
    """Answer the upgrade with an ordinary HTTP status (403 by default)."""
    if await read_request(c.reader) is not None:
        await c.send(json_response(int(c.arg or 403), {"error": "rejected"}, Connection="close"))


async def ws_garbage(c: Conn) -> None:
    """101, then bytes that are no valid frame (reserved opcode, reserved bits)."""
    if await _upgrade(c):
        await c.send(b"\x7f\x05hello\x0f\xffnot a websocket frame at all" * 4)
        await c.until_eof()


async def ws_big(c: Conn) -> None:
    """101, then one 20 MB text message, streamed in chunks."""
    if not await _upgrade(c):
        return
    await _first_message(c)
    await c.send(frame_header(OP_TEXT, BIG_WS_MESSAGE))
    block = b"a" * CHUNK
    for _ in range(BIG_WS_MESSAGE // CHUNK):
        await c.send(block)
    await c.until_eof()


async def ws_close(c: Conn) -> None:
    """101, the first message, then a close frame with the code in arg (default 1011)."""
    if not await _upgrade(c):
        return
    await _first_message(c)
    code = int(c.arg or 1011)
    await c.send(close_frame(code, f"fault close {code}"))
    try:  # wait (bounded) for the client's closing frame, then hang up as a server should
        async with asyncio.timeout(5):
            while (await read_frame(c.reader))[0] != OP_CLOSE:
                pass
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass


async def ws_drop(c: Conn) -> None:
    """101, the first message, then the TCP connection is reset without a close frame."""
    if await _upgrade(c):
        await _first_message(c)
        c.writer.transport.abort()


async def ws_silent(c: Conn) -> None:
    """101, then read everything and never say a word."""
    if await _upgrade(c):
        await c.until_eof()


async def ws_no_upgrade(c: Conn) -> None:
    """Read the upgrade request and never answer it."""
    await read_request(c.reader)
    await c.until_eof()


FAULTS: dict[str, Handler] = {
    "ok": ok, "status": status, "accept_no_read": accept_no_read, "no_answer": no_answer,
    "stall_body": stall_body, "drip": drip, "big_body": big_body, "garbage": garbage,
    "bad_chunk": bad_chunk, "header_flood": header_flood,
    "reset": reset, "redirect_loop": redirect_loop,
    "ws_ok": ws_ok, "ws_reject": ws_reject, "ws_garbage": ws_garbage, "ws_big": ws_big,
    "ws_close": ws_close, "ws_drop": ws_drop, "ws_silent": ws_silent,
    "ws_no_upgrade": ws_no_upgrade,
}
