"""The HTTP check where it once disagreed with curl and blackbox_exporter (issue 17): each test
plays a real server on loopback (aiohttp, or a raw peer byte for byte) and fails on a client
that gets the case wrong. tests/conformance/test_http_curl.py plays the same cases against
nginx, node and uvicorn and compares the verdicts with curl's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults.certs import make_chain
from helpers import samples, value
from http_servers import serve_app
from test_http_wire import Peer, failed, fixed, ok, probe, response, serve, target

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
