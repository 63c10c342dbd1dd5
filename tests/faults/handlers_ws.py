"""The WebSocket faults: an upgrade (or a refusal of it), then one way of breaking the session.

Bounded like every handler (see handlers.py): each ends with its client, when the server stops,
or after a fixed amount of work.
"""

from __future__ import annotations

import asyncio
import json

from .conn import CHUNK, Conn, Handler
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
    upgrade_response,
)

BIG_WS_MESSAGE = 20 * 1024 * 1024
HUGE_WS_MESSAGE = 10 * 1024 * 1024


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
    await _answer_frames(c)


async def _answer_frames(c: Conn) -> None:
    """ws_ok's session after the upgrade: until the client closes or goes away."""
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
            await c.send(frame(OP_TEXT, _pong_for(data)))


def _pong_for(data: bytes) -> bytes:
    """The answer to a client text message: {"type": "pong"} for a ping, an echo otherwise."""
    try:
        msg = json.loads(data)
    except ValueError:
        msg = None
    if isinstance(msg, dict) and msg.get("type") == "ping":
        return json.dumps({"type": "pong"}).encode()
    return data


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


async def ws_ping_flood(c: Conn) -> None:
    """101, then pings as fast as the client takes them (bounded here at 200 000), while every
    data frame the client sends is still answered as ws_ok does: the session can succeed, but
    only if the flood does not starve it (or it is named once it passes a bound)."""
    if not await _upgrade(c):
        return

    async def flood() -> None:
        ping = frame(OP_PING, b"flood")
        batch = ping * 256
        for _ in range(200_000 // 256):
            await c.send(batch)

    task = asyncio.create_task(flood())
    try:
        await _answer_frames(c)
    finally:
        task.cancel()


async def ws_huge(c: Conn) -> None:
    """101, then 10 MiB text messages one after another (bounded here at 20), each streamed in
    chunks: the message cap must cut the first, and nothing may be buffered past it."""
    if not await _upgrade(c):
        return
    await _first_message(c)
    block = b"h" * CHUNK
    for _ in range(20):
        await c.send(frame_header(OP_TEXT, HUGE_WS_MESSAGE))
        for _ in range(HUGE_WS_MESSAGE // CHUNK):
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


WS_FAULTS: dict[str, Handler] = {
    "ws_ok": ws_ok, "ws_reject": ws_reject, "ws_garbage": ws_garbage, "ws_big": ws_big,
    "ws_close": ws_close, "ws_drop": ws_drop, "ws_silent": ws_silent,
    "ws_no_upgrade": ws_no_upgrade, "ws_ping_flood": ws_ping_flood, "ws_huge": ws_huge,
}
