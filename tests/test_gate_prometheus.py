"""`probe gate --prometheus`: the verdict across replicas, and against a real Prometheus server
scraping two fake prober replicas' /metrics."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import Prometheus, refused_port, until, until_stderr
from helpers import run_cli as run

from probe.gate.prometheus import (
    NO_C_NOTE,
    Expected,
    Observed,
    ago,
    check_selector,
    queries,
    verdict,
)
from probe.report import render_text
from probe.shard import owners

pytestmark = pytest.mark.timeout(90)


def obs(gates: list[float], targets: dict[str, list[float]], **kw: Any) -> Observed:
    """An Observed of unsharded replicas (no shard labels)."""
    return Observed(gates=gates, targets={k: [(v, "") for v in vs] for k, vs in targets.items()},
                    **kw)


def test_prometheus_verdict_is_strict_across_replicas() -> None:
    v = verdict(obs([1.0, 1.0], {"a": [1.0, 1.0], "b": [1.0, 0.0]}))
    assert v.ready and [t.name for t in v.not_ready()] == ["b", "absent-targets"]
    assert not v.not_ready()[0].critical, "gate ready everywhere: b must be non-critical"
    v = verdict(obs([1.0, 0.0], {"a": [1.0, 1.0]}))
    assert not v.ready and v.not_ready()[0].detail == "probe_gate_ready is 0 in 1 of 2 replicas"
    v = verdict(obs([1.0], {"a": [1.0], "b": [0.0]}, critical={"b": True, "a": False}))
    assert not v.targets[0].critical and v.targets[1].critical, "probe_target_critical wins"
    v = verdict(obs([float("nan")], {}))
    assert not v.ready


def test_without_a_file_the_verdict_says_absent_targets_are_invisible() -> None:
    v = verdict(obs([1.0], {"a": [1.0]}))
    note = v.targets[-1]
    assert v.ready and note.name == "absent-targets" and not note.critical and not note.ready
    assert note.detail == NO_C_NOTE and "-c FILE" in render_text(v)


def test_without_a_file_a_shard_its_siblings_announce_is_missed() -> None:
    shards = {(0, 3, 1), (2, 3, 1)}
    v = verdict(obs([1.0, 1.0], {"a": [1.0], "b": [1.0]}, shards=shards))
    assert not v.ready
    (missing,) = [t for t in v.not_ready() if t.critical]
    assert missing.name == "shard 1/3" and "no fresh data" in missing.detail


def test_with_a_file_every_critical_target_needs_a_fresh_series() -> None:
    expected = [Expected("a", "http", True), Expected("b", "http", True),
                Expected("docs", "http", False)]
    v = verdict(obs([1.0], {"a": [1.0]}, last_seen={"b": 125.0}), expected)
    assert not v.ready and [t.name for t in v.not_ready()] == ["b", "docs"]
    b = v.not_ready()[0]
    assert b.critical and b.kind == "http" and b.failure is None
    assert b.detail == "no data in Prometheus for 2m: its replica is down or not scraped"
    assert "in the last 1h" in v.not_ready()[1].detail, "never seen within the window"
    # the owning shard is named, by the daemons' own hash
    shards = {(i, 3, 1) for i in range(3)}
    v = verdict(obs([1.0], {"a": [1.0]}, shards=shards), expected[:2])
    (owner,) = owners("b", 3)
    assert f"its shard {owner}/3 is down" in v.not_ready()[0].detail
    v = verdict(obs([], {"a": [1.0], "b": [1.0]}), expected)
    assert v.ready, "non-critical docs may be absent; probe_gate_ready is not needed with -c"


def test_redundant_replicas_are_ready_only_if_every_fresh_one_is() -> None:
    expected = [Expected("a", "http", True)]
    o = Observed(targets={"a": [(1.0, "0/3"), (0.0, "2/3")]},
                 causes={"a": ("http_status", 4.0)})
    v = verdict(o, expected)
    assert not v.ready
    assert v.targets[0].detail == ("not ready in 1 of 2 replicas (shard 2/3); 4 http_status "
                                   "failures in the last 5m")
    v = verdict(Observed(targets={"a": [(1.0, "0/3")]}), expected)
    assert v.ready, "one fresh replica left of two, and it says ready"


def test_with_a_file_a_target_without_recent_results_is_stale_not_failing() -> None:
    """probe_target_ready is 0 for both: the age of the newest result of the not-ready series
    against the file's 2 x interval + timeout tells them apart, as the daemon would."""
    expected = [Expected("a", "http", True, 25.0), Expected("b", "http", True, 25.0)]
    o = Observed(targets={"a": [(0.0, "")], "b": [(0.0, "")]},
                 causes={"b": ("timeout", 3.0)}, result_age={"a": 41.2, "b": 4.0})
    v = verdict(o, expected)
    a, b = v.targets
    assert not v.ready and not a.ready and not b.ready
    assert (a.state, a.failure, a.detail) == ("stale", None, "no result for 41s (stale after 25s)")
    assert "stale: no result for 41s (stale after 25s)" in render_text(v)
    assert (b.state, b.failure) == ("failing", "timeout"), "recent results: failing, as before"
    # two replicas that say not ready, the newer result 30 s old: stale in both
    o = Observed(targets={"a": [(0.0, "0/2"), (0.0, "1/2")]}, result_age={"a": 30.0})
    assert verdict(o, expected[:1]).targets[0].detail == (
        "no result for 30s in 2 of 2 replicas (stale after 25s)")
    # without the file's limit (no -c, or an Expected without it) the gate cannot tell
    o = Observed(targets={"a": [(0.0, "")]}, result_age={"a": 41.2})
    assert verdict(o, [Expected("a", "http", True)]).targets[0].state == "failing"


def test_queries_scope_every_metric_and_keep_only_fresh_samples() -> None:
    q = queries('{job="stageprobe"}', 30)
    for promql in q.values():
        names = re.findall(r"\b(probe_[a-z_]+)\b", promql)
        assert names and all(f'{n}{{job="stageprobe"}}' in promql for n in names), promql
    assert q["ready"] == ('probe_target_ready{job="stageprobe"} and (time() - '
                          'timestamp(probe_target_ready{job="stageprobe"})) < 30')
    for bad in ('job="stageprobe"', '{job="a"} or vector(1) or up{}'):
        with pytest.raises(ValueError, match="label selector"):
            check_selector(bad)
    assert [ago(s) for s in (4.4, 119, 125, 3600, 3725)] == ["4s", "119s", "2m", "1h", "1h2m"]


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
        self.last_result: dict[str, float] = {}  # target -> unix time of its last result

    def render(self) -> str:
        if self.state is None:
            return "# nothing yet\n"
        if self.failing:
            self.failures += 1
        lines = ["# TYPE probe_gate_ready gauge", f"probe_gate_ready {self.state['gate']}",
                 "# TYPE probe_target_ready gauge"]
        lines += [f'probe_target_ready{{target="{k}"}} {v}' for k, v in self.state.items()
                  if k != "gate"]
        lines += ["# TYPE probe_target_last_result_timestamp_seconds gauge"]
        lines += [f'probe_target_last_result_timestamp_seconds{{target="{k}"}} {v}'
                  for k, v in self.last_result.items()]
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


async def test_prometheus_names_a_stale_target_stale(
        prom: tuple[Prometheus, list[Replica]], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """Both replicas say backend-health is not ready; its newest result is 60 s old against the
    file's 2 x 10s + 5s, so it is stale; docs' result is a second old, so it is failing."""
    p, replicas = prom
    config = tmp_path / "probe.yaml"
    config.write_text("defaults: {interval: 10s, timeout: 5s}\ntargets:\n"
                      "  - {name: backend-health, url: 'http://127.0.0.1:1/health'}\n"
                      "  - {name: docs, url: 'http://127.0.0.1:1/docs'}\n")
    try:
        for r in replicas:
            r.failing = False
            r.state = {"gate": 0, "backend-health": 0, "docs": 0}
            r.last_result = {"backend-health": time.time() - 60, "docs": time.time() - 1}

        async def scraped() -> bool:
            return len(await p.values("probe_target_last_result_timestamp_seconds")) == 4

        await until(scraped, "both replicas' last-result series", within=30, every=0.1)
        assert await run("gate", "--prometheus", p.url, "-c", str(config)) == 1
        out = capsys.readouterr().out
        health = [x for x in out.splitlines() if x.startswith("FAIL backend-health")]
        assert health and re.search(
            r"stale: no result for \d+s in 2 of 2 replicas \(stale after 25s\)", health[0]), out
        docs = [x for x in out.splitlines() if x.startswith("FAIL docs")]
        assert docs and "not ready in 2 of 2 replicas" in docs[0] and "stale" not in docs[0], out
    finally:
        for r in replicas:
            r.last_result = {}


async def test_prometheus_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        assert await run("gate", "--prometheus", f"http://127.0.0.1:{port}") == 1
    assert "refused: cannot reach Prometheus at" in capsys.readouterr().out
