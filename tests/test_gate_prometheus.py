"""`probe gate --prometheus`: the verdict across replicas, and against a real Prometheus server
scraping two fake prober replicas' /metrics."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import Prometheus, refused_port, until, until_stderr
from helpers import run_cli as run

from probe.gate import prometheus_verdict

pytestmark = pytest.mark.timeout(90)


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


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[Replica]]]:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (Debian package `prometheus`)")
    replicas = [Replica(), Replica()]
    p = Prometheus(
        tmp_path_factory.mktemp("prometheus"),
        "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: stageprobe\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(r.address) for r in replicas)}]\n")
    try:
        asyncio.run(p.ready())  # each test then queries it from its own loop
        yield p, replicas
    finally:
        p.stop()
        for r in replicas:
            r.close()


async def test_prometheus_without_data_is_not_ready(
        prom: tuple[Prometheus, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    p, replicas = prom
    for r in replicas:
        r.state = None

    async def scraped_without_gate() -> bool:
        return await p.values("up") == [1.0, 1.0] and not await p.query("probe_gate_ready")

    await until(scraped_without_gate, "both replicas scraped, no probe_gate_ready series",
                within=30, every=0.1)
    assert await run("gate", "--prometheus", p.url) == 1
    assert "no data from Prometheus for probe_gate_ready" in capsys.readouterr().out


async def test_prometheus_ready_in_every_replica(
        prom: tuple[Prometheus, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    p, replicas = prom
    for r in replicas:
        r.failing = False
        r.state = {"gate": 1, "backend-health": 1, "docs": 1}
    replicas[1].state = {"gate": 1, "backend-health": 1, "docs": 0}

    async def all_in() -> bool:
        return (await p.values("probe_gate_ready") == [1.0, 1.0]
                and await p.values("probe_target_ready") == [0.0, 1.0, 1.0, 1.0])

    await until(all_in, "all series in", within=30, every=0.1)
    assert await run("gate", "--prometheus", p.url + "/") == 0
    out = capsys.readouterr().out
    assert "OK   backend-health" in out
    assert "WARN docs" in out and "not ready in 1 of 2 replicas" in out


async def test_prometheus_one_replica_failing_names_the_cause(
        prom: tuple[Prometheus, list[Replica]], capsys: pytest.CaptureFixture[str]) -> None:
    p, replicas = prom
    replicas[0].state = {"gate": 1, "backend-health": 1}
    replicas[1].state = {"gate": 0, "backend-health": 0}
    replicas[1].failing = True

    async def failing_counted() -> bool:
        return await p.values("probe_gate_ready") == [0.0, 1.0] and bool(
            await p.values('increase(probe_failures_total{failure="http_status"}[5m]) > 0'))

    await until(failing_counted, "replica 1 failing with counted failures", within=30,
                every=0.1)
    assert await run("gate", "--prometheus", p.url, "--format", "junit") == 1
    out = capsys.readouterr().out
    assert 'failures="1"' in out
    assert 'type="http_status"' in out and "not ready in 1 of 2 replicas" in out

    # --wait: it keeps polling until the failing replica heals
    gate = asyncio.create_task(run("gate", "--prometheus", p.url, "--wait", "30s"))
    await until_stderr(capsys, "backend-health: http_status")  # progress named the cause
    assert not gate.done()
    replicas[1].state = {"gate": 1, "backend-health": 1}
    replicas[1].failing = False
    assert await gate == 0
    assert "READY" in capsys.readouterr().out


async def test_prometheus_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        assert await run("gate", "--prometheus", f"http://127.0.0.1:{port}") == 1
    assert "refused: cannot reach Prometheus at" in capsys.readouterr().out
