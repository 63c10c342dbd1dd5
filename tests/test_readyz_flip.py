"""/readyz and `probe gate URL` against a real daemon probing the twin, through a break and a heal.

DESIGN.md promises: /readyz goes 503 within failure_threshold x interval (plus one timeout) after
a critical target breaks, and back to 200 within success_threshold x interval after it heals —
and never sooner than the thresholds allow (hysteresis is the point: one blip must not flip CI).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import ProbeRun, StartDaemon, free_port, http_get, until

from probe.config import parse_config
from probe.daemon.run import Daemon
from probe.twin import Twin

INTERVAL, TIMEOUT = 0.4, 0.3
SUCCESS_THRESHOLD, FAILURE_THRESHOLD = 2, 3
SLACK = 1.5  # scheduling and polling slack on a busy 2-core CI machine


pytestmark = pytest.mark.twin(version="build-7")


@pytest.fixture
async def setup(twin: Twin, start_daemon: StartDaemon) -> tuple[Twin, Daemon]:
    config = parse_config(
        f"""
defaults: {{interval: {INTERVAL}s, timeout: {TIMEOUT}s,
            success_threshold: {SUCCESS_THRESHOLD}, failure_threshold: {FAILURE_THRESHOLD}}}
targets:
  - {{name: backend-health, url: "{twin.url}/health", expect: {{json: {{status: healthy}}}},
      version_path: version}}
  - {{name: optional-api, url: "http://127.0.0.1:{free_port()}/", critical: false}}
""",
        env={},
    )
    return twin, await start_daemon(config)


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    got = await http_get(f"{url}/readyz")
    assert got is not None, f"the daemon at {url} does not answer"
    return got[0], json.loads(got[1])


async def wait_for_status(url: str, want: int, within: float) -> tuple[float, dict[str, Any]]:
    """Seconds until /readyz answers `want` (polled every 20 ms), and that answer's body."""
    async def answered() -> dict[str, Any] | None:
        status, body = await readyz(url)
        return body if status == want else None

    start = time.monotonic()
    body = await until(answered, f"/readyz to answer {want}", within=within, every=0.02)
    return time.monotonic() - start, body


async def gate(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probe", "gate", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return int(proc.returncode or 0), out.decode()


async def test_readyz_flips_within_the_thresholds_and_not_sooner(
    setup: tuple[Twin, Daemon],
) -> None:
    twin, daemon = setup
    await wait_for_status(daemon.url, 200, within=10)

    before = twin.requests("/health")
    twin.set_fault(health="503")
    elapsed, body = await wait_for_status(
        daemon.url, 503, within=FAILURE_THRESHOLD * INTERVAL + TIMEOUT + SLACK
    )
    failing_probes = twin.requests("/health") - before
    assert failing_probes >= FAILURE_THRESHOLD, (
        f"flipped after {failing_probes} failed probe(s): hysteresis ignored"
    )
    [target] = [t for t in body["targets"] if t["name"] == "backend-health"]
    assert target["failure"] == "http_status" and "503" in target["detail"], target
    assert elapsed <= FAILURE_THRESHOLD * INTERVAL + TIMEOUT + SLACK

    before = twin.requests("/health")
    twin.set_fault(health="ok")
    elapsed, body = await wait_for_status(
        daemon.url, 200, within=SUCCESS_THRESHOLD * INTERVAL + SLACK
    )
    assert twin.requests("/health") - before >= SUCCESS_THRESHOLD
    assert body["ready"] is True


async def test_non_critical_target_does_not_block_the_gate(setup: tuple[Twin, Daemon]) -> None:
    _, daemon = setup
    # The optional target is refused from the start and goes failing; the gate opens anyway.
    await wait_for_status(daemon.url, 200, within=10)

    async def optional_failing() -> dict[str, Any] | None:
        status, body = await readyz(daemon.url)
        assert status == 200, body  # and it stays open all along
        [api] = [t for t in body["targets"] if t["name"] == "optional-api"]
        return api if api["state"] == "failing" else None

    api = await until(optional_failing, "the optional target to go failing", within=10)
    assert api["failure"] == "refused", api


async def test_probe_gate_against_the_real_daemon(setup: tuple[Twin, Daemon]) -> None:
    twin, daemon = setup
    code, out = await gate(daemon.url, "--wait", "10s", "--format", "json")
    assert code == 0, out
    assert json.loads(out)["ready"] is True

    twin.set_fault(health="503")
    await wait_for_status(daemon.url, 503, within=10)
    code, out = await gate(daemon.url)
    assert code == 1
    assert "backend-health" in out and "http_status" in out and "503" in out, out

    # --wait rides out the outage and reports ready once the twin heals.
    twin.set_fault(health="ok")
    code, out = await gate(daemon.url, "--wait", "20s")
    assert code == 0, out


async def raw_get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET sent on its own connection (the kernel takes it even while the daemon is stopped);
    read the answer with `read_answer`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def read_answer(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, str]:
    reader, writer = conn
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_daemon_that_was_stopped_says_stale_not_ready(
    twin: Twin, probe_run: Callable[..., ProbeRun], tmp_path: Path,
) -> None:
    """No fresh evidence is no evidence. The daemon is frozen (SIGSTOP: a paused VM, a starved
    container) for longer than 2 x interval + timeout, and the twin hangs meanwhile, so the first
    probe after SIGCONT brings no result for a while: what /readyz, /api/v1/status and /metrics
    answer first must be `stale`, never the `ready` of a result 3 s old."""
    interval, timeout = 1.0, 0.8
    stale_after = 2 * interval + timeout
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(f"targets:\n  - {{name: h, url: '{twin.url}/health', interval: {interval}s,"
                   f" timeout: {timeout}s, success_threshold: 1}}\n")
    p = await probe_run(cfg).live()

    async def successes() -> float:
        got = await http_get(f"{p.url}/metrics")
        m = re.search(r'^probe_results_total\{[^}]*result="success"[^}]*\} (\S+)$',
                      got[1] if got else "", re.M)
        return float(m.group(1)) if m else 0.0

    await wait_for_status(p.url, 200, within=10)
    seen = await successes()
    await until(lambda: _more(successes(), seen), "a fresh result")  # the next probe is ~1s away
    loop = asyncio.get_running_loop()
    p.signal(signal.SIGSTOP)
    try:
        stopped = loop.time()
        twin.set_fault(health="hang")
        await until(lambda: loop.time() - stopped > stale_after + 0.3, "the evidence to age",
                    within=stale_after + 5)
        conns = [await raw_get(p.port, path) for path in ("/readyz", "/api/v1/status", "/metrics")]
    finally:
        p.signal(signal.SIGCONT)
    (status, readyz), (_, api), (_, metrics) = [await read_answer(c) for c in conns]
    assert status == 503, readyz
    [target] = json.loads(readyz)["targets"]
    assert (target["state"], target["ready"]) == ("stale", False), target
    assert target["detail"].startswith("no result for ") and "stale after 2.8s" in target["detail"]
    assert json.loads(api)["targets"][0]["state"] == "stale"
    assert 'probe_target_ready{target="h"} 0' in metrics and "probe_gate_ready 0" in metrics


async def _more(value: Any, than: float) -> bool:
    return bool(await value > than)
