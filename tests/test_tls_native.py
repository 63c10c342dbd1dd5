"""Reading and offering TLS sessions through OpenSSL's own copy, not CPython's through DER
(probe.checks._tls_native), against a real loopback TLS server: a read and an offer are
copies of their own and resume, a ticketless session is not kept, another context's session
is refused, nothing leaks, and where the object layout it reads does not hold the probe uses
CPython's public path and still resumes."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

import pytest
from faults import TestCerts
from helpers import tls_server

from probe.checks import CheckContext, _tls_native
from probe.checks._tls_native import Held, Native, Public, Sessions, _load
from probe.checks.http import check as http_check
from probe.config import Target


def _shared_libssl() -> bool:
    """CPython with OpenSSL as a shared library (not linked into _ssl, where no symbol is
    exported): then the native path must be there, and a test that does not find it fails."""
    if sys.implementation.name != "cpython":
        return False
    try:
        with open("/proc/self/maps") as f:
            return "libssl" in f.read()
    except OSError:
        return False


cpython = pytest.mark.skipif(not _shared_libssl(),
                             reason="the native path needs CPython with a shared libssl")


def server_ctx(certs: TestCerts, tickets: int = 2) -> ssl.SSLContext:
    """The test server's context, sending `tickets` session tickets per handshake."""
    ctx = certs.ok.server_context()
    ctx.num_tickets = tickets
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, asyncio.StreamWriter]:
    """One full handshake and its answer read (TLS 1.3 sends tickets after the handshake)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="127.0.0.1")
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"ok\n")
    return writer.get_extra_info("ssl_object"), writer


def native() -> Native:
    lib = _load()
    assert lib is not None, "OpenSSL's symbols do not resolve through CPython's _ssl"
    return lib


def client(certs: TestCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca_file))


def connection(ctx: ssl.SSLContext) -> ssl.SSLObject:
    return ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1")


def target(port: int, certs: TestCerts) -> Target:
    return Target.model_validate({"name": f"t{port}", "url": f"https://127.0.0.1:{port}/",
                                  "ca_file": str(certs.ca_file), "interval": 10, "timeout": 5})


@cpython
async def test_a_read_and_an_offer_are_copies_of_their_own_and_resume(
        test_certs: TestCerts) -> None:
    ctx, lib = client(test_certs), native()
    async with tls_server(server_ctx(test_certs)) as srv:
        port, resumed = srv.port, srv.resumed
        conn, writer = await handshake(port, ctx)
        assert lib.holds(conn, ctx)
        held = lib.read(conn, ctx)
        assert isinstance(held, Held)
        # a copy of ours: the connection's own session is not the one we keep
        assert held.ptr and held.ptr != lib.offered(conn)
        public = conn.session
        writer.close()
        new = connection(ctx)
        lib.offer(new, held, ctx)
        # a copy again: a failed connection marks only its own copy as not resumable
        assert lib.offered(new) not in (0, held.ptr)
        assert new.session is not None and new.session.id == public.id
        # and the probes of a target resume through it: [full, resumed, resumed]
        probe_ctx, t = CheckContext(), target(port, test_certs)
        resumed.clear()
        for _ in range(3):
            assert (await http_check(t, probe_ctx)).success
        assert resumed == [False, True, True]
    assert isinstance(_tls_native.SESSIONS.access, Native)


@cpython
async def test_a_ticketless_session_is_not_kept(test_certs: TestCerts) -> None:
    """TLS 1.3 without a ticket resumes nothing: not read, so nothing is offered."""
    ctx, lib = client(test_certs), native()
    async with tls_server(server_ctx(test_certs, tickets=0)) as srv:
        port = srv.port
        conn, writer = await handshake(port, ctx)
        assert lib.read(conn, ctx) is None
        assert Public().read(conn, ctx) is None  # the public path agrees
        writer.close()


@cpython
async def test_a_session_of_another_context_is_refused(test_certs: TestCerts) -> None:
    ctx, other, lib = client(test_certs), client(test_certs), native()
    async with tls_server(server_ctx(test_certs)) as srv:
        port = srv.port
        conn, writer = await handshake(port, ctx)
        held = lib.read(conn, ctx)
        assert lib.read(conn, other) is None  # asked with the wrong context: nothing read
        writer.close()
    new = connection(other)
    lib.offer(new, held, other)
    assert lib.offered(new) == 0  # nothing offered: a full handshake


@cpython
async def test_reads_and_offers_leak_nothing(test_certs: TestCerts) -> None:
    """Each read and each offer makes a copy; one reference too many would keep every copy
    (~1 KiB with its ticket) alive: 40000 of each would hold tens of MiB."""
    ctx, lib = client(test_certs), native()
    async with tls_server(server_ctx(test_certs)) as srv:
        port = srv.port
        conn, writer = await handshake(port, ctx)

        def rss() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        def cycle() -> None:
            held = lib.read(conn, ctx)
            assert held is not None
            lib.offer(connection(ctx), held, ctx)

        for _ in range(2000):  # warm the allocator
            cycle()
        before = rss()
        for _ in range(40000):
            cycle()
        grown = rss() - before
        writer.close()
    assert grown < 8 << 20


@pytest.mark.parametrize("why", ["layout", "no symbols"])
async def test_without_the_native_path_the_public_path_still_resumes(
        why: str, test_certs: TestCerts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another interpreter's layout (here: the context field looked for one pointer off), or an
    _ssl that exports no OpenSSL symbols (a static build): CPython's own copies resume."""
    if why == "layout":
        monkeypatch.setattr(_tls_native, "_SOCK_CTX", _tls_native._SOCK_CTX + 8)
        sessions = Sessions()
    else:
        sessions = Sessions(load=lambda: None)
    monkeypatch.setattr(_tls_native, "SESSIONS", sessions)
    async with tls_server(server_ctx(test_certs)) as srv:
        ctx, t = CheckContext(), target(srv.port, test_certs)
        for _ in range(3):
            assert (await http_check(t, ctx)).success
    assert srv.resumed == [False, True, True]
    assert isinstance(sessions.access, Public)
