"""One HTTP/1.1 exchange over one fresh connection: the asyncio driver of a ResponseReader.

Why not aiohttp's client: it builds a session, a connector, a request and a response object and
a stream reader for every probe, ~30% of a probe's CPU. Here one Protocol object per hop is fed
by the transport and llhttp (httptools' HttpResponseParser, the parser aiohttp itself uses) does
all the parsing; the check only awaits "headers in" and "message complete".

Why a driver this thin: what a peer may send, and every bound against a hostile one, is decided
by _http_response's ResponseReader, bytes in and state out, tested and fuzzed without sockets.
The Wire only moves bytes and wakes: the transport's data goes to `reader.feed`, the end of the
connection to `reader.eof`, what HTTP/2 must answer back to the transport, and once the reader
has got as far as the check awaits (the final head, or the end of the message, or a failure)
the waiting future is resolved in the same callback. Whatever the probe does not read is
dropped with the connection, never buffered, and close() hangs up and closes the reader, so
nothing of a probe waits for the cyclic GC.

The phases are measured where they happen: `connect` around the TCP connect and `tls` around
start_tls (_http_dial.connect: two steps, so no hook inside the handshake is needed),
`processing` from the request written (send) to the headers parsed (the reader's clock, read in
the parser callback, not when the coroutine wakes). To a proxy, plain HTTP requests are sent in
absolute form (`via`).
"""

from __future__ import annotations

import asyncio
import time

from probe.checks._http_classify import Progress
from probe.checks._http_expect import Plan
from probe.checks._http_response import ResponseReader


class Wire(asyncio.Protocol):
    """The connection side of one exchange; `reader` holds the response and its failure, raised
    to the awaiting check; the transport is the check's to close."""

    __slots__ = ("body_wanted", "plan", "probe", "reader", "transport", "via", "waiter")

    def __init__(self, plan: Plan, head_only: bool, limit: int, probe: Progress) -> None:
        self.plan, self.probe = plan, probe
        self.reader = ResponseReader(plan, head_only, limit, probe)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.body_wanted = False  # what `waiter` waits for: the end of the message, or the head
        self.via: tuple[bytes, bytes] | None = None  # to a proxy: (origin, Proxy-Authorization)

    def __call__(self) -> Wire:  # the protocol factory create_connection wants
        return self

    # --- what the check calls ----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        if self.via is not None:  # GET http://host:port/path HTTP/1.1, as a proxy wants it
            origin, auth = self.via
            end = data.index(b"\r\n")
            method, _, rest = data[:end].partition(b" ")
            data = b"".join((method, b" ", origin, rest, b"\r\n", auth, data[end + 2:]))
        self.transport.write(data)
        self.probe.t_sent = time.perf_counter()

    async def head(self) -> None:
        """Until the final response head is parsed (or the exchange ended or failed)."""
        reader = self.reader
        if not (reader.head_done or reader.done or reader.error):
            self.body_wanted = False
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if reader.error is not None:
            raise reader.error

    async def rest(self) -> None:
        """Until the message is complete."""
        reader = self.reader
        if not (reader.done or reader.error):
            self.body_wanted = True
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if reader.error is not None:
            raise reader.error

    def close(self) -> None:
        """Hang up: politely after a complete message; at once otherwise (a body not read, a TLS
        shutdown not waited for: RST if data is unread). Then the reader lets go of what it
        holds, so all of it is freed by reference counting when the probe ends."""
        transport, self.transport = self.transport, None
        reader = self.reader
        if transport is not None:
            if reader.t_done and reader.error is None:
                transport.close()
            else:
                transport.abort()
        reader.close()
        self.waiter = None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        if reader.h2 is not None:  # SETTINGS acks, WINDOW_UPDATEs for the body read
            out = reader.h2.data_to_send()
            transport = self.transport
            if out and transport is not None and not transport.is_closing():
                transport.write(out)
        if self.waiter is not None:
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.eof(exc)  # after the end of the message or a failure it changes nothing
        if self.waiter is not None:
            self._wake()

    def _wake(self) -> None:
        """Resolve the waiter once the reader has got as far as it waits for."""
        reader, waiter = self.reader, self.waiter
        if waiter is not None and (reader.done or reader.error is not None or (
                reader.head_done and not self.body_wanted)):
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
