"""The twin's WebSocket endpoint: a JWT-authenticated chat session with switchable faults.

It behaves like the staging chat backend the probes were written for: the upgrade needs a valid
HS256 bearer JWT (Authorization header or `access_token` query parameter, checked by the twin's
own `verify_bearer`, so /api/* and /ws agree), optionally an audience and required headers such
as `X-Test-Type: E2E`. After the upgrade, `{"type": "ping"}` is answered with `{"type": "pong"}`
and `{"type": "user_message"}` with the agent's events: agent_started after the twin's
`agent_start_delay_ms`, agent_thinking, then agent_completed after `agent_done_delay_ms`.
`/ws?thread=ID` joins a thread POST /api/threads created (its events carry `thread`); an id the
twin never created closes the session with 4004 "thread not found".

Faults follow the twin's `ws` switch (POST /_twin/fault {"ws": "crash"}), read per message, so a
switch reaches open sessions too:
    reject  the upgrade is answered 403
    crash   a user message closes the session with 1011 "Internal error" (pings still answered,
            as a backend that crashes in its message handler would)
    drop    a user message makes the server cut the TCP connection, no close frame
    silent  the session opens, then nothing is ever answered
and its `ws_cut_after_s` switch (read at the upgrade) cuts a session that many seconds after it
opened, without a close frame, as a load balancer's timeout does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from probe.twin.threads import known_thread

# audience, required_headers, open, peak, and the twin's own state key and token check
WS_CONFIG = web.AppKey("twin_ws_config", dict)
Verify = Callable[[web.Request], "dict[str, Any] | None"]


def add_ws_routes(
    app: web.Application,
    state_key: web.AppKey[dict],  # type: ignore[type-arg]
    verify: Verify,
    path: str = "/ws",
    *,
    audience: str | None = None,
    required_headers: dict[str, str | None] | None = None,
) -> None:
    """Serve the endpoint at `path`. required_headers: name -> exact value, or None for any.

    The twin passes its state key and token check in, rather than this module importing them:
    probe.twin imports this module, so importing it back would make a cycle.
    """
    app[WS_CONFIG] = {"audience": audience, "required_headers": dict(required_headers or {}),
                      "open": 0, "peak": 0, "state_key": state_key, "verify": verify}
    app.router.add_get(path, _handle)


def configure_ws(
    app: web.Application,
    *,
    audience: str | None = None,
    required_headers: dict[str, str | None] | None = None,
) -> None:
    """Change what the upgrade requires (allowed while the twin runs); also resets `peak`."""
    app[WS_CONFIG].update(audience=audience, required_headers=dict(required_headers or {}),
                          peak=app[WS_CONFIG]["open"])


def ws_sessions(app: web.Application) -> tuple[int, int]:
    """(sessions open now, most open at once since start or configure_ws)."""
    cfg = app[WS_CONFIG]
    return int(cfg["open"]), int(cfg["peak"])


def _twin(request: web.Request) -> dict[str, Any]:
    """The twin's shared dict: its current TwinState ("state") and request counts ("counts")."""
    shared: dict[str, Any] = request.app[request.app[WS_CONFIG]["state_key"]]
    return shared


def _refusal(request: web.Request, cfg: dict[str, Any]) -> str | None:
    """Why the upgrade is refused (403), or None. Never echoes a token."""
    if _twin(request)["state"].ws == "reject":
        return "rejected (twin fault)"
    claims = cfg["verify"](request)
    if claims is None:
        return "missing or invalid token"
    audience = cfg["audience"]
    if audience is not None:
        aud = claims.get("aud")
        allowed = aud if isinstance(aud, list) else [aud]
        if audience not in allowed:
            return "token audience not accepted"
    for name, want in cfg["required_headers"].items():
        got = request.headers.get(name)
        if got is None or (want is not None and got != want):
            return f"missing or wrong header {name}"
    return None


async def _handle(request: web.Request) -> web.StreamResponse:
    cfg = request.app[WS_CONFIG]
    _twin(request)["counts"][request.path] += 1
    if (why := _refusal(request, cfg)) is not None:
        return web.json_response({"error": why}, status=403)
    ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
    await ws.prepare(request)
    thread = request.query.get("thread")
    if thread is not None and not known_thread(_twin(request), thread):
        await ws.close(code=4004, message=b"thread not found")
        return ws
    cut_after = _twin(request)["state"].ws_cut_after_s
    cut = None
    if cut_after and request.transport is not None:
        cut = asyncio.get_running_loop().call_later(cut_after, request.transport.abort)
    cfg["open"] += 1
    cfg["peak"] = max(cfg["peak"], cfg["open"])
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if not await _answer(request, ws, msg.data, thread):
                break
    finally:
        cfg["open"] -= 1
        if cut is not None:
            cut.cancel()
    return ws


async def _answer(request: web.Request, ws: web.WebSocketResponse, text: str,
                  thread: str | None) -> bool:
    """Answer one message; False when the session is over (crashed or dropped)."""
    state = _twin(request)["state"]
    if state.ws == "silent":
        return True
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    kind = message.get("type") if isinstance(message, dict) else None
    if state.delay_ms:
        await asyncio.sleep(state.delay_ms / 1000)
    if kind == "ping":
        await ws.send_json({"type": "pong"})
        return True
    if state.ws == "crash":
        await ws.close(code=1011, message=b"Internal error")
        return False
    if state.ws == "drop":
        if request.transport is not None:
            request.transport.abort()
        return False
    if kind == "user_message":
        assert isinstance(message, dict)
        run = {"run_id": f"run-{_twin(request)['counts'][request.path]}"}
        if thread is not None:
            run["thread"] = thread
        if state.agent_start_delay_ms:
            await asyncio.sleep(state.agent_start_delay_ms / 1000)
        await ws.send_json({"type": "agent_started", **run})
        await ws.send_json({"type": "agent_thinking", **run})
        if state.agent_done_delay_ms:
            await asyncio.sleep(state.agent_done_delay_ms / 1000)
        reply = f"echo: {str(message.get('text', ''))[:200]}"
        await ws.send_json({"type": "agent_completed", **run, "text": reply})
        return True
    await ws.send_json({"type": "error", "error": "unknown message type"})
    return True
