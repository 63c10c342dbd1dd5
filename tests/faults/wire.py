"""The few pieces of HTTP/1.1 and RFC 6455 the fault handlers need, written by hand.

A fault server must be able to break the protocol at any byte, which a real server library will
not do for us; so requests are parsed and frames built here, minimally and strictly bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 64 * 1024
MAX_CLIENT_FRAME = 1 << 20

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def is_upgrade(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request head (and its Content-Length body), or None at EOF / on a malformed head."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _ = lines[0].split(" ", 2)
    except ValueError:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(min(length, MAX_HEAD)) if length else b""
    return Request(method, path, headers, body)


def response(status: int, body: bytes = b"", reason: str = "", **headers: str) -> bytes:
    """A complete HTTP/1.1 response; header names are given with _ for -."""
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Status')}"]
    extra = {k.replace("_", "-"): v for k, v in headers.items()}
    merged = {"Content-Length": str(len(body)), **extra}
    lines += [f"{k}: {v}" for k, v in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, payload: object, **headers: str) -> bytes:
    body = json.dumps(payload).encode()
    return response(status, body, Content_Type="application/json", **headers)


_REASONS = {200: "OK", 302: "Found", 401: "Unauthorized", 403: "Forbidden",
            500: "Internal Server Error", 101: "Switching Protocols"}


def upgrade_response(request: Request) -> bytes:
    key = request.headers.get("sec-websocket-key", "")
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """A server (unmasked) frame header announcing `length` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def frame(opcode: int, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (unmasked for us); raises IncompleteReadError at EOF."""
    b1, b2 = await reader.readexactly(2)
    opcode, masked, length = b1 & 0x0F, b2 & 0x80, b2 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if length > MAX_CLIENT_FRAME:
        raise ValueError(f"client frame of {length} bytes")
    mask = await reader.readexactly(4) if masked else b""
    data = await reader.readexactly(length)
    if masked:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return opcode, data
