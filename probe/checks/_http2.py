"""HTTP/2 for the HTTP check (`http_version: "2"`): over TLS with ALPN h2, or h2c with prior
knowledge on http:// (Cloud Run's end-to-end HTTP/2), with the `h2` sans-I/O library.

Why a parser stand-in rather than a second exchange: the ResponseReader (its bounds, its body
limit and decoder, redirects, cookies, the facts blackbox's series read) stays the one path;
H2Parser takes httptools' place inside it (`over_h2`), turns the HTTP/1.1 request bytes the Plan
built into one HTTP/2 stream, and replays the response as llhttp's callbacks (message begin,
headers, headers complete, body, message complete). Sans-I/O like the reader: whatever h2 must
answer (SETTINGS ack, WINDOW_UPDATE for the body it read) waits in `data_to_send`, which the
Wire writes back as soon as each feed returns. A reset stream or a GOAWAY before the end is
`disconnected`, invalid framing `protocol`.
"""

from __future__ import annotations

import ssl
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from probe.checks import Fail, clip, ssl_context
from probe.config import Target
from probe.outcome import Failure

if TYPE_CHECKING:
    from probe.checks._http_response import ResponseReader
    from probe.checks._http_wire import Wire

STREAM = 1
MAX_HEADER_LIST = 64 * 1024  # as the HTTP/1.1 head cap
# Connection-specific fields HTTP/2 forbids (RFC 9113 §8.2.2); Host becomes :authority.
_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                   b"upgrade", b"host"})


def h2_tls(target: Target) -> ssl.SSLContext:
    """The target's TLS settings with ALPN h2 only: a context of its own (the shared one must
    keep offering HTTP/1.1 only), one per distinct settings."""
    return _h2_context(target.tls_verify, target.ca_file, target.tls_min_version,
                       target.cert_file, target.key_file)


@lru_cache(maxsize=16)
def _h2_context(verify: bool, ca_file: Path | None, min_version: str | None,
                cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    ctx = ssl_context.__wrapped__(verify, ca_file, min_version, cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def negotiated(wire: Wire) -> None:
    """Fail unless the TLS handshake chose h2 (a server without HTTP/2 picks none)."""
    ssl_object = wire.transport.get_extra_info("ssl_object") if wire.transport else None
    chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    if chosen != "h2":
        raise Fail(Failure.PROTOCOL, "HTTP/2 not negotiated: the server chose"
                                     f" {chosen or 'no protocol'} in TLS ALPN (http_version: 2)")


class H2Parser:
    """httptools' HttpResponseParser interface (feed_data, get_status_code, get_http_version)
    over one HTTP/2 client stream, driving `reader`'s callbacks."""

    __slots__ = ("conn", "reader", "scheme", "sent", "status")

    def __init__(self, reader: ResponseReader, scheme: bytes) -> None:
        self.reader, self.scheme, self.status = reader, scheme, 0
        self.sent = False  # until the request goes out, h2's answers wait in its buffer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()

    def get_status_code(self) -> int:
        return self.status

    def get_http_version(self) -> str:
        return "2.0"

    def request(self, data: bytes) -> bytes:
        """The connection preface and stream 1 for the HTTP/1.1 request bytes `data`."""
        head, _, body = data.partition(b"\r\n\r\n")
        line, *lines = head.split(b"\r\n")
        method, path = line.split(b" ", 2)[:2]
        fields: list[tuple[bytes, bytes]] = []
        authority = b""
        for raw in lines:
            name, _, value = raw.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"host":
                authority = value
            if name not in _DROP:
                fields.append((name, value))
        pseudo = [(b":method", method), (b":scheme", self.scheme), (b":authority", authority),
                  (b":path", path)]
        conn = self.conn
        self.sent = True
        conn.send_headers(STREAM, pseudo + fields, end_stream=not body)
        step = conn.max_outbound_frame_size
        for i in range(0, len(body), step):  # a config's body: far below the 64 KiB window
            conn.send_data(STREAM, body[i:i + step], end_stream=i + step >= len(body))
        return conn.data_to_send()

    def feed_data(self, data: bytes) -> None:
        try:
            for event in self.conn.receive_data(data):
                self._event(event)
        except h2.exceptions.ProtocolError as exc:
            why = clip(str(exc) or type(exc).__name__, 80)
            self.reader.fail(Fail(Failure.PROTOCOL, f"not valid HTTP/2: {why}"))
        except Fail as exc:  # a callback's (body too large, a bad coding) or a reset stream
            self.reader.fail(exc)

    def data_to_send(self) -> bytes:
        """What h2 must answer to what was fed. Nothing before the request: a server's SETTINGS
        can come in the very turn the TLS handshake ends, while the Wire's transport is still
        the TCP transport under it; h2 keeps it for the next call."""
        return self.conn.data_to_send() if self.sent else b""

    def _event(self, event: h2.events.Event) -> None:
        reader = self.reader
        if isinstance(event, h2.events.ResponseReceived):
            fields = dict(event.headers or [])
            self.status = int(fields.get(b":status", b"0"))
            reader.on_message_begin()
            for name, value in event.headers or []:
                if not name.startswith(b":"):
                    reader.on_header(name, value)
            reader.on_headers_complete()
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            reader.on_chunk_header()  # each frame's 9 bytes of framing, as a chunk's size line
            if event.data:
                reader.on_body(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            reader.on_message_complete()
        elif isinstance(event, h2.events.StreamReset):
            raise Fail(Failure.DISCONNECTED, "HTTP/2 stream reset by the server"
                                             f" ({_code(event.error_code)})")
        elif isinstance(event, h2.events.ConnectionTerminated) and not reader.done:
            raise Fail(Failure.DISCONNECTED, "HTTP/2 connection ended by the server (GOAWAY"
                                             f" {_code(event.error_code)})")


def _code(code: object) -> str:
    return str(getattr(code, "name", code))
