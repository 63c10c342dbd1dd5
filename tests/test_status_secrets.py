"""The status page and its API carry no credential value, and honour PROBE_GATE_TOKEN.

A real `probe run` probes the twin with a JWT credential (header) and a static bearer token sent
in the query string, while the twin fails, so every failure detail and URL the API renders has
had a chance to leak something.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import run_daemon, until

from probe.twin import Twin

JWT_SECRET = "jwt-secret-value-7f3a9c1e5b2d4f6a8c0e2b4d"
BEARER = "static-bearer-value-91ab27cd38ef"
GATE = "gate-token-value-5e6f7a8b9c0d"
ENV = {"JWT_SECRET": JWT_SECRET, "SERVICE_TOKEN": BEARER}  # what the config's ${...} name
SECRETS = (JWT_SECRET, BEARER, GATE)
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")  # a minted token itself


pytestmark = pytest.mark.twin(jwt_secret=JWT_SECRET)


def config(base: str) -> str:
    return f"""
defaults: {{interval: 300ms, timeout: 250ms, success_threshold: 1, failure_threshold: 1}}
credentials:
  e2e-user:
    jwt: {{secret: "${{JWT_SECRET}}", algorithm: HS256, ttl: 10m, claims: {{sub: e2e-003}}}}
  service:
    bearer: {{token: "${{SERVICE_TOKEN}}"}}
targets:
  - name: backend-health
    url: {base}/health
    credential: e2e-user
    expect: {{json: {{status: healthy}}}}
  - name: api-health-query-token
    url: {base}/api/health?region=eu
    credential: service
    credential_in: query
  - name: agents-stop
    url: {base}/api/agents/stop
    method: POST
    json_body: {{agent_id: probe}}
    credential: e2e-user
"""


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} contains a credential value"
    assert not JWT_SHAPE.search(text), f"{where} contains a JWT"
    assert "access_token" not in text, f"{where} shows the query-string credential's parameter"


async def get(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as r:
        return r.status, await r.text()


async def test_page_and_api_carry_no_credential(
    twin: Twin, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = {**ENV, "PROBE_GATE_TOKEN": GATE}
    async with run_daemon(config(twin.url), tmp_path, env) as daemon:
        api = daemon.url + "/api/v1/status"

        async def all_ready() -> Any:
            status, _ = await get(http, daemon.url + "/readyz")
            return status == 200

        await until(all_ready, "the daemon to see the twin ready (credentials accepted)", within=15)
        twin.set_fault(health="503", api="500")

        async def failing() -> Any:
            async with http.get(api, headers={"Authorization": f"Bearer {GATE}"}) as r:
                data = await r.json()
            states = {t["name"]: t["state"] for t in data["targets"]}
            return all(s == "failing" for s in states.values()) and data

        data = await until(failing, "every target to fail", within=15)
        assert {t["failure"] for t in data["targets"]} == {"http_status"}
        query_target = next(t for t in data["targets"] if t["name"] == "api-health-query-token")
        assert query_target["url"].endswith("/api/health")  # no query string, so no token

        bodies = {
            "/status": await get(http, daemon.url + "/status"),
            "/status.js": await get(http, daemon.url + "/status.js"),
            "/status.css": await get(http, daemon.url + "/status.css"),
            "/api/v1/status (token)": await get(http, api, GATE),
            "/api/v1/status?points=1000 (token)": await get(http, api + "?points=1000", GATE),
            "/readyz (token)": await get(http, daemon.url + "/readyz", GATE),
            "/readyz": await get(http, daemon.url + "/readyz"),
            "/metrics": await get(http, daemon.url + "/metrics"),
        }
        for where, (status, text) in bodies.items():
            assert status in (200, 503), (where, status)
            assert_clean(where, text)
        # The page itself is static: no data in it, so it can be served to anyone.
        page = bodies["/status"][1]
        assert "backend-health" not in page and twin.url not in page
    assert_clean("the daemon's log", daemon.log_text())


async def test_gate_token_guards_the_api_not_the_page(
    twin: Twin, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = {**ENV, "PROBE_GATE_TOKEN": GATE}
    async with run_daemon(config(twin.url), tmp_path, env) as daemon:
        api = daemon.url + "/api/v1/status"
        status, text = await get(http, api)
        assert status == 401 and "backend-health" not in text
        status, text = await get(http, api, "not-the-gate-token")
        assert status == 401 and "backend-health" not in text
        async with http.get(api, headers={"Authorization": f"Basic {GATE}"}) as r:
            assert r.status == 401  # only a bearer token counts
        status, text = await get(http, api, GATE)
        assert status == 200 and "backend-health" in text
        # The page is served without the token (it asks for it); it holds no data either way.
        status, text = await get(http, daemon.url + "/status")
        assert status == 200 and "<html" in text and "backend-health" not in text
        async with http.get(daemon.url + "/status") as r:
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]


async def test_without_gate_token_the_api_is_open(
    twin: Twin, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with run_daemon(config(twin.url), tmp_path, ENV) as daemon:
        status, text = await get(http, daemon.url + "/api/v1/status")
        assert status == 200 and "backend-health" in text
        assert_clean("/api/v1/status", text)


def test_gate_token_is_masked_in_every_log_line(restore_logging: None) -> None:
    """PROBE_GATE_TOKEN is a secret of the daemon's own: a log line that quotes it (a client's
    header logged at DEBUG, an error text) shows it masked, in both formats."""
    import io

    import structlog
    from faults.fixtures import config_of

    from probe.daemon.run import Daemon
    from probe.logging import configure

    daemon = Daemon(config_of([{"name": "t", "url": "http://127.0.0.1:9/"}]), gate_token=GATE)
    for form in ("json", "console"):
        stream = io.StringIO()
        configure(form, "debug", stream)
        structlog.get_logger("probe.test").info("client sent", error=f"token {GATE} unknown")
        assert GATE not in stream.getvalue() and "***" in stream.getvalue(), form
    del daemon
