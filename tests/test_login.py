"""Login credentials: a token from the twin's auth service (POST /auth/login), cached, refreshed
before expiry and after a 401/403, and every failure named in one line; the HTTP and WebSocket
checks against the twin's backend, which checks the tokens the auth service issued.

Expiry is driven by an injected monotonic clock (the cache's), so no test waits for time to
pass; logins are counted at the twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from helpers import refused_port

from probe.checks import CheckContext, checker_for
from probe.config import Config, Target, parse_config
from probe.credentials import CredentialError, Credentials
from probe.outcome import Failure, Outcome
from probe.twin import Twin
from probe.twin.auth import DEV_E2E_PASSWORD, E2E_EMAIL

SECRET = "login-test-backend-secret-0123456789abcdef"
LOGIN = "/auth/login"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.twin(jwt_secret=SECRET)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def login(base: str, password: str = DEV_E2E_PASSWORD, **extra: Any) -> dict[str, Any]:
    return {"staging-login": {"login": {
        "url": f"{base}{LOGIN}", "json": {"email": E2E_EMAIL, "password": password}, **extra}}}


def setup(target: dict[str, Any], creds: dict[str, Any], clock: Clock | None = None
          ) -> tuple[Target, CheckContext]:
    fields = {"name": "t", "timeout": "3s", "interval": "10s", "credential": "staging-login",
              **target}
    cfg = Config.model_validate({"targets": [fields], "credentials": creds})
    credentials = Credentials(cfg.credentials, monotonic=clock) if clock else Credentials(
        cfg.credentials)
    return cfg.targets[0], CheckContext(credentials)


async def probe(target: Target, ctx: CheckContext) -> Outcome:
    return await checker_for(target)(target, ctx)


def agents_stop(twin: Twin) -> dict[str, Any]:
    return {"url": f"{twin.url}/api/agents/stop", "method": "POST",
            "json_body": {"agent_id": "a-1"}, "expect": {"status": [200]}}


def chat(twin: Twin) -> dict[str, Any]:
    ws = "ws" + twin.url.removeprefix("http")
    return {"url": f"{ws}/ws", "messages": [
        {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "2s"}]}


async def test_login_token_passes_the_backend(twin: Twin) -> None:
    target, ctx = setup(agents_stop(twin), login(twin.url))
    try:
        outcome = await probe(target, ctx)
        assert outcome.success, outcome.detail
        ws_target, _ = setup(chat(twin), login(twin.url))
        outcome = await probe(ws_target, ctx)
        assert outcome.success, outcome.detail
    finally:
        await ctx.credentials.aclose()
    assert twin.requests(LOGIN) == 1  # the HTTP and the WebSocket probe shared one login


async def test_login_401_is_a_credential_failure_naming_the_login(twin: Twin) -> None:
    target, ctx = setup(agents_stop(twin), login(twin.url, password="wrong-password-123"))
    try:
        outcome = await probe(target, ctx)
    finally:
        await ctx.credentials.aclose()
    assert outcome.failure is Failure.CREDENTIAL
    assert outcome.detail == ("credential staging-login: auth service answered HTTP 401 "
                              "(invalid credentials)")
    assert twin.requests("/api/agents/stop") == 0  # no request went out without a token


async def test_login_endpoint_down_is_named(twin: Twin) -> None:
    with refused_port() as port:
        target, ctx = setup(agents_stop(twin), login(f"http://127.0.0.1:{port}"))
        try:
            outcome = await probe(target, ctx)
        finally:
            await ctx.credentials.aclose()
    assert outcome.failure is Failure.CREDENTIAL
    assert outcome.detail == (f"credential staging-login: cannot reach the auth service "
                              f"http://127.0.0.1:{port}{LOGIN}: Connection refused")
    twin.set_fault(auth="503")
    target, ctx = setup(agents_stop(twin), login(twin.url))
    try:
        with pytest.raises(CredentialError, match=r"^credential staging-login: auth service "
                                                  r"answered HTTP 503 \(auth service unavail"):
            await ctx.credentials.token("staging-login")
    finally:
        await ctx.credentials.aclose()


@pytest.mark.parametrize(("extra", "lifetime"), [
    ({"expires_in_path": "expires_in"}, 100.0),
    ({}, 100.0),
    ({"token_path": "token_type", "ttl": "40s"}, 40.0),
], ids=["expires_in_path", "jwt_exp", "ttl"])
async def test_token_cached_then_refreshed_before_expiry(
    twin: Twin, extra: dict[str, Any], lifetime: float
) -> None:
    """The twin's tokens live 100 s: cached, then replaced in the last tenth of their life
    (read from expires_in, else the JWT's exp). A token that is not a JWT (here the answer's
    token_type, read as the token) with no expires_in_path lives the configured ttl."""
    twin.set_fault(token_ttl_s=100)
    clock = Clock()
    _, ctx = setup(agents_stop(twin), login(twin.url, **extra), clock)
    try:
        first = await ctx.credentials.token("staging-login")
        clock.now += lifetime * 0.85
        assert await ctx.credentials.token("staging-login") == first
        assert twin.requests(LOGIN) == 1
        clock.now += lifetime * 0.1  # within the last tenth: a new login
        await ctx.credentials.token("staging-login")
        assert twin.requests(LOGIN) == 2
    finally:
        await ctx.credentials.aclose()


async def test_refreshed_after_a_401_from_the_target(twin: Twin) -> None:
    """The backend rejects the cached token: the probe fails naming the login, and the next
    probe logs in again (the auth service fixed meanwhile) and passes, without waiting for the
    token's expiry."""
    twin.set_fault(auth="other_secret")
    target, ctx = setup(agents_stop(twin), login(twin.url))
    try:
        outcome = await probe(target, ctx)
        assert outcome.failure is Failure.HTTP_STATUS and outcome.status_code == 401
        twin.set_fault(auth="ok")
        outcome = await probe(target, ctx)
        assert outcome.success, outcome.detail
        assert (await probe(target, ctx)).success  # and that token is kept
    finally:
        await ctx.credentials.aclose()
    assert twin.requests(LOGIN) == 2


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_auth_service_and_backend_disagree_in_one_line(twin: Twin, kind: str) -> None:
    twin.set_fault(auth="other_secret")
    target, ctx = setup(agents_stop(twin) if kind == "http" else chat(twin), login(twin.url))
    try:
        token = await ctx.credentials.token("staging-login")
        with pytest.raises(jwt.InvalidSignatureError):  # really signed with another secret
            jwt.decode(token, SECRET, algorithms=["HS256"], audience="staging")
        outcome = await probe(target, ctx)
        again = await probe(target, ctx)
    finally:
        await ctx.credentials.aclose()
    sent = f"credential staging-login, from the login at {twin.url}{LOGIN}, was sent"
    if kind == "http":
        assert outcome.failure is Failure.HTTP_STATUS
        assert outcome.detail == f"HTTP 401 (expected 200); {sent}"
    else:
        assert outcome.failure is Failure.WS_AUTH
        assert outcome.detail == f"WebSocket upgrade rejected: HTTP 403 ({sent})"
    assert again.detail == outcome.detail
    assert twin.requests(LOGIN) == 2  # the rejected token was dropped: each probe logged in


async def test_the_example_config_logs_in_and_names_the_disagreement(twin: Twin) -> None:
    """config/example.yaml's chat-ws logs in at the twin's auth service; switched to sign with
    another secret, the one line names the login."""
    text = (ROOT / "config" / "example.yaml").read_text().replace("127.0.0.1:8080",
                                                                  f"127.0.0.1:{twin.port}")
    cfg = parse_config(text, "example.yaml", env={})
    target = next(t for t in cfg.targets if t.name == "chat-ws")
    ctx = CheckContext(Credentials(cfg.credentials))
    try:
        outcome = await probe(target, ctx)
        assert outcome.success, outcome.detail
        twin.set_fault(auth="other_secret")
        # as if the cached token had expired: the next probe logs in at the switched service
        ctx.credentials.invalidate(target.credential, await ctx.credentials.token("e2e-login"))
        outcome = await probe(target, ctx)
    finally:
        await ctx.credentials.aclose()
    assert outcome.failure is Failure.WS_AUTH
    assert f"credential e2e-login, from the login at {twin.url}{LOGIN}, was sent" in outcome.detail
