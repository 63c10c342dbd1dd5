"""A simulated staging backend with switchable faults, for `probe demo`, the example and tests.

The twin answers like the real backend when healthy, and can be told — over its control API or
from Python — to misbehave the ways a staging deployment does: still starting (503), erroring,
slow, hanging, dropping connections, speaking garbage, serving the wrong build. That lets every
part of stageprobe be exercised over real sockets without a real staging environment.

The auth service's login is there too (POST /auth/login, see probe.twin.auth), signing with
the backend's secret or, switched, with another one; so is the chat backend's thread creation
(POST /api/threads, see probe.twin.threads), whose id /ws?thread=ID takes.

Control API (JSON):
    GET  /_twin/state                     current faults and per-path request counts
    POST /_twin/fault {"health": "503"}   change any fields of TwinState (others are kept)
    POST /_twin/reset                     back to healthy (version, token_ttl_s and counts kept)

Run standalone: `python -m probe.twin --port 8080` (serves config/example.yaml's targets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

import jwt
from aiohttp import web

from probe.twin.auth import DEV_E2E_PASSWORD, E2E_EMAIL, add_auth_routes
from probe.twin.threads import add_thread_routes
from probe.twin.ws import add_ws_routes

HttpFault = Literal[
    "ok", "starting", "503", "500", "slow", "hang", "drop", "garbage", "degraded", "big"
]
WsFault = Literal["ok", "reject", "crash", "drop", "silent"]
AuthFault = Literal["ok", "other_secret", "reject", "503"]
# The standalone twin's JWT secret when $TWIN_JWT_SECRET is unset; config/example.yaml matches it.
DEV_JWT_SECRET = "twin-dev-secret-not-for-production-use"


@dataclass(frozen=True)
class TwinState:
    """Every switch of the twin; `POST /_twin/fault` takes any subset of these fields.

    health/api: how /health (and /api/health) and the /api/* endpoints answer —
      ok | starting (503 {"status":"starting"}) | 503 | 500 | slow (after slow_ms) |
      hang (never answers) | drop (closes the connection unanswered) | garbage (not HTTP) |
      degraded (200 {"status":"degraded"}) | big (a 2 MiB body).
    ws: how the WebSocket endpoint behaves (see probe.twin.ws).
    auth: how the auth service's POST /auth/login answers — ok | other_secret (signs with
      another secret than the backend checks) | reject (401) | 503 (see probe.twin.auth).
    delay_ms: added before every answer, for latency targets.
    token_ttl_s: how long a token from /auth/login lives.
    agent_start_delay_ms / agent_done_delay_ms: how long the agent takes, after a user message,
      to send agent_started / then agent_completed (the seeds' agent start and processing).
    ws_cut_after_s: a load balancer's cut: a WebSocket session opened while it is set is cut
      (TCP closed, no close frame) this many seconds after its upgrade; 0: never.
    version and token_ttl_s are the deployment's settings rather than faults: a reset keeps them.
    """

    health: HttpFault = "ok"
    api: HttpFault = "ok"
    ws: WsFault = "ok"
    delay_ms: int = 0
    slow_ms: int = 2000
    version: str = "twin-1"
    auth: AuthFault = "ok"
    token_ttl_s: int = 300
    agent_start_delay_ms: int = 0
    agent_done_delay_ms: int = 0
    ws_cut_after_s: int = 0

    def changed(self, changes: dict[str, Any]) -> TwinState:
        """A copy with `changes` applied, or ValueError naming the bad field and what is allowed."""
        known = {f.name: f for f in fields(self)}
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown fault field {key!r} (known: {', '.join(known)})")
            if key in ("health", "api", "ws", "auth"):
                kinds = {"ws": WsFault, "auth": AuthFault}
                allowed = get_args(kinds.get(key, HttpFault))
                if value not in allowed:
                    raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
            elif key != "version":
                ms = value if isinstance(value, int) and not isinstance(value, bool) else -1
                if not 0 <= ms <= 600_000:
                    unit = "milliseconds" if key.endswith("_ms") else "seconds"
                    raise ValueError(f"{key}: expected {unit} 0..600000, got {value!r}")
            elif not isinstance(value, str) or not value:
                raise ValueError(f"version: expected a non-empty string, got {value!r}")
        return replace(self, **changes)

    def reset(self) -> TwinState:
        """Healthy again, with this state's deployment settings (version, token_ttl_s)."""
        return TwinState(version=self.version, token_ttl_s=self.token_ttl_s)


# {"state": TwinState, "counts": Counter, "release": Event, "threads": the threads created}
STATE = web.AppKey("twin_state", dict)
JWT_SECRET = web.AppKey("twin_jwt_secret", str)


def state_of(app: web.Application) -> TwinState:
    return app[STATE]["state"]  # type: ignore[no-any-return]


def verify_bearer(request: web.Request) -> dict[str, Any] | None:
    """The claims of a valid HS256 bearer JWT, or None. Without a configured secret, anyone passes.

    Shared by /api/agents/stop and the WebSocket endpoint so both check tokens the same way.
    """
    secret = request.app.get(JWT_SECRET)
    if not secret:
        return {}
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        token = request.query.get("access_token", "")
    if not token:
        return None
    try:
        return jwt.decode(  # type: ignore[no-any-return]
            token, secret, algorithms=["HS256", "HS384", "HS512"], options={"verify_aud": False}
        )
    except jwt.PyJWTError:
        return None


async def _misbehave(request: web.Request, fault: HttpFault) -> web.StreamResponse | None:
    """Apply `fault` to this request; None means answer normally."""
    shared = request.app[STATE]
    delay = state_of(request.app).delay_ms
    if delay:
        await asyncio.sleep(delay / 1000)
    if fault == "ok":
        return None
    if fault == "starting":
        return web.json_response({"status": "starting"}, status=503)
    if fault in ("503", "500"):
        return web.json_response({"status": "error", "fault": fault}, status=int(fault))
    if fault == "slow":
        await asyncio.sleep(state_of(request.app).slow_ms / 1000)
        return None
    if fault == "hang":
        await shared["release"].wait()  # set when the twin stops, so shutdown is prompt
        return web.json_response({"status": "released"}, status=503)
    transport = request.transport
    if fault == "drop":
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError  # nothing more to send on a dropped connection
    if fault == "garbage":
        if transport is not None:
            transport.write(b"this is not HTTP at all\r\n\r\n")
            transport.close()
        raise asyncio.CancelledError
    if fault == "degraded":
        return web.json_response({"status": "degraded", "version": state_of(request.app).version})
    if fault == "big":
        return web.Response(body=b"x" * (2 << 20), content_type="text/plain")
    return None


def _count(request: web.Request) -> None:
    request.app[STATE]["counts"][request.path] += 1


async def _health(request: web.Request) -> web.StreamResponse:
    _count(request)
    state = state_of(request.app)
    if (answer := await _misbehave(request, state.health)) is not None:
        return answer
    return web.json_response({"status": "healthy", "version": state.version})


async def _api_health(request: web.Request) -> web.StreamResponse:
    _count(request)
    state = state_of(request.app)
    if (answer := await _misbehave(request, state.health)) is not None:
        return answer
    return web.json_response({"status": "ok", "version": state.version, "database": "ok"})


async def _agents_stop(request: web.Request) -> web.StreamResponse:
    _count(request)
    claims = verify_bearer(request)
    if claims is None:
        return web.json_response({"error": "unauthorized"}, status=401)
    if (answer := await _misbehave(request, state_of(request.app).api)) is not None:
        return answer
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "expected a JSON body"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("agent_id"), str):
        return web.json_response({"error": "expected {\"agent_id\": string}"}, status=422)
    return web.json_response(
        {"stopped": True, "agent_id": body["agent_id"], "user": claims.get("sub")}
    )


# --- control API -----------------------------------------------------------------------------


def _state_json(app: web.Application) -> dict[str, Any]:
    return {**asdict(state_of(app)), "requests": dict(app[STATE]["counts"])}


async def _get_state(request: web.Request) -> web.StreamResponse:
    return web.json_response(_state_json(request.app))


async def _set_fault(request: web.Request) -> web.StreamResponse:
    try:
        changes = await request.json()
    except ValueError:
        return web.json_response({"error": "expected a JSON object"}, status=400)
    if not isinstance(changes, dict):
        return web.json_response({"error": "expected a JSON object"}, status=400)
    shared = request.app[STATE]
    try:
        shared["state"] = shared["state"].changed(changes)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(_state_json(request.app))


async def _reset(request: web.Request) -> web.StreamResponse:
    shared = request.app[STATE]
    shared["state"] = shared["state"].reset()
    return web.json_response(_state_json(request.app))


def make_app(state: TwinState | None = None, jwt_secret: str | None = None,
             accounts: dict[str, str] | None = None) -> web.Application:
    """The twin's aiohttp app. With `jwt_secret`, /api/agents/stop (and /ws) need a valid JWT;
    /auth/login issues one to `accounts` (email -> password; default the E2E account)."""
    app = web.Application()
    app[STATE] = {"state": state or TwinState(), "counts": Counter(), "release": asyncio.Event(),
                  "threads": OrderedDict()}
    if jwt_secret:
        app[JWT_SECRET] = jwt_secret
    app.router.add_get("/health", _health)
    app.router.add_get("/api/health", _api_health)
    app.router.add_post("/api/agents/stop", _agents_stop)
    app.router.add_get("/_twin/state", _get_state)
    app.router.add_post("/_twin/fault", _set_fault)
    app.router.add_post("/_twin/reset", _reset)
    add_ws_routes(app, STATE, verify_bearer)  # /ws: JWT-checked chat session; follows .ws
    add_auth_routes(app, STATE, lambda a: a.get(JWT_SECRET), accounts)  # follows .auth
    add_thread_routes(app, STATE, verify_bearer, _misbehave)  # POST /api/threads; follows .api

    async def _release_hung(app: web.Application) -> None:
        app[STATE]["release"].set()

    app.on_shutdown.append(_release_hung)
    return app


class Twin:
    """The twin as a Python object, for tests and `probe demo`.

        twin = Twin(version="abc")
        base = await twin.start("127.0.0.1", 0)   # "http://127.0.0.1:PORT"
        twin.set_fault(health="503")
        await twin.stop()
    """

    def __init__(
        self, *, version: str = "twin-1", jwt_secret: str | None = None, starting: float = 0.0,
        accounts: dict[str, str] | None = None,
    ) -> None:
        self.app = make_app(TwinState(version=version), jwt_secret, accounts)
        self._starting = starting
        self._runner: web.AppRunner | None = None
        self._boot: asyncio.Task[None] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.tls = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def state(self) -> TwinState:
        return state_of(self.app)

    def requests(self, path: str) -> int:
        """How many requests `path` has had (for tests that count probes)."""
        return int(self.app[STATE]["counts"][path])

    def set_fault(self, **changes: Any) -> TwinState:
        self.app[STATE]["state"] = self.state.changed(changes)
        return self.state

    def reset(self) -> TwinState:
        self.app[STATE]["state"] = self.state.reset()
        return self.state

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen on host:port (0: a free port), over TLS with `ssl_context`; the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self.tls = ssl_context is not None
        site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self.host, self.port = host, self._runner.addresses[0][1]  # the real port when 0 asked
        if self._starting > 0:
            self.set_fault(health="starting")
            self._boot = asyncio.create_task(self._finish_boot(self._starting))
        return self.url

    async def _finish_boot(self, after: float) -> None:
        await asyncio.sleep(after)
        if self.state.health == "starting":
            self.set_fault(health="ok")

    async def stop(self) -> None:
        if self._boot is not None:
            self._boot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._boot
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _serve(args: argparse.Namespace) -> None:
    secret = os.environ.get(args.jwt_secret_env) or DEV_JWT_SECRET
    password = os.environ.get("TWIN_E2E_PASSWORD") or DEV_E2E_PASSWORD
    twin = Twin(version=args.build, jwt_secret=secret, starting=args.starting,
                accounts={E2E_EMAIL: password})
    url = await twin.start(args.host, args.port)
    print(f"twin listening on {url}  (faults: curl -X POST {url}/_twin/fault "
          f"-d '{{\"health\": \"503\"}}')", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Our own handlers, as the daemon has: SIGTERM (a container's stop) ends it cleanly too, and
    # they hold even when the twin was started with SIGINT ignored (`&` in a script).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await twin.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe.twin", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--build", default="twin-1", help="the version /health reports")
    p.add_argument("--starting", type=float, default=0.0, metavar="SECONDS",
                   help="answer 503 {\"status\": \"starting\"} for this long first")
    p.add_argument("--jwt-secret-env", default="TWIN_JWT_SECRET", metavar="VAR",
                   help=f"environment variable with the JWT secret (default: {DEV_JWT_SECRET!r})")
    args = p.parse_args(argv)
    asyncio.run(_serve(args))
    return 0

