"""A big /metrics render must not stall the event loop that times the probes.

prometheus_client needs ~1 s to render a few thousand targets. Rendered on the loop, every probe
and every other request would wait for it; rendered in a worker thread, they do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from probe.config import parse_config
from probe.history import History
from probe.metrics import Metrics
from probe.outcome import Outcome
from probe.readiness import Readiness
from probe.server import Runtime, make_app

TARGETS = 1500


@pytest.fixture
async def big() -> AsyncIterator[tuple[str, Runtime]]:
    lines = "".join(f"  - {{name: t{i}, url: 'http://127.0.0.1:9/x'}}\n" for i in range(TARGETS))
    config = parse_config("targets:\n" + lines, env={})
    metrics = Metrics()
    for target in config.targets:
        metrics.add_target(target)
        metrics.record(
            Outcome(target=target.name, kind="http", success=True, duration=0.01,
                    status_code=200, phases={"connect": 0.001}, latency={"total": 0.01}),
            target,
        )
    runtime = Runtime(config=config, readiness=Readiness(config), metrics=metrics,
                      history=History.from_config(config))
    runner = web.AppRunner(make_app(runtime), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", runtime
    await runner.cleanup()


async def _until_rendering(runtime: Runtime) -> None:
    for _ in range(2000):
        if runtime.renders:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no /metrics render started")


async def test_other_requests_are_answered_while_metrics_render(big: tuple[str, Runtime]) -> None:
    base, runtime = big
    async with aiohttp.ClientSession() as http:

        async def scrape() -> bytes:
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                return await resp.read()

        scraping = asyncio.create_task(scrape())
        await _until_rendering(runtime)
        async with http.get(f"{base}/livez") as resp:
            await resp.read()
        assert not scraping.done(), "/livez had to wait for the /metrics render"
        body = await scraping
    assert body.count(b"probe_success{") == TARGETS
    assert not runtime.renders, "a finished render must not be kept"


async def test_concurrent_scrapes_share_one_render(big: tuple[str, Runtime]) -> None:
    base, runtime = big
    async with aiohttp.ClientSession() as http:

        async def scrape() -> bytes:
            async with http.get(f"{base}/metrics") as resp:
                return await resp.read()

        first = asyncio.create_task(scrape())
        await _until_rendering(runtime)
        shared = next(iter(runtime.renders.values()))
        second = asyncio.create_task(scrape())
        a, b = await asyncio.gather(first, second)
        assert shared.done() and a == b == shared.result()
