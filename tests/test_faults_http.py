"""HTTP fault matrix: every misbehaviour a staging HTTP endpoint can show, probed for real.

For each fault: the failure class and a probe bounded by its timeout plus a margin. Then:
certificate faults, no task or fd left behind per probe, and a whole daemon (HTTP and WebSocket
targets, healthy and faulty) whose healthy targets stay ready and on schedule while every faulty
one is named correctly on /readyz and /metrics.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
import yaml
from faults import CERT_EXPECTED, HTTP_EXPECTED, WS_EXPECTED, TestCerts
from faults.fixtures import (
    PING_STEP,
    StartFaultServer,
    assert_bounded,
    assert_no_leaks,
    config_of,
    make_target,
    probe_once,
)
from helpers import ProbeRun, Samples, samples, until, value

from probe.checks import CheckContext
from probe.checks._http_classify import Progress, classify
from probe.credentials import Credentials
from probe.daemon.run import Daemon
from probe.outcome import Failure


@pytest.mark.parametrize("fault", sorted(HTTP_EXPECTED))
async def test_http_fault_is_classified_on_time(fault: str, fault_server: StartFaultServer) -> None:
    server = fault_server(fault)
    target = make_target(server.url("/a"))
    outcome, wall = await probe_once(target)
    expected = HTTP_EXPECTED[fault]
    assert outcome.failure == expected, (fault, outcome.failure, outcome.detail)
    assert outcome.success is (expected is None)
    assert_bounded(target, outcome, wall)
    if expected is not None:
        assert outcome.detail and "\n" not in outcome.detail


async def test_redirect_loop_followed_stops_at_max_redirects(
    fault_server: StartFaultServer,
) -> None:
    server = fault_server("redirect_loop")
    target = make_target(server.url("/a"), follow_redirects=True, max_redirects=4)
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.HTTP_STATUS
    assert "4 redirects" in outcome.detail
    assert outcome.status_code == 302
    assert_bounded(target, outcome, wall)


@pytest.mark.parametrize("fault", ["big_body", "big_body:length"])
async def test_50mb_body_is_cut_at_the_cap(fault: str, fault_server: StartFaultServer) -> None:
    """Chunked (cap enforced while reading) and declared (refused up front): either way the
    probe stops long before 50 MB would have been read, with a generous timeout to prove it."""
    target = make_target(fault_server(fault).url("/big"), timeout="5s", interval="10s")
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.BODY_TOO_LARGE
    assert "1 MiB" in outcome.detail or str(target.body_limit) in outcome.detail, outcome.detail
    assert wall < 2.5, f"took {wall:.2f}s: the body was read, not cut"


async def test_drip_is_timeout_naming_progress(fault_server: StartFaultServer) -> None:
    target = make_target(fault_server("drip").url("/"), timeout="2s", interval="5s")
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.TIMEOUT
    assert "2s" in outcome.detail
    assert_bounded(target, outcome, wall)


async def test_stalled_body_is_timeout_after_headers(fault_server: StartFaultServer) -> None:
    target = make_target(fault_server("stall_body").url("/"))
    outcome, _ = await probe_once(target)
    assert outcome.failure == Failure.TIMEOUT
    assert outcome.status_code == 200
    assert "body" in outcome.detail


@pytest.mark.parametrize(("cert", "words"), sorted(CERT_EXPECTED.items()))
async def test_https_certificate_faults_are_tls(
    cert: str, words: tuple[str, ...], fault_server: StartFaultServer, test_certs: TestCerts
) -> None:
    server = fault_server("ok", tls=getattr(test_certs, cert).server_context())
    target = make_target(server.url("/health"), ca_file=str(test_certs.ca_file))
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.TLS, outcome.detail
    assert any(w in outcome.detail.lower() for w in words), outcome.detail
    assert_bounded(target, outcome, wall)


async def test_stalled_tls_handshake_is_connect_timeout(fault_server: StartFaultServer) -> None:
    """TCP accepted, TLS ClientHello never answered: no usable connection, so connect_timeout."""
    plain = fault_server("accept_no_read")
    target = make_target(plain.url("/").replace("http://", "https://"))
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.CONNECT_TIMEOUT, outcome.detail
    assert "TLS" in outcome.detail
    assert_bounded(target, outcome, wall)


async def test_https_controls(fault_server: StartFaultServer, test_certs: TestCerts) -> None:
    """The same CA with a valid leaf succeeds (so the faults above fail for their own reason),
    and an expired certificate with verification off is not a failure."""
    good = fault_server("ok", tls=test_certs.ok.server_context())
    outcome, _ = await probe_once(make_target(good.url("/"), ca_file=str(test_certs.ca_file)))
    assert outcome.success, outcome.detail
    assert outcome.cert_expiry is not None and outcome.cert_expiry > time.time()
    expired = fault_server("ok", tls=test_certs.expired.server_context())
    outcome, _ = await probe_once(make_target(expired.url("/"), tls_verify=False))
    assert outcome.success, outcome.detail
    assert outcome.cert_expiry is not None and outcome.cert_expiry < time.time()


async def test_http_probes_leave_no_tasks_or_sockets(fault_server: StartFaultServer) -> None:
    faults = sorted(HTTP_EXPECTED)
    servers = [fault_server(f) for f in faults]
    targets = [make_target(s.url("/a")) for s in servers]
    await assert_no_leaks(servers, targets, [HTTP_EXPECTED[f] for f in faults])


HEALTHY_INTERVAL = 0.4


async def test_daemon_healthy_targets_unaffected_by_faulty_ones(
    fault_server: StartFaultServer,
) -> None:
    """A real daemon with one healthy HTTP and one healthy WebSocket target among a dozen
    faulty ones: the healthy ones keep their cadence and stay ready, the gate names every
    faulty critical target with its own class, and /metrics counts each under its class only."""
    http_faults = ["accept_no_read", "no_answer", "drip", "big_body", "garbage", "reset",
                   "refuse", "stall_body"]
    ws_faults = ["ws_silent", "ws_garbage", "ws_big", "ws_close:1011", "ws_drop", "ws_no_upgrade"]
    healthy = fault_server("ok")
    interval = f"{HEALTHY_INTERVAL * 1000:.0f}ms"
    targets: list[dict[str, Any]] = [
        {"name": "ok-http", "url": healthy.url("/health"), "interval": interval,
         "timeout": interval, "expect": {"json": {"status": "healthy"}}},
        {"name": "ok-ws", "url": healthy.ws_url("/ws"), "interval": interval,
         "timeout": interval, "messages": [PING_STEP]},
    ]
    expected: dict[str, str] = {}
    for f in http_faults:
        expected[name := f"http-{f}"] = str(HTTP_EXPECTED[f])
        targets.append({"name": name, "url": fault_server(f).url("/"), "interval": "1s",
                        "timeout": "1s"})
    for f in ws_faults:
        expected[name := f"ws-{f.replace(':', '-')}"] = str(WS_EXPECTED[f])
        targets.append({"name": name, "url": fault_server(f).ws_url("/"), "interval": "1s",
                        "timeout": "1s", "messages": [PING_STEP]})
    daemon = Daemon(config_of(targets, defaults={"success_threshold": 2, "failure_threshold": 2}))
    def results(s: Samples, name: str, result: str) -> float:
        return value(s, "probe_results_total", target=name, result=result) or 0

    def settled() -> bool:
        s = samples(daemon.metrics)  # one render and parse per poll, not one per lookup
        return (all(results(s, n, "failure") >= 2 for n in expected)
                and results(s, "ok-http", "success") >= 8 and results(s, "ok-ws", "success") >= 8)

    url = await daemon.start("127.0.0.1", 0)
    start = time.monotonic()
    try:
        await until(
            settled,
            "every faulty target failed twice and the healthy ones probed repeatedly", within=30,
        )
        elapsed = time.monotonic() - start
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as resp:
                assert resp.status == 503
                verdict = await resp.json()
            async with http.get(f"{url}/metrics") as resp:
                exposition = await resp.text()
    finally:
        await daemon.stop()
    final = samples(daemon.metrics)
    for name in ("ok-http", "ok-ws"):
        assert results(final, name, "failure") == 0, name
        # cadence: a loop that waited on the faulty ones (1 s timeouts) would manage far fewer
        assert results(final, name, "success") >= elapsed / HEALTHY_INTERVAL * 0.5, name
    by_name = {t["name"]: t for t in verdict["targets"]}
    assert by_name["ok-http"]["ready"] and by_name["ok-ws"]["ready"]
    assert verdict["ready"] is False
    for name, failure in expected.items():
        assert by_name[name]["state"] == "failing", by_name[name]
        assert by_name[name]["failure"] == failure, (name, by_name[name])
        for other in Failure:
            n = value(final, "probe_failures_total", target=name, failure=other.value)
            assert (n or 0) == 0 or other == failure, (name, other, n)
    assert 'probe_success{target="ok-http"} 1.0' in exposition
    assert 'probe_success{target="http-drip"} 0.0' in exposition


TOKEN_FAULTS = ["no_answer", "drip", "garbage", "big_body", "refuse", "reset", "status:500",
                "accept_no_read", "redirect_loop"]


@pytest.mark.parametrize("kind", ["http", "websocket"])
@pytest.mark.parametrize("fault", TOKEN_FAULTS)
async def test_failing_token_endpoint_is_credential_on_time(
    fault: str, kind: str, fault_server: StartFaultServer
) -> None:
    """An OAuth2 token endpoint that misbehaves: the probe fails as `credential` within its own
    timeout (not the token request's 5 s), the target itself is never contacted, and neither
    the client secret nor the fault's garbage reaches the detail."""
    secret = "s3cr3t-client-secret-value"
    token_url = fault_server(fault).url("/token")
    backend = fault_server("ok")
    url = backend.url("/health") if kind == "http" else backend.ws_url("/ws")
    extra: dict[str, Any] = {"messages": [PING_STEP]} if kind == "websocket" else {}
    cfg = config_of(
        [{"name": "t", "url": url, "credential": "oauth", "timeout": "1s", "interval": "2s",
          **extra}],
        credentials={"oauth": {"oauth2": {"token_url": token_url, "client_id": "probe",
                                          "client_secret": secret, "timeout": "5s"}}},
    )
    ctx = CheckContext(Credentials(cfg.credentials))
    try:
        outcome, wall = await probe_once(cfg.targets[0], ctx)
    finally:
        await ctx.credentials.aclose()
    assert outcome.failure == Failure.CREDENTIAL, (fault, outcome.failure, outcome.detail)
    assert "oauth" in outcome.detail
    assert secret not in outcome.detail and "SSH" not in outcome.detail
    assert_bounded(cfg.targets[0], outcome, wall)
    assert backend.accepted == 0


async def test_sigterm_with_probes_stuck_in_faults_exits_clean(
    fault_server: StartFaultServer, tmp_path: Path,
    probe_run: Callable[..., ProbeRun],
) -> None:
    """`probe run` with every probe stuck in a fault (a 50 MB body, a drip, silence, a 20 MB
    WebSocket message, a stalled TLS handshake): SIGTERM still exits 0 within 5 s, without a
    traceback, and only after the probes were really in flight."""
    faults = {"drip": "http", "no_answer": "http", "big_body": "http", "stall_body": "http",
              "accept_no_read": "https", "ws_silent": "ws", "ws_big": "ws",
              "ws_no_upgrade": "ws"}
    servers = {f: fault_server(f) for f in faults}
    targets = []
    for f, scheme in faults.items():
        url = servers[f].url("/") if scheme != "ws" else servers[f].ws_url("/")
        url = url.replace("http://", "https://") if scheme == "https" else url
        t: dict[str, Any] = {"name": f.replace(":", "-"), "url": url, "timeout": "20s",
                             "interval": "30s", "body_limit": 100 * 1024 * 1024}
        if scheme == "ws":
            t["messages"] = [{**PING_STEP, "timeout": "20s"}]
        targets.append(t)
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(yaml.safe_dump({"targets": targets}))
    run = probe_run(cfg)
    await until(lambda: all(s.accepted for s in servers.values()),
                "every faulty target to have a probe in flight", within=20,
                detail=run.log_text)
    run.signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = await run.wait(5)
    took = time.monotonic() - t0
    log = run.log_text()
    assert code == 0, log
    assert took < 5.0
    assert "Traceback" not in log, log


def test_an_exception_no_rule_names_is_protocol_logged_once() -> None:
    """The check's last resort, for an exception none of the classifier's rules names: that is a
    bug of ours, not the target's doing (every peer-made failure above has its own rule), so it
    is called directly here rather than forced by patching the check. The probe is `protocol`
    naming the exception type, and the traceback is logged once per target and type, not once
    per probe."""
    target = make_target("http://127.0.0.1:9/", name=f"t-{uuid.uuid4().hex[:8]}")
    with structlog.testing.capture_logs() as logs:
        results = [
            classify(RuntimeError("a bug of ours"), Progress(0.0, "127.0.0.1:9"), target)
            for _ in range(3)
        ]
    assert all(failure is Failure.PROTOCOL for failure, _ in results)
    assert results[0][1].startswith("RuntimeError"), results[0]
    errors = [e for e in logs if e.get("log_level") == "error"]
    assert len(errors) == 1, logs
    assert errors[0]["target"] == target.name and isinstance(errors[0]["exc_info"], RuntimeError)
