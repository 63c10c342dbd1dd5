"""The twin's thread creation: `POST /api/threads` with a bearer token from the auth service
answers 201 `{"id": ID, "title": ...}` (the id also in `X-Thread-Id`), as the staging chat
backend does before a client opens `/ws?thread=ID`.

It checks the token as /ws does (the twin's `verify_bearer`: a token the auth service signed with
another secret is 401 here and 403 at the upgrade) and follows the twin's `api` switch (503,
slow, hang, ...). The threads it created are remembered, at most MAX_THREADS of them (the oldest
forgotten first: a prober creating one per probe never grows the twin), so the WebSocket endpoint
can refuse a thread it never created.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

MAX_THREADS = 1024
_TITLE_MAX = 200  # characters of a title kept and echoed

Verify = Callable[[web.Request], "dict[str, Any] | None"]
Misbehave = Callable[[web.Request, Any], Awaitable["web.StreamResponse | None"]]
THREADS_CONFIG = web.AppKey("twin_threads_config", dict)


def add_thread_routes(
    app: web.Application,
    state_key: web.AppKey[dict],  # type: ignore[type-arg]
    verify: Verify,
    misbehave: Misbehave,
    path: str = "/api/threads",
) -> None:
    """Serve thread creation at `path`. The twin passes its state key, token check and fault
    behaviour in rather than this module importing them (see probe.twin.ws.add_ws_routes)."""
    app[THREADS_CONFIG] = {"state_key": state_key, "verify": verify, "misbehave": misbehave}
    app.router.add_post(path, _create)


def known_thread(shared: dict[str, Any], thread_id: str) -> bool:
    """Whether the twin created `thread_id` (and has not forgotten it yet)."""
    threads: OrderedDict[str, str] = shared["threads"]
    return thread_id in threads


def _remember(shared: dict[str, Any], thread_id: str, title: str) -> None:
    threads: OrderedDict[str, str] = shared["threads"]
    threads[thread_id] = title
    while len(threads) > MAX_THREADS:
        threads.popitem(last=False)


async def _create(request: web.Request) -> web.StreamResponse:
    cfg = request.app[THREADS_CONFIG]
    shared: dict[str, Any] = request.app[cfg["state_key"]]
    shared["counts"][request.path] += 1
    claims = cfg["verify"](request)
    if claims is None:
        return web.json_response({"error": "unauthorized"}, status=401)
    if (answer := await cfg["misbehave"](request, shared["state"].api)) is not None:
        return answer
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return web.json_response({"error": "expected a JSON body"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "expected a JSON object"}, status=422)
    title = str(body.get("title") or "untitled")[:_TITLE_MAX]
    thread_id = f"thr-{uuid.uuid4().hex[:16]}"
    _remember(shared, thread_id, title)
    return web.json_response({"id": thread_id, "title": title, "user": claims.get("sub")},
                             status=201, headers={"X-Thread-Id": thread_id})
