"""A WebSocket server spoken byte by byte, for what no real server does on purpose: a close frame
in the same segment as the 101, a close frame with TCP left open, HTTP text after the 101, a
flood of pings. Used with http_servers.raw_server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  then: bytes = b"") -> None:
    """Read the upgrade request and answer 101, with `then` in the same write (one segment)."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
    assert key is not None
    accept = base64.b64encode(hashlib.sha1(key.group(1) + _GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + then)
    await writer.drain()


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One unmasked, final server frame (0x1 text, 0x8 close, 0x9 ping, 0xA pong)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason.encode())


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One masked client frame: (opcode, unmasked payload)."""
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4)
    data = await reader.readexactly(n)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def drain_input(reader: asyncio.StreamReader) -> None:
    """Read and drop whatever the client sends until it hangs up (no parsing: cheap)."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 16):
            pass
