"""WebSocket fault matrix: every misbehaviour a staging WebSocket endpoint can show, for real.

For each fault: the failure class (and close code), and a probe bounded by its timeout plus a
margin. Then: wss certificate faults, no task or fd left behind per probe, and a scheduler whose
healthy target keeps its schedule and its successes while the faulty ones fail around it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from faults import CERT_EXPECTED, WS_EXPECTED, FaultServer, TestCerts
from faults.fixtures import (
    PING_STEP,
    StartFaultServer,
    assert_bounded,
    assert_no_leaks,
    config_of,
    make_target,
    probe_once,
)
from helpers import until

from probe.checks import CheckContext
from probe.config import Target
from probe.daemon.scheduler import Scheduler
from probe.outcome import Failure, Outcome


def ws_target(server: FaultServer, **fields: Any) -> Target:
    fields.setdefault("messages", [PING_STEP])
    return make_target(server.ws_url("/ws"), **fields)


@pytest.mark.parametrize("fault", sorted(WS_EXPECTED))
async def test_ws_fault_is_classified_on_time(
    fault: str, fault_server: StartFaultServer
) -> None:
    server = fault_server(fault)
    target = ws_target(server)
    outcome, wall = await probe_once(target)
    expected = WS_EXPECTED[fault]
    assert outcome.failure == expected, (fault, outcome.failure, outcome.detail)
    assert outcome.success is (expected is None)
    assert_bounded(target, outcome, wall)
    assert outcome.kind == "websocket"
    if expected is not None:
        assert outcome.detail, "a failure always says why"
        assert "\n" not in outcome.detail
    if fault.startswith("ws_close:"):
        code = int(fault.partition(":")[2])
        assert outcome.close_code == code
        assert str(code) in outcome.detail
        if code == 1011:
            assert "server error" in outcome.detail
    if fault == "ws_drop":
        assert outcome.close_code == 1006
    if fault.startswith("ws_reject:"):
        assert outcome.status_code == int(fault.partition(":")[2])


async def test_ws_big_message_is_refused_without_reading_it(
    fault_server: StartFaultServer,
) -> None:
    """A 20 MB message against the 1 MiB cap: body_too_large at once, not after 20 MB (or the
    closing handshake's full timeout against a server still busy streaming)."""
    target = ws_target(fault_server("ws_big"), timeout="5s", interval="10s")
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.BODY_TOO_LARGE
    assert str(target.body_limit) in outcome.detail
    assert wall < 2.5, f"took {wall:.2f}s"


async def test_ws_silent_server_is_no_reply_within_step_timeout(
    fault_server: StartFaultServer,
) -> None:
    """The step timeout (0.5s) bounds the wait, not the larger target timeout (3s); and the
    closing handshake with a server that never answers it does not add its own long wait."""
    step = {**PING_STEP, "timeout": "500ms"}
    target = ws_target(fault_server("ws_silent"), messages=[step], timeout="3s", interval="5s")
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.WS_NO_REPLY
    assert wall < 0.5 + 1.5, f"took {wall:.2f}s"


@pytest.mark.parametrize(("cert", "words"), sorted(CERT_EXPECTED.items()))
async def test_wss_certificate_faults_are_tls(
    cert: str, words: tuple[str, ...], fault_server: StartFaultServer, test_certs: TestCerts
) -> None:
    server = fault_server("ws_ok", tls=getattr(test_certs, cert).server_context())
    target = ws_target(server, ca_file=str(test_certs.ca_file))
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.TLS, outcome.detail
    assert any(w in outcome.detail.lower() for w in words), outcome.detail
    assert_bounded(target, outcome, wall)


async def test_wss_stalled_tls_handshake_is_connect_timeout(
    fault_server: StartFaultServer,
) -> None:
    plain = fault_server("accept_no_read")
    target = make_target(plain.ws_url("/").replace("ws://", "wss://"), messages=[PING_STEP])
    outcome, wall = await probe_once(target)
    assert outcome.failure == Failure.CONNECT_TIMEOUT, outcome.detail
    assert "TLS" in outcome.detail
    assert_bounded(target, outcome, wall)


async def test_wss_with_trusted_ca_succeeds(
    fault_server: StartFaultServer, test_certs: TestCerts
) -> None:
    """The control for the certificate faults: the same CA and server, a valid leaf."""
    server = fault_server("ws_ok", tls=test_certs.ok.server_context())
    outcome, _ = await probe_once(ws_target(server, ca_file=str(test_certs.ca_file)))
    assert outcome.success, outcome.detail


@pytest.mark.parametrize("connections", [1, 3])
async def test_ws_probes_leave_no_tasks_or_sockets(
    connections: int, fault_server: StartFaultServer
) -> None:
    """Every fault, three rounds at once, then: no task of the prober left, and (once the fault
    servers hang up their side) no more fds than before. With `connections: 3` the failing
    session cancels its siblings, which must not leak either."""
    servers = [fault_server(f) for f in sorted(WS_EXPECTED)]
    targets = [ws_target(s, connections=connections) for s in servers]
    await assert_no_leaks(servers, targets, [WS_EXPECTED[f] for f in sorted(WS_EXPECTED)])


async def test_scheduler_keeps_healthy_ws_target_on_schedule(
    fault_server: StartFaultServer,
) -> None:
    """Faulty targets (silent, dropping, garbage, 20 MB, refusing, never upgrading) around one
    healthy one: the healthy one keeps succeeding at its cadence and every faulty one keeps
    being probed and classified (no dead loop)."""
    faults = ["ws_silent", "ws_drop", "ws_garbage", "ws_big", "refuse", "ws_no_upgrade",
              "ws_close:1011"]
    healthy = fault_server("ws_ok")
    servers = {f: fault_server(f) for f in faults}
    targets = [{"name": "healthy", "url": healthy.ws_url(), "messages": [PING_STEP],
                "interval": "300ms", "timeout": "300ms"}]
    targets += [{"name": f"bad{i}", "url": s.ws_url(), "messages": [PING_STEP],
                 "interval": "1s", "timeout": "1s"} for i, s in enumerate(servers.values())]
    config = config_of(targets)
    seen: dict[str, list[Outcome]] = {t.name: [] for t in config.targets}
    lags: list[float] = []
    scheduler = Scheduler(config, CheckContext(), lambda o, _t: seen[o.target].append(o),
                          lags.append)
    start = time.monotonic()
    await scheduler.start()
    try:
        await until(
            lambda: len(seen["healthy"]) >= 10 and all(len(v) >= 2 for v in seen.values()),
            "every target probed repeatedly", within=20,
        )
    finally:
        await scheduler.stop()
    elapsed = time.monotonic() - start
    assert all(o.success for o in seen["healthy"]), [o.detail for o in seen["healthy"]]
    # cadence: 300ms interval; allow the 2-core machine plenty of slack, but a healthy loop that
    # waited on the faulty ones (1s timeouts) would manage only a third of this
    assert len(seen["healthy"]) >= elapsed / 0.3 * 0.5
    for i, fault in enumerate(faults):
        got = {o.failure for o in seen[f"bad{i}"]}
        assert got == {WS_EXPECTED.get(fault, "ws_closed")}, (fault, got)
        assert all(o.duration <= 1.0 + 1.5 for o in seen[f"bad{i}"])
    assert lags and max(lags) < 1.0
