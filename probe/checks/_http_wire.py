"""One HTTP/1.1 exchange over one fresh connection: an asyncio Protocol, httptools parsing.

Why not aiohttp's client: it builds a session, a connector, a request and a response object and
a stream reader for every probe, ~30% of a probe's CPU. Here one Protocol object per hop is fed
by the transport and llhttp (httptools' HttpResponseParser, the parser aiohttp itself uses) does
all the parsing; the check only awaits "headers in" and "message complete".

The phases are measured where they happen: `connect` around the TCP connect and `tls` around
start_tls (_http_dial.connect: two steps, so no hook inside the handshake is needed),
`processing` from the request written to the headers parsed (taken in the parser callback, not
when the coroutine wakes). To a proxy, plain HTTP requests are sent in absolute form (`via`).

Bounds against a hostile peer: the response head (status line, headers, any 1xx interim
answers) must end within its first MAX_HEAD bytes, however TCP segments them (any number of
lines: only the bytes are bounded, as in curl; a segment is fed up to the cap first and the
rest only once the head has ended); the body is counted as it arrives and reading stops at
the body limit, decompressed output included (_http_decode).
The head cap also covers what a chunked body carries besides its data: every byte received that
is not body data (the head, chunk-size lines and their extensions, trailers) counts, with
CHUNK_FRAMING bytes of allowance per chunk for the size line's own digits and CRLFs. Without it
a trailer line that never ends grows httptools' header buffer by concatenation (memory, and
quadratic CPU on the loop) until the probe's deadline. Trailers are counted, never kept.
Whatever the probe does not read is dropped with the connection, never buffered, and close()
drops the parser and buffers, so nothing of a probe waits for the cyclic GC.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from probe.checks import Fail
from probe.checks._http2 import H2Parser
from probe.checks._http_classify import Progress, disconnected
from probe.checks._http_decode import decoder_for
from probe.checks._http_expect import Plan, quote, size
from probe.checks._http_request import REDIRECTS
from probe.outcome import Failure

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128
CHUNK_FRAMING = 32  # bytes per chunk for its size line (16 hex digits at most) and CRLFs
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_BODYLESS = frozenset({204, 304})
_WATCHED = frozenset({b"content-length", b"content-encoding", b"content-type", b"location"})


class Wire(asyncio.Protocol):
    """The response side of one exchange. Callbacks only record and count; a failure is kept in
    `error` and raised to the awaiting check; the transport is the check's to close."""

    __slots__ = (
        "body_raw", "chunks", "chunks_seen", "ctype", "decoded", "decoder", "done", "encoding",
        "error", "first", "follow", "head_bytes", "head_done", "head_only", "headers", "length",
        "limit", "location", "parser", "plan", "probe", "received", "status", "t_done",
        "t_head", "trailers", "transport", "via", "waiter",
    )

    def __init__(self, plan: Plan, head_only: bool, limit: int, probe: Progress) -> None:
        self.plan, self.head_only, self.limit, self.probe = plan, head_only, limit, probe
        self.parser: HttpResponseParser | None = HttpResponseParser(self)
        # What RFC 9112 asks a client to accept, as curl does: a bare LF as a line end (§2.2)
        # and obs-fold continuation lines (§5.2, joined with a space by llhttp).
        self.parser.set_dangerous_leniencies(lenient_headers=True,
                                             lenient_optional_cr_before_lf=True)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = self.done = self.follow = False
        self.status = 0
        self.head_bytes = self.received = self.body_raw = self.chunks_seen = self.trailers = 0
        self.first = b""
        self.length: int | None = None
        self.encoding = self.ctype = self.location = b""
        self.chunks: list[bytes] | None = [] if plan.keep_body else None
        self.decoder: Any = None
        self.decoded = 0
        self.t_head = self.t_done = 0.0
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
        if not (self.head_done or self.done or self.error):
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if self.error is not None:
            raise self.error

    async def rest(self) -> None:
        """Until the message is complete."""
        if not (self.done or self.error):
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Hang up: politely after a complete message; at once otherwise (a body not read, a TLS
        shutdown not waited for: RST if data is unread).

        Also lets go of everything the exchange holds: the parser (which refers back to this
        object, a cycle), the headers and the body (read by the check before it closes), and the
        error (its traceback holds the frames that hold this object, another cycle), so all of
        it is freed by reference counting when the probe ends, not at the next full GC."""
        transport, self.transport = self.transport, None
        if transport is not None:
            if self.t_done and self.error is None:
                transport.close()
            else:
                transport.abort()
        self.error = _CLOSED  # never raised: nothing awaits a closed exchange
        self.parser = self.decoder = self.chunks = self.waiter = None
        self.headers = []

    def body_bytes(self) -> bytes:
        return b"".join(self.chunks) if self.chunks else b""

    def set_cookies(self) -> list[bytes]:
        """The Set-Cookie values of the head (a redirect's, for the probe's cookie jar)."""
        return [v for n, v in self.headers if n.lower() == b"set-cookie"]

    def header_map(self) -> CIMultiDictProxy[str]:
        """The headers for evaluate(); only built when the plan checks headers."""
        if not self.plan.header_checks:
            return _NO_HEADERS
        return CIMultiDictProxy(CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self.headers
        ))

    def charset(self) -> str | None:
        for param in self.ctype.split(b";")[1:]:
            name, _, value = param.partition(b"=")
            if name.strip().lower() == b"charset":
                return value.strip().strip(b"\"'").decode("ascii", "replace") or None
        return None

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done or self.error is not None or self.parser is None:
            return
        if not self.head_done:
            if not self.first:
                self.first = data[:64]
            room = MAX_HEAD - self.head_bytes
            if len(data) > room:  # up to the cap first: the verdict is the segmentation's not
                self._feed(data[:room])
                if self.done or self.error is not None or self.parser is None:
                    return
                if not self.head_done:
                    self._fail(Fail(Failure.PROTOCOL, "not valid HTTP: response head exceeds"
                                                      f" {size(MAX_HEAD)} without ending"))
                    return
                data = data[room:]
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        assert self.parser is not None
        if not self.head_done:
            self.head_bytes += len(data)
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            pass  # a 101 is a final answer here (on_headers_complete), and nothing follows it
        except HttpParserError as exc:
            if self.done:  # bytes after the end of the message: not our concern
                return
            self._fail(self._named(exc))
        else:
            if not self.head_done and self.head_bytes >= MAX_HEAD:
                self._fail(Fail(Failure.PROTOCOL, "not valid HTTP: response head exceeds"
                                                  f" {size(MAX_HEAD)} without ending"))
            elif not self.done and self.received - self.body_raw > (
                    MAX_HEAD + CHUNK_FRAMING * self.chunks_seen):
                self._fail(Fail(Failure.PROTOCOL, "not valid HTTP: chunked framing (chunk"
                                                  " extensions or trailer) exceeds"
                                                  f" {size(MAX_HEAD)} without ending"))

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done or self.error is not None:
            return
        if (exc is None and self.head_done and self.length is None and not self.chunked()
                and not isinstance(self.parser, H2Parser)):  # HTTP/2 ends by END_STREAM only
            self._complete()  # a body delimited by the end of the connection
            return
        self._fail(Fail(*disconnected(exc, self.probe)))

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.headers:  # after a 1xx interim answer
            self.headers = []
            self.length, self.encoding, self.ctype, self.location = None, b"", b"", b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:  # a trailer (after a chunked body): counted, never kept
            self.trailers += 1
            if self.trailers > MAX_HEADERS:
                raise Fail(Failure.PROTOCOL, f"not valid HTTP: more than {MAX_HEADERS} trailer"
                                             " lines")
            return
        self.headers.append((name, value))  # bounded by MAX_HEAD bytes
        low = name.lower()
        if low in _WATCHED:
            if low == b"content-length":
                self.length = int(value)  # llhttp has checked it is digits
            elif low == b"content-encoding":
                coding = value.strip().lower()  # several lines: one list (RFC 9110 §5.3)
                self.encoding = self.encoding + b"," + coding if self.encoding else coding
            elif low == b"content-type":
                self.ctype = value
            else:
                self.location = value

    def on_headers_complete(self) -> None:
        assert self.parser is not None  # only called from inside feed_data
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the real answer follows
        now = self.t_head = time.perf_counter()
        probe, plan = self.probe, self.plan
        probe.headers_received(now)
        probe.status, probe.stage = status, "body"
        self.status, self.head_done = status, True
        self.follow = plan.allow_redirects and status in REDIRECTS and bool(self.location)
        if not self.follow:
            probe.t_headers = now
        if self.head_only or self.follow or status == 101 or not plan.status_ok(status):
            self.done = True  # no body wanted: the check hangs up
            if self.head_only or status == 101:  # no body follows in HTTP: complete
                self.t_done = now
        elif status in _BODYLESS:
            pass  # no body, whatever Content-Length says (a 304's is the resource's size)
        elif self.length is not None and self.length > self.limit:
            raise Fail(Failure.BODY_TOO_LARGE, f"body of {self.length} bytes (Content-Length)"
                                               f" exceeds the {size(self.limit)} limit")
        elif self.encoding:
            self.decoder = decoder_for(self.encoding, self.limit, plan.keep_body)
        self._wake()

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        probe = self.probe
        self.body_raw += len(data)
        probe.bytes_read += len(data)
        if probe.bytes_read > self.limit:
            raise Fail(Failure.BODY_TOO_LARGE, f"body exceeds the {size(self.limit)} limit"
                                               f" (stopped reading at {probe.bytes_read} bytes)")
        if self.decoder is not None:
            data = self.decoder.feed(data, self.limit - self.decoded)
            self.decoded += len(data)
        if self.chunks is not None:
            self.chunks.append(data)

    def on_chunk_header(self) -> None:
        self.chunks_seen += 1

    def on_message_complete(self) -> None:
        if self.head_done and not self.done:
            self._complete()

    # --- inside ------------------------------------------------------------------------------

    def chunked(self) -> bool:
        return any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower()
                   for n, v in self.headers)

    def _complete(self) -> None:
        self.t_done = time.perf_counter()
        if self.decoder is not None:
            try:
                tail = self.decoder.finish(self.limit - self.decoded)
            except Fail as exc:
                self._fail(exc)
                return
            self.decoded += len(tail)  # the uncompressed length counts the decoder's tail too
            if self.chunks is not None and tail:
                self.chunks.append(tail)
        self.done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        """Keep `error` for the awaiting check, without its traceback: that one holds the
        callback's frames, which hold this object (a cycle only the full GC would free)."""
        if self.error is None:
            self.error = error.with_traceback(None)
        self._wake()

    def _named(self, exc: HttpParserError) -> Fail:
        """The Fail a callback raised (httptools wraps it), else `exc` named as invalid HTTP."""
        cause = exc.__context__
        return cause if isinstance(cause, Fail) else self._invalid(exc)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _invalid(self, exc: HttpParserError) -> Fail:
        reason = str(exc) or type(exc).__name__
        if self.head_done:
            where = f"in the body, {self.probe.bytes_read} bytes read"
        else:
            where = f"response starts {quote(self.first.decode('latin-1'), 40)}"
        return Fail(Failure.PROTOCOL, f"not valid HTTP: {reason} ({where})")


_CLOSED = ConnectionAbortedError("the probe hung up")
