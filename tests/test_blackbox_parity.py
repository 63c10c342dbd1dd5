"""blackbox_exporter parity of the HTTP check, against real loopback servers: its probe_http_*,
probe_tls_version_info and probe_failed_due_to_regex series, and the config a blackbox module
maps to (expect.tls, expect.http_versions, expect.body_not_regex, expect.headers_not,
tls_server_name, tls_min_version, client certificates)."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from faults import TestCerts
from helpers import samples, serving, value
from http_servers import raw_server, read_request
from ws_servers import PING, websockets_server
from ws_servers import probe as ws_probe

from probe.checks import CheckContext
from probe.checks.http import check
from probe.config import Target
from probe.metrics import Metrics
from probe.outcome import Failure, Outcome

BODY = b"all good, nothing to see here\n" * 40
PACKED = gzip.compress(BODY)


def app() -> web.Application:
    async def packed(request: web.Request) -> web.Response:
        return web.Response(body=PACKED, headers={"Content-Encoding": "gzip",
                                                  "X-Mode": "maintenance"})

    async def hop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n <= 0:
            return web.Response(text="ERROR: the database is down")
        raise web.HTTPFound(f"/hop/{n - 1}")

    application = web.Application()
    application.router.add_get("/packed", packed)
    application.router.add_get("/hop/{n}", hop)
    return application


@pytest.fixture
async def plain() -> AsyncIterator[str]:
    async with serving(app()) as base:
        yield base


def server_tls(test_certs: TestCerts, pair: str = "ok", **settings: Any) -> ssl.SSLContext:
    ctx = getattr(test_certs, pair).server_context()
    for name, setting in settings.items():
        setattr(ctx, name, setting)
    return ctx


async def probe(url: str, **fields: Any) -> tuple[Outcome, Target]:
    target = Target.model_validate({"name": "t", "url": url, "timeout": 3, **fields})
    return await check(target, CheckContext()), target


def series(outcome: Outcome, target: Target) -> dict[str, float | None]:
    m = Metrics()
    m.add_target(target)
    m.record(outcome, target)
    s = samples(m)
    names = ("probe_http_ssl", "probe_http_version", "probe_http_redirects",
             "probe_http_content_length", "probe_http_uncompressed_body_length",
             "probe_failed_due_to_regex")
    got = {name: value(s, name, target="t") for name in names}
    tls = [dict(labels) for (name, labels), v in s.items()
           if name == "probe_tls_version_info" and v == 1]
    got["tls_version"] = tls[0]["version"] if tls else None  # type: ignore[assignment]
    return got


async def test_the_http_series_over_tls_with_gzip(test_certs: TestCerts) -> None:
    async with serving(app(), server_tls(test_certs)) as base:
        outcome, target = await probe(f"{base}/packed", ca_file=str(test_certs.ca_file))
    assert outcome.success, outcome
    assert series(outcome, target) == {
        "probe_http_ssl": 1.0, "probe_http_version": 1.1, "probe_http_redirects": 0.0,
        "probe_http_content_length": float(len(PACKED)),
        "probe_http_uncompressed_body_length": float(len(BODY)),
        "probe_failed_due_to_regex": 0.0, "tls_version": "TLS 1.3",
    }


async def test_redirects_and_a_failed_negative_body_regex(plain: str) -> None:
    outcome, target = await probe(f"{plain}/hop/2", follow_redirects=True,
                                  expect={"body_not_regex": ["ERROR: .*down"]})
    assert outcome.failure is Failure.ASSERTION, outcome
    assert outcome.detail == ('body matches /ERROR: .*down/ (expect.body_not_regex):'
                              ' "ERROR: the database is down"')
    got = series(outcome, target)
    assert got["probe_http_redirects"] == 2 and got["probe_failed_due_to_regex"] == 1
    assert got["probe_http_ssl"] == 0 and got["tls_version"] is None
    assert got["probe_http_content_length"] == len("ERROR: the database is down")


async def test_negative_header_regex_is_a_full_match_and_a_missing_header_passes(
        plain: str) -> None:
    bad, target = await probe(f"{plain}/packed", expect={"headers_not": {"X-Mode": "maint.*"}})
    assert bad.failure is Failure.ASSERTION, bad
    assert bad.detail == 'header X-Mode: "maintenance" matches /maint.*/ (expect.headers_not)'
    assert series(bad, target)["probe_failed_due_to_regex"] == 1
    partial, _ = await probe(f"{plain}/packed", expect={"headers_not": {"X-Mode": "maint"}})
    missing, _ = await probe(f"{plain}/packed", expect={"headers_not": {"X-Down": ".*"}})
    assert partial.success and missing.success, (partial, missing)


async def test_a_json_mismatch_is_not_a_regex_failure(plain: str) -> None:
    outcome, target = await probe(f"{plain}/hop/0", expect={"json": {"a": 1}})
    assert outcome.failure is Failure.ASSERTION
    assert series(outcome, target)["probe_failed_due_to_regex"] == 0


async def test_expect_tls_is_fail_if_ssl_and_fail_if_not_ssl(
        plain: str, test_certs: TestCerts) -> None:
    over_plain, _ = await probe(f"{plain}/hop/0", expect={"tls": True})
    assert over_plain.failure is Failure.ASSERTION, over_plain
    assert over_plain.detail == "answered over plain HTTP (expect.tls: true)"
    async with serving(app(), server_tls(test_certs)) as base:
        over_tls, _ = await probe(f"{base}/hop/0", ca_file=str(test_certs.ca_file),
                                  expect={"tls": False})
        wanted, _ = await probe(f"{base}/hop/0", ca_file=str(test_certs.ca_file),
                                expect={"tls": True})
    assert over_tls.detail == "answered over TLS (expect.tls: false)"
    assert wanted.success, wanted


async def test_expect_http_versions() -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_server(http10) as port:
        url = f"http://127.0.0.1:{port}/"
        old, target = await probe(url, expect={"http_versions": ["HTTP/1.0"]})
        strict, _ = await probe(url, expect={"http_versions": ["HTTP/1.1", "HTTP/2.0"]})
    assert old.success, old
    assert series(old, target)["probe_http_version"] == 1.0
    assert strict.failure is Failure.ASSERTION
    assert strict.detail == "answered HTTP/1.0 (expect.http_versions: 1.1, 2)"


async def test_tls_server_name_is_sent_and_verified(test_certs: TestCerts) -> None:
    names: list[str | None] = []
    ctx = server_tls(test_certs, "wrong_host")
    ctx.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment,return-value]
    async with serving(app(), ctx) as base:
        named, _ = await probe(f"{base}/hop/0", ca_file=str(test_certs.ca_file),
                               tls_server_name="wrong.invalid")
        unnamed, _ = await probe(f"{base}/hop/0", ca_file=str(test_certs.ca_file))
    assert named.success, named
    assert names[0] == "wrong.invalid"
    assert unnamed.failure is Failure.TLS, unnamed


async def test_tls_min_version(test_certs: TestCerts) -> None:
    old = server_tls(test_certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    async with serving(app(), old) as base:
        ca = str(test_certs.ca_file)
        refused, _ = await probe(f"{base}/hop/0", ca_file=ca, tls_min_version="TLS13")
        allowed, target = await probe(f"{base}/hop/0", ca_file=ca, tls_min_version="TLS12")
    assert refused.failure is Failure.TLS, refused
    assert allowed.success, allowed
    assert series(allowed, target)["tls_version"] == "TLS 1.2"


async def test_client_certificate(test_certs: TestCerts) -> None:
    ctx = server_tls(test_certs, verify_mode=ssl.CERT_REQUIRED)
    ctx.load_verify_locations(str(test_certs.ca_file))
    ca = str(test_certs.ca_file)
    async with serving(app(), ctx) as base:
        without, _ = await probe(f"{base}/hop/0", ca_file=ca)
        with_cert, _ = await probe(f"{base}/hop/0", ca_file=ca,
                                   cert_file=str(test_certs.ok.cert),
                                   key_file=str(test_certs.ok.key))
    assert not without.success, without
    assert with_cert.success, with_cert


async def test_a_client_certificate_that_cannot_load_is_named(
        test_certs: TestCerts, plain: str) -> None:
    outcome, _ = await probe(f"{plain}/hop/0", cert_file=str(test_certs.ca_file),
                             key_file=str(test_certs.ok.key))
    assert outcome.failure is Failure.TLS
    assert outcome.detail.startswith(f"cannot load cert_file {test_certs.ca_file}, key_file ")


def test_key_file_needs_cert_file() -> None:
    with pytest.raises(ValueError, match="key_file is the key of cert_file"):
        Target.model_validate({"name": "t", "url": "https://x/", "key_file": "k.pem"})


async def test_a_wss_target_takes_the_same_tls_settings(test_certs: TestCerts) -> None:
    ctx = server_tls(test_certs, "wrong_host", verify_mode=ssl.CERT_REQUIRED)
    ctx.load_verify_locations(str(test_certs.ca_file))
    tls = {"ca_file": str(test_certs.ca_file), "tls_server_name": "wrong.invalid"}
    client = {"cert_file": str(test_certs.ok.cert), "key_file": str(test_certs.ok.key)}
    async with websockets_server(ssl=ctx) as url:
        url = url.replace("ws://", "wss://")
        ok = await ws_probe({"url": url, "messages": [PING], **tls, **client})
        no_name = await ws_probe({"url": url, "ca_file": str(test_certs.ca_file), **client})
        no_cert = await ws_probe({"url": url, **tls})
    assert ok.success, ok
    assert no_name.failure is Failure.TLS, no_name
    assert not no_cert.success, no_cert


async def test_the_series_follow_each_probe(plain: str) -> None:
    ok, target = await probe(f"{plain}/packed")
    m = Metrics()
    m.add_target(target)
    m.record(ok, target)
    assert value(samples(m), "probe_failed_due_to_regex", target="t") == 0
    bad, _ = await probe(f"{plain}/packed", expect={"headers_not": {"X-Mode": "maint.*"}})
    m.record(bad, target)
    assert value(samples(m), "probe_failed_due_to_regex", target="t") == 1
    m.record(ok, target)
    assert value(samples(m), "probe_failed_due_to_regex", target="t") == 0
