"""The HTTP wire's bounds against a hostile peer that the head cap alone did not cover: chunk
extensions and trailers without end, and a probe's objects kept alive by reference cycles until
the next full GC. Raw peers as in test_http_wire.py (its Peer, serve and friends)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import types

import pytest
from helpers import refused_port
from httptools import HttpResponseParser
from test_http_wire import BODY, Peer, failed, fixed, ok, probe, response, serve, target

from probe.checks import CheckContext
from probe.checks.http import check
from probe.outcome import Failure

CHUNKED = "Transfer-Encoding: chunked"
ENDLESS = 256 * 1024  # past the 64 KiB head cap, well inside what a peer can send at once


@pytest.mark.parametrize(("body", "detail"), [
    (b"5\r\nhello\r\n0\r\nX-Trailer: " + b"t" * ENDLESS,
     "not valid HTTP: chunked framing (chunk extensions or trailer) exceeds 64 KiB without ending"),
    (b"5\r\nhello\r\n0\r\n" + b"".join(b"X-T-%d: t\r\n" % i for i in range(5000)),
     "not valid HTTP: more than 128 trailer lines"),
    (b"5" + b";ext=value" * (ENDLESS // 10),
     "not valid HTTP: chunked framing (chunk extensions or trailer) exceeds 64 KiB without ending"),
    (b"5\r\nhello\r\n" + b"1;" + b"e" * ENDLESS,
     "not valid HTTP: chunked framing (chunk extensions or trailer) exceeds 64 KiB without ending"),
], ids=["endless-trailer-line", "endless-trailer-lines", "endless-extensions",
        "endless-extension-of-a-later-chunk"])
async def test_the_head_cap_covers_trailers_and_chunk_extensions(body: bytes, detail: str) -> None:
    """Left to the deadline, a trailer line that never ends grows httptools' header buffer by
    concatenation (memory, and quadratic CPU on the loop): it is cut at the head cap instead."""
    async with serve(Peer(fixed(response(body, CHUNKED)), close=False)) as base:
        out = await probe(base + "/")
    assert failed(out, Failure.PROTOCOL) == detail


async def test_small_chunks_with_extensions_and_a_trailer_are_fine() -> None:
    """The framing allowance per chunk keeps an honest chunked body working: 20 000 one-byte
    chunks, each with a short extension, and a trailer, far more framing than body."""
    chunks = b"".join(b"1;n=v\r\nx\r\n" for _ in range(20_000))
    body = chunks + b"0\r\nX-Checksum: abc\r\nX-Build: 9.9.9\r\n\r\n"
    async with serve(Peer(fixed(response(body, CHUNKED)))) as base:
        out = ok(await probe(base + "/", expect={"body_regex": "^x{20000}$"}))
    assert out.status_code == 200


async def test_a_probe_leaves_nothing_for_the_cyclic_gc() -> None:
    """Everything a probe allocated goes by reference counting when it ends, whatever ended it:
    with the collector off, a collection afterwards finds no object of ours in a cycle (a Wire
    held by its parser, or by a traceback it stored, stayed until the next full GC: 1-2 s of
    loop per probe once a daemon's heap had grown)."""
    answers = [
        response(BODY, f"Content-Length: {len(BODY)}"),  # success
        response(b"x" * (2 << 20), CHUNKED.replace("chunked", "identity")),  # body_too_large
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-P-%d: p\r\n" % i for i in range(6000)),  # protocol
        response(b"5\r\nhello\r\n0\r\nX-T: " + b"t" * ENDLESS, CHUNKED),  # framing cap
        response(b"abc", "Content-Length: 100"),  # disconnected
    ]
    with refused_port() as port:
        urls = [f"http://127.0.0.1:{port}/"]
        async with contextlib.AsyncExitStack() as stack:
            for answer in answers:
                base = await stack.enter_async_context(serve(Peer(fixed(answer))))
                urls.append(base + "/")
            targets = [target(u, timeout=1) for u in urls]
            await asyncio.gather(*(check(t, CheckContext()) for t in targets))  # warm-up
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                outs = [await check(t, CheckContext()) for t in targets]
                gc.collect()
                ours = [o for o in gc.garbage if _ours(o)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
    assert not ours, sorted({_name(o) for o in ours})
    assert [o.failure for o in outs] == [
        Failure.REFUSED, None, Failure.BODY_TOO_LARGE, Failure.PROTOCOL, Failure.PROTOCOL,
        Failure.DISCONNECTED], [o.detail for o in outs]


def _ours(obj: object) -> bool:
    if isinstance(obj, types.FrameType):
        return "/probe/" in obj.f_code.co_filename
    return isinstance(obj, HttpResponseParser) or type(obj).__module__.startswith("probe.")


def _name(obj: object) -> str:
    if isinstance(obj, types.FrameType):
        return f"frame of {obj.f_code.co_name}"
    return type(obj).__qualname__
