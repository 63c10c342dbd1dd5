"""The HTTP check's connection: through a real forward proxy (tinyproxy, tests/forward_proxy.py)
from the environment or `proxy_url`, and to the next address of a name when one hangs (Happy
Eyeballs), on loopback. Proxy variables are set per test (monkeypatch.setenv): the check reads
the real environment, as curl does.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from faults import FaultServer
from faults.certs import TestCerts
from forward_proxy import tinyproxy
from helpers import StartDaemon, refused_port, run_cli
from http_servers import serve_app
from test_http_wire import failed, ok, probe, target
from yarl import URL

from probe.checks import scrub, target_secrets
from probe.checks._http_dial import dial, proxy_for
from probe.config import parse_config
from probe.credentials import Credentials
from probe.outcome import Failure
from probe.twin import Twin

_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
               "ALL_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no proxy variable, whatever the shell running pytest has."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


async def test_plain_http_goes_through_http_proxy_in_absolute_form(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_app() as (_app, port), tinyproxy(tmp_path) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        out = ok(await probe(f"http://127.0.0.1:{port}/ok", expect={"body_regex": "all good"}))
    assert f"GET http://127.0.0.1:{port}/ok HTTP/1.1" in proxy.requests()
    assert set(out.phases) >= {"connect", "processing"}


async def test_https_goes_through_a_connect_tunnel_timed_as_its_own_phase(
        tmp_path: Path, test_certs: TestCerts, monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_app(test_certs.ok.server_context()) as (_app, port), \
            tinyproxy(tmp_path) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        out = ok(await probe(f"https://127.0.0.1:{port}/ok", ca_file=str(test_certs.ca_file)))
    assert any(r.startswith(f"CONNECT 127.0.0.1:{port} ") for r in proxy.requests())
    assert {"connect", "tunnel", "tls"} <= set(out.phases)
    assert out.cert_expiry is not None  # the target's certificate, through the tunnel


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "localhost,127.0.0.0/8", ".0.0.1"])
async def test_no_proxy_goes_direct(no_proxy: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_app() as (_app, port), tinyproxy(tmp_path) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("NO_PROXY", no_proxy)
        ok(await probe(f"http://127.0.0.1:{port}/ok"))
    assert proxy.requests() == [] or no_proxy == ".0.0.1"  # a suffix is for names, not IPs


async def test_proxy_url_replaces_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with refused_port() as dead:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{dead}")
        async with serve_app() as (_app, port), tinyproxy(tmp_path) as proxy:
            ok(await probe(f"http://127.0.0.1:{port}/ok", proxy_url=proxy.url))
            assert len(proxy.requests()) == 1
            ok(await probe(f"http://127.0.0.1:{port}/ok", proxy_url="none"))  # direct
            assert len(proxy.requests()) == 1


async def test_a_failure_at_the_proxy_names_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    with refused_port() as dead:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{dead}")
        out = await probe("https://staging.invalid/health")  # never resolved: the proxy does
    assert failed(out, Failure.REFUSED) == f"connection refused by proxy 127.0.0.1:{dead}"


async def test_a_tunnel_the_proxy_refuses_is_named(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_app() as (_app, port), tinyproxy(tmp_path, connect_ports=(1,)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        out = await probe(f"https://127.0.0.1:{port}/ok")
    detail = failed(out, Failure.REFUSED)
    assert detail.startswith(f"proxy 127.0.0.1:{proxy.port} refused the tunnel to"
                             f" 127.0.0.1:{port}: HTTP/1.1 403"), detail


def test_proxy_for_reads_the_variables_as_curl() -> None:
    env = {"http_proxy": "http://u:p@proxy.corp:3128", "HTTPS_PROXY": "proxy.corp:8443",
           "NO_PROXY": "internal.corp,10.0.0.0/8"}
    plain = proxy_for(URL("http://api.example/"), None, env)
    assert plain is not None and (plain.host, plain.port) == ("proxy.corp", 3128)
    assert plain.authorization == b"Proxy-Authorization: Basic dTpw\r\n"
    tls = proxy_for(URL("https://api.example/"), None, env)
    assert tls is not None and (tls.where, tls.authorization) == ("proxy proxy.corp:8443", b"")
    assert proxy_for(URL("https://db.internal.corp/"), None, env) is None
    assert proxy_for(URL("http://10.1.2.3/"), None, env) is None
    assert proxy_for(URL("http://api.example/"), "none", env) is None
    bare = proxy_for(URL("http://api.example/"), "http://proxy.corp", {})
    assert bare is not None and bare.port == 1080  # curl's default proxy port


# --- Happy Eyeballs ------------------------------------------------------------------------------


async def test_a_hanging_address_gives_way_to_the_next() -> None:
    """::1 drops the SYN, 127.0.0.1 answers: the second attempt starts after 250 ms and wins,
    well inside the probe's timeout, where trying the addresses in turn hung to the deadline."""
    hole = FaultServer("blackhole", host="::1").start()  # SYNs to [::1]:port go unanswered
    try:
        with socket.socket() as good:
            good.bind(("127.0.0.1", hole.port))
            good.listen(8)
            async with asyncio.timeout(2):
                sock = await dial(asyncio.get_running_loop(), ["::1", "127.0.0.1"], hole.port)
            with sock:
                assert sock.getpeername() == ("127.0.0.1", hole.port)
    finally:
        hole.stop()


async def test_when_every_address_fails_the_refusal_is_named() -> None:
    with refused_port() as port:
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectionRefusedError):
            await dial(loop, ["::1", "127.0.0.1"], port)


async def test_probe_gate_goes_through_the_environments_proxy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, twin: Twin,
        start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """`probe gate` (and the credential fetches, the same aiohttp client) trust the
    environment's proxy variables, as the HTTP check does."""
    daemon = await start_daemon(parse_config(f"""
targets:
  - {{name: backend-health, url: "{twin.url}/health"}}
""", env={}))
    async with tinyproxy(tmp_path) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        await run_cli("gate", daemon.url)  # ready or not: the request is what is looked at
    capsys.readouterr()
    assert any(r.startswith(f"GET {daemon.url}/readyz ") for r in proxy.requests())


def test_a_proxy_password_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """From proxy_url or the environment: masked in details and logs like a target's own."""
    monkeypatch.setenv("https_proxy", "http://ops:env-pass-123456@proxy.corp:3128")
    t = target("https://api.example/", proxy_url="http://u:cfg-pass-987654@proxy.corp:3128")
    masked = scrub("env-pass-123456 cfg-pass-987654 dTpjZmctcGFzcy05ODc2NTQ=",
                   target_secrets(t, Credentials()))
    assert "pass" not in masked and "dTpj" not in masked, masked
