"""`probe gate`: against a daemon-like /readyz on loopback, and `--prometheus` against a real
Prometheus server scraping two fake replicas' metrics endpoints."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import free_port, until

from probe.cli import main as cli
from probe.gate import prometheus_verdict, readyz_url

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-gate-token-value"

TARGET_OK = {"name": "backend-health", "kind": "http", "critical": True, "ready": True,
             "state": "ready", "failure": None, "detail": "", "status_code": 200,
             "close_code": None, "version": "abc", "latency_ms": {"p95": 12.0}}
TARGET_BAD = {**TARGET_OK, "ready": False, "state": "failing", "failure": "http_status",
              "detail": "HTTP 503 (expected 200)", "status_code": 503}


class Daemon:
    """A stand-in for the daemon's /readyz, switchable by the test."""

    def __init__(self) -> None:
        self.verdict: dict[str, Any] = {"ready": False, "targets": [TARGET_BAD]}
        self.token: str | None = None
        self.requests = 0
        self.answer: Callable[[], web.StreamResponse] | None = None
        self.url = ""

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.answer is not None:
            return self.answer()
        status = 200 if self.verdict["ready"] else 503
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"ready": self.verdict["ready"]}, status=status)
        return web.json_response(self.verdict, status=status)


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    d = Daemon()
    app = web.Application()
    app.router.add_get("/readyz", d.readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    d.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield d
    await runner.cleanup()


async def run(*argv: str) -> int:
    return await asyncio.to_thread(cli, list(argv))


def test_readyz_url_is_appended_to_a_base_url() -> None:
    assert readyz_url("http://127.0.0.1:9464") == "http://127.0.0.1:9464/readyz"
    assert readyz_url("http://127.0.0.1:9464/") == "http://127.0.0.1:9464/readyz"
    assert readyz_url("http://h/probe/readyz") == "http://h/probe/readyz"
    assert readyz_url("https://h/prefix/") == "https://h/prefix/readyz"


async def test_ready_daemon_exits_0(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.verdict = {"ready": True, "targets": [TARGET_OK]}
    assert await run("gate", daemon.url) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK   backend-health  ready (HTTP 200, p95 12ms, version abc)")


async def test_not_ready_daemon_exits_1_with_the_cause(
        daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("gate", daemon.url + "/readyz", "--format", "json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ready"] is False
    assert data["targets"][0]["failure"] == "http_status"
    assert data["targets"][0]["detail"] == "HTTP 503 (expected 200)"


async def test_gate_token_is_sent_from_the_env_and_never_printed(
        daemon: Daemon, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon.token = TOKEN
    monkeypatch.delenv("PROBE_GATE_TOKEN", raising=False)
    assert await run("gate", daemon.url) == 1
    out = capsys.readouterr().out
    assert "details need its gate token" in out and "PROBE_GATE_TOKEN" in out
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert await run("gate", daemon.url, "--token-env", "MY_TOKEN", "--format", "github") == 1
    out = capsys.readouterr().out
    assert "::error title=backend-health%3A http_status::" in out
    assert TOKEN not in out
    monkeypatch.setenv("MY_TOKEN", "wrong")
    assert await run("gate", daemon.url, "--token-env", "MY_TOKEN") == 1
    assert "token in $MY_TOKEN was not accepted" in capsys.readouterr().out


async def test_wait_until_the_daemon_is_ready(daemon: Daemon,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    async def heal() -> None:
        await until(lambda: daemon.requests >= 2)
        daemon.verdict = {"ready": True, "targets": [TARGET_OK]}

    healer = asyncio.create_task(heal())
    assert await run("gate", daemon.url, "--wait", "20s") == 0
    await healer
    captured = capsys.readouterr()
    assert "backend-health: http_status: HTTP 503" in captured.err
    assert daemon.requests >= 3


async def test_unreachable_daemon_is_not_ready_with_the_reason(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert await run("gate", url) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL probe-daemon  refused: cannot reach the daemon at")
    t0 = time.monotonic()
    assert await run("gate", url, "--wait", "1s") == 1
    assert 1.0 <= time.monotonic() - t0 < 15
    captured = capsys.readouterr()
    assert "refused" in captured.out and "refused" in captured.err


async def test_unreachable_while_waiting_then_up(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    d = Daemon()
    d.verdict = {"ready": True, "targets": [TARGET_OK]}
    app = web.Application()
    app.router.add_get("/readyz", d.readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()

    async def come_up() -> None:
        await until(lambda: "refused" in capsys.readouterr().err)
        await web.TCPSite(runner, "127.0.0.1", port).start()

    starter = asyncio.create_task(come_up())
    try:
        assert await run("gate", f"http://127.0.0.1:{port}", "--wait", "20s") == 0
        await starter
    finally:
        await runner.cleanup()


async def test_odd_answers_are_named(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answer = lambda: web.Response(status=404, text="not found")
    assert await run("gate", daemon.url) == 1
    assert "http_status: the daemon answered HTTP 404" in capsys.readouterr().out
    daemon.answer = lambda: web.json_response({"ready": False, "draining": True}, status=503)
    assert await run("gate", daemon.url) == 1
    assert "is draining" in capsys.readouterr().out
    daemon.answer = lambda: web.Response(status=200, text="OK")
    assert await run("gate", daemon.url) == 1
    assert "protocol: the daemon's answer" in capsys.readouterr().out
    daemon.answer = lambda: web.json_response({"ready": True, "targets": []}, status=503)
    assert await run("gate", daemon.url) == 1, "a 503 is never ready, whatever the body says"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["gate"]) == 2
    assert cli(["gate", "ftp://127.0.0.1/"]) == 2
    assert "http(s) URL" in capsys.readouterr().err
    assert cli(["gate", "http://127.0.0.1:1", "--prometheus", "http://127.0.0.1:2"]) == 2


def test_prometheus_verdict_is_strict_across_replicas() -> None:
    v = prometheus_verdict([1.0, 1.0], {"a": [1.0, 1.0], "b": [1.0, 0.0]}, {})
    assert v.ready and [t.name for t in v.not_ready()] == ["b"]
    assert not v.not_ready()[0].critical, "gate ready everywhere: b must be non-critical"
    v = prometheus_verdict([1.0, 0.0], {"a": [1.0, 1.0]}, {})
    assert not v.ready and v.not_ready()[0].detail == "probe_gate_ready is 0 in 1 of 2 replicas"
    v = prometheus_verdict([1.0], {"a": [1.0], "b": [0.0]}, {}, {"b": True, "a": False})
    assert not v.targets[0].critical and v.targets[1].critical, "probe_target_critical wins"
    v = prometheus_verdict([float("nan")], {}, {})
    assert not v.ready


# --- against a real Prometheus ---------------------------------------------------------------


class Replica:
    """A fake prober replica's /metrics, served from a thread (Prometheus scrapes it)."""

    def __init__(self) -> None:
        self.body = ""
        self.failures = 0.0
        self.failing = False
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                text = replica.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.state: dict[str, float] | None = None  # None: no probe_* series at all

    def render(self) -> str:
        if self.state is None:
            return "# nothing yet\n"
        if self.failing:
            self.failures += 1
        lines = ["# TYPE probe_gate_ready gauge", f"probe_gate_ready {self.state['gate']}",
                 "# TYPE probe_target_ready gauge"]
        lines += [f'probe_target_ready{{target="{k}"}} {v}' for k, v in self.state.items()
                  if k != "gate"]
        lines += ["# TYPE probe_target_critical gauge",
                  'probe_target_critical{target="backend-health"} 1']
        lines += ["# TYPE probe_failures_total counter",
                  f'probe_failures_total{{target="backend-health",failure="http_status"}} '
                  f"{self.failures}", ""]
        return "\n".join(lines)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Prometheus:
    def __init__(self, tmp: Path, replicas: list[Replica]) -> None:
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: stageprobe\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(r.address) for r in replicas)}]\n")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "prometheus.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.until(lambda: self._get("/-/ready") is not None, "Prometheus to start")

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                return bytes(resp.read())
        except OSError:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}") from None
            return None

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        return json.loads(body)["data"]["result"] if body else []

    def until(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def values(self, promql: str) -> list[float]:
        return sorted(float(s["value"][1]) for s in self.query(promql))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[Replica]]]:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (Debian package `prometheus`)")
    replicas = [Replica(), Replica()]
    p = Prometheus(tmp_path_factory.mktemp("prometheus"), replicas)
    try:
        yield p, replicas
    finally:
        p.stop()
        for r in replicas:
            r.close()


def test_prometheus_without_data_is_not_ready(prom: tuple[Prometheus, list[Replica]],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    p, replicas = prom
    for r in replicas:
        r.state = None
    p.until(lambda: p.values("up") == [1.0, 1.0] and not p.query("probe_gate_ready"),
            "both replicas scraped, no probe_gate_ready series")
    assert cli(["gate", "--prometheus", p.url]) == 1
    assert "no data from Prometheus for probe_gate_ready" in capsys.readouterr().out


def test_prometheus_ready_in_every_replica(prom: tuple[Prometheus, list[Replica]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    p, replicas = prom
    for r in replicas:
        r.failing = False
        r.state = {"gate": 1, "backend-health": 1, "docs": 1}
    replicas[1].state = {"gate": 1, "backend-health": 1, "docs": 0}
    p.until(lambda: p.values("probe_gate_ready") == [1.0, 1.0]
            and p.values("probe_target_ready") == [0.0, 1.0, 1.0, 1.0], "all series in")
    assert cli(["gate", "--prometheus", p.url + "/"]) == 0
    out = capsys.readouterr().out
    assert "OK   backend-health" in out
    assert "WARN docs" in out and "not ready in 1 of 2 replicas" in out


def test_prometheus_one_replica_failing_names_the_cause(
        prom: tuple[Prometheus, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    p, replicas = prom
    replicas[0].state = {"gate": 1, "backend-health": 1}
    replicas[1].state = {"gate": 0, "backend-health": 0}
    replicas[1].failing = True
    p.until(lambda: p.values("probe_gate_ready") == [0.0, 1.0]
            and bool(p.values('increase(probe_failures_total{failure="http_status"}[5m]) > 0')),
            "replica 1 failing with counted failures")
    assert cli(["gate", "--prometheus", p.url, "--format", "junit"]) == 1
    out = capsys.readouterr().out
    assert 'failures="1"' in out
    assert 'type="http_status"' in out and "not ready in 1 of 2 replicas" in out

    # --wait: it keeps polling until the failing replica heals
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(
        cli(["gate", "--prometheus", p.url, "--wait", "30s"])))
    waiter.start()
    seen = ""
    deadline = time.monotonic() + 20
    while "backend-health: http_status" not in seen and time.monotonic() < deadline:
        seen += capsys.readouterr().err
        time.sleep(0.05)
    assert "backend-health: http_status" in seen, "progress named the cause while waiting"
    replicas[1].state = {"gate": 1, "backend-health": 1}
    replicas[1].failing = False
    waiter.join(40)
    assert results == [0]
    assert "READY" in capsys.readouterr().out


def test_prometheus_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["gate", "--prometheus", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "refused: cannot reach Prometheus at" in capsys.readouterr().out
