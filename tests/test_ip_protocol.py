"""`ip_protocol` / `ip_protocol_fallback` (blackbox's preferred_ip_protocol and
ip_protocol_fallback): the preferred family's addresses are dialled first, the other family's
only with the fallback; a name with no address of an allowed family is `dns`, said as such.

`localhost` resolves to 127.0.0.1 only on this machine (and on most CI hosts), so an IPv6-only
preference without fallback has nothing to dial, while with the fallback it reaches the IPv4
server; the ordering itself is checked on a real dial where the preferred address would hang.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from faults import FaultServer
from faults.fixtures import StartFaultServer, make_target

from probe.checks import CheckContext, by_protocol
from probe.checks import http as http_check
from probe.checks import websocket as ws_check
from probe.checks._http_dial import dial
from probe.outcome import Failure


def _v6_less_localhost() -> None:
    families = {i[0] for i in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)}
    if socket.AF_INET6 in families or socket.AF_INET not in families:
        pytest.skip("localhost must resolve to IPv4 only for these cases")


def test_the_preferred_family_comes_first_and_the_other_only_with_fallback() -> None:
    both = ["127.0.0.1", "::1", "127.0.0.2"]
    assert by_protocol(both, None, True, "h") == both
    assert by_protocol(both, "ip6", True, "h") == ["::1", "127.0.0.1", "127.0.0.2"]
    assert by_protocol(both, "ip4", False, "h") == ["127.0.0.1", "127.0.0.2"]
    with pytest.raises(socket.gaierror, match="no IPv6 address for h"):
        by_protocol(["127.0.0.1"], "ip6", False, "h")


async def test_a_preferred_ipv4_is_dialled_before_a_hanging_ipv6() -> None:
    """[::1] drops SYNs: dialled first (the resolver's order) it costs the Happy Eyeballs delay;
    with ip4 preferred, 127.0.0.1 is the only attempt made."""
    hole = FaultServer("blackhole", host="::1").start()
    try:
        with socket.socket() as good:
            good.bind(("127.0.0.1", hole.port))
            good.listen(8)
            order = by_protocol(["::1", "127.0.0.1"], "ip4", False, "h")
            assert order == ["127.0.0.1"]
            async with asyncio.timeout(2):
                sock = await dial(asyncio.get_running_loop(), order, hole.port)
            with sock:
                assert sock.getpeername() == ("127.0.0.1", hole.port)
    finally:
        hole.stop()


@pytest.mark.parametrize(("fallback", "ok"), [(True, True), (False, False)])
async def test_http_ipv6_preferred_on_an_ipv4_only_name(
        fault_server: StartFaultServer, fallback: bool, ok: bool) -> None:
    _v6_less_localhost()
    server = fault_server("ok")
    url = server.url("/health").replace("127.0.0.1", "localhost")
    outcome = await http_check.check(
        make_target(url, ip_protocol="ip6", ip_protocol_fallback=fallback), CheckContext())
    if ok:
        assert outcome.success, outcome.detail
    else:
        assert outcome.failure is Failure.DNS, outcome
        assert "no IPv6 address for localhost" in outcome.detail, outcome.detail


async def test_websocket_honours_it_too(fault_server: StartFaultServer) -> None:
    _v6_less_localhost()
    server = fault_server("ws_ok")
    url = server.ws_url("/ws").replace("127.0.0.1", "localhost")
    ctx = CheckContext()
    no = await ws_check.check(make_target(url, ip_protocol="ip6", ip_protocol_fallback=False), ctx)
    assert no.failure is Failure.DNS and "no IPv6 address for localhost" in no.detail, no
    yes = await ws_check.check(make_target(url, ip_protocol="ip4", ip_protocol_fallback=False),
                               ctx)
    assert yes.success, yes.detail
