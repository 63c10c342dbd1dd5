"""The connection a WebSocket probe drives: websockets' ClientConnection, bounded against a server
that would steal the event loop from every other target.

- Frames per loop turn. websockets parses every complete frame of a read in one call: a 256 KiB
  read of empty pings is 128k frames, ~0.7 s of parsing and 128k pongs on this machine, during
  which no other target's probe runs. Here the parser stops after FRAMES_PER_TURN frames
  (~1 ms), reading is paused, and the rest of what was read is parsed on the following turns;
  an end of stream that arrives meanwhile is handed on once that backlog is parsed, so a close
  frame behind the backlog still names the failure.
- Pings. Answering a ping is cheap; answering a flood of them is not (and the pongs pile up in
  the write buffer of a server that does not read). More than PING_LIMIT pings within a second
  fails the session: `protocol`, "ping flood".
- A finished closing handshake. A client waits for the server to drop TCP after both close
  frames (RFC 6455 7.1.1, so the server keeps the TIME_WAIT), but a server that never does would
  hold a waiting step until its timeout: the connection is closed CLOSE_GRACE later.
- A failed TLS handshake. start_tls reports its failure to this protocol's connection_lost
  although connection_made never ran; websockets' handler then raised inside the loop (an
  asyncio ERROR traceback per probe). Such a call is ignored: the failure is named by the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

FRAMES_PER_TURN = 256  # frames parsed per loop turn per connection (~5 us each)
PING_LIMIT = 100  # pings a server may send within one second
CLOSE_GRACE = 0.1  # seconds the server has to drop TCP after the closing handshake


class PingFlood(ProtocolError):
    """More pings than any keepalive needs: the server is flooding the session."""


class _Reader(StreamReader):
    """websockets' reader with a frame budget and an early look at each frame's head.

    The parser asks `at_eof` before every frame, and waits there (as for more data) once the
    budget of this turn is spent. The frame's first read is its 2-byte head, checked at once:
    websockets checks a frame only once its payload is in, so HTTP text after the 101 (`HT` is
    a head announcing 84 bytes) waited for a payload that never came, until a timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = FRAMES_PER_TURN
        self.head = False  # the next read_exact is a frame's head

    def at_eof(self) -> Generator[None, None, bool]:
        while self.budget <= 0:
            yield
        self.budget -= 1
        self.head = True
        return (yield from super().at_eof())

    def read_exact(self, n: int) -> Generator[None, None, bytes]:
        if not self.head:
            return (yield from super().read_exact(n))
        self.head = False
        data = yield from super().read_exact(n)
        why = _bad_head(data)
        if why is not None:
            raise ProtocolError(why)
        return data


_OPCODES = frozenset(int(op) for op in Opcode)


def _bad_head(head: bytes) -> str | None:
    """What is wrong with a server frame's 2-byte head (no extension is ever negotiated)."""
    if head.startswith(b"HT"):
        return "HTTP text after the 101 instead of WebSocket frames"
    first, second = head[0], head[1]
    opcode = first & 0x0F
    if first & 0x70:
        return f"reserved bits set (first byte 0x{first:02x})"
    if opcode not in _OPCODES:
        return f"unknown opcode 0x{opcode:x}"
    if second & 0x80:
        return "masked frame from the server"
    if opcode >= 0x8 and (not first & 0x80 or second & 0x7F > 125):
        return "fragmented or oversized control frame"
    return None


class BoundedProtocol(ClientProtocol):
    """ClientProtocol with the frame budget and the ping limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The parser already started on the plain reader (nothing fed yet): restart it on ours.
        self.parser.close()
        self.reader = _Reader()
        self.parser = self.parse()
        next(self.parser)
        self.pings = 0
        self.ping_window = 0.0

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PING:
            now = time.monotonic()
            if now - self.ping_window >= 1.0:
                self.ping_window, self.pings = now, 0
            self.pings += 1
            if self.pings > PING_LIMIT:
                raise PingFlood(f"more than {PING_LIMIT} pings within 1 s (ping flood)")
        super().recv_frame(frame)


class BoundedConnection(ClientConnection):
    """ClientConnection that parses a bounded number of frames per loop turn, cuts off a server
    that broke the protocol, closes a finished closing handshake the server leaves open, and
    notes when its transport was ready (`t_connected`, perf_counter)."""

    protocol: BoundedProtocol
    t_connected: float | None = None
    _made = False
    _refill: asyncio.Handle | None = None
    _eof_held = False  # an end of stream behind the backlog, handed on after it
    _lost_held = False  # a clean connection_lost behind the backlog (TLS), the same
    _grace: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.t_connected is None:
            self.t_connected = time.perf_counter()
        self._made = True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        proto = self.protocol
        if proto.parser_exc is not None:
            # A server that sent an invalid or oversized frame (or a ping flood) has been told
            # (1002/1009); waiting for it to acknowledge would turn a precise failure into a
            # timeout.
            self._cancel_refill()
            if not self.transport.is_closing():
                self.transport.abort()
            self._hand_on()
            return
        if proto.reader.budget <= 0:  # a backlog: no more reading until it is parsed
            self.transport.pause_reading()
            if self._refill is None:
                self._refill = self.loop.call_soon(self._parse_backlog)
        if (proto.close_rcvd is not None and proto.close_sent is not None
                and self._grace is None and not self.transport.is_closing()):
            self._grace = self.loop.call_later(CLOSE_GRACE, self.transport.close)

    def _parse_backlog(self) -> None:
        """The next turn's share of what was read but not parsed; reading resumes (or a held
        end is handed on) once none is left."""
        self._refill = None
        self.protocol.reader.budget = FRAMES_PER_TURN
        self.data_received(b"")
        if self._refill is not None or self.protocol.parser_exc is not None:
            return  # more next turn, or cut off (and handed on)
        if self._eof_held or self._lost_held:
            self._hand_on()
        elif not self.recv_messages.paused:  # else the message queue resumes reading itself
            self.transport.resume_reading()

    def _hand_on(self) -> None:
        """Give websockets the end of stream and the lost connection held back meanwhile."""
        if self._eof_held:
            self._eof_held = False
            super().eof_received()
            if not self._lost_held:
                self.transport.close()
        if self._lost_held:
            self._lost_held = False
            self._drop_backlog()
            super().connection_lost(None)

    def _cancel_refill(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None

    def _drop_backlog(self) -> None:
        """Forget what is left unparsed, so the parser can see the end of the stream (it waits
        on the budget while a refill is due)."""
        self._cancel_refill()
        self.protocol.reader.budget = FRAMES_PER_TURN
        self.protocol.reader.buffer.clear()

    def send_data(self) -> None:
        if self._lost_held:  # no transport left to write the pongs of the backlog to
            self.protocol.data_to_send()
            return
        super().send_data()

    def eof_received(self) -> bool | None:
        if self._refill is None:
            return super().eof_received()
        self._eof_held = True
        # Plain TCP stays open meanwhile; TLS closes the transport whatever the answer, and
        # its connection_lost is held back too.
        return self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._made:  # start_tls failed: never connected, the caller names the failure
            return
        if self._grace is not None:
            self._grace.cancel()
        if self._refill is not None and exc is None:  # a clean end behind a backlog
            self._lost_held = True
            return
        self._eof_held = False
        self._drop_backlog()  # a reset, or our own abort: what is left is not read
        super().connection_lost(exc)
