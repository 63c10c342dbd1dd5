"""Review of the lean HTTP client (issue 8): behaviours aiohttp had, or HTTP/1.1 requires, that
the new transport must keep. Raw peers on loopback play the server byte for byte (the Peer of
test_http_wire), so what is checked is what went over the wire.
"""

from __future__ import annotations

import base64
from typing import Any

import structlog.testing
from test_http_wire import BODY, Peer, fixed, ok, probe, response, serve

from probe.checks import CheckContext
from probe.config import BearerSpec, CredentialSpec
from probe.credentials import Credentials
from probe.outcome import Failure

LENGTH = f"Content-Length: {len(BODY)}"


def _host_lines(head: bytes) -> list[bytes]:
    return [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"host:")]


async def test_a_head_probe_has_a_zero_transfer_phase() -> None:
    """An answer to HEAD is complete with its head: its transfer phase is 0, not the time
    since the clock's epoch, negated (what was exported as a phase duration)."""
    peer = Peer(fixed(response(b"", "Content-Length: 5000")), close=False)
    async with serve(peer) as base:
        out = ok(await probe(base + "/", method="HEAD"))
    assert out.phases["transfer"] == 0.0
    assert all(v >= 0 for v in out.phases.values()), out.phases


async def test_a_304_declaring_a_large_resource_is_not_a_body_too_large() -> None:
    """A 304's Content-Length is the resource's size: there is no body to be too large."""
    peer = Peer(fixed(response(b"", "Content-Length: 5000", status="304 Not Modified")),
                close=False)
    async with serve(peer) as base:
        out = ok(await probe(base + "/", expect={"status": [304]}, body_limit=1000))
    assert out.status_code == 304 and out.duration < 1


async def test_a_configured_host_header_replaces_the_urls() -> None:
    """Staging often sits behind an address with a name-based virtual host: the configured Host
    goes out (once), as it did with aiohttp; a redirect to another origin names its own host."""
    landing = Peer(fixed(response(BODY, LENGTH)))
    async with serve(landing) as other:
        first = Peer(fixed(response(b"", f"Location: {other}/x", "Content-Length: 0",
                                    status="302 Found")))
        async with serve(first) as base:
            ok(await probe(base + "/", follow_redirects=True,
                           headers={"host": "api.staging.example"}))
    assert _host_lines(first.heads[0]) == [b"Host: api.staging.example"]
    assert landing.header(0, "host") == other.removeprefix("http://")


async def test_url_userinfo_is_sent_as_basic_auth_to_the_origin_only() -> None:
    landing = Peer(fixed(response(BODY, LENGTH)))
    async with serve(landing) as other:
        answers = iter([
            response(b"", "Location: /again", "Content-Length: 0", status="302 Found"),
            response(b"", f"Location: {other}/x", "Content-Length: 0", status="302 Found"),
        ])
        first = Peer(lambda _head: next(answers))
        async with serve(first) as base:
            url = base.replace("http://", "http://probe-user:p%40ss@") + "/start"
            ok(await probe(url, follow_redirects=True))
    basic = "Basic " + base64.b64encode(b"probe-user:p@ss").decode()
    assert [first.header(i, "authorization") for i in (0, 1)] == [basic, basic]
    assert first.heads[0].startswith(b"GET /start HTTP/1.1\r\n")  # no userinfo on the wire
    assert b"p@ss" not in first.heads[0] and b"probe-user" not in first.heads[0]
    assert landing.header(0, "authorization") is None


async def test_a_credential_header_replaces_a_configured_one() -> None:
    """One Authorization line, the credential's (aiohttp's headers.update()): two would be
    rejected by most servers, or the stale one believed."""
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token="tok-0123456789"))})
    peer = Peer(fixed(response(BODY, LENGTH)))
    kw: dict[str, Any] = {"credential": "svc", "headers": {"authorization": "Basic c3RhbGU="}}
    async with serve(peer) as base:
        ok(await probe(base.replace("http://", "http://u:p@") + "/", CheckContext(creds), **kw))
    lines = [ln for ln in peer.heads[0].split(b"\r\n") if ln.lower().startswith(b"authorization")]
    assert lines == [b"Authorization: Bearer tok-0123456789"]


async def test_an_expected_101_has_a_zero_transfer_phase() -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    async with serve(Peer(fixed(switch), close=False)) as base:
        out = ok(await probe(base + "/", expect={"status": [101]}))
    assert out.phases["transfer"] == 0.0 and out.status_code == 101


async def test_a_query_token_echoed_url_encoded_is_redacted() -> None:
    """A token with characters a query must encode (`+ / =`, common in opaque tokens) is sent
    encoded; a body echoing the request line must not carry that form into the detail."""
    token = "a+b/c=d0123456789"
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token=token))})

    def echo(head: bytes) -> bytes:
        line = head.split(b"\r\n", 1)[0]
        return response(line, f"Content-Length: {len(line)}")

    async with serve(Peer(echo)) as base:
        out = await probe(base + "/", CheckContext(creds), credential="svc",
                          credential_in="query", expect={"body_regex": "^healthy$"})
    assert out.failure is not None and out.detail.startswith("body does not match")
    assert "a%2Bb" not in out.detail and "a+b" not in out.detail, out.detail


async def test_configured_credentials_echoed_back_are_redacted() -> None:
    """A password in the URL and a static Authorization header are credentials too: a server
    that echoes the request head into its body must not carry them into the detail."""
    password, static = "hunter2-url-password", "static-token-0123456789"

    def echo(head: bytes) -> bytes:  # "you sent: <your Authorization header>"
        auth = next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"authorization"))
        text = b"you sent " + auth.partition(b" ")[2]
        return response(text, f"Content-Length: {len(text)}")

    async with serve(Peer(echo)) as base:
        with_password = base.replace("http://", f"http://probe:{password}@") + "/"
        basic = base64.b64encode(f"probe:{password}".encode()).decode()
        outs = [
            await probe(with_password, expect={"body_regex": "^healthy$"}),
            await probe(base + "/", headers={"Authorization": f"Bearer {static}"},
                        expect={"body_regex": "^healthy$"}),
        ]
    for out in outs:
        assert out.failure is not None and out.detail.startswith("body does not match"), out
    assert basic[:8] not in outs[0].detail and password not in outs[0].detail, outs[0].detail
    assert static[:8] not in outs[1].detail, outs[1].detail


async def test_a_body_nested_too_deeply_is_an_assertion_not_a_crash() -> None:
    """A hostile `[[[[...` body made json.loads raise RecursionError, which reached the check's
    last-resort handler as if it were a bug of ours (`protocol`, traceback logged)."""
    body = b"[" * 200_000
    peer = Peer(fixed(response(body, f"Content-Length: {len(body)}")))
    with structlog.testing.capture_logs() as logs:
        async with serve(peer) as base:
            out = await probe(base + "/", expect={"json": {"status": "healthy"}})
    assert out.failure is Failure.ASSERTION, out
    assert out.detail.startswith("body is not JSON: nested too deeply to parse"), out.detail
    assert not [e for e in logs if e.get("log_level") == "error"], logs
