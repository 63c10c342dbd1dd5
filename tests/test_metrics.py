"""Metrics after real probes over loopback, their exposition, and a real Prometheus scraping."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from certs import make_self_signed
from faults.fixtures import config_of
from helpers import (
    Prometheus,
    Samples,
    StartDaemon,
    refused_port,
    running_twin,
    samples,
    silent_server,
    until,
    value,
)
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from probe import __version__
from probe.checks import CheckContext, checker_for
from probe.config import Config, Target
from probe.metrics import HTTP_PHASES, KIND_FAILURES, Metrics
from probe.outcome import Failure, Outcome
from probe.readiness import Readiness
from probe.twin import Twin

pytestmark = pytest.mark.twin(version="v1")  # conftest's `twin`

def of_target(s: Samples, name: str) -> list[tuple[str, dict[str, str]]]:
    return [(n, dict(labels)) for n, labels in s if dict(labels).get("target") == name]


def http_target(url: str, **extra: Any) -> Target:
    return config_of([{"name": "t", "url": url, "interval": "2s", "timeout": "1s", **extra}]
                     ).targets[0]


async def probe_once(metrics: Metrics, target: Target, ctx: CheckContext | None = None) -> Outcome:
    outcome = await checker_for(target)(target, ctx or CheckContext())
    metrics.record(outcome, target)
    return outcome


async def test_success_values(twin: Twin) -> None:
    m = Metrics()
    target = http_target(f"{twin.url}/health", version_path="version")
    before = time.time()
    assert value(samples(m), "probe_target_last_result_timestamp_seconds", target="t") is None
    outcome = await probe_once(m, target)
    assert outcome.success, outcome
    s = samples(m)
    last = value(s, "probe_target_last_result_timestamp_seconds", target="t")
    assert last is not None and before <= last <= time.time()
    assert value(s, "probe_success", target="t") == 1
    assert value(s, "probe_http_status_code", target="t") == 200
    assert 0 < value(s, "probe_duration_seconds", target="t") < 1  # type: ignore[operator]
    phases = {p: value(s, "probe_http_duration_seconds", target="t", phase=p) for p in HTTP_PHASES}
    assert all(v is not None for v in phases.values()), phases
    assert phases["tls"] == 0 and phases["connect"] > 0 and phases["processing"] > 0  # type: ignore[operator]
    assert value(s, "probe_results_total", target="t", result="success") == 1
    assert value(s, "probe_results_total", target="t", result="failure") == 0
    for f in Failure:  # what an HTTP probe can fail with exists from the start, at 0; no ws_*
        want = 0 if f.value in KIND_FAILURES["http"] else None
        assert value(s, "probe_failures_total", target="t", failure=f.value) == want, f
    assert {"dns", "timeout", "http_status", "protocol"} <= set(KIND_FAILURES["http"])
    assert value(s, "probe_latency_seconds_count", target="t", measure="total") == 1
    assert outcome.latency.get("ttfb") is not None  # measured, but no latency target judges it
    assert value(s, "probe_latency_seconds_count", target="t", measure="ttfb") is None
    # the series budget of a probed plain-http target (docs/performance.md counts on it):
    # 4 last-probe gauges (the last result's time one of them), 6 of blackbox_exporter's
    # probe_http_* / probe_failed_due_to_regex (no probe_tls_version_info on plain http),
    # 5 phases, 20 histogram lines, 2 results, 12 failures, critical
    assert len(of_target(s, "t")) == 50, sorted(map(str, of_target(s, "t")))
    assert value(s, "probe_build_info", version=__version__) == 1
    assert value(s, "probe_ssl_earliest_cert_expiry", target="t") is None  # plain http
    assert not any(name.startswith("probe_websocket") for name, _ in s)


async def _case(failure: str, twin: Twin, stack: contextlib.AsyncExitStack, tmp: Path
                ) -> tuple[Target, CheckContext, int]:
    """A target (and context) whose probe fails with `failure`, and the HTTP status it sees."""
    ctx = CheckContext()
    if failure in ("http_status", "assertion", "body_too_large", "disconnected", "protocol"):
        fault = {"http_status": "503", "assertion": "degraded", "body_too_large": "big",
                 "disconnected": "drop", "protocol": "garbage"}[failure]
        twin.set_fault(health=fault)
        status = {"http_status": 503, "assertion": 200, "body_too_large": 200}.get(failure, 0)
        target = http_target(f"{twin.url}/health", expect={"json": {"status": "healthy"}})
        return target, ctx, status
    if failure == "version_mismatch":
        ctx = CheckContext(expect_version="v2")
        return http_target(f"{twin.url}/health", version_path="version"), ctx, 200
    if failure == "timeout":
        silent = await stack.enter_async_context(silent_server())
        return http_target(f"{silent.url}/"), ctx, 0
    if failure == "refused":
        port = stack.enter_context(refused_port())  # bound, not listening: the kernel refuses
        return http_target(f"http://127.0.0.1:{port}/"), ctx, 0
    if failure == "connect_timeout":
        from faults import FaultServer  # a listener with a full accept backlog

        server = stack.enter_context(FaultServer("blackhole"))
        return http_target(server.url("/")), ctx, 0
    if failure == "dns":
        return http_target("http://nonexistent.invalid/"), ctx, 0
    if failure == "tls":
        cert = make_self_signed(tmp)
        tls_twin = await stack.enter_async_context(running_twin(cert.server_context()))
        return http_target(f"{tls_twin.url}/health"), ctx, 0
    raise AssertionError(failure)


FAILURES = ["dns", "refused", "connect_timeout", "tls", "timeout", "http_status", "assertion",
            "version_mismatch", "body_too_large", "disconnected", "protocol"]


@pytest.mark.parametrize("failure", FAILURES)
async def test_failure_values(failure: str, twin: Twin, tmp_path: Path) -> None:
    m = Metrics()
    async with contextlib.AsyncExitStack() as stack:
        await probe_once(m, http_target(f"{twin.url}/api/health").model_copy(
            update={"name": "other"}))
        target, ctx, status = await _case(failure, twin, stack, tmp_path)
        outcome = await probe_once(m, target, ctx)
    assert outcome.failure == Failure(failure), outcome
    s = samples(m)
    assert value(s, "probe_success", target="t") == 0
    assert value(s, "probe_http_status_code", target="t") == status
    assert 0 < value(s, "probe_duration_seconds", target="t") <= target.timeout + 1  # type: ignore[operator]
    assert value(s, "probe_results_total", target="t", result="failure") == 1
    for f in Failure:
        want = 1 if f.value == failure else 0 if f.value in KIND_FAILURES["http"] else None
        assert value(s, "probe_failures_total", target="t", failure=f.value) == want, f
    for p in HTTP_PHASES:  # phases a failed probe never reached read 0, not a stale value
        assert value(s, "probe_http_duration_seconds", target="t", phase=p) is not None
    assert value(s, "probe_success", target="other") == 1  # labels never mix targets
    for (name, labels), _v in s.items():  # the closed label sets: names and the vocabulary only
        d = dict(labels)
        assert d.get("target") in (None, "t", "other"), (name, d)
        assert "url" not in d and "instance" not in d


async def test_tls_success_exports_cert_expiry(tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path, days=30)
    async with running_twin(cert.server_context()) as tls_twin:
        m = Metrics()
        target = http_target(f"{tls_twin.url}/health", ca_file=str(cert.cert_file))
        assert (await probe_once(m, target)).success
    s = samples(m)
    assert value(s, "probe_ssl_earliest_cert_expiry", target="t") == pytest.approx(
        cert.not_after, abs=1)
    assert value(s, "probe_http_duration_seconds", target="t", phase="tls") > 0  # type: ignore[operator]


def test_counters_exist_before_the_first_probe_and_gauges_after() -> None:
    m = Metrics()
    m.add_target(http_target("http://127.0.0.1:1/"))
    s = samples(m)
    assert value(s, "probe_failures_total", target="t", failure="refused") == 0
    assert value(s, "probe_results_total", target="t", result="success") == 0
    assert value(s, "probe_success", target="t") is None  # unknown, not "failed"
    target = http_target("http://127.0.0.1:1/")
    m.record(Outcome.failed("t", "http", Failure.REFUSED, "refused", 0.001), target)
    s = samples(m)
    assert value(s, "probe_success", target="t") == 0
    assert value(s, "probe_failures_total", target="t", failure="refused") == 1
    ws = target.model_copy(update={"url": "ws://127.0.0.1:1/"})  # same name, now a WebSocket
    m.add_target(ws)  # as Daemon.apply does on a reload that changes a target's kind
    m.record(Outcome("t", "websocket", True, 0.01, status_code=101), ws)
    # a probe of the old kind, started before the reload, lands afterwards: not counted
    m.record(Outcome.failed("t", "http", Failure.REFUSED, "refused", 0.001), target)
    s = samples(m)
    assert value(s, "probe_websocket_status_code", target="t") == 101
    assert value(s, "probe_http_status_code", target="t") is None
    assert value(s, "probe_failures_total", target="t", failure="refused") == 0  # a new series
    assert value(s, "probe_failures_total", target="t", failure="ws_auth") == 0  # ws's set
    assert value(s, "probe_failures_total", target="t", failure="http_status") is None
    assert not [n for n, labels in of_target(s, "t") if labels.get("phase") == "processing"]


async def test_forget_removes_every_series_of_a_target(twin: Twin) -> None:
    m = Metrics()
    await probe_once(m, http_target(f"{twin.url}/health"))
    await probe_once(m, http_target(f"{twin.url}/api/health").model_copy(update={"name": "o"}))
    m.forget("t")
    s = samples(m)
    assert not [k for k in s if dict(k[1]).get("target") == "t"]
    assert value(s, "probe_success", target="o") == 1
    await probe_once(m, http_target(f"{twin.url}/health"))  # and it can come back
    assert value(samples(m), "probe_success", target="t") == 1


def test_lag_histogram_and_readiness_gauges() -> None:
    m = Metrics()
    config = config_of([{"name": "a", "url": "http://127.0.0.1:1/", "success_threshold": 1},
                        {"name": "b", "url": "http://127.0.0.1:1/", "critical": False}])
    for target in config.targets:
        m.add_target(target)
    readiness = Readiness(config)
    readiness.observe(Outcome("a", "http", True, 0.01), now=1.0)
    m.set_readiness(*readiness.ready_flags(1.0))
    for lag in (0.0005, 0.003, 0.2):
        m.observe_lag(lag)
    s = samples(m)
    assert value(s, "probe_target_ready", target="a") == 1
    assert value(s, "probe_target_ready", target="b") == 0
    assert value(s, "probe_gate_ready") == 1
    assert value(s, "probe_scheduler_lag_seconds_count") == 3
    assert value(s, "probe_scheduler_lag_seconds_bucket", le="0.001") == 1
    assert value(s, "probe_scheduler_lag_seconds_bucket", le="0.25") == 3


def test_histograms_for_total_and_for_the_judged_measure_only() -> None:
    m = Metrics()
    judged = http_target("http://127.0.0.1:1/", latency={"measure": "ttfb", "p95": "100ms"})
    m.add_target(judged)
    outcome = Outcome("t", "http", True, 0.05, status_code=200,
                      latency={"total": 0.05, "ttfb": 0.03})
    m.record(outcome, judged)
    m.record(outcome, judged)
    s = samples(m)
    assert value(s, "probe_latency_seconds_count", target="t", measure="ttfb") == 2
    assert value(s, "probe_latency_seconds_sum", target="t", measure="ttfb") == pytest.approx(0.06)
    assert value(s, "probe_latency_seconds_bucket", target="t", measure="ttfb", le="0.025") == 0
    assert value(s, "probe_latency_seconds_bucket", target="t", measure="ttfb", le="0.05") == 2
    assert value(s, "probe_latency_seconds_bucket", target="t", measure="total", le="0.05") == 2
    assert value(s, "probe_latency_seconds_bucket", target="t", measure="total", le="+Inf") == 2
    assert value(s, "probe_latency_target_seconds", target="t", measure="ttfb",
                 quantile="0.95") == 0.1
    plain = http_target("http://127.0.0.1:1/")  # reloaded without its latency target
    m.add_target(plain)
    m.record(outcome, plain)
    s = samples(m)
    assert value(s, "probe_latency_seconds_count", target="t", measure="ttfb") is None
    assert value(s, "probe_latency_seconds_count", target="t", measure="total") == 3  # kept
    assert not [n for n, _ in of_target(s, "t") if n == "probe_latency_target_seconds"]


def test_a_failure_outside_the_kinds_usual_set_is_counted_all_the_same() -> None:
    m = Metrics()
    target = http_target("http://127.0.0.1:1/")
    m.record(Outcome.failed("t", "http", Failure.WS_DROPPED, "odd", 0.1), target)
    m.record(Outcome.failed("t", "http", Failure.WS_DROPPED, "odd", 0.1), target)
    s = samples(m)
    assert value(s, "probe_failures_total", target="t", failure="ws_dropped") == 2
    assert value(s, "probe_results_total", target="t", result="failure") == 2


# --- served: /metrics negotiation, and a real Prometheus scraping it -------------------------


async def test_openmetrics_negotiation(
    twin: Twin, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    config = config_of([{"name": "h", "url": f"{twin.url}/health", "interval": "200ms",
                         "timeout": "200ms"}])
    base = (await start_daemon(config)).url
    async def scraped() -> bool:
        async with http.get(f"{base}/metrics") as r:
            return 'probe_success{target="h"} 1.0' in await r.text()

    await until(scraped, "a successful probe on /metrics")
    async with http.get(f"{base}/metrics") as r:
        assert r.content_type == "text/plain"
        classic = await r.text()
    om_accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with http.get(f"{base}/metrics", headers={"Accept": om_accept}) as r:
        assert r.content_type == "application/openmetrics-text"
        om = await r.text()
    async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip",
                                                    "Accept": om_accept}) as r:
        assert r.headers.get("Content-Encoding") == "gzip"  # aiohttp inflates it for us
        assert r.content_type == "application/openmetrics-text"
        om_gzipped = await r.text()
    async with http.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}) as r:
        assert "Content-Encoding" not in r.headers
    assert om.endswith("# EOF\n") and "# EOF" not in classic
    families = {f.name: f for f in om_parse(om)}  # the OpenMetrics parser accepts it
    assert {f.name for f in om_parse(om_gzipped)} == set(families)
    (success,) = families["probe_success"].samples
    assert success.labels == {"target": "h"} and success.value == 1
    assert families["probe_failures"].type == "counter"
    assert families["probe_latency_seconds"].type == "histogram"
    assert "probe_results_created" not in om and "_created" not in classic
    if not shutil.which("promtool"):  # Prometheus' own linter, from Debian's prometheus
        pytest.skip("promtool is not installed: the exposition lint was not run")
    lint = await asyncio.create_subprocess_exec(
        "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(lint.communicate(classic.encode()), 30)
    assert lint.returncode == 0, out.decode()


async def test_real_prometheus_scrapes_the_daemon(
    twin: Twin, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (Debian package `prometheus`)")
    config = config_of([{"name": "backend-health", "url": f"{twin.url}/health",
                         "interval": "200ms", "timeout": "200ms"}])
    daemon = await start_daemon(config)
    prom = Prometheus(
        tmp_path,
        "global: {scrape_interval: 500ms, scrape_timeout: 400ms}\n"
        "scrape_configs:\n  - job_name: stageprobe\n    static_configs:\n"
        f"      - targets: ['{daemon.url.removeprefix('http://')}']\n")
    try:
        async def success_is(v: float) -> bool:
            return await prom.values('probe_success{target="backend-health"}') == [v]

        await until(lambda: success_is(1.0), "Prometheus to see probe_success 1",
                    detail=prom.log_text)
        assert await prom.values("up") == [1.0]
        twin.set_fault(health="503")

        async def failing() -> bool:
            got = await prom.values('probe_failures_total{target="backend-health",'
                                    'failure="http_status"}')
            return bool(got) and got[0] > 0 and await success_is(0.0)

        await until(failing, "Prometheus to see the http_status failures", detail=prom.log_text)
        assert await prom.values('probe_http_status_code{target="backend-health"}') == [503]
    finally:
        prom.stop()


async def test_served_series_follow_a_reload(twin: Twin, start_daemon: StartDaemon) -> None:
    """Daemon.apply: a removed target's series leave /metrics, a target whose latency target
    no longer judges ttfb loses that histogram and keeps its counts."""
    def config(*targets: dict[str, Any]) -> Config:
        return config_of([{"interval": "200ms", "timeout": "200ms", **t} for t in targets])

    keep = {"name": "keep", "url": f"{twin.url}/health"}
    daemon = await start_daemon(config(
        {**keep, "latency": {"measure": "ttfb", "p95": "1s"}},
        {"name": "gone", "url": f"{twin.url}/api/health"}))
    om_accept = "application/openmetrics-text;version=1.0.0"

    async def scrape() -> Samples:
        async with aiohttp.ClientSession() as http, http.get(
                f"{daemon.url}/metrics",
                headers={"Accept": om_accept, "Accept-Encoding": "gzip"}) as r:
            text = await r.text()
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in om_parse(text) for s in f.samples}

    async def probed(*names: str) -> Samples | None:
        s = await scrape()
        return s if all(value(s, "probe_success", target=n) == 1 for n in names) else None

    s = await until(lambda: probed("keep", "gone"), "both targets probed")
    assert value(s, "probe_latency_seconds_count", target="keep", measure="ttfb")
    daemon.apply(config(keep))
    s = await scrape()
    assert of_target(s, "gone") == []
    assert value(s, "probe_latency_seconds_count", target="keep", measure="ttfb") is None
    before = value(s, "probe_results_total", target="keep", result="success")
    assert before is not None and before >= 1

    async def counted_on() -> bool:
        s = await scrape()
        return value(s, "probe_results_total", target="keep", result="success") > before  # type: ignore[operator]

    await until(counted_on, "keep probed after the reload")


@pytest.mark.parametrize(("fault", "upgraded", "regex"), [
    ("ok", 1, 0),  # upgraded, the ping got its pong
    ("silent", 1, 1),  # upgraded, then no reply: the message expectation failed
    ("reject", 0, 0),  # the upgrade itself was refused
])
async def test_blackbox_websocket_gauges(fault: str, upgraded: int, regex: int, twin: Twin
                                         ) -> None:
    """blackbox_exporter's WebSocket prober names beside ours, from real probes of the twin:
    probe_websocket_connection_upgraded and, for targets with messages (its query_response),
    probe_websocket_failed_due_to_regex; a target without messages has no such series."""
    config = config_of([
        {"name": "chat", "url": f"ws://{twin.url.removeprefix('http://')}/ws", "timeout": "1s",
         "messages": [{"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}},
                       "timeout": "300ms"}]},
        {"name": "bare", "url": f"ws://{twin.url.removeprefix('http://')}/ws", "timeout": "1s"},
    ])
    chat, bare = config.targets
    m = Metrics()
    for target in config.targets:
        m.add_target(target)
    s = samples(m)
    assert value(s, "probe_websocket_connection_upgraded", target="chat") is None  # not probed
    twin.set_fault(ws=fault)
    outcome = await probe_once(m, chat)
    assert outcome.success == (fault == "ok"), outcome
    await probe_once(m, bare)
    s = samples(m)
    assert value(s, "probe_websocket_connection_upgraded", target="chat") == upgraded
    assert value(s, "probe_websocket_failed_due_to_regex", target="chat") == regex
    assert value(s, "probe_websocket_connection_upgraded", target="bare") == upgraded
    assert value(s, "probe_websocket_failed_due_to_regex", target="bare") is None
    # ours stay
    assert value(s, "probe_websocket_status_code", target="chat") == (101 if upgraded else 403)
    for phase in ("resolve", "connect", "handshake", "rtt"):
        assert value(s, "probe_websocket_duration_seconds", target="chat", phase=phase) is not None
