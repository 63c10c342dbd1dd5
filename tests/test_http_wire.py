"""The HTTP check's own transport (probe/checks/_http_wire.py) against raw peers on loopback.

Each test plays a server byte for byte (asyncio streams on 127.0.0.1 or ::1), so what is
framing (chunked, read-until-close, 1xx, HEAD), encoding (gzip, deflate, a bomb), redirect
credentials and hostile heads is decided by llhttp and the check, not by a friendly server.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import refused_port
from http_servers import raw_server

from probe.checks import CheckContext
from probe.checks.http import check
from probe.config import BearerSpec, CredentialSpec, Target
from probe.credentials import Credentials
from probe.outcome import Failure, Outcome

DOC = {"status": "healthy", "version": "4.5.6"}
BODY = json.dumps(DOC).encode()
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def target(url: str, **kw: Any) -> Target:
    return Target.model_validate({"name": "t", "url": url, "timeout": 2, "interval": 5, **kw})


async def probe(url: str, ctx: CheckContext | None = None, **kw: Any) -> Outcome:
    return await check(target(url, **kw), ctx or CheckContext())


def ok(outcome: Outcome) -> Outcome:
    assert outcome.success, outcome.detail
    return outcome


def failed(outcome: Outcome, failure: Failure) -> str:
    assert outcome.failure is failure, outcome
    return outcome.detail


class Peer:
    """A raw server that records each request head and answers with `answer(head)` bytes."""

    def __init__(self, answer: Callable[[bytes], bytes], close: bool = True) -> None:
        self.answer, self.close = answer, close
        self.heads: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = next((int(v) for n, v in _header_lines(head) if n == "content-length"), 0)
        self.heads[-1] += await reader.readexactly(length)
        writer.write(self.answer(head))
        await writer.drain()
        if not self.close:
            await reader.read()  # keep the connection open until the client hangs up

    def header(self, i: int, name: str) -> str | None:
        return next((v for n, v in _header_lines(self.heads[i]) if n == name.lower()), None)


def _header_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n\r\n", 1)[0].split("\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines)]


def fixed(data: bytes) -> Callable[[bytes], bytes]:
    return lambda _head: data


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode() + body


@asynccontextmanager
async def serve(peer: Handler, host: str = "127.0.0.1") -> AsyncIterator[str]:
    async with raw_server(peer, host) as port:
        yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


JSON_OK = {"json": {"status": "healthy"}}


# --- what goes out ---------------------------------------------------------------------------


async def test_request_head_is_what_aiohttp_sent() -> None:
    peer = Peer(fixed(response(BODY, f"Content-Length: {len(BODY)}")))
    async with serve(peer) as base:
        ok(await probe(base + "/health?x=1#frag", headers={"X-Test": "1", "accept": "text/x"}))
    head = peer.heads[0].decode()
    assert head.startswith("GET /health?x=1 HTTP/1.1\r\n")
    assert peer.header(0, "host") == base.removeprefix("http://")
    assert peer.header(0, "accept-encoding") == "gzip, deflate"
    assert peer.header(0, "accept") == "text/x"  # the configured one replaces the default
    assert peer.header(0, "connection") == "close"
    assert peer.header(0, "x-test") == "1"
    assert (peer.header(0, "user-agent") or "").startswith("stageprobe/")
    assert peer.header(0, "content-length") is None  # a GET without a body


async def test_post_without_body_sends_a_zero_length() -> None:
    peer = Peer(fixed(response(b"", "Content-Length: 0")))
    async with serve(peer) as base:
        ok(await probe(base + "/x", method="POST"))
    assert peer.heads[0].startswith(b"POST /x HTTP/1.1\r\n")
    assert peer.header(0, "content-length") == "0"


# --- framing ---------------------------------------------------------------------------------


async def test_chunked_body() -> None:
    half = len(BODY) // 2
    chunks = f"{half:x}\r\n".encode() + BODY[:half] + b"\r\n"
    chunks += f"{len(BODY) - half:x};ext=1\r\n".encode() + BODY[half:] + b"\r\n0\r\n\r\n"
    peer = Peer(fixed(response(chunks, "Transfer-Encoding: chunked")), close=False)
    async with serve(peer) as base:
        out = ok(await probe(base + "/", expect=JSON_OK, version_path="version"))
    assert out.version == "4.5.6" and out.status_code == 200
    assert {"processing", "transfer"} <= set(out.phases)


async def test_body_read_until_the_server_closes() -> None:
    peer = Peer(fixed(response(BODY, "Content-Type: application/json")))  # no length, no chunks
    async with serve(peer) as base:
        out = ok(await probe(base + "/", expect=JSON_OK, version_path="version"))
    assert out.version == "4.5.6"


async def test_a_length_delimited_body_does_not_wait_for_the_close() -> None:
    peer = Peer(fixed(response(BODY, f"Content-Length: {len(BODY)}") + b"trailing junk"),
                close=False)
    async with serve(peer) as base:
        out = ok(await probe(base + "/", expect=JSON_OK))
    assert out.duration < 1  # did not sit until the 2 s timeout


async def test_interim_1xx_answers_are_skipped() -> None:
    interim = (b"HTTP/1.1 100 Continue\r\n\r\n"
               b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nX-Build: early\r\n\r\n")
    final = response(BODY, f"Content-Length: {len(BODY)}", "X-Build: 4.5.6")
    async with serve(Peer(fixed(interim + final))) as base:
        out = ok(await probe(base + "/", expect={**JSON_OK, "headers": {"x-build": "4.5.6"}}))
    assert out.status_code == 200


async def test_head_does_not_wait_for_the_declared_body() -> None:
    peer = Peer(fixed(response(b"", "Content-Length: 5000000")), close=False)
    async with serve(peer) as base:
        out = ok(await probe(base + "/", method="HEAD"))
    assert peer.heads[0].startswith(b"HEAD / HTTP/1.1")
    assert out.duration < 1 and out.status_code == 200


async def test_204_and_304_have_no_body() -> None:
    for status in ("204 No Content", "304 Not Modified"):
        peer = Peer(fixed(response(b"", "Content-Length: 10", status=status)), close=False)
        async with serve(peer) as base:
            out = ok(await probe(base + "/", expect={"status": [204, 304]}))
        assert out.duration < 1


# --- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw"])
async def test_compressed_bodies_are_decoded(encoding: str) -> None:
    if encoding == "gzip":
        data = gzip.compress(BODY)
    elif encoding == "deflate":
        data = zlib.compress(BODY)
    else:  # raw deflate without the zlib wrapper, as some servers send it
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = packer.compress(BODY) + packer.flush()
    name = encoding.split("-")[0]
    peer = Peer(fixed(response(data, f"Content-Encoding: {name}", f"Content-Length: {len(data)}")))
    async with serve(peer) as base:
        out = ok(await probe(base + "/", expect=JSON_OK, version_path="version"))
    assert out.version == "4.5.6"


async def test_a_gzip_bomb_is_cut_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (8 << 20))  # ~8 KiB on the wire, 8 MiB inflated
    peer = Peer(fixed(response(bomb, "Content-Encoding: gzip", f"Content-Length: {len(bomb)}")))
    async with serve(peer) as base:
        out = await probe(base + "/", body_limit=1 << 20)
    assert failed(out, Failure.BODY_TOO_LARGE) == (
        "decompressed body too large: the gzip body inflates past the 1 MiB limit"
    )
    assert out.status_code == 200


async def test_an_undecodable_body_is_protocol() -> None:
    junk = b"this is not gzip at all"
    peer = Peer(fixed(response(junk, "Content-Encoding: gzip", f"Content-Length: {len(junk)}")))
    async with serve(peer) as base:
        out = await probe(base + "/")
    assert failed(out, Failure.PROTOCOL).startswith("cannot decode the body: gzip: ")


# --- addresses -------------------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_loopback_target() -> None:
    peer = Peer(fixed(response(BODY, f"Content-Length: {len(BODY)}")))
    async with serve(peer, "::1") as base:
        out = ok(await probe(base + "/health", expect=JSON_OK))
    assert peer.header(0, "host") == base.removeprefix("http://")  # [::1]:port
    assert "resolve" not in out.phases  # an IP literal is not resolved


async def test_refused_on_every_address_of_a_name() -> None:
    with refused_port() as port:  # bound, not listening
        out = await probe(f"http://localhost:{port}/")
    assert failed(out, Failure.REFUSED) == f"connection refused by localhost:{port}"


# --- redirects -------------------------------------------------------------------------------


def _redirect_to(location: str, status: str = "302 Found") -> Peer:
    return Peer(fixed(response(b"", f"Location: {location}", "Content-Length: 0", status=status)))


@pytest.mark.parametrize("credential_in", ["header", "custom-header", "query"])
async def test_a_redirect_to_another_origin_drops_the_credential(credential_in: str) -> None:
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token="tok-0123456789"))})
    kw: dict[str, Any] = {"credential": "svc", "follow_redirects": True,
                          "headers": {"Cookie": "session=abc", "X-Plain": "kept"}}
    if credential_in == "custom-header":
        kw |= {"credential_name": "X-Api-Key", "credential_scheme": ""}
    elif credential_in == "query":
        kw |= {"credential_in": "query", "credential_name": "api_key"}
    landing = Peer(fixed(response(BODY, f"Content-Length: {len(BODY)}")))
    async with serve(landing) as other:
        first = _redirect_to(other + "/landing")
        async with serve(first) as base:
            ok(await probe(base + "/start", CheckContext(credentials=creds), **kw))
    sent_first, sent_second = first.heads[0].decode(), landing.heads[0].decode()
    assert "tok-0123456789" in sent_first
    assert "tok-0123456789" not in sent_second
    assert sent_second.startswith("GET /landing HTTP/1.1")
    assert landing.header(0, "cookie") is None and landing.header(0, "x-plain") == "kept"


async def test_a_same_origin_redirect_keeps_the_credential_header() -> None:
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token="tok-0123456789"))})
    answers = iter([response(b"", "Location: /next", "Content-Length: 0", status="307 Temporary"),
                    response(BODY, f"Content-Length: {len(BODY)}")])
    peer = Peer(lambda _head: next(answers))
    async with serve(peer) as base:
        ok(await probe(base + "/start", CheckContext(credentials=creds), credential="svc",
                       follow_redirects=True, method="POST", body="payload"))
    assert [h.split(b" ", 2)[:2] for h in peer.heads] == [[b"POST", b"/start"],
                                                           [b"POST", b"/next"]]
    assert peer.header(1, "authorization") == "Bearer tok-0123456789"
    assert peer.heads[1].endswith(b"\r\n\r\npayload")  # 307 keeps the method and the body


async def test_303_turns_a_post_into_a_get_without_body() -> None:
    answers = iter([response(b"", "Location: /done", "Content-Length: 0", status="303 See Other"),
                    response(BODY, f"Content-Length: {len(BODY)}")])
    peer = Peer(lambda _head: next(answers))
    async with serve(peer) as base:
        out = ok(await probe(base + "/start", follow_redirects=True, method="POST", body="x=1"))
    assert peer.heads[1].startswith(b"GET /done HTTP/1.1")
    assert peer.header(1, "content-length") is None
    assert out.phases["processing"] > 0 and out.phases["connect"] > 0  # summed over both hops


async def test_a_redirect_to_a_non_http_url_is_protocol() -> None:
    async with serve(_redirect_to("ftp://files.example/x?token=secret")) as base:
        out = await probe(base + "/", follow_redirects=True)
    assert failed(out, Failure.PROTOCOL) == "redirect to a non-HTTP URL (ftp:)"


# --- hostile peers ---------------------------------------------------------------------------


async def test_header_flood_is_protocol() -> None:
    flood = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: p\r\n" % i for i in range(5000))
    async with serve(Peer(fixed(flood), close=False)) as base:
        out = await probe(base + "/")
    assert failed(out, Failure.PROTOCOL) == (
        "not valid HTTP: response head exceeds 64 KiB without ending")
    assert out.duration < 1


async def test_a_head_that_never_ends_is_protocol() -> None:
    endless = b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (256 * 1024)
    async with serve(Peer(fixed(endless), close=False)) as base:
        out = await probe(base + "/")
    assert failed(out, Failure.PROTOCOL) == (
        "not valid HTTP: response head exceeds 64 KiB without ending"
    )


async def test_an_unrequested_protocol_switch_is_a_final_status() -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    async with serve(Peer(fixed(switch + b"\x00\x01binary"), close=False)) as base:
        out = await probe(base + "/")
    assert failed(out, Failure.HTTP_STATUS) == "HTTP 101 (expected 2xx)"  # not a 1xx to skip
    assert out.duration < 1


async def test_broken_chunk_framing_names_the_body() -> None:
    bad = response(b"5\r\nhello\r\nzz\r\n", "Transfer-Encoding: chunked")
    async with serve(Peer(fixed(bad), close=False)) as base:
        out = await probe(base + "/")
    assert failed(out, Failure.PROTOCOL) == (
        "not valid HTTP: Invalid character in chunk size (in the body, 5 bytes read)"
    )


def test_framing_and_endings_under_uvloop() -> None:
    """The daemon runs on uvloop, whose transports call the Protocol in their own way (EOF,
    resets): the same answers must end the same."""
    uvloop = pytest.importorskip("uvloop")
    zipped = gzip.compress(BODY)
    answers: list[tuple[bytes, dict[str, Any]]] = [
        (response(b"5\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding: chunked"),
         {"expect": {"body_regex": "^hello$"}}),
        (response(b"until the close"), {"expect": {"body_regex": "close$"}}),
        (response(zipped, "Content-Encoding: gzip", f"Content-Length: {len(zipped)}"),
         {"expect": JSON_OK}),
        (response(b"abc", "Content-Length: 100"), {}),
        (b"", {}),
    ]

    async def scenario() -> list[Outcome]:
        outs = []
        for answer, kw in answers:
            async with serve(Peer(fixed(answer))) as base:
                outs.append(await probe(base + "/", **kw))
        return outs

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        outs = runner.run(scenario())
    assert [o.failure for o in outs] == [None, None, None, Failure.DISCONNECTED,
                                         Failure.DISCONNECTED], [o.detail for o in outs]
    assert outs[3].detail == "connection closed during the body (3 bytes read)"
    assert outs[4].detail == "server closed the connection before the response headers"
