"""A /metrics render must not stall the event loop, and must not trip over the loop's writes.

The render runs in a worker thread (probe/daemon/server.py) while the loop records outcomes and
reloads add and forget targets. These tests hold a real render open with a gate (an Event the
render waits on before doing the real work) to see what the loop does meanwhile, and race
renders against reloads to show that a render never raises.
"""

from __future__ import annotations

import asyncio
import gzip
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from helpers import serving, until
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from probe.config import Target, parse_config
from probe.daemon.history import History
from probe.daemon.server import Runtime, make_app
from probe.metrics import Metrics
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness

TARGETS = 1500


class GatedMetrics(Metrics):
    """Metrics whose render starts, then waits for the test to open the gate before rendering
    for real: were the render on the event loop, the loop would wait with it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.renders = 0

    def render(self, openmetrics: bool = False) -> bytes:
        self.renders += 1
        self.entered.set()
        if not self.gate.wait(10):
            raise TimeoutError("the test never opened the gate")
        return super().render(openmetrics)


class Arrivals:
    """Counts requests as they reach the app; the handler runs on, without yielding to the
    loop, until it joins (or starts) a render, so a count seen by the test means joined."""

    def __init__(self) -> None:
        self.count = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        return await handler(request)


async def scrape(http: aiohttp.ClientSession, base: str) -> bytes:
    """One /metrics body (aiohttp asks for gzip and inflates it)."""
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        return await resp.read()


def outcome_for(target: Target, i: int = 0) -> Outcome:
    if target.kind == "websocket":
        return Outcome(target.name, "websocket", True, 0.01, status_code=101, close_code=1000,
                       latency={"total": 0.01, "handshake": 0.002})
    if i % 3 == 2:
        return Outcome.failed(target.name, "http", Failure.TIMEOUT, "timeout", 1.0)
    return Outcome(target.name, "http", True, 0.01, status_code=200, phases={"connect": 0.001},
                   latency={"total": 0.01 * (i % 50), "ttfb": 0.009})


@pytest.fixture
async def big() -> AsyncIterator[tuple[str, Runtime, GatedMetrics, Arrivals]]:
    lines = "".join(f"  - {{name: t{i}, url: 'http://127.0.0.1:9/x'}}\n" for i in range(TARGETS))
    config = parse_config("targets:\n" + lines, env={})
    metrics = GatedMetrics()
    for target in config.targets:
        metrics.add_target(target)
        metrics.record(outcome_for(target), target)
    runtime = Runtime(config=config, readiness=Readiness(config), metrics=metrics,
                      history=History.from_config(config))
    arrivals = Arrivals()
    app = make_app(runtime)
    app.middlewares.append(arrivals.middleware)
    async with serving(app) as base:
        yield base, runtime, metrics, arrivals
        metrics.gate.set()  # a failed test must not leave a render thread waiting


async def test_other_requests_are_answered_while_metrics_render(
    big: tuple[str, Runtime, GatedMetrics, Arrivals],
) -> None:
    base, runtime, metrics, _ = big
    async with aiohttp.ClientSession() as http:
        scraping = asyncio.create_task(scrape(http, base))
        await until(metrics.entered.is_set, "the /metrics render to start", every=0.001)
        async with http.get(f"{base}/livez") as resp:
            assert resp.status == 200
        assert runtime.renders and not scraping.done()
        metrics.gate.set()
        body = await scraping
    assert body.count(b"\nprobe_success{") == TARGETS
    assert not runtime.renders, "a finished render must not be kept"


async def test_concurrent_scrapes_share_one_render(
    big: tuple[str, Runtime, GatedMetrics, Arrivals],
) -> None:
    base, runtime, metrics, arrivals = big
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(scrape(http, base))
        await until(metrics.entered.is_set, "the first render to start", every=0.001)
        (shared,) = runtime.renders.values()
        second = asyncio.create_task(scrape(http, base))
        await until(lambda: arrivals.count >= 2, "the second scrape to arrive", every=0.001)
        metrics.gate.set()
        a, b = await asyncio.gather(first, second)
    assert metrics.renders == 1
    assert shared.done() and a == b == gzip.decompress(shared.result())  # aiohttp asks gzip


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every few microseconds, so the race below interleaves at many points."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_renders_racing_reloads_and_records_never_raise(fast_switching: None) -> None:
    """What the worker thread sees while the loop records, re-adds (a kind change), forgets
    and re-creates targets: every render completes and parses as valid OpenMetrics."""
    config = parse_config("targets:\n" + "".join(
        f"  - {{name: t{i}, url: '{'ws' if i % 4 == 0 else 'http'}://127.0.0.1:9/x'"
        + (", latency: {measure: ttfb, p95: 1s}" if i % 4 == 1 else "") + "}\n"
        for i in range(40)), env={})
    swapped = {t.name: t.model_copy(update={"url": ("http" if t.kind == "websocket" else "ws")
                                            + "://127.0.0.1:9/x", "latency": None})
               for t in config.targets}
    metrics = Metrics()
    for target in config.targets:
        metrics.add_target(target)
    stop = threading.Event()
    errors: list[BaseException] = []
    bodies: list[bytes] = []

    def render_loop() -> None:
        try:
            while not stop.is_set():
                bodies.append(metrics.render(openmetrics=len(bodies) % 2 == 1))
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    renderer = threading.Thread(target=render_loop)
    renderer.start()
    try:
        for i in range(3000):
            target = config.targets[i % len(config.targets)]
            if i % 7 == 0:
                metrics.forget(target.name)
            elif i % 11 == 0:
                metrics.add_target(swapped[target.name])  # other kind: a new series object
            elif i % 13 == 0:
                metrics.add_target(target)
            current = swapped[target.name] if i % 2 else target
            metrics.record(outcome_for(current, i), current)
            if i % 17 == 0:  # a failure outside the kind's usual set: a new counter
                metrics.record(Outcome.failed(current.name, current.kind, Failure.LATENCY,
                                              "odd", 0.1), current)
    finally:
        stop.set()
        renderer.join(30)
    assert not errors, errors
    assert len(bodies) >= 2, "the renderer never overlapped the writes"
    for body in bodies[-2:] + bodies[:: max(1, len(bodies) // 20)]:
        text = body.decode()  # OpenMetrics' parser also checks each histogram's consistency
        parse = om_parse if text.endswith("# EOF\n") else text_parse
        assert "probe_success" in {f.name for f in parse(text)}
