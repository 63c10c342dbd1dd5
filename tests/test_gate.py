"""`probe gate URL`: against a real daemon's /readyz on loopback (in-process, probing the twin).
(`--prometheus` is in test_gate_prometheus.py.)

Only answers a real daemon never gives (garbage, a contradictory status, a hang) come from a
stand-in, as "a daemon URL that answers garbage"; its one valid-looking body is a real daemon's.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from helpers import (
    StartDaemon,
    free_port,
    http_get,
    refused_port,
    serving,
    silent_server,
    until,
    until_stderr,
)
from helpers import run_cli as run

from probe.cli import main as cli
from probe.config import Config, parse_config
from probe.daemon.run import Daemon
from probe.gate import readyz_url
from probe.twin import Twin

pytestmark = [pytest.mark.timeout(90), pytest.mark.twin(version="abc")]

TOKEN = "s3cret-gate-token-value"


def gate_config(twin: Twin) -> Config:
    return parse_config(f"""
defaults: {{interval: 200ms, timeout: 200ms, success_threshold: 1, failure_threshold: 2}}
targets:
  - {{name: backend-health, url: "{twin.url}/health", version_path: version}}
""", env={})


async def readyz_says(daemon: Daemon, status: int, state: str) -> dict[str, Any] | None:
    """The daemon's full /readyz body once it answers `status` with backend-health in `state`."""
    headers = {"Authorization": f"Bearer {daemon.runtime.gate_token}"}
    got = await http_get(f"{daemon.url}/readyz", headers)
    if got is None or got[0] != status:
        return None
    body: dict[str, Any] = json.loads(got[1])
    return body if body["targets"][0]["state"] == state else None


async def ready(daemon: Daemon) -> Daemon:
    await until(lambda: readyz_says(daemon, 200, "ready"), "the daemon to be ready")
    return daemon


async def failing(daemon: Daemon, twin: Twin) -> Daemon:
    twin.set_fault(health="503")
    await until(lambda: readyz_says(daemon, 503, "failing"), "the daemon to see the twin fail")
    return daemon


@pytest.fixture(autouse=True)
def daemon_logs() -> Iterator[list[Any]]:
    """An in-process daemon logs to stdout: keep its lines out of the gate's report."""
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
async def daemon(twin: Twin, start_daemon: StartDaemon) -> Daemon:
    """A real daemon probing the twin (healthy, until a test breaks it)."""
    return await start_daemon(gate_config(twin))


def test_readyz_url_is_appended_to_a_base_url() -> None:
    assert readyz_url("http://127.0.0.1:9464") == "http://127.0.0.1:9464/readyz"
    assert readyz_url("http://127.0.0.1:9464/") == "http://127.0.0.1:9464/readyz"
    assert readyz_url("http://h/probe/readyz") == "http://h/probe/readyz"
    assert readyz_url("https://h/prefix/") == "https://h/prefix/readyz"


async def test_ready_daemon_exits_0(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    await ready(daemon)
    assert await run("gate", daemon.url) == 0
    out = capsys.readouterr().out
    assert re.match(r"OK   backend-health  ready \(HTTP 200, p95 [\d.]+ms, version abc\)", out), out


async def test_not_ready_daemon_exits_1_with_the_cause(
        daemon: Daemon, twin: Twin, capsys: pytest.CaptureFixture[str]) -> None:
    await failing(daemon, twin)
    assert await run("gate", daemon.url + "/readyz", "--format", "json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ready"] is False
    [target] = data["targets"]
    assert target["name"] == "backend-health" and target["state"] == "failing"
    assert target["failure"] == "http_status" and "HTTP 503" in target["detail"], target
    assert target["status_code"] == 503


async def test_gate_token_is_sent_from_the_env_and_never_printed(
        twin: Twin, start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = await failing(await start_daemon(gate_config(twin), gate_token=TOKEN), twin)
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert await run("gate", daemon.url, "--token-env", "MY_TOKEN", "--format", "github") == 1
    out = capsys.readouterr().out
    assert "::error title=backend-health%3A http_status::" in out
    assert TOKEN not in out


async def test_a_missing_or_wrong_token_is_a_usage_error_not_ready_0_of_0(
        twin: Twin, start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ready daemon with PROBE_GATE_TOKEN answers anonymous callers 200 `{"ready": true}`:
    without its details that is no verdict, and waiting cannot fix a token."""
    daemon = await ready(await start_daemon(gate_config(twin), gate_token=TOKEN))
    monkeypatch.delenv("PROBE_GATE_TOKEN", raising=False)
    assert await run("gate", daemon.url, "--wait", "10m") == 2
    captured = capsys.readouterr()
    assert "READY" not in captured.out
    assert "gate token is missing: set $PROBE_GATE_TOKEN" in captured.err
    monkeypatch.setenv("MY_TOKEN", "wrong")
    assert await run("gate", daemon.url, "--token-env", "MY_TOKEN", "--wait", "10m") == 2
    err = capsys.readouterr().err
    assert "the token in $MY_TOKEN is wrong" in err and "wrong" not in err.split("$MY_TOKEN")[0]
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert await run("gate", daemon.url, "--token-env", "MY_TOKEN") == 0
    out = capsys.readouterr().out
    assert out.startswith("OK   backend-health") and TOKEN not in out


async def test_wait_until_the_daemon_is_ready(daemon: Daemon, twin: Twin,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    await failing(daemon, twin)
    gate = asyncio.create_task(run("gate", daemon.url, "--wait", "20s"))
    progress = await until_stderr(capsys, "backend-health: http_status: HTTP 503")
    assert not gate.done(), "it kept waiting while the daemon said not ready"
    twin.set_fault(health="ok")
    assert await gate == 0, progress
    assert capsys.readouterr().out.startswith("OK   backend-health")


async def test_unreachable_daemon_is_not_ready_with_the_reason(
        capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        assert await run("gate", url) == 1
        out = capsys.readouterr().out
        assert out.startswith("FAIL probe-daemon  refused: cannot reach the daemon at")
        t0 = time.monotonic()
        assert await run("gate", url, "--wait", "1s") == 1
        assert 1.0 <= time.monotonic() - t0 < 15
    captured = capsys.readouterr()
    assert "refused" in captured.out and "refused" in captured.err


async def test_unreachable_while_waiting_then_up(
        twin: Twin, start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    gate = asyncio.create_task(run("gate", f"http://127.0.0.1:{port}", "--wait", "20s"))
    await until_stderr(capsys, "refused")
    await start_daemon(gate_config(twin), port=port)
    assert await gate == 0


async def test_a_wrong_path_is_a_usage_error_at_once_and_a_draining_daemon_is_named(
        daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    await ready(daemon)
    # with --wait 10m: a 404 is said at once (the test's timeout would catch a wait)
    assert await run("gate", daemon.url + "/not-the-prober/", "--wait", "10m") == 2
    captured = capsys.readouterr()
    assert "nothing answers at http://127.0.0.1:" in captured.err and "HTTP 404" in captured.err
    assert captured.out == ""
    daemon.request_stop("test")  # what SIGTERM does: /readyz says draining until it closes
    assert await run("gate", daemon.url) == 1
    assert "is draining" in capsys.readouterr().out


def two_targets(twin: Twin, dead: int) -> Config:
    return parse_config(f"""
defaults: {{interval: 200ms, timeout: 200ms, success_threshold: 1, failure_threshold: 1}}
targets:
  - {{name: backend-health, url: "{twin.url}/health"}}
  - {{name: dead, url: "http://127.0.0.1:{dead}/"}}
""", env={})


async def test_target_and_exclude_judge_a_subset_and_unknown_names_exit_2(
        twin: Twin, start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as dead:
        daemon = await start_daemon(two_targets(twin, dead))

        async def both_judged() -> bool:
            got = await http_get(f"{daemon.url}/readyz")
            states = {t["name"]: t["state"] for t in json.loads(got[1])["targets"]} if got else {}
            return states == {"backend-health": "ready", "dead": "failing"}

        await until(both_judged, "one target ready and one failing")
        assert await run("gate", daemon.url) == 1
        capsys.readouterr()
        assert await run("gate", daemon.url, "--exclude", "dead", "-q") == 0
        assert capsys.readouterr().out == "READY: 1/1 critical targets ready\n"
        assert await run("gate", daemon.url, "--target", "backend-health", "--format",
                         "json") == 0
        assert [t["name"] for t in json.loads(capsys.readouterr().out)["targets"]] == [
            "backend-health"]
        assert await run("gate", daemon.url, "--target", "dead", "--timeout", "1s") == 1
        assert "dead (refused)" in capsys.readouterr().out
        assert await run("gate", daemon.url, "--target", "backend-helth", "--wait", "10m") == 2
        err = capsys.readouterr().err
        assert "no target named 'backend-helth'" in err and "backend-health, dead" in err


async def test_verbose_prints_every_poll(daemon: Daemon, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    await ready(daemon)
    assert await run("gate", daemon.url, "-v") == 0
    assert "READY: 1/1 critical targets ready" in capsys.readouterr().err


def test_an_unwritable_junit_path_is_a_usage_error_before_asking(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    with refused_port() as port:  # a 10-minute wait if it asked first
        assert cli(["gate", f"http://127.0.0.1:{port}", "--wait", "10m",
                    "--junit", str(tmp_path / "file" / "r.xml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probe gate: --junit ") and "is not a directory" in err


class StandIn:
    """Something at the daemon's URL that is not a daemon, or a broken one: it answers /readyz
    with whatever the test sets (valid-looking bodies come from a real daemon)."""

    def __init__(self) -> None:
        self.answer: Callable[[], web.StreamResponse] = lambda: web.Response(status=500)
        self.url = ""

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        return self.answer()


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    s = StandIn()
    app = web.Application()
    app.router.add_get("/readyz", s.readyz)
    async with serving(app) as s.url:
        yield s


async def test_answers_no_daemon_gives_are_named(
        daemon: Daemon, stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    stand_in.answer = lambda: web.Response(status=200, text="OK")
    assert await run("gate", stand_in.url) == 1
    assert "protocol: the daemon's answer" in capsys.readouterr().out
    stand_in.answer = lambda: web.Response(status=200, text="<html>login</html>",
                                           content_type="text/html")
    assert await run("gate", stand_in.url) == 1
    assert "protocol: the daemon's answer" in capsys.readouterr().out

    await ready(daemon)
    got = await http_get(f"{daemon.url}/readyz")
    assert got is not None and got[0] == 200
    ready_body = got[1]
    assert json.loads(ready_body)["ready"] is True
    stand_in.answer = lambda: web.Response(status=503, text=ready_body,
                                           content_type="application/json")
    assert await run("gate", stand_in.url) == 1, "a 503 is never ready, whatever the body says"


async def test_a_daemon_that_never_answers_is_a_timeout(
        capsys: pytest.CaptureFixture[str]) -> None:
    async with silent_server() as silent:
        t0 = time.monotonic()
        assert await run("gate", silent.url, "--wait", "1s") == 1
        assert time.monotonic() - t0 < 15
    out = capsys.readouterr().out
    assert out.startswith("FAIL probe-daemon  timeout: cannot reach the daemon at"), out
    assert "no answer in time" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["gate"]) == 2
    assert cli(["gate", "ftp://127.0.0.1/"]) == 2
    assert "http(s) URL" in capsys.readouterr().err
    assert cli(["gate", "http://127.0.0.1:1", "--prometheus", "http://127.0.0.1:2"]) == 2
