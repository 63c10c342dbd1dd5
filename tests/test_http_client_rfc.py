"""The HTTP check where it once disagreed with curl and blackbox_exporter (issue 17): each test
plays a real server on loopback (aiohttp, or a raw peer byte for byte) and fails on a client
that gets the case wrong. tests/conformance/test_http_curl.py plays the same cases against
nginx, node and uvicorn and compares the verdicts with curl's.
"""

from __future__ import annotations

import gzip
import zlib
from importlib.util import find_spec
from pathlib import Path

import pytest
from faults.certs import make_chain
from helpers import samples, value
from http_servers import serve_app
from test_http_wire import (
    BODY,
    JSON_OK,
    Peer,
    failed,
    fixed,
    ok,
    probe,
    response,
    serve,
    target,
)

from probe.metrics import Metrics
from probe.outcome import Failure


async def test_earliest_expiry_is_the_chains_and_the_leaf_has_its_own(tmp_path: Path) -> None:
    chain = make_chain(tmp_path, intermediate_days=5, leaf_days=20)
    async with serve_app(chain.server.server_context()) as (_app, port):
        out = await probe(f"https://127.0.0.1:{port}/ok", ca_file=str(chain.ca_file))
    assert out.success, out.detail
    assert out.cert_expiry == chain.intermediate_not_after  # not the leaf's, 15 days later
    assert out.leaf_expiry == chain.leaf_not_after
    m = Metrics()
    t = target(f"https://127.0.0.1:{port}/ok")
    m.add_target(t)
    m.record(out, t)
    s = samples(m)
    assert value(s, "probe_ssl_earliest_cert_expiry", target="t") == chain.intermediate_not_after
    assert value(s, "probe_ssl_leaf_cert_expiry", target="t") == chain.leaf_not_after


# --- what a response head is -----------------------------------------------------------------


async def test_a_trailer_never_satisfies_a_header_expectation() -> None:
    """RFC 9110 §6.5.1: trailer fields are not merged into the header section."""
    chunked = response(b"5\r\nhello\r\n0\r\nX-Build: 1.2.3\r\n\r\n", "Transfer-Encoding: chunked")
    async with serve(Peer(fixed(chunked))) as base:
        out = await probe(f"{base}/", expect={"headers": {"X-Build": r"1\.2\.3"}})
    assert "X-Build" in failed(out, Failure.ASSERTION)


@pytest.mark.parametrize("count", [129, 400])
async def test_many_header_lines_are_a_valid_head(count: int) -> None:
    """Only the head's byte cap (64 KiB) bounds it, as in curl (100 KiB)."""
    lines = [f"X-H{i}: {i}" for i in range(count)]
    async with serve(Peer(fixed(response(b"ok", "Content-Length: 2", *lines)))) as base:
        out = ok(await probe(f"{base}/", expect={"headers": {f"X-H{count - 1}": str(count - 1)}}))
    assert out.status_code == 200


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Build: 1.2.3\n\nok",  # bare LF line ends
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Build: 1.2\r\n .3\r\n\r\nok",  # obs-fold
], ids=["bare-lf", "folded"])
async def test_lenient_heads_a_client_must_accept(head: bytes) -> None:
    """RFC 9112 §2.2 (a recipient may take a bare LF as a line end) and §5.2 (a user agent
    replaces an obs-fold with spaces), as curl does."""
    async with serve(Peer(fixed(head))) as base:
        out = ok(await probe(f"{base}/", expect={"headers": {"X-Build": r"1\.2\s*\.?3"}}))
    assert out.status_code == 200


async def test_the_head_cap_does_not_depend_on_segmentation() -> None:
    """A complete 70 KB head is over the 64 KiB cap whether it comes in one segment or many."""
    lines = [f"X-Pad-{i}: {'p' * 680}" for i in range(100)]
    async with serve(Peer(fixed(response(b"ok", "Content-Length: 2", *lines)))) as base:
        detail = failed(await probe(f"{base}/"), Failure.PROTOCOL)
    assert detail == "not valid HTTP: response head exceeds 64 KiB without ending"


# --- what a body is ---------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_cut_short_fails_for_every_coding(coding: str) -> None:
    whole = gzip.compress(BODY) if coding == "gzip" else zlib.compress(BODY)
    cut = whole[: len(whole) // 2]
    answer = response(cut, f"Content-Length: {len(cut)}", f"Content-Encoding: {coding}")
    async with serve(Peer(fixed(answer))) as base:
        out = await probe(f"{base}/", expect=JSON_OK)
    assert failed(out, Failure.PROTOCOL) == (
        f"cannot decode the body: {coding} stream incomplete (cut short)")


@pytest.mark.parametrize("headers", [
    ["Content-Encoding: gzip, gzip"],
    ["Content-Encoding: gzip", "Content-Encoding: gzip"],  # two lines: one list
], ids=["one-line", "two-lines"])
async def test_stacked_codings_are_undone_last_first(headers: list[str]) -> None:
    twice = gzip.compress(gzip.compress(BODY))
    answer = response(twice, f"Content-Length: {len(twice)}", *headers)
    async with serve(Peer(fixed(answer))) as base:
        ok(await probe(f"{base}/", expect=JSON_OK))


async def test_an_unasked_coding_is_decoded_or_named_never_matched() -> None:
    """`br` sent although the probe asked for gzip, deflate: a body check must not read the
    compressed bytes; brotli decodes it when installed, else the detail names it."""
    packed = _brotli_or_junk()
    answer = response(packed, f"Content-Length: {len(packed)}", "Content-Encoding: br")
    async with serve(Peer(fixed(answer))) as base:
        checked = await probe(f"{base}/", expect=JSON_OK)
        counted = await probe(f"{base}/")  # no body check: the body is only counted
    if find_spec("brotli") is not None:
        ok(checked)
    else:
        assert failed(checked, Failure.PROTOCOL) == (
            "cannot decode the body: Content-Encoding br (the brotli module is not installed);"
            " the body checks cannot read it")
    ok(counted)


def _brotli_or_junk() -> bytes:
    if find_spec("brotli") is None:
        return b"\x1b\x0e\x00\xf8" + BODY  # never decoded: only has to look compressed
    import brotli  # type: ignore[import-not-found]

    return bytes(brotli.compress(BODY))


# --- redirects ---------------------------------------------------------------------------------


async def test_cookies_set_on_a_redirect_go_on_the_next_hops_of_that_probe_only() -> None:
    """A login redirect: /login sets a session cookie, /app needs it. Path, Secure and Max-Age
    as curl's cookie engine applies them."""

    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /login "):
            return response(b"", "Location: /app/home", "Content-Length: 0",
                            "Set-Cookie: session=s3cr3t; Path=/app; HttpOnly",
                            "Set-Cookie: theme=dark",  # default path /: sent too
                            "Set-Cookie: other=x; Path=/admin",  # not for /app
                            "Set-Cookie: tls=y; Secure",  # plain http: not sent
                            "Set-Cookie: gone=z; Max-Age=0",
                            "Set-Cookie: bad=a\x01b",  # a control byte: dropped
                            status="302 Found")
        ok = b"session=s3cr3t" in head
        return response(b"in" if ok else b"out", "Content-Length: 2" if ok else "Content-Length: 3")

    peer = Peer(answer)
    async with serve(peer) as base:
        first = await probe(f"{base}/login", follow_redirects=True, expect={"body_regex": "in"})
        second = await probe(f"{base}/login", follow_redirects=True)
    ok(first), ok(second)
    assert peer.header(0, "cookie") is None  # nothing kept from before
    assert peer.header(1, "cookie") == "session=s3cr3t; theme=dark"
    assert peer.header(2, "cookie") is None  # the next probe starts afresh
    assert peer.header(3, "cookie") == "session=s3cr3t; theme=dark"


# --- what goes out ------------------------------------------------------------------------------


@pytest.mark.parametrize("path_qs", [
    "/files/a%2Fb/%7Euser",  # an encoded slash is not a slash; %7E stays as written
    "/s3/key?X-Amz-Signature=ab%2Bcd%3D&X-Amz-Credential=AK%2F20260101%2Fus&x=%7e",
])
async def test_the_request_url_is_sent_as_written(path_qs: str) -> None:
    peer = Peer(fixed(response(b"ok", "Content-Length: 2")))
    async with serve(peer) as base:
        ok(await probe(base + path_qs))
    assert peer.heads[0].split(b"\r\n", 1)[0] == f"GET {path_qs} HTTP/1.1".encode()


async def test_a_redirect_location_is_followed_as_written() -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /start "):
            return response(b"", "Location: next/a%2Fb?sig=x%2By", "Content-Length: 0",
                            status="302 Found")
        return response(b"ok", "Content-Length: 2")

    peer = Peer(answer)
    async with serve(peer) as base:
        ok(await probe(f"{base}/start", follow_redirects=True))
    assert peer.heads[1].startswith(b"GET /next/a%2Fb?sig=x%2By HTTP/1.1\r\n")


async def test_what_cannot_go_on_a_request_line_is_percent_encoded() -> None:
    peer = Peer(fixed(response(b"ok", "Content-Length: 2")))
    async with serve(peer) as base:
        ok(await probe(f"{base}/caf\u00e9 menu?q=\u00e9"))
    assert peer.heads[0].startswith(b"GET /caf%C3%A9%20menu?q=%C3%A9 HTTP/1.1\r\n")
