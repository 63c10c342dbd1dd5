"""No token, JWT secret, client secret or key ever leaves the process except in the request.

Hostile servers on loopback do their best to make a secret leak: they echo the Authorization
header into an error body, the token into a WebSocket message a regex then fails to match, the
client secret into an OAuth2 error. Whatever the outcome, no secret may appear in an Outcome, an
exception, a log line (structlog events before redaction, stdlib logging at DEBUG), a metric, the
daemon's HTTP answers, or a report.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
import jwt
import pytest
import structlog
from aiohttp import WSMsgType, web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from faults.fixtures import make_target
from helpers import refused_port, serving, until
from http_servers import raw_server, read_request

from probe.checks import CheckContext, checker_for
from probe.config import Config, ConfigError, parse_config
from probe.credentials import CredentialError, Credentials
from probe.logging import configure
from probe.metrics import Metrics
from probe.outcome import Outcome
from probe.readiness import Readiness
from probe.redact import KNOWN, MIN_SECRET, Secrets

JWT_SECRET = "jwt-secret-Zq81xVb0-long-enough-for-hs256!"
CLIENT_SECRET = "client-secret-Kp20wQ7y"
ACCESS_TOKEN = "access-token-Lm55rT3u"
BEARER_TOKEN = "bearer-token-Hx91nC4e"
ENV_TOKEN = "env-token-Pw73sD8f"


@dataclass
class Hostile:
    """Loopback servers that echo whatever credential they get; `seen` records every one."""

    base: str = ""
    seen: set[str] = field(default_factory=set)
    closed_port: int = 0

    def record(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        for value in (auth, auth.partition(" ")[2], request.query.get("access_token", "")):
            if value:
                self.seen.add(value)
        for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if proto.strip().startswith("eyJ"):
                self.seen.add(proto.strip())
        return f"{auth} {request.query_string}"

    def app(self) -> web.Application:
        async def token_ok(request: web.Request) -> web.Response:
            return web.json_response({"access_token": ACCESS_TOKEN, "expires_in": 3600})

        async def token_echo(request: web.Request) -> web.Response:
            form = await request.post()
            return web.json_response(
                {"error": f"invalid_client {form.get('client_secret')}",
                 "error_description": f"bad secret {form.get('client_secret')}"}, status=400)

        async def ws_ok(request: web.Request) -> web.StreamResponse:
            self.record(request)
            ws = web.WebSocketResponse(protocols=("chat",))
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_json({"type": "pong"})
            return ws

        async def ws_echo_reject(request: web.Request) -> web.Response:
            return web.Response(status=400, text=f"bad credential: {self.record(request)}")

        async def ws_echo_message(request: web.Request) -> web.StreamResponse:
            echoed = self.record(request)
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(f"you sent {echoed}")
            return ws

        async def ws_crash(request: web.Request) -> web.StreamResponse:
            self.record(request)
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.receive()
            await ws.close(code=1011, message=b"Internal error")
            return ws

        async def http_echo(request: web.Request) -> web.Response:
            echoed = self.record(request)
            return web.Response(status=500, text=f"denied {echoed}",
                                headers={"X-Echo": echoed.strip()[:200]})

        app = web.Application()
        app.router.add_post("/token-ok", token_ok)
        app.router.add_post("/token-echo", token_echo)
        app.router.add_get("/ws/ok", ws_ok)
        app.router.add_get("/ws/echo-reject", ws_echo_reject)
        app.router.add_get("/ws/echo-message", ws_echo_message)
        app.router.add_get("/ws/crash", ws_crash)
        app.router.add_get("/http/echo", http_echo)
        return app


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    h = Hostile()
    async with serving(h.app()) as url:
        h.base = url.removeprefix("http://")
        with refused_port() as h.closed_port:
            yield h


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "key.pem"
    path.write_text(pem)
    return path, pem.splitlines()[2]  # a line of key material


def config_for(h: Hostile, tmp_path: Path, key_path: Path) -> Config:
    bearer_file = tmp_path / "bearer"
    bearer_file.write_text(BEARER_TOKEN + "\n")
    ws, http = f"ws://{h.base}", f"http://{h.base}"
    step = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "1s"}
    regex_step = {"send": "hi", "expect": {"regex": "^nothing like this$"}, "timeout": "1s"}
    targets = [
        {"name": "ws-jwt-ok", "url": f"{ws}/ws/ok", "credential": "hs", "messages": [step]},
        {"name": "ws-oauth-ok", "url": f"{ws}/ws/ok", "credential": "oauth-ok",
         "messages": [step]},
        {"name": "ws-rs-subprotocol", "url": f"{ws}/ws/ok", "credential": "rs",
         "credential_in": "subprotocol", "subprotocols": ["chat"], "messages": [step]},
        {"name": "ws-echo-reject", "url": f"{ws}/ws/echo-reject", "credential": "file"},
        {"name": "ws-echo-reject-query", "url": f"{ws}/ws/echo-reject?x=1",
         "credential": "hs", "credential_in": "query"},
        {"name": "ws-echo-message", "url": f"{ws}/ws/echo-message", "credential": "env",
         "messages": [regex_step]},
        {"name": "ws-crash", "url": f"{ws}/ws/crash", "credential": "hs", "messages": [step]},
        {"name": "ws-oauth-echo", "url": f"{ws}/ws/ok", "credential": "oauth-echo"},
        {"name": "ws-oauth-down", "url": f"{ws}/ws/ok", "credential": "oauth-down"},
        {"name": "http-echo", "url": f"{http}/http/echo", "credential": "hs"},
        {"name": "http-echo-query", "url": f"{http}/http/echo?a=b", "credential": "file",
         "credential_in": "query"},
    ]
    oauth = {"client_id": "probe", "client_secret": CLIENT_SECRET, "timeout": "1s"}
    return Config.model_validate({
        "defaults": {"interval": "1s", "timeout": "1s", "success_threshold": 1,
                     "failure_threshold": 1},
        "credentials": {
            "hs": {"jwt": {"secret": JWT_SECRET, "claims": {"sub": "e2e"}}},
            "rs": {"jwt": {"private_key_file": str(key_path), "algorithm": "RS256"}},
            "file": {"bearer": {"token_file": str(bearer_file)}},
            "env": {"bearer": {"token_env": "PROBE_SECRET_TEST_TOKEN"}},
            "oauth-ok": {"oauth2": {"token_url": f"{http}/token-ok", **oauth}},
            "oauth-echo": {"oauth2": {"token_url": f"{http}/token-echo", **oauth}},
            "oauth-down": {"oauth2": {
                "token_url": f"http://127.0.0.1:{h.closed_port}/token", **oauth}},
        },
        "targets": targets,
    })


def secrets_of(h: Hostile, key_line: str) -> list[str]:
    found = {JWT_SECRET, CLIENT_SECRET, ACCESS_TOKEN, BEARER_TOKEN, ENV_TOKEN, key_line}
    found |= {s for s in h.seen if len(s) >= 8}
    return sorted(found)


def assert_clean(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}…) leaked into {where}"


@pytest.fixture
def env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_SECRET_TEST_TOKEN", ENV_TOKEN)


async def test_outcomes_logs_metrics_reports_hold_no_secret(
    hostile: Hostile, tmp_path: Path, key_file: tuple[Path, str], env_token: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config_for(hostile, tmp_path, key_file[0])
    ctx = CheckContext(Credentials(cfg.credentials))
    caplog.set_level(logging.DEBUG)  # every library logger, websockets' and aiohttp's too
    outcomes: list[Outcome] = []
    try:
        with structlog.testing.capture_logs() as events:
            for target in cfg.targets:
                outcomes.append(await checker_for(target)(target, ctx))
    finally:
        await ctx.credentials.aclose()
    by_name = {o.target: o for o in outcomes}
    # the probes really did what they were meant to, so the servers saw the credentials
    assert by_name["ws-jwt-ok"].success and by_name["ws-oauth-ok"].success
    assert by_name["ws-rs-subprotocol"].success, by_name["ws-rs-subprotocol"].detail
    assert by_name["ws-echo-reject"].failure == "ws_rejected"
    assert by_name["ws-echo-message"].failure == "assertion"
    assert by_name["ws-crash"].close_code == 1011
    assert by_name["ws-oauth-echo"].failure == "credential"
    assert by_name["ws-oauth-down"].failure == "credential"
    assert by_name["http-echo"].failure == "http_status"
    assert ACCESS_TOKEN in hostile.seen and BEARER_TOKEN in hostile.seen
    assert ENV_TOKEN in hostile.seen and any(s.startswith("eyJ") for s in hostile.seen)
    secrets = secrets_of(hostile, key_file[1])

    for o in outcomes:
        assert_clean(f"Outcome {o.target}", repr(o), secrets)
    assert_clean("structlog events", repr(events), secrets)
    assert_clean("stdlib logs", caplog.text + repr([r.__dict__ for r in caplog.records]), secrets)

    metrics = Metrics()
    readiness = Readiness(cfg)
    now = time.time()
    for o, target in zip(outcomes, cfg.targets, strict=True):
        metrics.record(o, target)
        readiness.observe(o, now)
    verdict = readiness.verdict(now)
    metrics.set_readiness(*readiness.ready_flags(now))
    assert_clean("/metrics text", metrics.render(openmetrics=False).decode(), secrets)
    assert_clean("/metrics OpenMetrics", metrics.render(openmetrics=True).decode(), secrets)
    assert_clean("verdict", json.dumps(verdict.to_dict()), secrets)
    from probe.report import render

    for fmt in ("text", "json", "junit", "github"):
        assert_clean(f"{fmt} report", render(verdict, fmt), secrets)


async def test_credential_errors_hold_no_secret(hostile: Hostile, tmp_path: Path,
                                                key_file: tuple[Path, str]) -> None:
    cfg = config_for(hostile, tmp_path, key_file[0])
    creds = Credentials(cfg.credentials)
    errors: list[CredentialError] = []
    try:
        for name in ("oauth-echo", "oauth-down"):
            with pytest.raises(CredentialError) as info:
                await creds.token(name)
            errors.append(info.value)
    finally:
        await creds.aclose()
    text = " ".join(f"{e!s} {e!r} {e.__cause__!r} {e.__context__!r}" for e in errors)
    assert "credential oauth-echo: token endpoint answered HTTP 400" in text
    assert_clean("CredentialError", text, secrets_of(hostile, key_file[1]))
    assert_clean("Credentials repr", repr(creds) + repr(cfg), [JWT_SECRET, CLIENT_SECRET])


async def test_daemon_answers_and_logs_hold_no_secret(
    hostile: Hostile, tmp_path: Path, key_file: tuple[Path, str], env_token: None,
    restore_logging: None,
) -> None:
    from probe.daemon import run as daemon_mod

    stream = io.StringIO()
    configure("json", "debug", stream)
    cfg = config_for(hostile, tmp_path, key_file[0])
    daemon = daemon_mod.Daemon(cfg)
    url = await daemon.start("127.0.0.1", 0)
    bodies: dict[str, str] = {}
    try:
        await until(lambda: all(t.last_probe_at is not None for t in
                                daemon.runtime.readiness.verdict(time.time()).targets),
                    "every target to be probed at least once", within=15)
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/readyz", "/api/v1/status", "/status"):
                async with http.get(url + path) as resp:
                    bodies[path] = await resp.text()
            async with http.get(url + "/metrics",
                                headers={"Accept": "application/openmetrics-text"}) as resp:
                bodies["/metrics (OpenMetrics)"] = await resp.text()
    finally:
        await daemon.stop()
    assert "probe_websocket_status_code" in bodies["/metrics"]
    secrets = secrets_of(hostile, key_file[1])
    for path, body in bodies.items():
        assert_clean(path, body, secrets)
    assert_clean("daemon log", stream.getvalue(), secrets)
    assert BEARER_TOKEN in hostile.seen and jwt.get_unverified_header(
        next(s for s in hostile.seen if s.startswith("eyJ")))["alg"] in ("HS256", "RS256")


# --- the masking itself, and what it leaves alone ----------------------------------------------


def test_every_form_and_any_8_characters_of_a_secret_are_masked() -> None:
    secret = "s3cret/Value+With=Signs"
    known = Secrets([secret, "tiny", "1"])
    b64 = base64.b64encode(secret.encode()).decode()
    for form in (secret, quote(secret, safe=""), quote_plus(secret), b64,
                 base64.urlsafe_b64encode(secret.encode()).decode(), b64.rstrip("="),
                 secret[:8], secret[5:13], f"Basic {b64}"):
        masked = known.mask(f"server said [{form}] twice: {form}.")
        assert masked.count("***") == 2 and form not in masked, (form, masked)
        assert secret[:8] not in masked
    # values shorter than MIN_SECRET are no secrets: `?page=1` must not mask every 1
    assert MIN_SECRET > len("tiny")
    assert known.mask("page 1 of tiny results") == "page 1 of tiny results"
    assert known.mask("s3cret/ is 7 characters, no more") == "s3cret/ is 7 characters, no more"


def test_config_errors_show_urls_without_password_or_query_values() -> None:
    text = ("targets:\n  - name: a\n    url: 'ftp://ops:hunter2-pw@db.internal:8080/x"
            "?api_key=k3y-value&page=2#frag-token'\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    shown = f"{info.value} {info.value.errors}"
    for secret in ("hunter2-pw", "k3y-value", "frag-token", "=2"):
        assert secret not in shown, shown
    assert "ftp://ops:***@db.internal:8080/x?api_key=***&page=***#***" in shown


async def test_a_cross_origin_redirect_answer_is_never_quoted() -> None:
    """A staging server that redirects the prober to an internal service must not read that
    service's answer back through a detail or the served version; `redirect_hosts` opts in."""

    internal = b'{"version": "internal-build-77", "admin": "INTERNAL-DATA-Q9"}'

    async def internal_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                               ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(internal)).encode() + b"\r\n\r\n" + internal)
        await writer.drain()

    async with raw_server(internal_service) as port:
        async def staging(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/admin\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            await writer.drain()

        async with raw_server(staging) as staging_port:
            url = f"http://127.0.0.1:{staging_port}/health"
            fields = {"follow_redirects": True, "version_path": "version",
                      "expect": {"body_regex": "^healthy$"}}
            hidden = await checker_for(t := make_target(url, **fields))(t, CheckContext())
            assert hidden.failure == "assertion" and hidden.version is None, hidden
            assert "internal-build" not in hidden.detail, hidden
            assert "not quoted" in hidden.detail and f"127.0.0.1:{port}" in hidden.detail
            allowed = make_target(url, redirect_hosts=["127.0.0.1"], **fields)
            shown = await checker_for(allowed)(allowed, CheckContext())
    assert shown.failure == "assertion" and "internal-build-77" in shown.detail, shown
    assert shown.version == "internal-build-77"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_log_processor_masks_every_known_secret(fmt: str, restore_logging: None) -> None:
    """The last line of defence: a secret the process knows is masked in any log line, whatever
    carries it (a nested value, an exception's traceback, a library's stdlib record)."""
    secret = "log-secret/Zx81+Qw="
    owner = Config.model_validate({"targets": [{"name": "t", "url": "http://127.0.0.1/"}]})
    KNOWN.add(owner, Secrets([secret]))
    stream = io.StringIO()
    configure(fmt, "debug", stream)
    log = structlog.get_logger("test")
    log.debug("nested", extra={"deep": [f"token {secret}"]}, prefix=secret[:8])
    try:
        raise RuntimeError(f"upstream said {quote(secret, safe='')}")
    except RuntimeError:
        log.exception("crashed")
    logging.getLogger("some.library").warning("sent %s", base64.b64encode(secret.encode()))
    text = stream.getvalue()
    assert "crashed" in text and "sent" in text, text
    for form in (secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode(),
                 secret[:8]):
        assert form not in text, (form, text)
