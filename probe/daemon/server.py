"""The daemon's HTTP face: /metrics, /livez, /readyz, /api/v1/status, /status and /-/reload.

/readyz is what CI gates on, so its status code alone is the answer (200 ready, 503 not); the
JSON body names the cause per target. It answers GET, HEAD and POST alike: Flagger's webhooks
POST a JSON payload (ignored here) and read only the status code. With PROBE_GATE_TOKEN set,
anonymous callers still get the status code and `{"ready": bool}` (a load balancer or an uptime
check needs no more), but the details — which name internal hosts and failures — need the bearer
token.

/livez means "the daemon is alive and its scheduler is not stuck" (see Scheduler.stuck): a
blocked event loop or a wedged target loop turns it 503, so an orchestrator restarts us.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from probe import __version__
from probe.config import Config, Target
from probe.daemon.history import History
from probe.daemon.scheduler import Scheduler
from probe.exposition import negotiate
from probe.metrics import Metrics
from probe.readiness import Readiness
from probe.report import public_url
from probe.statuspage import add_status_routes

RUNTIME = web.AppKey("runtime", object)
MAX_POINTS = 1000


@dataclass
class Runtime:
    """Everything the server reads; the daemon swaps `config` on reload and sets `draining`."""

    config: Config
    readiness: Readiness
    metrics: Metrics
    history: History
    scheduler: Scheduler | None = None
    gate_token: str | None = None
    draining: bool = False
    clock: Callable[[], float] = field(default=time.time)
    renders: dict[str, asyncio.Future[bytes]] = field(default_factory=dict)  # in-flight /metrics
    # POST /-/reload calls it (Daemon.reload; True if a new config was applied); None: no route.
    reload: Callable[[], Awaitable[bool] | bool] | None = None
    reloading: asyncio.Future[bool] | None = None  # the one reload in flight, shared by callers


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]  # type: ignore[return-value]


def authorized(request: web.Request, token: str | None) -> bool:
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _json(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(
        data, status=status, headers={"Cache-Control": "no-store", **headers}
    )


async def _render(rt: Runtime, openmetrics: bool, gzipped: bool) -> bytes:
    """Render (and gzip) the exposition in a worker thread, one render per variant at a time.

    The render is ~35 ms of CPU at 2 000 targets and gzip another ~10: enough to delay every
    probe due meanwhile if done on the event loop. In a thread the loop keeps running (see
    loop.SWITCH_INTERVAL; zlib releases the GIL), and concurrent scrapers share the one render.
    gzip level 1: ~4x less CPU than aiohttp's level 6 for a body ~10% larger.
    """
    key = ("openmetrics" if openmetrics else "text") + ("+gzip" if gzipped else "")
    pending = rt.renders.get(key)
    if pending is None:
        pending = asyncio.ensure_future(
            asyncio.to_thread(_exposition, rt.metrics, openmetrics, gzipped))
        rt.renders[key] = pending
        pending.add_done_callback(lambda _: rt.renders.pop(key, None))
    return await asyncio.shield(pending)


def _exposition(metrics: Metrics, openmetrics: bool, gzipped: bool) -> bytes:
    body = metrics.render(openmetrics)
    return gzip.compress(body, compresslevel=1, mtime=0) if gzipped else body


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    rt = _runtime(request)
    rt.metrics.set_readiness(*rt.readiness.ready_flags(rt.clock()))
    openmetrics, content_type = negotiate(request.headers.get("Accept", ""))
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=await _render(rt, openmetrics, gzipped), headers=headers)


async def livez(request: web.Request) -> web.StreamResponse:
    rt = _runtime(request)
    if rt.draining:
        return _json({"alive": True, "draining": True})
    reasons = rt.scheduler.stuck() if rt.scheduler is not None else []
    if reasons:
        return _json({"alive": False, "reasons": reasons}, status=503)
    return _json({"alive": True})


async def readyz(request: web.Request) -> web.StreamResponse:
    rt = _runtime(request)
    if rt.draining:
        return _json({"ready": False, "draining": True}, status=503)
    verdict = rt.readiness.verdict(rt.clock())
    status = 200 if verdict.ready else 503
    if not authorized(request, rt.gate_token):
        return _json({"ready": verdict.ready}, status=status)
    return _json(verdict.to_dict(), status=status)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(request.query.get(name, default))))
    except ValueError:
        return default


def _target_extra(target: Target) -> dict[str, Any]:
    return {
        "url": public_url(target.url or (target.steps[0].url if target.steps else "")),
        "interval": target.interval, "timeout": target.timeout,
        "steps": [{"name": s.name, "kind": s.kind, "url": public_url(s.url)}
                  for s in target.steps] or None,  # a flow's, each URL as a template
        "method": target.method if target.kind == "http" else None,
        "success_threshold": target.success_threshold,
        "failure_threshold": target.failure_threshold,
        "latency_target": (target.latencies[0].model_dump(mode="json") if target.latencies
                           else None),
        "latency_targets": [b.model_dump(mode="json") for b in target.latencies],
    }


async def status_api(request: web.Request) -> web.StreamResponse:
    """Full state for the status page: verdicts plus URL, cadence and recent history per target."""
    rt = _runtime(request)
    if not authorized(request, rt.gate_token):
        return _json({"error": "a bearer token is required"}, status=401,
                     **{"WWW-Authenticate": 'Bearer realm="stageprobe"'})
    now = rt.clock()
    points = _int_param(request, "points", 120, 1, MAX_POINTS)
    verdict = rt.readiness.verdict(now)
    targets = {t.name: t for t in rt.config.targets}
    out = []
    for tv in verdict.targets:
        entry = tv.to_dict()
        target = targets.get(tv.name)
        if target is not None:
            entry.update(_target_extra(target))
            entry["history"] = rt.history.snapshot(tv.name, now, max_points=points,
                                                   measure=target.measure)
        out.append(entry)
    return _json({
        "ready": verdict.ready and not rt.draining, "since": verdict.since, "generated_at": now,
        "draining": rt.draining, "version": __version__, "targets": out,
    })


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


async def reload_handler(request: web.Request) -> web.StreamResponse:
    """POST /-/reload: re-read the config file, as SIGHUP does, for images without a shell.

    With PROBE_GATE_TOKEN set it needs `Authorization: Bearer` with it, from anywhere. Without a
    token only callers at 127.0.0.1 or ::1 may reload, i.e. the same pod or container
    (`kubectl exec ... probe reload`): like Prometheus' lifecycle API it is not open to the
    network by default, but it needs no flag, because a reload can only apply a valid file or
    keep the running one. Concurrent calls share one reload.
    """
    rt = _runtime(request)
    if rt.gate_token:
        if not authorized(request, rt.gate_token):
            return _json({"error": "a bearer token is required"}, status=401,
                         **{"WWW-Authenticate": 'Bearer realm="stageprobe"'})
    elif request.remote not in LOOPBACK:
        return _json({"error": "reload is allowed from 127.0.0.1 only (no PROBE_GATE_TOKEN set)"},
                     status=403)
    if rt.draining or rt.reload is None:
        return _json({"reloaded": False, "error": "not reloading: the daemon is stopping"}
                     if rt.draining else {"reloaded": False, "error": "no config file to reload"},
                     status=503)
    if rt.reloading is None:
        rt.reloading = asyncio.ensure_future(_reload_once(rt, rt.reload))
    applied = await asyncio.shield(rt.reloading)
    if not applied:
        return _json({"reloaded": False,
                      "error": "the new config is invalid; the running one stays (see the log)"},
                     status=500)
    return _json({"reloaded": True, "targets": len(rt.config.targets)})


async def _reload_once(rt: Runtime, reload: Callable[[], Awaitable[bool] | bool]) -> bool:
    try:
        result = reload()
        return bool(await result) if inspect.isawaitable(result) else bool(result)
    finally:
        rt.reloading = None


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/status")


def make_app(runtime: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)  # and HEAD
    app.router.add_post("/readyz", readyz)  # Flagger's webhooks POST their payload
    app.router.add_get("/api/v1/status", status_api)
    app.router.add_post("/-/reload", reload_handler)
    add_status_routes(app)
    return app
