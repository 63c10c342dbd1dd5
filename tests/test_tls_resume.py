"""TLS session resumption between a target's probes (probe.checks._tls_sessions), against real
loopback TLS servers: resumed while the last full handshake is fresh evidence, never past it,
never after a failure, never with tls_resume off, and each server's own session under
concurrency. The servers tell from their side whether a handshake resumed."""

from __future__ import annotations

import asyncio

from faults import TestCerts
from helpers import tls_server

from probe.checks import CheckContext
from probe.checks._tls_sessions import _OFFERS, TlsSessions
from probe.checks.http import check as http_check
from probe.checks.websocket import check as ws_check
from probe.config import Target
from probe.outcome import Failure


def target(port: int, certs: TestCerts, **extra: object) -> Target:
    return Target.model_validate({"name": f"t{port}", "url": f"https://127.0.0.1:{port}/",
                                  "ca_file": str(certs.ca_file), "interval": 10,
                                  "timeout": 5, **extra})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_resumes_while_the_chain_is_fresh_evidence_then_verifies_in_full(
        test_certs: TestCerts) -> None:
    clock = Clock()
    ctx = CheckContext(tls_sessions=TlsSessions(clock=clock))
    async with tls_server(test_certs.ok.server_context()) as server:
        t = target(server.port, test_certs)  # stale_after: 2 x 10 s + 5 s
        first = [await http_check(t, ctx) for _ in range(3)]
        assert [o.success for o in first] == [True] * 3
        assert server.resumed == [False, True, True]
        # a resumed probe reports the expiry its chain was verified with
        assert first[0].cert_expiry is not None
        assert {o.cert_expiry for o in first} == {first[0].cert_expiry}
        # The server now presents a certificate no client may trust, under the same ticket key:
        # a resumed handshake cannot see it, so the last full verification bounds how long.
        server.ctx.load_cert_chain(test_certs.self_signed.cert, test_certs.self_signed.key)
        clock.now += 24.0
        assert (await http_check(t, ctx)).success
        assert server.resumed[-1] is True
        clock.now += 1.0  # 25 s since the full handshake: the evidence is no longer fresh
        seen = len(server.resumed)
        out = await http_check(t, ctx)
        assert not out.success and out.failure is Failure.TLS, out.detail
        assert len(server.resumed) == seen  # the server saw no handshake complete
        # after a failure the next handshake is a full one, whatever the clock says
        server.ctx.load_cert_chain(test_certs.ok.cert, test_certs.ok.key)
        assert (await http_check(t, ctx)).success
        assert server.resumed[-1] is False
    assert not _OFFERS


async def test_a_failed_probe_forgets_the_session(test_certs: TestCerts) -> None:
    ctx = CheckContext()
    async with tls_server(test_certs.ok.server_context()) as server:
        t = target(server.port, test_certs)
        assert (await http_check(t, ctx)).success
        assert (await http_check(t, ctx)).success
        server.status = 503
        assert (await http_check(t, ctx)).failure is Failure.HTTP_STATUS
        server.status = 200
        assert (await http_check(t, ctx)).success
        assert (await http_check(t, ctx)).success
    assert server.resumed == [False, True, True, False, True]


async def test_tls_resume_false_makes_every_handshake_full(test_certs: TestCerts) -> None:
    ctx = CheckContext()
    async with tls_server(test_certs.ok.server_context()) as server:
        t = target(server.port, test_certs, tls_resume=False)
        assert all([(await http_check(t, ctx)).success for _ in range(3)])
    assert server.resumed == [False, False, False]
    assert len(ctx.tls_sessions) == 0


async def test_a_server_that_declines_tickets_soon_gets_no_more_offers(
        test_certs: TestCerts) -> None:
    ctx = CheckContext()
    offers = 0
    async with tls_server(test_certs.ok.server_context) as server:
        t = target(server.port, test_certs)
        for _ in range(40):
            memory = ctx.tls_sessions._known.get((t.name, "127.0.0.1", server.port))
            offers += bool(memory is not None and memory.session is not None and not memory.skip)
            assert (await http_check(t, ctx)).success
    assert not any(server.resumed)
    # offered on probes 2 and 6 (3 full handshakes after one decline, 255 after two)
    assert offers == 2


async def test_concurrent_probes_offer_each_server_its_own_session(
        test_certs: TestCerts) -> None:
    """Many targets on one host name, each server with its own ticket key: a session handed to
    the wrong handshake would be declined, so every second round must resume everywhere."""
    ctx = CheckContext()
    async with (tls_server(test_certs.ok.server_context()) as a,
                tls_server(test_certs.ok.server_context()) as b,
                tls_server(test_certs.ok.server_context()) as c):
        servers = [a, b, c]
        targets = [target(s.port, test_certs) for s in servers]
        for _ in range(4):
            outs = await asyncio.gather(*(http_check(t, ctx) for t in targets))
            assert all(o.success for o in outs)
    for s in servers:
        assert s.resumed == [False, True, True, True]
    assert not _OFFERS


async def test_a_wss_target_resumes_too(test_certs: TestCerts) -> None:
    """A WebSocket target over TLS (websockets' server): resumed while fresh, like HTTPS."""
    from websockets.asyncio.server import ServerConnection, serve

    resumed: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        resumed.append(ws.transport.get_extra_info("ssl_object").session_reused)
        async for message in ws:
            await ws.send(message)

    ctx = CheckContext()
    async with serve(handler, "127.0.0.1", 0, ssl=test_certs.ok.server_context()) as server:
        port = server.sockets[0].getsockname()[1]
        t = Target.model_validate({
            "name": "chat", "url": f"wss://127.0.0.1:{port}/", "ca_file": str(test_certs.ca_file),
            "messages": [{"send": "hi", "expect": {"regex": "hi"}}]})
        outs = [await ws_check(t, ctx) for _ in range(3)]
        off = t.model_copy(update={"tls_resume": False})
        outs.append(await ws_check(off, ctx))
    assert [o.success for o in outs] == [True] * 4, [o.detail for o in outs]
    assert resumed == [False, True, True, False]
    assert not _OFFERS
