"""gzip / deflate Content-Encoding for the HTTP wire, its output capped: a small body can
inflate to gigabytes (zlib's max_length stops each step at the room left under the limit)."""

from __future__ import annotations

import zlib
from typing import Any

from probe.checks import Fail
from probe.checks._http_expect import size
from probe.outcome import Failure

_GZIP, _DEFLATE = zlib.MAX_WBITS | 16, zlib.MAX_WBITS
ENCODINGS = {b"gzip": _GZIP, b"x-gzip": _GZIP, b"deflate": _DEFLATE}


class Decoder:
    """gzip / deflate Content-Encoding, its output capped (a small body can inflate to GBs)."""

    __slots__ = ("limit", "name", "zobj")

    def __init__(self, name: bytes, limit: int) -> None:
        self.name, self.limit = name.decode(), limit
        self.zobj: Any = None if name == b"deflate" else zlib.decompressobj(_GZIP)

    def feed(self, data: bytes, room: int) -> bytes:
        if self.zobj is None:  # deflate: zlib-wrapped as the RFC says, or raw as IIS sends it
            raw = len(data) < 2 or (data[0] & 0x0F) != 8 or (data[0] << 8 | data[1]) % 31 != 0
            self.zobj = zlib.decompressobj(-zlib.MAX_WBITS if raw else _DEFLATE)
        try:
            out: bytes = self.zobj.decompress(data, room + 1)  # room + 1 >= 1: 0 is "no cap"
        except zlib.error as exc:
            raise self._undecodable(exc) from None
        if len(out) > room:
            raise self._too_large()
        return out

    def finish(self, room: int) -> bytes:
        if self.zobj is None:
            return b""
        try:
            out: bytes = self.zobj.flush()  # all input was consumed: only zlib's own buffer left
        except zlib.error as exc:
            raise self._undecodable(exc) from None
        if len(out) > room:
            raise self._too_large()
        if self.name == "deflate" and not self.zobj.eof:  # as aiohttp: a cut deflate stream
            raise Fail(Failure.PROTOCOL, "cannot decode the body: deflate stream incomplete")
        return out

    def _undecodable(self, exc: zlib.error) -> Fail:
        return Fail(Failure.PROTOCOL, f"cannot decode the body: {self.name}: {exc}")

    def _too_large(self) -> Fail:
        return Fail(Failure.BODY_TOO_LARGE, f"decompressed body too large: the {self.name}"
                                            f" body inflates past the {size(self.limit)} limit")
