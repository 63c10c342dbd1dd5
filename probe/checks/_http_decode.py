"""Content-Encoding for the HTTP wire: gzip / deflate (what the probe asks for), `br` when the
optional brotli module is importable, stacked codings (`gzip, gzip`) undone last applied first;
every step's output capped: a small body can inflate to gigabytes (zlib's max_length, brotli's
max_output_length stop each step at the room left under the limit).

A coding the probe cannot undo is named in the detail when the target checks the body (a
regex or a JSON path must never be matched against compressed bytes); without body checks the
compressed body is only counted, as curl without --compressed does. A stream that stops before
its end is a failure for every coding: a cut gzip body no more passes than a cut deflate one.
"""

from __future__ import annotations

import zlib
from typing import Any

from probe.checks import Fail
from probe.checks._http_expect import size
from probe.outcome import Failure

try:  # optional: only for servers that send br unasked
    import brotli as _brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

_GZIP, _DEFLATE = zlib.MAX_WBITS | 16, zlib.MAX_WBITS
_ZLIB = {b"gzip": _GZIP, b"x-gzip": _GZIP, b"deflate": _DEFLATE}
_BROTLI = _brotli is not None and hasattr(_brotli.Decompressor, "can_accept_more_data")
ENCODINGS = frozenset(_ZLIB) | ({b"br"} if _BROTLI else frozenset())


def codings(header: bytes) -> list[bytes]:
    """The Content-Encoding list in the order applied (`identity` is none)."""
    names = (n.strip().lower() for n in header.split(b","))
    return [n for n in names if n and n != b"identity"]


def decoder_for(header: bytes, limit: int, keep_body: bool) -> Decoder | None:
    """The Decoder for a Content-Encoding value; None when there is nothing to undo, or when
    it cannot be undone and nothing reads the body (it is only counted then)."""
    names = codings(header)
    if not names:
        return None
    unknown = [n for n in names if n not in ENCODINGS]
    if unknown:
        if not keep_body:
            return None
        coding = unknown[0].decode("latin-1")[:20]
        why = " (the brotli module is not installed)" if coding == "br" else ""
        raise Fail(Failure.PROTOCOL, f"cannot decode the body: Content-Encoding {coding}"
                                     f"{why}; the body checks cannot read it")
    return Decoder(names, limit)


class _Step:
    """One coding undone; `feed` returns at most room + 1 bytes (more is a bomb, for Decoder)."""

    __slots__ = ("name", "obj")

    def __init__(self, name: bytes) -> None:
        self.name = name.decode()
        self.obj: Any = None
        if name == b"br":
            self.obj = _brotli.Decompressor()
        elif name != b"deflate":  # deflate: the first bytes say zlib-wrapped or raw
            self.obj = zlib.decompressobj(_ZLIB[name])

    def feed(self, data: bytes, room: int) -> bytes:
        if self.obj is None:  # deflate: zlib-wrapped as the RFC says, or raw as IIS sends it
            if not data:
                return b""
            raw = len(data) < 2 or (data[0] & 0x0F) != 8 or (data[0] << 8 | data[1]) % 31 != 0
            self.obj = zlib.decompressobj(-zlib.MAX_WBITS if raw else _DEFLATE)
        try:
            if self.name == "br":
                return bytes(self.obj.process(data, room + 1))  # output_buffer_limit
            return bytes(self.obj.decompress(data, room + 1))  # room + 1 >= 1: 0 is "no cap"
        except (zlib.error, getattr(_brotli, "error", zlib.error)) as exc:
            raise Fail(Failure.PROTOCOL, f"cannot decode the body: {self.name}: {exc}") from None

    def flush(self, room: int) -> bytes:
        if self.obj is None:
            return b""
        if self.name == "br":
            return self.feed(b"", room)
        try:
            return bytes(self.obj.flush())  # all input consumed: only zlib's own buffer left
        except zlib.error as exc:
            raise Fail(Failure.PROTOCOL, f"cannot decode the body: {self.name}: {exc}") from None

    def ended(self) -> bool:
        if self.obj is None:
            return False
        return bool(self.obj.is_finished() if self.name == "br" else self.obj.eof)


class Decoder:
    """The body's Content-Encodings undone, its output capped at the body limit."""

    __slots__ = ("fed", "limit", "name", "steps")

    def __init__(self, names: list[bytes], limit: int) -> None:
        self.limit, self.fed = limit, False
        self.steps = [_Step(n) for n in reversed(names)]
        self.name = ", ".join(n.decode() for n in names)

    def feed(self, data: bytes, room: int) -> bytes:
        self.fed = self.fed or bool(data)
        for step in self.steps:
            data = step.feed(data, room)
            if len(data) > room:
                raise self._too_large()
        return data

    def finish(self, room: int) -> bytes:
        data = b""
        if not self.fed:  # an empty body, whatever its Content-Encoding says (as curl)
            return data
        for step in self.steps:
            data = (step.feed(data, room) if data else b"") + step.flush(room)
            if len(data) > room:
                raise self._too_large()
            if not step.ended():
                raise Fail(Failure.PROTOCOL, f"cannot decode the body: {step.name} stream"
                                             " incomplete (cut short)")
        return data

    def _too_large(self) -> Fail:
        return Fail(Failure.BODY_TOO_LARGE, f"decompressed body too large: the {self.name}"
                                            f" body inflates past the {size(self.limit)} limit")
