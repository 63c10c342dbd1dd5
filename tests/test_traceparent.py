"""W3C `traceparent` on every probe request and upgrade, read by real loopback servers, and the
trace id where a failure is reported: the Outcome, the daemon's failure log line, the JSON
verdict of `probe check --format json` and /api/v1/status."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import http_get, run_cli, run_daemon, serving, until
from test_logs import logged
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request
from ws_servers import PING, websockets_server
from ws_servers import probe as ws_probe

from probe.checks import CheckContext
from probe.checks.http import check
from probe.config import Target

pytestmark = [pytest.mark.timeout(60)]

# version 00, 16-byte trace id, 8-byte parent id (lowercase hex, never all zeros), sampled
FORMAT = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-01")


class Recorder:
    """An aiohttp app that records every request's traceparent headers: /hop/N redirects to
    /hop/N-1 (/hop/0 answers 200), /fail answers 503."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.app = web.Application()
        self.app.router.add_get("/hop/{n}", self.hop)
        self.app.router.add_get("/fail", self.fail)

    def _record(self, request: web.Request) -> None:
        self.seen.append(request.headers.getall("traceparent", []))

    async def hop(self, request: web.Request) -> web.Response:
        self._record(request)
        n = int(request.match_info["n"])
        if n <= 0:
            return web.Response(text="end")
        raise web.HTTPFound(f"/hop/{n - 1}")

    async def fail(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(status=503, text="down")

    def trace_ids(self) -> list[str]:
        ids = []
        for values in self.seen:
            assert len(values) == 1, values
            match = FORMAT.fullmatch(values[0])
            assert match, values[0]
            ids.append(match.group(1))
        return ids


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    async with serving(rec.app) as base:
        yield rec, base


def target(url: str, **kw: Any) -> Target:
    return Target.model_validate({"name": "t", "url": url, "timeout": 2, **kw})


async def test_every_probe_sends_a_new_valid_traceparent_and_reports_its_trace_id(
        recorder: tuple[Recorder, str]) -> None:
    rec, base = recorder
    t = target(f"{base}/hop/0")
    outcomes = [await check(t, CheckContext()) for _ in range(3)]
    ids = rec.trace_ids()
    assert [o.trace_id for o in outcomes] == ids
    assert len(set(ids)) == 3, "a new trace per probe"


async def test_redirect_hops_keep_the_probes_trace_id(recorder: tuple[Recorder, str]) -> None:
    rec, base = recorder
    outcome = await check(target(f"{base}/hop/3", follow_redirects=True), CheckContext())
    assert outcome.success, outcome
    ids = rec.trace_ids()
    assert len(ids) == 4 and set(ids) == {outcome.trace_id}
    parents = {values[0].split("-")[2] for values in rec.seen}
    assert len(parents) == 4, "each hop is its own request (its own parent id)"


async def test_a_configured_traceparent_is_sent_once_as_written(
        recorder: tuple[Recorder, str]) -> None:
    rec, base = recorder
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    outcome = await check(target(f"{base}/hop/1", follow_redirects=True,
                                 headers={"TraceParent": mine}), CheckContext())
    assert outcome.success, outcome
    assert rec.seen == [[mine], [mine]]
    assert outcome.trace_id is None


async def test_a_failed_probe_carries_its_trace_id(recorder: tuple[Recorder, str]) -> None:
    rec, base = recorder
    outcome = await check(target(f"{base}/fail"), CheckContext())
    assert not outcome.success and rec.trace_ids() == [outcome.trace_id]


async def test_the_websocket_upgrade_carries_a_traceparent() -> None:
    seen: list[list[str]] = []

    def record(connection: ServerConnection, request: Request) -> None:
        seen.append(request.headers.get_all("traceparent"))

    async with websockets_server(process_request=record) as url:
        first = await ws_probe({"url": url, "connections": 2, "messages": [PING]})
        second = await ws_probe({"url": url, "messages": [PING]})
        mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        own = await ws_probe({"url": url, "headers": {"traceparent": mine}})
    assert first.success and second.success and own.success, (first, second, own)
    ids = [FORMAT.fullmatch(v[0]).group(1) for v in seen[:3]]  # type: ignore[union-attr]
    assert all(len(v) == 1 for v in seen), seen
    assert ids == [first.trace_id, first.trace_id, second.trace_id]
    assert first.trace_id != second.trace_id
    assert seen[3] == [mine] and own.trace_id is None


async def test_the_trace_id_is_in_the_json_verdict(recorder: tuple[Recorder, str],
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rec, base = recorder
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(f"""
defaults: {{timeout: 2s, failure_threshold: 1}}
targets:
  - {{name: down, url: "{base}/fail"}}
""", encoding="utf-8")
    code = await run_cli("check", "-c", str(cfg), "--format", "json")
    assert code != 0
    verdict = json.loads(capsys.readouterr().out)
    (entry,) = verdict["targets"]
    assert entry["failure"] == "http_status"
    assert entry["trace_id"] in rec.trace_ids()


async def test_the_failure_log_line_and_status_api_name_the_trace_id(
        recorder: tuple[Recorder, str], tmp_path: Path) -> None:
    rec, base = recorder
    config = f"""
defaults: {{interval: 200ms, timeout: 200ms, success_threshold: 1, failure_threshold: 1}}
targets:
  - {{name: down, url: "{base}/fail"}}
"""
    async with run_daemon(config, tmp_path) as daemon:
        line = await logged(daemon, "target down is failing: http_status")
        assert line["trace_id"] in rec.trace_ids()

        async def status() -> dict[str, Any] | None:
            got = await http_get(f"{daemon.url}/api/v1/status")
            if got is None:
                return None
            entries = json.loads(got[1])["targets"]
            return entries[0] if entries and entries[0].get("trace_id") else None

        entry = await until(status, "a trace id in /api/v1/status")
        assert entry["trace_id"] in rec.trace_ids()
