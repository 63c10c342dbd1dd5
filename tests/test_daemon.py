"""`probe run` as a real subprocess against the twin: metrics, readiness, SIGTERM, SIGHUP.

Plus the server's endpoints in-process (gate token, /api/v1/status, /livez), where a subprocess
would add nothing but time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from helpers import ProbeRun, StartDaemon, unnamed, until

from probe.config import parse_config
from probe.twin import DEV_JWT_SECRET, Twin

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"


pytestmark = pytest.mark.twin(jwt_secret=DEV_JWT_SECRET)


def example_for(twin: Twin, interval: str = "300ms", timeout: str = "250ms") -> str:
    """config/example.yaml, pointed at this twin's port, with short intervals for a test."""
    text = EXAMPLE.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{twin.port}")
    text = text.replace("interval: 5s", f"interval: {interval}")
    return text.replace("timeout: 2s", f"timeout: {timeout}")


async def get_text(http: aiohttp.ClientSession, url: str) -> str | None:
    try:
        async with http.get(url) as r:
            return await r.text()
    except aiohttp.ClientError:
        return None


def metric(text: str | None, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, labels matched in any order."""
    for line in (text or "").splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


async def test_run_example_against_the_twin(
    twin: Twin, http: aiohttp.ClientSession, probe_run: Callable[..., ProbeRun], tmp_path: Path
) -> None:
    cfg = tmp_path / "example.yaml"
    cfg.write_text(example_for(twin))
    p = probe_run(cfg)

    async def healthy() -> bool:
        text = await get_text(http, f"{p.url}/metrics")
        # agents-stop: the twin accepted a JWT the prober minted
        return all(metric(text, "probe_success", target=name) == 1
                   for name in ("backend-health", "api-health", "agents-stop"))

    await until(healthy, "probe_success 1 for the HTTP targets")
    async with http.get(f"{p.url}/livez") as r:
        assert r.status == 200

    twin.set_fault(health="503")

    async def failing() -> bool:
        text = await get_text(http, f"{p.url}/metrics")
        n = metric(text, "probe_failures_total", target="backend-health", failure="http_status")
        return metric(text, "probe_success", target="backend-health") == 0 and (n or 0) > 0

    await until(failing, "probe_success 0 and http_status failures")

    async def gate_names_the_cause() -> dict[str, Any] | None:
        async with http.get(f"{p.url}/readyz") as r:
            body = await r.json()
            if r.status != 503:
                return None
        health = {t["name"]: t for t in body["targets"]}["backend-health"]
        return health if health["state"] == "failing" else None

    health = await until(gate_names_the_cause, "/readyz 503 naming backend-health")
    assert health["failure"] == "http_status" and "503" in health["detail"]
    more = twin.requests("/health") + 3
    await until(lambda: twin.requests("/health") >= more, "more failing probes")

    p.signal(signal.SIGTERM)
    assert await p.wait(5) == 0
    logs = p.logs()
    assert all("severity" in line and "message" in line for line in logs)
    changes = [line for line in logs if line.get("target") == "backend-health"
               and line.get("new") == "failing"]
    assert len(changes) == 1, changes  # one line per state change, not one per probe
    assert changes[0]["failure"] == "http_status" and changes[0]["severity"] == "WARNING"
    assert DEV_JWT_SECRET not in p.log_text() and "eyJ" not in p.log_text()
    assert "Traceback" not in p.log_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_with_probes_in_flight(
    sig: signal.Signals, twin: Twin, http: aiohttp.ClientSession,
    probe_run: Callable[..., ProbeRun], tmp_path: Path,
) -> None:
    twin.set_fault(health="hang")
    cfg = tmp_path / "hang.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [
        {"name": f"hang{i}", "url": f"{twin.url}/health", "interval": "30s", "timeout": "25s"}
        for i in range(5)]}))
    p = probe_run(cfg)

    async def all_in_flight() -> bool:
        return twin.requests("/health") >= 5 and await get_text(http, f"{p.url}/livez") is not None

    await until(all_in_flight, "five probes hanging on the twin")
    t0 = time.monotonic()
    p.signal(sig)
    try:  # if it still answers while it drains, it must not say ready
        async with http.get(f"{p.url}/readyz") as r:
            assert r.status == 503
            assert (await r.json())["ready"] is False
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
        pass  # the listener already closed: fine too; any other error fails the test
    code = await p.wait(5)
    assert code == 0 and time.monotonic() - t0 < 5
    assert "Traceback" not in p.log_text()
    assert any(line.get("message") == "draining" for line in p.logs())


async def test_sighup_reload_add_remove_and_invalid(
    twin: Twin, http: aiohttp.ClientSession, probe_run: Callable[..., ProbeRun], tmp_path: Path
) -> None:
    def write(*names: str) -> None:
        cfg.write_text(yaml.safe_dump({
            "defaults": {"interval": "200ms", "timeout": "200ms", "success_threshold": 1},
            "targets": [{"name": n, "url": f"{twin.url}/health"} for n in names]}))

    cfg = tmp_path / "reload.yaml"
    write("keep", "gone")
    p = probe_run(cfg)

    async def status() -> dict[str, Any] | None:
        try:
            async with http.get(f"{p.url}/api/v1/status") as r:
                return await r.json() if r.status == 200 else None
        except aiohttp.ClientError:
            return None

    async def both_ready() -> bool:
        s = await status()
        return bool(s and s["ready"] and len(s["targets"]) == 2)

    await until(both_ready, "keep and gone ready")
    before = {t["name"]: t for t in (await status() or {})["targets"]}["keep"]
    write("keep", "added")
    p.signal(signal.SIGHUP)

    async def reloaded() -> str | None:
        text = await get_text(http, f"{p.url}/metrics")
        ok = (metric(text, "probe_success", target="added") == 1
              and 'target="gone"' not in (text or ""))
        return text if ok else None

    text = await until(reloaded, "added probed and every series of gone removed")
    assert metric(text, "probe_success", target="keep") == 1
    keep = {t["name"]: t for t in (await status() or {})["targets"]}["keep"]
    assert keep["state"] == "ready" and keep["since"] == before["since"]  # state kept
    assert keep["consecutive_successes"] >= before["consecutive_successes"]
    reload_line = next(line for line in p.logs() if line.get("message") == "config reloaded")
    assert reload_line["removed"] == ["gone"] and reload_line["added"] == ["added"]

    cfg.write_text("targets:\n  - name: keep\n    url: http://127.0.0.1:1/\n"
                   "    expect: {status: []}\n")
    probes = metric(text, "probe_results_total", target="keep", result="success") or 0
    p.signal(signal.SIGHUP)

    async def rejected() -> list[dict[str, Any]]:
        return [line for line in p.logs() if line.get("message", "").startswith(
            "config reload failed")]

    failed = (await until(rejected, "the invalid file to be logged"))[0]
    assert failed["severity"] == "ERROR"
    assert any("targets[0].expect.status" in e for e in unnamed(failed["errors"]))

    async def still_probing() -> bool:
        text = await get_text(http, f"{p.url}/metrics")
        n = metric(text, "probe_results_total", target="keep", result="success") or 0
        return n > probes + 2 and metric(text, "probe_success", target="added") == 1

    await until(still_probing, "the old config to keep running")
    p.signal(signal.SIGTERM)
    assert await p.wait(5) == 0
    assert "Traceback" not in p.log_text()


async def test_bad_config_and_busy_port_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  - name: a\n    url: ftp://x/\n")
    run = ProbeRun(bad, tmp_path)
    assert await run.wait(30) == 2
    assert "targets[0] (a).url" in run.log_text() and "Traceback" not in run.log_text()

    good = tmp_path / "good.yaml"
    good.write_text("targets:\n  - {name: a, url: 'http://127.0.0.1:1/'}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # PORT (as Cloud Run sets it) wins over PROBE_LISTEN's port
        run = ProbeRun(good, tmp_path, {"PROBE_LISTEN": "127.0.0.1:0", "PORT": str(port)})
        assert await run.wait(30) == 2
    assert "cannot listen" in run.log_text() and f"127.0.0.1:{port}" in run.log_text()
    assert "Traceback" not in run.log_text()

    run = ProbeRun(good, tmp_path, {"PROBE_LOG_LEVEL": "loud"})
    assert await run.wait(30) == 2 and "PROBE_LOG_LEVEL" in run.log_text()


# --- the server in-process -------------------------------------------------------------------


async def test_gate_token_and_status_api(
    twin: Twin, http: aiohttp.ClientSession, start_daemon: StartDaemon
) -> None:
    config = parse_config(yaml.safe_dump({
        "defaults": {"interval": "200ms", "timeout": "200ms", "success_threshold": 1},
        "targets": [
            {"name": "h", "url": f"{twin.url.replace('http://', 'http://user:pw@')}/health"
                                 "?token=abc123"},
            {"name": "n", "url": f"{twin.url}/api/health", "critical": False},
        ]}), env={})
    daemon = await start_daemon(config, gate_token="gate-secret-1")
    base = daemon.url
    auth = {"Authorization": "Bearer gate-secret-1"}

    async def ready() -> bool:
        async with http.get(f"{base}/readyz", headers=auth) as r:
            return r.status == 200

    await until(ready, "ready")
    async with http.get(f"{base}/readyz") as r:
        assert r.status == 200 and await r.json() == {"ready": True}
    async with http.get(f"{base}/readyz", headers={"Authorization": "Bearer wrong"}) as r:
        assert await r.json() == {"ready": True}
    async with http.get(f"{base}/readyz", headers=auth) as r:
        body = await r.json()
    assert {t["name"] for t in body["targets"]} == {"h", "n"}
    async with http.get(f"{base}/api/v1/status") as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(f"{base}/api/v1/status?points=5", headers=auth) as r:
        status = await r.json()
    h = {t["name"]: t for t in status["targets"]}["h"]
    assert h["url"] == f"{twin.url}/health"  # no userinfo, no query
    assert h["interval"] == 0.2 and h["history"]["count"] >= 1
    assert len(h["history"]["points"]) <= 5
    assert status["draining"] is False and "generated_at" in status
    for path in ("/metrics", "/readyz", "/api/v1/status"):
        async with http.get(f"{base}{path}", headers=auth) as r:
            text = await r.text()
        assert "abc123" not in text and "gate-secret-1" not in text and "pw@" not in text

    async with http.get(f"{base}/", allow_redirects=False) as r:  # the page is the front door
        assert r.status == 302 and r.headers["Location"] == "/status"

    daemon.request_stop("test")
    async with http.get(f"{base}/readyz", headers=auth) as r:
        assert r.status == 503 and await r.json() == {"ready": False, "draining": True}
    async with http.get(f"{base}/livez") as r:
        assert r.status == 200


async def test_livez_turns_503_when_the_scheduler_is_stuck(
    twin: Twin, http: aiohttp.ClientSession, start_daemon: StartDaemon
) -> None:
    config = parse_config(yaml.safe_dump({"targets": [
        {"name": "h", "url": f"{twin.url}/health", "interval": "1s"}]}), env={})
    daemon = await start_daemon(config)
    base = daemon.url
    async with http.get(f"{base}/livez") as r:
        assert r.status == 200
    daemon.scheduler.last_tick -= 60  # as if the event loop had been blocked for a minute
    async with http.get(f"{base}/livez") as r:
        assert r.status == 503
        assert "heartbeat" in (await r.json())["reasons"][0]



async def test_demo_runs_from_anywhere_and_becomes_ready(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`probe demo` needs no file from the repository: run it from an empty directory."""
    env = {**os.environ, "PROBE_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probe", "demo", "--port", "0", "--twin-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        banner: list[str] = []
        while not banner or "Ctrl-C" not in banner[-1]:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the demo exited before printing where to look"
            banner.append(line.decode())
        text = "".join(banner)
        readyz = re.search(r"(http://127\.0\.0\.1:\d+)/readyz", text)
        twin = re.search(r"curl -X POST (http://127\.0\.0\.1:\d+)/_twin/fault", text)
        assert readyz and twin and "/status" in text and "/metrics" in text, text
        base = readyz.group(1)

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, "the demo to become ready", within=40)
        metrics = await get_text(http, f"{base}/metrics")
        assert metric(metrics, "probe_success", target="backend-health") == 1
        async with http.post(f"{twin.group(1)}/_twin/fault", json={"health": "503"}) as r:
            assert r.status == 200

        async def failing() -> bool:
            text = await get_text(http, f"{base}/metrics")
            return metric(text, "probe_success", target="backend-health") == 0
        await until(failing, "the demo to see the fault")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_closed_stderr_does_not_stop_the_daemon_from_stopping(
    twin: Twin, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`probe run ... 2>&1 | head -1`: once the reader is gone every log write fails (EPIPE);
    logging must swallow that, or SIGTERM's handler would die on its own log line."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [
        {"name": "h", "url": f"{twin.url}/health", "interval": "200ms", "timeout": "200ms"}]}))
    p = ProbeRun(cfg, tmp_path, stderr=subprocess.PIPE)
    try:
        first = await asyncio.wait_for(asyncio.to_thread(p.stderr.readline), 30)
        assert b"stageprobe started" in first
        p.stderr.close()  # `head -1` has exited: the pipe has no reader any more
        await until(lambda: twin.requests("/health") >= 3, "probes")
        async with http.get(f"{p.url}/livez") as r:
            assert r.status == 200
        p.signal(signal.SIGTERM)
        assert await p.wait(5) == 0
    finally:
        p.close()


async def test_a_reload_that_changes_a_targets_kind_swaps_its_series(
    twin: Twin, http: aiohttp.ClientSession, start_daemon: StartDaemon
) -> None:
    """Daemon.apply (not each probe) moves a target from http to websocket series."""
    def config(url: str) -> Any:
        return parse_config(yaml.safe_dump({"targets": [
            {"name": "k", "url": url, "interval": "200ms", "timeout": "200ms"}]}), env={})

    daemon = await start_daemon(config(f"{twin.url}/health"))
    base = daemon.url

    async def metrics() -> str:
        async with http.get(f"{base}/metrics") as r:
            return await r.text()

    await until(lambda: _has(metrics(), 'probe_http_status_code{target="k"} 200.0'),
                "the http target probed")
    daemon.apply(config(f"ws{twin.url.removeprefix('http')}/ws"))
    text = await until(lambda: _has(metrics(), 'probe_websocket_status_code{target="k"}'),
                       "the websocket target probed")
    assert 'probe_http_status_code{target="k"}' not in text
    assert 'probe_http_duration_seconds{phase="connect",target="k"}' not in text


async def _has(text: Any, needle: str) -> str | None:
    got = await text
    return got if needle in got else None


async def test_an_expected_version_nothing_checks_is_refused_at_start_and_on_reload(
    twin: Twin, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """`expect_version` with no `version_path` anywhere would gate on nothing: `probe run` exits
    2 saying so, and a reload to such a file keeps the running config."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"expect_version: abc\ntargets:\n  - {{name: a, url: '{twin.url}/health'}}\n")
    run = ProbeRun(bad, tmp_path)
    assert await run.wait(30) == 2
    assert "no target has a version_path" in run.log_text()

    good = tmp_path / "good.yaml"
    good.write_text(f"targets:\n  - {{name: a, url: '{twin.url}/health'}}\n")
    daemon = await start_daemon(parse_config(good.read_text(), env={}))
    daemon.config_path = bad
    assert await daemon.reload() is False
    assert daemon.config.expect_version is None
