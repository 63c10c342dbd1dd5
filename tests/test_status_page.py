"""/status in real headless Chromium, against a real `probe run` probing the twin (or a hostile
backend).

The page must show every target, follow a failure by polling (no reload), ask for the gate token
when the API needs one, and show text from configs and backends as text, never as markup.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import free_port, run_daemon, serving

from probe.twin import Twin
from tests.statuspage_util import CHROMIUM, CHROMIUM_ARGS, ConsoleErrors

INTERVAL = 0.3
FAILURE_THRESHOLD = 2
REFRESH = 2.0  # the page's default poll period
STARTUP_MS = 20_000  # first page load and first results: generous, CI has 2 cores
SECRET = "page-test-jwt-secret-0f9e8d7c-4b3a2918"
TARGETS = ("backend-health", "api-health", "agents-stop", "legacy-admin")

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian chromium"),
    pytest.mark.twin(version="build-4711", jwt_secret=SECRET),
]


def twin_config(base: str) -> str:
    closed = free_port()  # nothing listens there: a refused, non-critical target
    return f"""
defaults: {{interval: {INTERVAL}s, timeout: {INTERVAL}s, success_threshold: 1,
            failure_threshold: {FAILURE_THRESHOLD}}}
credentials:
  e2e-user:
    jwt: {{secret: "${{JWT_SECRET}}", algorithm: HS256, ttl: 10m, claims: {{sub: e2e-003}}}}
targets:
  - name: backend-health
    url: {base}/health
    expect: {{status: [200], json: {{status: healthy}}}}
    version_path: version
    latency: {{p95: 300ms, min_samples: 1}}  # = timeout: drawn, never breached
  - name: api-health
    url: {base}/api/health
  - name: agents-stop
    url: {base}/api/agents/stop
    method: POST
    json_body: {{agent_id: probe}}
    credential: e2e-user
    expect: {{status: [200], json: {{stopped: true}}}}
  - name: legacy-admin
    url: http://127.0.0.1:{closed}/admin
    critical: false
"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


def row(name: str) -> str:
    return f'article.target[data-target="{name}"]'


async def test_page_shows_targets_and_follows_a_failure_without_reload(
    twin: Twin, browser: Any, tmp_path: Path
) -> None:
    env = {"JWT_SECRET": SECRET}
    async with run_daemon(twin_config(twin.url), tmp_path, env) as daemon:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        console = ConsoleErrors(page)
        await page.goto(daemon.url + "/status")

        # Every target gets a row; the healthy ones turn ready, the refused one says why.
        for name in TARGETS:
            await page.wait_for_selector(row(name), timeout=STARTUP_MS)
        await page.wait_for_selector(f'{row("backend-health")}.is-ready', timeout=STARTUP_MS)
        await page.wait_for_selector(f'{row("legacy-admin")} .t-failure', timeout=STARTUP_MS)
        assert await page.text_content(f'{row("legacy-admin")} .t-failure') == "refused"
        # legacy-admin is not critical: the gate is still ready.
        await page.wait_for_selector("#gate.ok", timeout=STARTUP_MS)
        health = await page.text_content(row("backend-health"))
        # version, status code, latency target
        assert "build-4711" in health and "200" in health and "300 ms" in health
        assert await page.locator(f'{row("backend-health")} svg path.lat').count() == 1

        await page.evaluate("window.__loadMarker = 'first-load'")
        updates_before = int(await page.get_attribute("html", "data-updates") or 0)

        twin.set_fault(health="503")
        switched = time.monotonic()
        budget = REFRESH + FAILURE_THRESHOLD * INTERVAL + 6.0  # generous: CI has 2 cores
        await page.wait_for_function(
            """name => {
                const r = document.querySelector(`article.target[data-target="${name}"]`);
                return r && r.dataset.state === 'failing'
                    && r.querySelector('.t-failure')?.textContent === 'http_status'
                    && r.textContent.includes('503');
            }""",
            arg="backend-health", timeout=budget * 1000,
        )
        assert time.monotonic() - switched < budget
        # Same document: no reload, no navigation; the page got there by polling.
        assert await page.evaluate("window.__loadMarker") == "first-load"
        assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert int(await page.get_attribute("html", "data-updates") or 0) > updates_before
        await page.wait_for_selector("#gate.bad", timeout=5_000)
        assert "backend-health" in (await page.text_content("#summary") or "")
        assert "Not ready" in await page.title()
        # The state change is listed with its cause.
        await page.wait_for_selector("#changes-box:not([hidden])", timeout=5_000)
        changes = await page.text_content("#changes")
        assert "backend-health" in changes and "failing" in changes and "http_status" in changes

        await page.screenshot(path=str(tmp_path / "status-desktop.png"), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.wait_for_function("document.documentElement.scrollWidth <= 390")
        await page.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)
        await page.close()
    assert console.errors == []
    assert (tmp_path / "status-desktop.png").stat().st_size > 10_000


async def test_token_prompt_when_the_api_needs_the_gate_token(
    twin: Twin, browser: Any, tmp_path: Path
) -> None:
    gate = "gate-token-for-the-page-test-5d1c"
    env = {"JWT_SECRET": SECRET, "PROBE_GATE_TOKEN": gate}
    async with run_daemon(twin_config(twin.url), tmp_path, env) as daemon:
        context = await browser.new_context()
        page = await context.new_page()
        # Chromium reports every 401 (and a not-ready /readyz's 503) as a console error; those
        # are expected here.
        console = ConsoleErrors(page, allow=("status of 401", "status of 503"))
        await page.goto(daemon.url + "/status")
        await page.wait_for_selector("#auth:not([hidden])", timeout=STARTUP_MS)
        assert await page.locator("article.target").count() == 0
        # The gate's bare answer (what /readyz tells anyone) is still shown.
        await page.wait_for_selector("#gate.ok, #gate.bad", timeout=STARTUP_MS)
        assert "token" in (await page.text_content("#summary") or "")

        await page.fill("#token", "wrong-token")
        await page.click("#auth button")
        await page.wait_for_selector("#auth-error:not([hidden])", timeout=STARTUP_MS)
        await page.screenshot(path=str(tmp_path / "status-token.png"))

        await page.fill("#token", gate)
        await page.click("#auth button")
        for name in TARGETS:
            await page.wait_for_selector(row(name), timeout=STARTUP_MS)
        assert await page.is_hidden("#auth")
        assert await page.evaluate("sessionStorage.getItem('stageprobe.gateToken')") == gate
        await page.reload()  # the token lasts for the tab
        await page.wait_for_selector(row("api-health"), timeout=STARTUP_MS)
        assert await page.is_hidden("#auth")
        await context.close()
    assert console.errors == []


async def test_backend_text_is_shown_as_text(browser: Any, tmp_path: Path) -> None:
    hostile = '<img src=x onerror="window.__pwned=1"><b>bold</b>'

    async def health(request: web.Request) -> web.Response:
        version = "<script>window.__pwned=2</script>"
        return web.json_response({"status": hostile, "version": version})

    app = web.Application()
    app.router.add_get("/health", health)
    async with serving(app) as base:
        config = f"""
defaults: {{interval: {INTERVAL}s, timeout: {INTERVAL}s,
            success_threshold: 1, failure_threshold: 1}}
targets:
  - name: odd-backend
    url: {base}/health
    expect: {{json: {{status: healthy}}}}
    version_path: version
"""
        async with run_daemon(config, tmp_path) as daemon:
            page = await browser.new_page()
            console = ConsoleErrors(page)
            await page.goto(daemon.url + "/status?refresh=500ms")
            assert await page.text_content("#every") == "500 ms"  # the poll period is settable
            await page.wait_for_selector(f'{row("odd-backend")} .t-failure', timeout=STARTUP_MS)
            text = await page.text_content(row("odd-backend")) or ""
            assert "assertion" in text and "<img" in text  # the markup is visible, as text
            assert await page.locator("#targets img, #targets b, #targets script").count() == 0
            assert await page.evaluate("window.__pwned") is None
            await page.close()
        assert console.errors == []
