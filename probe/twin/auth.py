"""The twin's auth service: `POST /auth/login` with `{"email": ..., "password": ...}` answers
`{"access_token": JWT, "token_type": "bearer", "expires_in": SECONDS}`, as the staging auth
service does for the application's own clients.

It signs with the secret the twin's backend checks, unless the twin's `auth` switch says
otherwise (POST /_twin/fault {"auth": "other_secret"}):
    ok            tokens signed with the backend's secret
    other_secret  tokens signed with another secret: every login succeeds, and the backend
                  (/api/agents/stop, /ws) rejects every token it issued — the seeds' incident
    reject        every login answers 401
    503           every login answers 503 (the auth service is down behind its proxy)
The token lives `token_ttl_s` seconds (a twin switch too). A login never echoes what it was sent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jwt
from aiohttp import web

AUTH_CONFIG = web.AppKey("twin_auth_config", dict)
E2E_EMAIL = "e2e@twin.example"
# The standalone twin's E2E password when $TWIN_E2E_PASSWORD is unset; config/example.yaml matches.
DEV_E2E_PASSWORD = "twin-e2e-password-not-for-production-use"
# What the auth service signs with when the twin's backend checks no token at all.
_UNCHECKED_SECRET = "twin-auth-unchecked-secret"
_OTHER = "-rotated-at-the-auth-service-only"  # appended to the backend's secret: another secret

Secret = Callable[[web.Application], "str | None"]


def add_auth_routes(
    app: web.Application,
    state_key: web.AppKey[dict],  # type: ignore[type-arg]
    secret: Secret,
    accounts: dict[str, str] | None = None,
    path: str = "/auth/login",
) -> None:
    """Serve the login at `path`; `accounts`: email -> password (default: the E2E account).

    As for the WebSocket routes, the twin passes its state key and its backend's secret in
    rather than this module importing them (see probe.twin.ws.add_ws_routes)."""
    app[AUTH_CONFIG] = {"state_key": state_key, "secret": secret,
                        "accounts": dict(accounts or {E2E_EMAIL: DEV_E2E_PASSWORD})}
    app.router.add_post(path, _login)


def _unauthorized() -> web.StreamResponse:
    return web.json_response({"error": "invalid credentials"}, status=401)


async def _login(request: web.Request) -> web.StreamResponse:
    cfg = request.app[AUTH_CONFIG]
    shared: dict[str, Any] = request.app[cfg["state_key"]]
    shared["counts"][request.path] += 1
    state = shared["state"]
    if state.auth == "reject":
        return _unauthorized()
    if state.auth == "503":
        return web.json_response({"error": "auth service unavailable"}, status=503)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "expected a JSON body"}, status=400)
    email = body.get("email") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if not isinstance(email, str) or cfg["accounts"].get(email) != password:
        return _unauthorized()
    key = cfg["secret"](request.app) or _UNCHECKED_SECRET
    if state.auth == "other_secret":
        key += _OTHER
    now = time.time()
    exp = int(now) + state.token_ttl_s
    token = jwt.encode({"sub": email, "aud": "staging", "iat": int(now), "exp": exp}, key,
                       algorithm="HS256")
    # The whole seconds the token still lives: `exp` is whole seconds, so saying token_ttl_s
    # would let a client keep it up to a second past its expiry (a short-lived token's refusal).
    expires_in = max(0, exp - math.ceil(now))
    return web.json_response({"access_token": token, "token_type": "bearer",
                              "expires_in": expires_in})
