"""The HTTP check against real servers on loopback: every failure class, its detail, its bounds.

Normal answers come from an aiohttp.web app; misbehaving peers (garbage, reset, silence) from raw
asyncio servers; TLS from a self-signed certificate generated per test session (tests/certs.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from certs import SelfSigned, make_self_signed
from helpers import refused_port
from http_servers import MIB, App, raw_server, read_request, serve_app

from probe.checks import CheckContext, _http_expect
from probe.checks._http_expect import plan_for
from probe.checks.http import check
from probe.config import BearerSpec, CredentialSpec, Target
from probe.credentials import Credentials
from probe.outcome import Failure, Outcome

MARGIN = 1.5  # generous: the CI machine has 2 cores


def target(url: str, **kw: Any) -> Target:
    return Target.model_validate({"name": "t", "url": url, "timeout": 1, **kw})


async def probe(url: str, ctx: CheckContext | None = None, **kw: Any) -> Outcome:
    return await check(target(url, **kw), ctx or CheckContext())


def failed(outcome: Outcome, failure: Failure) -> str:
    assert not outcome.success, outcome
    assert outcome.failure is failure, outcome
    assert "\n" not in outcome.detail
    return outcome.detail


@pytest.fixture
async def web_app() -> AsyncIterator[tuple[App, str]]:
    async with serve_app() as (app, port):
        yield app, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_app(cert: SelfSigned) -> AsyncIterator[int]:
    async with serve_app(cert.server_context()) as (_, port):
        yield port


# --- successes -------------------------------------------------------------------------------


async def test_default_expects_any_2xx(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/ok")
    assert out.success and out.failure is None and out.detail == ""
    assert out.status_code == 200 and out.kind == "http" and out.target == "t"
    assert 0 < out.latency["ttfb"] <= out.latency["total"] == out.duration < 1
    assert (await probe(web_app[1] + "/status/204")).success


async def test_phases_over_plain_http(web_app: tuple[App, str]) -> None:
    port = web_app[1].rsplit(":", 1)[1]
    out = await probe(f"http://localhost:{port}/ok")  # a name, so there is a resolve phase
    assert out.success, out.detail
    assert set(out.phases) == {"resolve", "connect", "processing", "transfer"}
    assert all(v >= 0 for v in out.phases.values())
    assert sum(out.phases.values()) <= out.duration


async def test_a_fresh_connection_per_probe(web_app: tuple[App, str]) -> None:
    app, base = web_app
    t = target(base + "/ok")
    for _ in range(3):
        assert (await check(t, CheckContext())).success
    assert len(app.peer_ports) == 3 and len(set(app.peer_ports)) == 3


async def test_expected_status_set(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/status/503", expect={"status": [503]})
    assert out.success and out.status_code == 503


async def test_json_paths_with_list_indices(web_app: tuple[App, str]) -> None:
    expect = {"json": {"status": "healthy", "items.0.id": 5, "items.-1.id": 7, "ready": True},
              "headers": {"content-type": "application/json.*"}, "body_regex": "heal+thy"}
    out = await probe(web_app[1] + "/json", expect=expect)
    assert out.success, out.detail


async def test_version_is_reported(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/json", version_path="version")
    assert out.success and out.version == "1.2.3"
    ctx = CheckContext(expect_version="1.2.3")
    out = await probe(web_app[1] + "/json", ctx, version_path="version")
    assert out.success and out.version == "1.2.3"


async def test_redirect_followed_when_asked(web_app: tuple[App, str]) -> None:
    out = await probe(
        web_app[1] + "/redirect", follow_redirects=True, expect={"json": {"ready": True}}
    )
    assert out.success and out.status_code == 200
    out = await probe(web_app[1] + "/chain/3", follow_redirects=True, max_redirects=3)
    assert out.success, out.detail  # exactly max_redirects hops are allowed


async def test_post_json_body_arrives(web_app: tuple[App, str]) -> None:
    app, base = web_app
    out = await probe(base + "/echo", method="POST", json_body={"agent_id": "probe", "n": [1, 2]},
                      headers={"X-Test-Type": "E2E"}, expect={"json": {"received": True}})
    assert out.success, out.detail
    (seen,) = app.seen
    assert seen["method"] == "POST"
    assert json.loads(seen["body"]) == {"agent_id": "probe", "n": [1, 2]}
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["X-Test-Type"] == "E2E"
    assert seen["headers"]["User-Agent"].startswith("stageprobe/")
    assert out.phases["processing"] >= 0


async def test_raw_body_arrives(web_app: tuple[App, str]) -> None:
    app, base = web_app
    out = await probe(base + "/echo", method="POST", body="a=1&b=2",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert out.success, out.detail
    assert app.seen[0]["body"] == b"a=1&b=2"
    assert app.seen[0]["headers"]["Content-Type"] == "application/x-www-form-urlencoded"


async def test_https_trusting_the_self_signed_cert(tls_app: int, cert: SelfSigned) -> None:
    out = await probe(f"https://localhost:{tls_app}/json", ca_file=str(cert.cert_file))
    assert out.success, out.detail
    assert out.cert_expiry is not None and abs(out.cert_expiry - cert.not_after) < 1
    assert set(out.phases) == {"resolve", "connect", "tls", "processing", "transfer"}
    assert out.phases["tls"] > 0 and out.phases["connect"] > 0
    assert sum(out.phases.values()) <= out.duration


async def test_https_without_verification_still_reports_expiry(
    tls_app: int, cert: SelfSigned
) -> None:
    out = await probe(f"https://127.0.0.1:{tls_app}/ok", tls_verify=False)
    assert out.success, out.detail
    assert out.cert_expiry is not None and abs(out.cert_expiry - cert.not_after) < 1


async def test_credential_header_is_sent(web_app: tuple[App, str]) -> None:
    app, base = web_app
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token="s3cret-token-value"))})
    out = await probe(base + "/echo", CheckContext(credentials=creds), credential="svc")
    assert out.success, out.detail
    assert app.seen[0]["headers"]["Authorization"] == "Bearer s3cret-token-value"


async def test_credential_in_query_is_sent_and_never_shown(web_app: tuple[App, str]) -> None:
    app, base = web_app
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token="q-secret-123456"))})
    ctx = CheckContext(credentials=creds)
    kw = {"credential": "svc", "credential_in": "query", "credential_name": "api_key"}
    out = await probe(base + "/echo?x=1", ctx, **kw)
    assert out.success, out.detail
    assert app.seen[0]["query"] == {"x": "1", "api_key": "q-secret-123456"}
    out = await probe(base + "/status/500", ctx, **kw)
    assert failed(out, Failure.HTTP_STATUS) == "HTTP 500 (expected 2xx)"


async def test_a_credential_echoed_by_the_server_is_redacted(web_app: tuple[App, str]) -> None:
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token="echo-secret-98765"))})
    out = await probe(web_app[1] + "/whoami", CheckContext(credentials=creds), credential="svc",
                      expect={"body_regex": "^admin$"})
    detail = failed(out, Failure.ASSERTION)
    assert detail.startswith("body does not match /^admin$/ (body starts")
    assert "***" in detail and "echo-sec" not in detail


# --- failures --------------------------------------------------------------------------------


async def test_dns() -> None:
    out = await probe("http://nonexistent.invalid/health", timeout=3, interval=10)
    detail = failed(out, Failure.DNS)
    assert "nonexistent.invalid" in detail
    assert out.duration < 3 + MARGIN


async def test_refused() -> None:
    with refused_port() as port:  # bound, not listening: the kernel answers RST
        out = await probe(f"http://127.0.0.1:{port}/?token=hunter2")
    assert failed(out, Failure.REFUSED) == f"connection refused by 127.0.0.1:{port}"



async def test_connect_timeout_when_syns_are_dropped(full_backlog: int) -> None:
    out = await probe(f"http://127.0.0.1:{full_backlog}/")
    detail = failed(out, Failure.CONNECT_TIMEOUT)
    assert detail == f"no TCP connection to 127.0.0.1:{full_backlog} within 1s"
    assert 1 <= out.duration < 1 + MARGIN


async def test_connect_timeout_when_tls_never_completes() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the ClientHello arrives; no ServerHello ever goes back
        await asyncio.Event().wait()

    async with raw_server(silent) as port:
        out = await probe(f"https://127.0.0.1:{port}/")
    detail = failed(out, Failure.CONNECT_TIMEOUT)
    assert detail == f"TLS handshake with 127.0.0.1:{port} not complete within 1s"
    assert 1 <= out.duration < 1 + MARGIN
    assert "connect" in out.phases and "tls" not in out.phases


async def test_timeout_when_connected_but_no_answer() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async with raw_server(mute) as port:
        out = await probe(f"http://127.0.0.1:{port}/health")
    detail = failed(out, Failure.TIMEOUT)
    assert detail == f"no response within 1s (connected to 127.0.0.1:{port}, request sent)"
    assert 1 <= out.duration < 1 + MARGIN
    assert out.status_code is None and "ttfb" not in out.latency


async def test_timeout_when_the_body_stalls(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/stall")
    detail = failed(out, Failure.TIMEOUT)
    assert detail == "HTTP 200 but body not complete within 1s (100 bytes read)"
    assert out.status_code == 200 and 1 <= out.duration < 1 + MARGIN


async def test_http_status(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/status/503?api_key=hunter2")
    assert failed(out, Failure.HTTP_STATUS) == "HTTP 503 (expected 2xx)"
    assert out.status_code == 503
    out = await probe(web_app[1] + "/status/503", expect={"status": [200]})
    assert failed(out, Failure.HTTP_STATUS) == "HTTP 503 (expected 200)"
    out = await probe(web_app[1] + "/ok", expect={"status": [201, 204, 202]})
    assert failed(out, Failure.HTTP_STATUS) == "HTTP 200 (expected 201, 202 or 204)"


async def test_redirect_not_followed_by_default(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/redirect")
    detail = failed(out, Failure.HTTP_STATUS)
    assert detail == "HTTP 302 (expected 2xx; redirect to /json not followed)"
    assert "abc123" not in detail and out.status_code == 302


async def test_too_many_redirects(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/chain/4", follow_redirects=True, max_redirects=3)
    assert failed(out, Failure.HTTP_STATUS) == "more than 3 redirects, last HTTP 302"
    assert out.status_code == 302


async def test_json_assertions(web_app: tuple[App, str]) -> None:
    url = web_app[1] + "/json"
    out = await probe(url, expect={"json": {"status": "down"}})
    assert failed(out, Failure.ASSERTION) == 'json status: expected "down", got "healthy"'
    out = await probe(url, expect={"json": {"items.2.id": 5}})
    assert failed(out, Failure.ASSERTION) == "json items.2.id: missing (expected 5)"
    out = await probe(url, expect={"json": {"ready": 1}})  # true is not 1
    assert failed(out, Failure.ASSERTION) == "json ready: expected 1, got true"
    out = await probe(url, expect={"json": {"items.0": {"id": "5"}}})
    assert failed(out, Failure.ASSERTION) == 'json items.0: expected {"id":"5"}, got {"id":5}'


async def test_body_is_not_json(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/html", expect={"json": {"status": "healthy"}})
    detail = failed(out, Failure.ASSERTION)
    assert detail.startswith("body is not JSON: Expecting value at line 1 column 1")
    assert '(body starts "<html><body>' in detail


async def test_header_assertions(web_app: tuple[App, str]) -> None:
    url = web_app[1] + "/json"
    out = await probe(url, expect={"headers": {"content-type": "text/html"}})
    assert failed(out, Failure.ASSERTION) == (
        'header content-type: expected /text/html/, got "application/json; charset=utf-8"'
    )
    out = await probe(url, expect={"headers": {"x-build": "1\\.2"}})  # a full match is needed
    assert failed(out, Failure.ASSERTION) == 'header x-build: expected /1\\.2/, got "1.2.3"'
    out = await probe(url, expect={"headers": {"x-missing": ".*"}})
    assert failed(out, Failure.ASSERTION) == "header x-missing: missing (expected /.*/)"


async def test_body_regex(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/html", expect={"body_regex": "healthy"})
    assert failed(out, Failure.ASSERTION) == (
        'body does not match /healthy/ (body starts "<html><body>Service Unavailable</body><…")'
    )


async def test_version_mismatch(web_app: tuple[App, str]) -> None:
    ctx = CheckContext(expect_version="2.0.0")
    out = await probe(web_app[1] + "/json", ctx, version_path="version",
                      expect={"json": {"status": "down"}})  # the build is the better answer
    assert failed(out, Failure.VERSION_MISMATCH) == "serving build 1.2.3, expected 2.0.0"
    assert out.version == "1.2.3"
    out = await probe(web_app[1] + "/json", ctx, version_path="build.id")
    assert failed(out, Failure.ASSERTION) == (
        "version_path build.id: not found in the body (expected build 2.0.0)"
    )
    out = await probe(web_app[1] + "/html", ctx, version_path="version")
    detail = failed(out, Failure.ASSERTION)
    assert detail.startswith("body is not JSON") and detail.endswith("(version_path version)")


async def test_body_too_large_by_content_length(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/big")
    assert failed(out, Failure.BODY_TOO_LARGE) == (
        "body of 2097152 bytes (Content-Length) exceeds the 1 MiB limit"
    )
    assert (await probe(web_app[1] + "/big", body_limit=2 * MIB)).success
    assert (await probe(web_app[1] + "/big", method="HEAD")).success  # no body to cap


async def test_body_too_large_while_streaming(web_app: tuple[App, str]) -> None:
    app, base = web_app
    out = await probe(base + "/stream", timeout=5, interval=10)
    detail = failed(out, Failure.BODY_TOO_LARGE)
    assert detail.startswith("body exceeds the 1 MiB limit (stopped reading at ")
    read = int(detail.rsplit(" ", 2)[1])
    assert MIB < read <= MIB + 65536
    assert out.duration < 5  # it stopped at the cap instead of reading 256 MiB
    async with asyncio.timeout(5):
        await app.stream_cut.wait()  # and the server saw the connection go


async def test_disconnected_before_headers() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(hang_up) as port:
        out = await probe(f"http://127.0.0.1:{port}/")
    assert failed(out, Failure.DISCONNECTED) == (
        "server closed the connection before the response headers"
    )


async def test_disconnected_by_reset() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        writer.transport.abort()

    async with raw_server(reset) as port:
        out = await probe(f"http://127.0.0.1:{port}/")
    assert failed(out, Failure.DISCONNECTED) == "connection reset before the response headers"


async def test_disconnected_during_body() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()

    async with raw_server(short) as port:
        out = await probe(f"http://127.0.0.1:{port}/")
    assert failed(out, Failure.DISCONNECTED) == "connection closed during the body (3 bytes read)"
    assert out.status_code == 200


async def test_protocol_garbage() -> None:
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.Event().wait()

    async with raw_server(ssh) as port:
        out = await probe(f"http://127.0.0.1:{port}/x?token=hunter2")
    detail = failed(out, Failure.PROTOCOL)
    assert detail == (
        'not valid HTTP: Expected HTTP/, RTSP/ or ICE/ (response starts "SSH-2.0-OpenSSH_9.6")'
    )
    assert "hunter2" not in detail
    assert out.duration < 1


async def test_tls_self_signed(tls_app: int) -> None:
    out = await probe(f"https://127.0.0.1:{tls_app}/ok")
    assert failed(out, Failure.TLS) == "certificate verify failed: self-signed certificate"


async def test_tls_closed_during_handshake() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    async with raw_server(slam) as port:
        out = await probe(f"https://127.0.0.1:{port}/")
    detail = failed(out, Failure.TLS)
    assert detail.startswith(f"TLS handshake with 127.0.0.1:{port} failed: ")
    assert "connection closed" in detail or "EOF" in detail or "reset" in detail
    assert out.duration < 1


async def test_tls_against_plain_http(web_app: tuple[App, str]) -> None:
    port = web_app[1].rsplit(":", 1)[1]
    out = await probe(f"https://127.0.0.1:{port}/ok")
    detail = failed(out, Failure.TLS)
    assert detail.startswith(f"TLS handshake with 127.0.0.1:{port} failed: ")


async def test_missing_ca_file(tmp_path: Path, web_app: tuple[App, str]) -> None:
    missing = tmp_path / "nope.pem"
    out = await probe(web_app[1] + "/ok", ca_file=str(missing))
    assert failed(out, Failure.TLS) == f"cannot load ca_file {missing}: No such file or directory"


async def test_credential_failure_names_it(tmp_path: Path, web_app: tuple[App, str]) -> None:
    app, base = web_app
    creds = Credentials({"svc": CredentialSpec(bearer=BearerSpec(token_file=tmp_path / "none"))})
    out = await probe(base + "/echo", CheckContext(credentials=creds), credential="svc")
    assert "svc" in failed(out, Failure.CREDENTIAL)
    assert app.seen == []  # nothing was sent without it


async def test_unexpected_errors_become_protocol(web_app: tuple[App, str]) -> None:
    out = await probe(web_app[1] + "/ok", headers={"X-Bad": "a\r\nInjected: 1"})
    detail = failed(out, Failure.PROTOCOL)
    assert ": " in detail and len(detail) <= 200


async def test_plans_are_built_once_per_target(web_app: tuple[App, str]) -> None:
    t = target(web_app[1] + "/json", expect={"body_regex": "healthy"})
    first = plan_for(t)
    assert (await check(t, CheckContext())).success
    assert plan_for(t) is first
    other = target(web_app[1] + "/json", expect={"body_regex": "healthy"})
    assert plan_for(other) is not first
    key, alive = id(t), weakref.ref(t)
    del t
    gc.collect()
    assert alive() is None and key not in _http_expect._PLANS  # a reload frees old plans
    assert id(other) in _http_expect._PLANS


async def test_concurrent_probes_stay_independent(web_app: tuple[App, str]) -> None:
    base = web_app[1]
    urls = [base + "/ok", base + "/status/500", base + "/json", base + "/big"] * 5
    outs = await asyncio.gather(*(probe(u) for u in urls))
    got = [o.failure for o in outs[:4]]
    assert got == [None, Failure.HTTP_STATUS, None, Failure.BODY_TOO_LARGE]
    assert [o.failure for o in outs] == got * 5


async def test_many_sequential_probes_are_quick(web_app: tuple[App, str]) -> None:
    t = target(web_app[1] + "/json", expect={"json": {"status": "healthy"}})
    start = time.perf_counter()
    for _ in range(50):
        assert (await check(t, CheckContext())).success
    assert time.perf_counter() - start < 30  # a sanity bound, not a benchmark


def test_under_uvloop(cert: SelfSigned) -> None:
    """The daemon runs on uvloop: the TLS split and certificate hook must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[Outcome, Outcome]:
        async with serve_app(cert.server_context()) as (_, port):
            ok = await probe(f"https://localhost:{port}/json", ca_file=str(cert.cert_file),
                             version_path="version")

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.Event().wait()

        async with raw_server(silent) as port:
            stuck = await probe(f"https://127.0.0.1:{port}/")
        return ok, stuck

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        ok, stuck = runner.run(scenario())
    assert ok.success and ok.version == "1.2.3", ok.detail
    assert ok.phases["tls"] > 0 and abs((ok.cert_expiry or 0) - cert.not_after) < 1
    assert failed(stuck, Failure.CONNECT_TIMEOUT).startswith("TLS handshake with 127.0.0.1:")
    assert stuck.duration < 1 + MARGIN
