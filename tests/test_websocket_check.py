"""The WebSocket check against real servers on loopback: success, and every way a session fails.

Servers are websockets' own asyncio server (full control of the handshake) and the twin's
aiohttp endpoint (the simulated staging backend). Timing bounds are generous: only "within the
step timeout plus a margin", never a speed goal.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from aiohttp import web
from helpers import refused_port, silent_server
from http_servers import raw_server, read_request
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from probe.checks import CheckContext
from probe.checks.messages import mismatch
from probe.checks.websocket import check
from probe.config import Config, Match, Target
from probe.credentials import Credentials
from probe.outcome import Failure, Outcome
from probe.twin import Twin
from probe.twin.ws import configure_ws, ws_sessions

SECRET = "ws-test-secret-0123456789abcdef0123456789"
MARGIN = 1.5  # seconds past a timeout a probe may take (the CI machine has 2 cores)
PING = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "2s"}
USER_MSG = {"send": {"type": "user_message", "text": "hello"},
            "until": {"json": {"type": "agent_completed"}}, "timeout": "2s"}
Handler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None]]


pytestmark = pytest.mark.twin(jwt_secret=SECRET)


def setup(
    target: dict[str, Any], credentials: dict[str, Any] | None = None
) -> tuple[Target, CheckContext]:
    fields = {"name": "ws", "timeout": "5s", "interval": "10s", **target}
    cfg = Config.model_validate({"targets": [fields], "credentials": credentials or {}})
    return cfg.targets[0], CheckContext(Credentials(cfg.credentials))


def jwt_cred(secret: str = SECRET, **claims: Any) -> dict[str, Any]:
    return {"user": {"jwt": {"secret": secret, "claims": {"sub": "e2e-user", **claims}}}}


async def probe(target: Target, ctx: CheckContext) -> tuple[Outcome, float]:
    start = time.perf_counter()
    try:
        outcome = await check(target, ctx)
    finally:
        await ctx.credentials.aclose()
    return outcome, time.perf_counter() - start


async def pong_handler(ws: ServerConnection) -> None:
    """ping -> pong; user_message -> two agent events and agent_completed."""
    async for raw in ws:
        msg = json.loads(raw)
        if msg.get("type") == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        elif msg.get("type") == "user_message":
            for kind in ("agent_started", "agent_thinking", "agent_completed"):
                await ws.send(json.dumps({"type": kind}))


def require_jwt(seen: list[dict[str, Any]] | None = None) -> ProcessRequest:
    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        token = request.headers.get("Authorization", "").partition(" ")[2]
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return conn.respond(403, "forbidden\n")
        if seen is not None:
            seen.append(claims)
        return None

    return process_request


@asynccontextmanager
async def ws_server(handler: Handler = pong_handler, **kwargs: Any) -> AsyncIterator[str]:
    """A websockets server on 127.0.0.1; yields its ws:// base URL."""
    async with serve(handler, "127.0.0.1", 0, ping_interval=None, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def twin_ws(t: Twin) -> str:
    return t.url.replace("http://", "ws://") + "/ws"


# --- success -----------------------------------------------------------------------------------


async def test_success_with_a_minted_jwt() -> None:
    seen: list[dict[str, Any]] = []
    async with ws_server(process_request=require_jwt(seen)) as base:
        target, ctx = setup({"url": f"{base}/ws", "credential": "user",
                             "messages": [PING, USER_MSG]}, jwt_cred())
        outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail
    assert outcome.kind == "websocket"
    assert (outcome.status_code, outcome.close_code) == (101, 1000)
    assert seen and seen[0]["sub"] == "e2e-user" and seen[0]["exp"] > time.time()
    assert set(outcome.phases) == {"resolve", "connect", "handshake", "rtt"}
    assert set(outcome.latency) == {"total", "handshake", "rtt"}
    assert all(v >= 0 for v in outcome.phases.values())
    assert outcome.latency["total"] >= outcome.phases["handshake"] + outcome.latency["rtt"]


async def test_twin_session_ping_and_agent_events(twin: Twin) -> None:
    target, ctx = setup({"url": twin_ws(twin), "credential": "user",
                         "headers": {"X-Test-Type": "E2E"}, "messages": [PING, USER_MSG]},
                        jwt_cred())
    outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail
    assert twin.requests("/ws") == 1


async def test_wrong_jwt_secret_is_ws_auth_403(twin: Twin) -> None:
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "messages": [PING]},
                        jwt_cred(secret="not-the-twin-secret-0123456789abcdef012"))
    outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.WS_AUTH
    assert outcome.status_code == 403
    assert outcome.detail == "WebSocket upgrade rejected: HTTP 403 (credential user was sent)"


async def test_missing_required_header_is_ws_auth(twin: Twin) -> None:
    configure_ws(twin.app, required_headers={"X-Test-Type": "E2E"})
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "messages": [PING]},
                        jwt_cred())
    outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.WS_AUTH and outcome.status_code == 403
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "messages": [PING],
                         "headers": {"X-Test-Type": "E2E"}}, jwt_cred())
    outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail


async def test_no_credential_says_so(twin: Twin) -> None:
    target, ctx = setup({"url": twin_ws(twin), "messages": [PING]})
    outcome, _ = await probe(target, ctx)
    assert outcome.detail == "WebSocket upgrade rejected: HTTP 403 (no credential was sent)"


async def test_a_token_echoed_in_a_clipped_rejection_is_redacted() -> None:
    """A server that rejects the upgrade with a body quoting the Authorization header: the
    detail clips the body mid-token, and no 8-character start of the token may survive."""
    token = "tok-" + "0123456789abcdef" * 4

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        return conn.respond(500, f"denied for {request.headers.get('Authorization')}\n")

    async with ws_server(process_request=process_request) as base:
        target, ctx = setup({"url": f"{base}/ws", "credential": "svc", "messages": [PING]},
                            {"svc": {"bearer": {"token": token}}})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.WS_REJECTED, outcome.detail
    assert outcome.detail.startswith("WebSocket upgrade rejected: HTTP 500: 'denied for ")
    leaked = [token[:n] for n in range(8, len(token) + 1) if token[:n] in outcome.detail]
    assert not leaked, outcome.detail


async def test_twin_audience_is_checked(twin: Twin) -> None:
    configure_ws(twin.app, audience="staging")
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "messages": [PING]},
                        jwt_cred(aud="production"))
    assert (await probe(target, ctx))[0].failure is Failure.WS_AUTH
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "messages": [PING]},
                        jwt_cred(aud="staging"))
    assert (await probe(target, ctx))[0].success


async def test_server_demanding_a_subprotocol() -> None:
    async with ws_server(subprotocols=["chat.v2"]) as base:
        target, ctx = setup({"url": f"{base}/ws", "messages": [PING]})
        without, _ = await probe(target, ctx)
        target, ctx = setup({"url": f"{base}/ws", "messages": [PING],
                             "subprotocols": ["chat.v1", "chat.v2"]})
        with_it, _ = await probe(target, ctx)
    assert without.failure is Failure.WS_REJECTED
    assert without.status_code == 400 and "missing subprotocol" in without.detail
    assert with_it.success, with_it.detail


async def test_credential_as_query_parameter_and_as_subprotocol() -> None:
    got: dict[str, Any] = {}

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        got["path"] = request.path
        got["protocols"] = request.headers.get("Sec-WebSocket-Protocol")
        return None

    def select(conn: ServerConnection, offered: list[str]) -> str | None:
        return "chat" if "chat" in offered else None

    async with ws_server(process_request=process_request, select_subprotocol=select) as base:
        target, ctx = setup({"url": f"{base}/ws?room=1", "credential": "user",
                             "credential_in": "query", "messages": [PING]}, jwt_cred())
        assert (await probe(target, ctx))[0].success
        token = got["path"].partition("access_token=")[2]
        assert got["path"].startswith("/ws?room=1&access_token=")
        assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "e2e-user"
        target, ctx = setup({"url": f"{base}/ws", "credential": "user", "subprotocols": ["chat"],
                             "credential_in": "subprotocol", "messages": [PING]}, jwt_cred())
        assert (await probe(target, ctx))[0].success
        first, token = [p.strip() for p in got["protocols"].split(",")]
        assert first == "chat" and jwt.decode(token, SECRET, algorithms=["HS256"])


async def test_origin_and_headers_are_sent() -> None:
    got: dict[str, Headers] = {}

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        got["headers"] = request.headers
        return None

    async with ws_server(process_request=process_request) as base:
        target, ctx = setup({"url": f"{base}/ws", "origin": "https://app.example",
                             "headers": {"X-Test-Type": "E2E"}})
        assert (await probe(target, ctx))[0].success
    assert got["headers"]["Origin"] == "https://app.example"
    assert got["headers"]["X-Test-Type"] == "E2E"
    assert got["headers"]["User-Agent"].startswith("stageprobe/")


async def test_no_compression_is_offered() -> None:
    """A probe has no use for permessage-deflate, and a server that accepts it (websockets'
    does by default) would spend a zlib context per session on both sides."""
    got: dict[str, str | None] = {}

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        got["extensions"] = request.headers.get("Sec-WebSocket-Extensions")
        return None

    async with ws_server(process_request=process_request) as base:
        target, ctx = setup({"url": f"{base}/ws", "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail
    assert got == {"extensions": None}


async def test_a_rotated_token_reaches_the_query_of_the_next_probe(tmp_path: Path) -> None:
    """What a probe sends is built once per token and reused: a new token must still reach the
    very next probe, here in the URL's query."""
    token_file = tmp_path / "token"
    token_file.write_text("token-one\n")
    paths: list[str] = []

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        paths.append(request.path)
        return None

    async with ws_server(process_request=process_request) as base:
        target, ctx = setup({"url": f"{base}/ws?room=1", "credential": "svc",
                             "credential_in": "query", "messages": [PING]},
                            {"svc": {"bearer": {"token_file": str(token_file)}}})
        assert (await check(target, ctx)).success
        assert (await check(target, ctx)).success
        token_file.write_text("token-two-rotated\n")
        outcome = await check(target, ctx)
    assert outcome.success, outcome.detail
    assert paths == ["/ws?room=1&access_token=token-one"] * 2 + [
        "/ws?room=1&access_token=token-two-rotated"
    ]


async def test_ipv6_literal_target() -> None:
    async with serve(pong_handler, "::1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        target, ctx = setup({"url": f"ws://[::1]:{port}/ws", "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail
    assert outcome.phases["connect"] > 0
    with socket.socket(socket.AF_INET6) as unused:
        unused.bind(("::1", 0))
        port = unused.getsockname()[1]
        target, ctx = setup({"url": f"ws://[::1]:{port}/ws", "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.REFUSED
    assert outcome.detail == f"connection to [::1]:{port} refused"


# --- the session ends badly ------------------------------------------------------------------


async def test_close_1011_is_ws_closed(twin: Twin) -> None:
    twin.set_fault(ws="crash")
    target, ctx = setup({"url": twin_ws(twin), "credential": "user",
                         "messages": [PING, USER_MSG]}, jwt_cred())
    outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.WS_CLOSED
    assert outcome.close_code == 1011 and outcome.status_code == 101
    assert outcome.detail.startswith(
        'server closed the session: 1011 "Internal error" (server error) after '
    )
    assert outcome.detail.endswith(" (step 2, 1 message received)")


async def test_dropped_socket_is_ws_dropped(twin: Twin) -> None:
    twin.set_fault(ws="drop")
    target, ctx = setup({"url": twin_ws(twin), "credential": "user",
                         "messages": [PING, USER_MSG]}, jwt_cred())
    outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.WS_DROPPED and outcome.close_code == 1006
    assert "(step 2, 1 message received)" in outcome.detail


async def test_silent_server_is_ws_no_reply_within_step_timeout(twin: Twin) -> None:
    twin.set_fault(ws="silent")
    step = {**PING, "timeout": "500ms"}
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "messages": [step]},
                        jwt_cred())
    outcome, wall = await probe(target, ctx)
    assert outcome.failure is Failure.WS_NO_REPLY
    assert outcome.detail == "no reply to step 1 within 500ms"
    assert 0.45 <= wall < 0.5 + MARGIN


async def test_target_timeout_bounds_a_long_step() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with ws_server(silent) as base:
        target, ctx = setup({"url": f"{base}/ws", "timeout": "700ms",
                             "messages": [{**PING, "timeout": "30s"}]})
        outcome, wall = await probe(target, ctx)
    assert outcome.failure is Failure.WS_NO_REPLY
    assert "(the target's timeout)" in outcome.detail
    assert wall < 0.7 + MARGIN


async def test_a_short_step_timeout_bounds_that_step_only() -> None:
    """Step 1's 300ms timeout must not outlive step 1: step 2 (its own 5s) is answered after
    600ms and succeeds. With step 2 at 300ms too, step 2 is the one named, in its own words."""
    async def slow_second(ws: ServerConnection) -> None:
        async for raw in ws:
            if json.loads(raw).get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            else:
                await asyncio.sleep(0.6)  # the server's behaviour under test, not a wait
                await ws.send(json.dumps({"type": "done"}))

    quick = {**PING, "timeout": "300ms"}
    slow = {"send": {"type": "work"}, "expect": {"json": {"type": "done"}}, "timeout": "5s"}
    async with ws_server(slow_second) as base:
        target, ctx = setup({"url": f"{base}/ws", "timeout": "3s", "messages": [quick, slow]})
        ok, _ = await probe(target, ctx)
        target, ctx = setup({"url": f"{base}/ws", "timeout": "3s",
                             "messages": [quick, {**slow, "timeout": "300ms"}]})
        late, wall = await probe(target, ctx)
    assert ok.success, ok.detail
    assert ok.latency["rtt"] < ok.phases["rtt"]  # the median of a fast and a slow round trip
    assert late.failure is Failure.WS_NO_REPLY
    assert late.detail == "no reply to step 2 within 300ms"
    assert wall < 0.6 + MARGIN


async def test_until_skips_other_messages_and_times_out_when_none_match() -> None:
    async with ws_server() as base:
        target, ctx = setup({"url": f"{base}/ws", "messages": [USER_MSG]})
        ok, _ = await probe(target, ctx)
        never = {**USER_MSG, "until": {"json": {"type": "agent_failed"}}, "timeout": "500ms"}
        target, ctx = setup({"url": f"{base}/ws", "messages": [never]})
        bad, wall = await probe(target, ctx)
    assert ok.success and ok.latency["rtt"] > 0
    assert bad.failure is Failure.WS_NO_REPLY
    assert bad.detail == "no matching reply to step 1 within 500ms; 3 other messages skipped"
    assert wall < 0.5 + MARGIN


async def echo_handler(ws: ServerConnection) -> None:
    async for raw in ws:
        await ws.send(raw)


async def test_mismatched_expect_is_an_assertion() -> None:
    async with ws_server() as base:
        step = {"send": {"type": "ping"}, "expect": {"json": {"type": "pang"}}}
        target, ctx = setup({"url": f"{base}/ws", "messages": [step]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.ASSERTION and outcome.status_code == 101
    assert outcome.detail == 'step 1: expected type = "pang", got "pong"'
    async with ws_server(echo_handler) as base:
        step = {"send": "hello", "expect": {"regex": "^pong$"}}
        target, ctx = setup({"url": f"{base}/ws", "messages": [step]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.ASSERTION
    assert outcome.detail == "step 1: expected a message matching /^pong$/, got 'hello'"


async def test_yaml_dates_in_a_step_are_sent_and_matched_as_json_text() -> None:
    """YAML turns `2024-01-02` into a date: a step sends and expects it as its ISO text, and a
    wrong date is an assertion, never an internal error."""
    cfg = yaml.safe_load("send: {d: 2024-01-02}\nexpect: {json: {d: 2024-01-02}}\n")
    assert isinstance(cfg["send"]["d"], datetime.date)
    async with ws_server(echo_handler) as base:
        target, ctx = setup({"url": f"{base}/ws", "messages": [cfg]})
        outcome, _ = await probe(target, ctx)
        assert outcome.success, outcome.detail
        wrong = {**cfg, "expect": {"json": {"d": datetime.date(2024, 1, 3)}}}
        target, ctx = setup({"url": f"{base}/ws", "messages": [wrong]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.ASSERTION
    assert outcome.detail == 'step 1: expected d = "2024-01-03", got "2024-01-02"'


async def test_connections_open_concurrently(twin: Twin) -> None:
    """The server answers nothing until 5 sessions are open at once: sequential sessions
    would time out."""
    opened: list[ServerConnection] = []
    all_open = asyncio.Event()

    async def gated(ws: ServerConnection) -> None:
        opened.append(ws)
        if len(opened) == 5:
            all_open.set()
        async with asyncio.timeout(5):
            await all_open.wait()
        await pong_handler(ws)

    async with ws_server(gated) as base:
        target, ctx = setup({"url": f"{base}/ws", "connections": 5, "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail
    assert len(opened) == 5
    # the twin counts sessions open at once as well
    target, ctx = setup({"url": twin_ws(twin), "credential": "user", "connections": 5,
                         "messages": [PING, USER_MSG]}, jwt_cred())
    outcome, _ = await probe(target, ctx)
    assert outcome.success, outcome.detail
    assert twin.requests("/ws") == 5 and ws_sessions(twin.app)[0] == 0


async def test_one_failing_session_of_five_is_named() -> None:
    count = 0

    async def third_crashes(ws: ServerConnection) -> None:
        nonlocal count
        count += 1
        if count == 3:
            await ws.close(1011, "boom")
            return
        await pong_handler(ws)

    async with ws_server(third_crashes) as base:
        target, ctx = setup({"url": f"{base}/ws", "connections": 5, "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.WS_CLOSED and outcome.close_code == 1011
    assert outcome.detail.startswith("session ")
    assert "/5: server closed the session: 1011" in outcome.detail


async def test_message_larger_than_body_limit() -> None:
    async def big(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send("x" * 5000)

    async with ws_server(big) as base:
        target, ctx = setup({"url": f"{base}/ws", "body_limit": 1000, "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.BODY_TOO_LARGE
    assert "body_limit (1000 bytes)" in outcome.detail


async def test_garbage_frames_are_protocol() -> None:
    async def garbage(ws: ServerConnection) -> None:
        async for _ in ws:
            ws.transport.write(b"\x7f\x05hello")
            await ws.wait_closed()

    async with ws_server(garbage) as base:
        target, ctx = setup({"url": f"{base}/ws", "messages": [PING]})
        outcome, wall = await probe(target, ctx)
    assert outcome.failure is Failure.PROTOCOL
    assert "invalid frame" in outcome.detail
    assert wall < 2.0 + MARGIN  # not the step timeout's worth of waiting


# --- the upgrade fails -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "failure", "status"),
    [
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops", Failure.WS_REJECTED, 500),
        (b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", Failure.WS_AUTH, 401),
        (b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", Failure.WS_REJECTED, 302),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", Failure.PROTOCOL, None),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", Failure.PROTOCOL, None),
        (b"", Failure.DISCONNECTED, None),
    ],
)
async def test_bad_upgrade_answers(answer: bytes, failure: Failure, status: int | None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with raw_server(handle) as port:
        target, ctx = setup({"url": f"ws://127.0.0.1:{port}/ws", "messages": [PING]})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is failure, outcome.detail
    assert outcome.status_code == status


async def test_unanswered_upgrade_is_timeout() -> None:
    async with silent_server() as silent:
        target, ctx = setup({"url": f"ws://127.0.0.1:{silent.port}/ws", "timeout": "500ms"})
        outcome, wall = await probe(target, ctx)
    assert outcome.failure is Failure.TIMEOUT
    assert outcome.detail == "no answer to the WebSocket upgrade within 500ms"
    assert wall < 0.5 + MARGIN


async def test_dns_and_refused() -> None:
    target, ctx = setup({"url": "ws://nonexistent.invalid/ws"})
    outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.DNS and "nonexistent.invalid" in outcome.detail
    with refused_port() as port:
        target, ctx = setup({"url": f"ws://127.0.0.1:{port}/ws"})
        outcome, _ = await probe(target, ctx)
    assert outcome.failure is Failure.REFUSED
    assert outcome.detail == f"connection to 127.0.0.1:{port} refused"



async def test_connect_timeout_with_a_full_backlog(full_backlog: int) -> None:
    target, ctx = setup({"url": f"ws://127.0.0.1:{full_backlog}/ws", "timeout": "500ms"})
    outcome, wall = await probe(target, ctx)
    assert outcome.failure is Failure.CONNECT_TIMEOUT
    assert wall < 0.5 + MARGIN


async def test_tls(tmp_path: Path) -> None:
    from certs import make_self_signed  # tests/certs.py

    cert = make_self_signed(tmp_path)
    async with serve(pong_handler, "127.0.0.1", 0, ssl=cert.server_context()) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"wss://localhost:{port}/ws"
        target, ctx = setup({"url": url, "messages": [PING]})
        untrusted, _ = await probe(target, ctx)
        target, ctx = setup({"url": url, "messages": [PING], "ca_file": str(cert.cert_file)})
        trusted, _ = await probe(target, ctx)
    assert untrusted.failure is Failure.TLS and "self-signed" in untrusted.detail
    assert trusted.success, trusted.detail
    assert trusted.phases["handshake"] > 0


async def test_oauth_failure_is_credential_and_nothing_is_dialled() -> None:
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"error": "server_error"}, status=500)

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        creds = {"oauth": {"oauth2": {"token_url": f"http://127.0.0.1:{port}/token",
                                      "client_id": "probe", "client_secret": "s3cr3t-client"}}}
        target, ctx = setup({"url": "ws://nonexistent.invalid/ws", "credential": "oauth"}, creds)
        outcome, _ = await probe(target, ctx)
    finally:
        await runner.cleanup()
    assert outcome.failure is Failure.CREDENTIAL
    assert outcome.detail == "credential oauth: token endpoint answered HTTP 500 (server_error)"


async def test_a_hanging_token_endpoint_is_credential_within_the_target_timeout() -> None:
    async with silent_server() as silent:
        creds = {"oauth": {"oauth2": {"token_url": f"http://127.0.0.1:{silent.port}/token",
                                      "client_id": "probe", "client_secret": "s3cr3t-client",
                                      "timeout": "10s"}}}
        target, ctx = setup({"url": "ws://127.0.0.1:9/ws", "timeout": "500ms",
                             "credential": "oauth"}, creds)
        outcome, wall = await probe(target, ctx)
    assert outcome.failure is Failure.CREDENTIAL
    assert outcome.detail == "credential oauth: not obtained within 500ms"
    assert wall < 0.5 + MARGIN


async def test_oauth_token_cached_across_probes_and_refreshed() -> None:
    """The endpoint is asked once for two probes, and again once the token nears expiry."""
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        assert form["client_secret"] == "s3cr3t-client"
        issued.append(f"access-{len(issued) + 1}")
        return web.json_response({"access_token": issued[-1], "expires_in": 30})

    async def only_current(conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {issued[-1]}":
            return conn.respond(401, "stale token\n")
        return None

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
    now = [100.0]
    try:
        async with ws_server(process_request=only_current) as base:
            creds = {"oauth": {"oauth2": {"token_url": url, "client_id": "probe",
                                          "client_secret": "s3cr3t-client"}}}
            target, _ = setup({"url": f"{base}/ws", "credential": "oauth", "messages": [PING]},
                              creds)
            cfg = Config.model_validate({"targets": [{"name": "x", "url": "ws://h/"}],
                                         "credentials": creds})
            ctx = CheckContext(Credentials(cfg.credentials, monotonic=lambda: now[0]))
            try:
                assert (await check(target, ctx)).success
                assert (await check(target, ctx)).success
                assert issued == ["access-1"]
                now[0] += 28  # within the margin before expires_in: refreshed
                outcome = await check(target, ctx)
                assert outcome.success, outcome.detail
                assert issued == ["access-1", "access-2"]
            finally:
                await ctx.credentials.aclose()
    finally:
        await runner.cleanup()


async def test_bearer_file_change_reaches_the_next_probe(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-one\n")
    accepted = {"token": "token-one"}

    async def current(conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {accepted['token']}":
            return conn.respond(403, "no\n")
        return None

    async with ws_server(process_request=current) as base:
        target, ctx = setup({"url": f"{base}/ws", "credential": "svc"},
                            {"svc": {"bearer": {"token_file": str(token_file)}}})
        assert (await check(target, ctx)).success
        accepted["token"] = "token-two-rotated"
        assert (await check(target, ctx)).failure is Failure.WS_AUTH
        token_file.write_text("token-two-rotated\n")
        outcome = await check(target, ctx)
    assert outcome.success, outcome.detail


# --- matching rules (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "message", "why"),
    [
        ({"json": {"type": "pong"}}, '{"type": "pong"}', None),
        ({"json": {"data.items.1.id": 7}}, '{"data": {"items": [{"id": 1}, {"id": 7}]}}', None),
        ({"json": {"data.items.-1.id": 7}}, '{"data": {"items": [{"id": 7}]}}', None),
        ({"json": {"n": 1}}, '{"n": 1.0}', None),
        ({"json": {"ok": True}}, '{"ok": 1}', "expected ok = true, got 1"),
        ({"json": {"a": {"b": 1}}}, '{"a": {"b": true}}', 'expected a = {"b": 1}, got'),
        ({"json": {"a": [1]}}, '{"a": [true]}', "expected a = [1], got"),
        ({"json": {"d": datetime.date(2024, 1, 2)}}, '{"d": "2024-01-02"}', None),
        ({"json": {"d": datetime.date(2024, 1, 2)}}, '{"d": 1}', 'expected d = "2024-01-02"'),
        ({"json": {"a.b": 1}}, '{"a": {}}', "expected a.b = 1, but a.b is missing"),
        ({"json": {"a.5": 1}}, '{"a": [1]}', "expected a.5 = 1, but a.5 is missing"),
        ({"json": {"a": 1}}, "plain text", "expected a JSON message, got 'plain text'"),
        ({"regex": "agent_(started|completed)"}, '{"type": "agent_completed"}', None),
        ({"regex": "^x$", "json": {"a": 1}}, '{"a": 1}', "expected a message matching /^x$/"),
    ],
)
def test_matching_rules(match: dict[str, Any], message: str, why: str | None) -> None:
    got = mismatch(Match.model_validate(match), message.encode())
    if why is None:
        assert got is None
    else:
        assert got is not None and got.startswith(why)
