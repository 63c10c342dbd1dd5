"""One HTTP response read from bytes: sans-I/O, bytes in (`feed`, `eof`), state and a `Fail` out.

Why apart from the connection (the style guide's websockets / hypercorn rule): every rule about
what a peer may send (the head cap, chunk framing, trailers, the body limit, decoding, 1xx,
bodiless answers, bodies delimited by the close, redirects) lives here, where a test drives it
with bytes cut at any point and a fuzzer with generated segmentations, no socket, loop or
timer. _http_wire's Wire is the thin asyncio driver: it feeds what the transport delivers,
says when the connection ended, writes what HTTP/2 must answer and wakes the awaiting check.

What the reader guarantees, however the bytes are segmented:
- `feed` and `eof` never raise; a failure is kept in `error`, a Fail without a traceback (one
  would hold the callbacks' frames, which hold the reader: a cycle only the full GC frees), and
  from then on input is ignored; `head_done` once the final head is parsed, `done` once no more
  is wanted (the message complete, or a head that needs no body read: HEAD, a redirect to
  follow, a status that fails);
- the response head (status line, headers, any 1xx interim answers) must end within its first
  MAX_HEAD bytes (any number of lines: only the bytes are bounded, as in curl; a segment is fed
  up to the cap first and the rest only once the head has ended, so the verdict does not depend
  on where TCP cut it);
- every byte that is not body data (the head, chunk-size lines and their extensions, trailers)
  counts against MAX_HEAD too, with CHUNK_FRAMING bytes of allowance per chunk for the size
  line's own digits and CRLFs: without it a trailer line that never ends grows httptools'
  header buffer by concatenation (memory, and quadratic CPU) until the probe's deadline.
  Trailers are counted (at most MAX_HEADERS), never kept;
- the body is counted as it arrives and reading stops at the body limit, decompressed output
  included (_http_decode); it is kept only when the plan reads it;
- time is read from the injected clock only, for the phase timestamps: `t_head` and
  probe.headers_received() when the final head is parsed, `t_done` when the message completes.
`close` lets go of the parser (which refers back to the reader), buffers and error, so nothing
of a probe waits for the cyclic GC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from probe.checks import Fail
from probe.checks._http_classify import Progress, disconnected
from probe.checks._http_decode import decoder_for
from probe.checks._http_expect import Plan, quote, size
from probe.checks._http_request import REDIRECTS
from probe.outcome import Failure

if TYPE_CHECKING:
    from probe.checks._http2 import H2Parser

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128
CHUNK_FRAMING = 32  # bytes per chunk for its size line (16 hex digits at most) and CRLFs
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_BODYLESS = frozenset({204, 304})
_WATCHED = frozenset({b"content-length", b"content-encoding", b"content-type", b"location"})
_HEAD_CAP = f"not valid HTTP: response head exceeds {size(MAX_HEAD)} without ending"


class _Past(Exception):
    """Raised in a callback to stop parsing what follows the final response."""


# The error of a closed reader: never raised (nothing awaits a closed exchange), it only stops
# further input.
_CLOSED = Fail(Failure.DISCONNECTED, "the probe hung up")


class ResponseReader:
    """The response side of one exchange. `feed` the bytes received, `eof` at the end of the
    connection (with the transport's exception, if any); read `head_done`, `done`, `error` and
    the facts (status, headers, body) after each. The parser's callbacks only record and count."""

    __slots__ = (
        "body_raw", "chunks", "chunks_seen", "clock", "ctype", "decoded", "decoder", "done",
        "encoding", "error", "first", "follow", "h2", "head_bytes", "head_done", "head_only",
        "headers", "length", "limit", "location", "parser", "plan", "probe", "received",
        "status", "t_done", "t_head", "trailers",
    )

    def __init__(self, plan: Plan, head_only: bool, limit: int, probe: Progress,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.plan, self.head_only, self.limit, self.probe = plan, head_only, limit, probe
        self.clock = clock
        self.parser: HttpResponseParser | H2Parser | None = HttpResponseParser(self)
        # What RFC 9112 asks a client to accept, as curl does: a bare LF as a line end (§2.2)
        # and obs-fold continuation lines (§5.2, joined with a space by llhttp).
        self.parser.set_dangerous_leniencies(lenient_headers=True,
                                             lenient_optional_cr_before_lf=True)
        self.h2: H2Parser | None = None
        self.error: Fail | None = None
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

    def over_h2(self, h2p: H2Parser) -> None:
        """HTTP/2: `h2p` (_http2) replaces llhttp, replaying the stream as its callbacks."""
        self.parser = self.h2 = h2p

    # --- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes received, in whatever pieces they came."""
        if self.done or self.error is not None or self.parser is None:
            return
        if not self.head_done:
            if len(self.first) < 64:  # quoted by a detail, whatever the first segment's size
                self.first += data[:64 - len(self.first)]
            room = MAX_HEAD - self.head_bytes
            if len(data) > room:  # up to the cap first: the verdict is the segmentation's not
                self._feed(data[:room])
                if self.done or self.error is not None or self.parser is None:
                    return
                if not self.head_done:
                    self.fail(Fail(Failure.PROTOCOL, _HEAD_CAP))
                    return
                data = data[room:]
        self._feed(data)

    def eof(self, exc: BaseException | None = None) -> None:
        """The connection ended: closed by the peer (`exc` None) or broken (`exc`)."""
        if self.done or self.error is not None:
            return
        if (exc is None and self.head_done and self.length is None and not self.chunked()
                and self.h2 is None):  # HTTP/2 ends by END_STREAM only
            self._complete()  # a body delimited by the end of the connection
            return
        self.fail(Fail(*disconnected(exc, self.probe)))

    def close(self) -> None:
        """Let go of everything: the parser (which refers back to this object, a cycle), the
        headers and the body (read before), and the error (its traceback, once raised to the
        check, holds frames that hold this object, another cycle)."""
        self.error = _CLOSED
        self.parser = self.h2 = self.decoder = self.chunks = None
        self.headers = []

    def fail(self, error: Fail) -> None:
        """Keep the first failure, without its traceback (the callbacks' frames hold self)."""
        if self.error is None:
            self.error = error.with_traceback(None)

    # --- what the check reads ----------------------------------------------------------------

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

    def chunked(self) -> bool:
        return any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower()
                   for n, v in self.headers)

    # --- httptools callbacks (H2Parser calls them too) ---------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second response after the final one (in the same segment)
            raise _Past  # stops llhttp there, as when it comes in a segment of its own
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
        now = self.t_head = self.clock()
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
            self.fail(self._named(exc))
        else:
            if not self.head_done and self.head_bytes >= MAX_HEAD:
                self.fail(Fail(Failure.PROTOCOL, _HEAD_CAP))
            elif not self.done and self.received - self.body_raw > (
                    MAX_HEAD + CHUNK_FRAMING * self.chunks_seen):
                self.fail(Fail(Failure.PROTOCOL, "not valid HTTP: chunked framing (chunk"
                                                 " extensions or trailer) exceeds"
                                                 f" {size(MAX_HEAD)} without ending"))

    def _complete(self) -> None:
        self.t_done = self.clock()
        if self.decoder is not None:
            try:
                tail = self.decoder.finish(self.limit - self.decoded)
            except Fail as exc:
                self.fail(exc)
                return
            self.decoded += len(tail)  # the uncompressed length counts the decoder's tail too
            if self.chunks is not None and tail:
                self.chunks.append(tail)
        self.done = True

    def _named(self, exc: HttpParserError) -> Fail:
        """The Fail a callback raised (httptools wraps it), else `exc` named as invalid HTTP."""
        cause = exc.__context__
        return cause if isinstance(cause, Fail) else self._invalid(exc)

    def _invalid(self, exc: HttpParserError) -> Fail:
        reason = str(exc) or type(exc).__name__
        if self.head_done:
            where = f"in the body, {self.probe.bytes_read} bytes read"
        else:
            where = f"response starts {quote(self.first.decode('latin-1'), 40)}"
        return Fail(Failure.PROTOCOL, f"not valid HTTP: {reason} ({where})")
