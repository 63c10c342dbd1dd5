"""Credentials: static bearer, minted JWTs (HS/RS/ES) and OAuth2 client credentials.

Token endpoints are real aiohttp servers on loopback. Expiry is driven by injected clocks
(`clock` for JWT wall time, `monotonic` for OAuth2 caching), so no test waits for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from helpers import serving

from probe.config import Config, CredentialSpec
from probe.credentials import CredentialError, Credentials, attach

CLIENT_SECRET = "client-secret-7f3a9c1e"
HS_SECRET = "hs-secret-0123456789abcdef0123456789abcdef"


def specs(**creds: dict[str, Any]) -> dict[str, CredentialSpec]:
    return {name: CredentialSpec.model_validate(spec) for name, spec in creds.items()}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- bearer ----------------------------------------------------------------------------------


async def test_bearer_inline_is_stripped() -> None:
    creds = Credentials(specs(svc={"bearer": {"token": "  tok-inline \n"}}))
    assert await creds.token("svc") == "tok-inline"


async def test_bearer_env_is_read_at_use(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials(specs(svc={"bearer": {"token_env": "PROBE_TEST_TOKEN"}}))
    monkeypatch.delenv("PROBE_TEST_TOKEN", raising=False)
    with pytest.raises(CredentialError, match=r"^credential svc: environment variable "
                                              r"PROBE_TEST_TOKEN is not set or empty$"):
        await creds.token("svc")
    monkeypatch.setenv("PROBE_TEST_TOKEN", "tok-one\n")
    assert await creds.token("svc") == "tok-one"
    monkeypatch.setenv("PROBE_TEST_TOKEN", "tok-two")
    assert await creds.token("svc") == "tok-two"


async def test_bearer_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tok-first\n")
    creds = Credentials(specs(svc={"bearer": {"token_file": str(path)}}))
    assert await creds.token("svc") == "tok-first"
    path.write_text("tok-second-longer\n")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert await creds.token("svc") == "tok-second-longer"
    # a Kubernetes-style swap: a new file renamed over the old one
    new = tmp_path / "token.new"
    new.write_text("tok-third")
    new.replace(path)
    assert await creds.token("svc") == "tok-third"


async def test_bearer_file_problems_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    creds = Credentials(specs(svc={"bearer": {"token_file": str(missing)}}))
    with pytest.raises(CredentialError, match=f"credential svc: cannot read token file {missing}"):
        await creds.token("svc")
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    creds = Credentials(specs(svc={"bearer": {"token_file": str(empty)}}))
    with pytest.raises(CredentialError, match="is empty"):
        await creds.token("svc")


async def test_unknown_credential() -> None:
    with pytest.raises(CredentialError, match="credential nope: not defined in the config"):
        await Credentials().token("nope")


# --- JWT -------------------------------------------------------------------------------------


async def test_hs256_claims_ttl_kid() -> None:
    clock = Clock()
    spec = {"jwt": {"secret": HS_SECRET, "ttl": "10m", "kid": "k-2024",
                    "claims": {"sub": "staging-e2e-user-003", "aud": "staging"}}}
    creds = Credentials(specs(user=spec), clock=clock)
    token = await creds.token("user")
    assert jwt.get_unverified_header(token)["kid"] == "k-2024"
    claims = jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience="staging",
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["sub"] == "staging-e2e-user-003"
    assert claims["iat"] == int(clock.now) and claims["exp"] == int(clock.now) + 600


async def test_jwt_cache_until_shortly_before_expiry() -> None:
    clock = Clock()
    creds = Credentials(specs(user={"jwt": {"secret": HS_SECRET, "ttl": "10m"}}), clock=clock)
    first = await creds.token("user")
    clock.now += 500  # within ttl minus the margin (60 s)
    assert await creds.token("user") == first
    clock.now += 50  # 550 s: inside the last minute
    second = await creds.token("user")
    assert second != first
    assert jwt.decode(second, HS_SECRET, algorithms=["HS256"],
                      options={"verify_exp": False, "verify_iat": False})["iat"] == int(clock.now)


async def test_jwt_minted_per_use_without_cache() -> None:
    clock = Clock()
    spec = {"jwt": {"secret": HS_SECRET, "ttl": "10m", "cache": False}}
    creds = Credentials(specs(user=spec), clock=clock)
    first = await creds.token("user")
    clock.now += 1
    assert await creds.token("user") != first


def write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


async def test_rs256_with_a_key_file_reread_on_rotation(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(key_file, old)
    spec = {"jwt": {"private_key_file": str(key_file), "algorithm": "RS256", "kid": "old",
                    "claims": {"sub": "u"}}}
    creds = Credentials(specs(user=spec))
    token = await creds.token("user")
    assert jwt.decode(token, old.public_key(), algorithms=["RS256"])["sub"] == "u"
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(key_file, new)
    st = key_file.stat()
    os.utime(key_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    rotated = await creds.token("user")  # cached token dropped: signed by the new key
    assert jwt.decode(rotated, new.public_key(), algorithms=["RS256"])["sub"] == "u"


async def test_es256(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path / "ec.pem", key)
    spec = {"jwt": {"private_key_file": str(tmp_path / "ec.pem"), "algorithm": "ES256"}}
    token = await Credentials(specs(user=spec)).token("user")
    assert "exp" in jwt.decode(token, key.public_key(), algorithms=["ES256"])


async def test_bad_key_file_does_not_echo_its_content(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nSUPERSECRETGARBAGE\n-----END PRIVATE KEY-----\n")
    spec = {"jwt": {"private_key_file": str(bad), "algorithm": "RS256"}}
    with pytest.raises(CredentialError) as info:
        await Credentials(specs(user=spec)).token("user")
    assert "not an unencrypted PEM private key" in str(info.value)
    assert "SUPERSECRETGARBAGE" not in str(info.value)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    write_key(bad, ec_key)  # an EC key for an RSA algorithm
    with pytest.raises(CredentialError, match="cannot sign a RS256 token"):
        await Credentials(specs(user=spec)).token("user")


# --- OAuth2 ----------------------------------------------------------------------------------


@dataclass
class TokenServer:
    """A token endpoint on loopback; `answer` decides each reply, `forms` records requests."""

    answer: Callable[[int], Awaitable[web.StreamResponse]]
    forms: list[dict[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""


@pytest.fixture
async def token_server() -> AsyncIterator[Callable[..., Awaitable[TokenServer]]]:
    async with contextlib.AsyncExitStack() as servers:

        async def start(answer: Callable[[int], Awaitable[web.StreamResponse]]) -> TokenServer:
            server = TokenServer(answer)

            async def handle(request: web.Request) -> web.StreamResponse:
                server.forms.append(dict(await request.post()))  # type: ignore[arg-type]
                server.arrived.set()
                return await server.answer(len(server.forms))

            app = web.Application()
            app.router.add_post("/oauth/token", handle)
            server.url = f"{await servers.enter_async_context(serving(app))}/oauth/token"
            return server

        yield start


def oauth(url: str, **extra: Any) -> dict[str, Any]:
    return {"oauth2": {"token_url": url, "client_id": "probe", "client_secret": CLIENT_SECRET,
                       **extra}}


async def issued(n: int, expires_in: float = 3600) -> web.StreamResponse:
    return web.json_response({"access_token": f"at-{n}", "token_type": "Bearer",
                              "expires_in": expires_in})


async def test_oauth2_form_cache_and_refresh(token_server: Callable[..., Any]) -> None:
    server = await token_server(lambda n: issued(n, expires_in=100))
    mono = Clock(1000.0)
    creds = Credentials(specs(oauth=oauth(server.url, scopes=["read", "write"], audience="api")),
                        monotonic=mono)
    try:
        assert await creds.token("oauth") == "at-1"
        assert server.forms == [{"grant_type": "client_credentials", "client_id": "probe",
                                 "client_secret": CLIENT_SECRET, "scope": "read write",
                                 "audience": "api"}]
        mono.now += 85  # before expires_in minus its margin (10 s)
        assert await creds.token("oauth") == "at-1"
        assert len(server.forms) == 1
        mono.now += 10  # 95 s: inside the margin -> refreshed
        assert await creds.token("oauth") == "at-2"
        assert len(server.forms) == 2
    finally:
        await creds.aclose()


async def reached(server: TokenServer) -> None:
    """Wait (bounded) until a token request has reached the server."""
    async with asyncio.timeout(5):
        await server.arrived.wait()


async def held_token_server(token_server: Callable[..., Any]) -> tuple[Any, asyncio.Event]:
    """A token endpoint that holds every request until the returned event is set."""
    release = asyncio.Event()

    async def held(n: int) -> web.StreamResponse:
        await release.wait()
        return await issued(n)

    return await token_server(held), release


async def test_oauth2_concurrent_callers_share_one_fetch(token_server: Callable[..., Any]) -> None:
    server, release = await held_token_server(token_server)
    creds = Credentials(specs(oauth=oauth(server.url)))
    try:
        callers = [asyncio.create_task(creds.token("oauth")) for _ in range(10)]
        await reached(server)
        release.set()
        assert await asyncio.gather(*callers) == ["at-1"] * 10
        assert len(server.forms) == 1
    finally:
        await creds.aclose()


async def test_oauth2_cancelled_caller_does_not_cancel_the_fetch(
    token_server: Callable[..., Any],
) -> None:
    server, release = await held_token_server(token_server)
    creds = Credentials(specs(oauth=oauth(server.url)))
    try:
        first = asyncio.create_task(creds.token("oauth"))
        second = asyncio.create_task(creds.token("oauth"))
        await reached(server)
        first.cancel()
        release.set()
        assert await second == "at-1"
        assert len(server.forms) == 1
    finally:
        await creds.aclose()


async def json_answer(status: int, body: Any) -> web.StreamResponse:
    return web.json_response(body, status=status)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda n: json_answer(500, {"error": "server_error"}),
         "token endpoint answered HTTP 500 (server_error)"),
        (lambda n: json_answer(401, {"error": "invalid_client", "echo": CLIENT_SECRET}),
         "token endpoint answered HTTP 401 (invalid_client)"),
        (lambda n: json_answer(400, {"error": f"bad {CLIENT_SECRET}"}),
         "token endpoint answered HTTP 400 (bad ***)"),
        (lambda n: asyncio.sleep(0, web.Response(text="<html>not json</html>")),
         "token endpoint answered with a body that is not a JSON object"),
        (lambda n: json_answer(200, {"token_type": "Bearer"}),
         "token endpoint answer has no access_token"),
    ],
)
async def test_oauth2_failures_are_credential_errors(
    token_server: Callable[..., Any], answer: Any, reason: str
) -> None:
    server = await token_server(answer)
    creds = Credentials(specs(oauth=oauth(server.url)))
    try:
        with pytest.raises(CredentialError) as info:
            await creds.token("oauth")
    finally:
        await creds.aclose()
    assert str(info.value) == f"credential oauth: {reason}"
    assert CLIENT_SECRET not in repr(info.value)


async def test_oauth2_endpoint_unreachable_or_hanging(token_server: Callable[..., Any]) -> None:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        creds = Credentials(specs(oauth=oauth(f"http://127.0.0.1:{port}/token")))
        try:
            with pytest.raises(CredentialError, match="cannot reach the token endpoint "
                                                      rf"http://127.0.0.1:{port}/token"):
                await creds.token("oauth")
        finally:
            await creds.aclose()
    hang = asyncio.Event()

    async def never(n: int) -> web.StreamResponse:
        await hang.wait()
        return await issued(n)

    server = await token_server(never)
    creds = Credentials(specs(oauth=oauth(server.url, timeout="300ms")))
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(CredentialError, match=r"did not answer within 300ms$"):
            await creds.token("oauth")
    finally:
        hang.set()
        await creds.aclose()
    assert loop.time() - start < 0.3 + 1.5


# --- attach and secrecy ----------------------------------------------------------------------


async def test_attach_places_the_token_as_the_target_says() -> None:
    cfg = Config.model_validate({
        "credentials": {"svc": {"bearer": {"token": "tok-abc"}}},
        "targets": [
            {"name": "a", "url": "ws://h/ws", "credential": "svc"},
            {"name": "b", "url": "ws://h/ws", "credential": "svc", "credential_name": "X-Key",
             "credential_scheme": ""},
            {"name": "c", "url": "ws://h/ws", "credential": "svc", "credential_in": "query"},
            {"name": "d", "url": "ws://h/ws", "credential": "svc",
             "credential_in": "subprotocol"},
            {"name": "e", "url": "ws://h/ws"},
        ],
    })
    creds = Credentials(cfg.credentials)
    a, b, c, d, e = [await attach(t, creds) for t in cfg.targets]
    assert a.headers == {"Authorization": "Bearer tok-abc"}
    assert b.headers == {"X-Key": "tok-abc"}
    assert c.query == {"access_token": "tok-abc"}
    assert d.subprotocols == ["tok-abc"]
    assert (e.headers, e.query, e.subprotocols) == ({}, {}, [])
    assert "tok-abc" not in repr(a) + repr(c) + repr(d)
    # the bare token travels with the placement, for the checks to scrub it from details
    assert [x.token for x in (a, b, c, d, e)] == ["tok-abc"] * 4 + [""]


async def test_no_secret_in_repr_or_str(tmp_path: Path) -> None:
    creds = Credentials(specs(
        user={"jwt": {"secret": HS_SECRET}},
        svc={"bearer": {"token": "tok-inline-secret"}},
        oauth=oauth("http://127.0.0.1:9/token"),
    ))
    token = await creds.token("user")
    await creds.token("svc")
    text = repr(creds) + str(creds) + repr(creds._providers) + repr(creds._specs)
    for secret in (HS_SECRET, "tok-inline-secret", CLIENT_SECRET, token):
        assert secret not in text
