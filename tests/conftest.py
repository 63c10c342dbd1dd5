"""Fixtures shared by several test modules (plain helpers are in helpers.py).

`twin`: the twin on a loopback port. A module (or test) that needs a particular one says so with
a marker instead of defining its own fixture: `pytestmark = pytest.mark.twin(version="abc")`;
the marker's keyword arguments go to `Twin(...)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from faults import FaultServer
from helpers import ProbeRun, StartDaemon

from probe.config import Config
from probe.daemon import Daemon
from probe.twin import Twin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "twin(**kwargs): keyword arguments for the Twin the `twin` fixture starts")


@pytest.fixture
async def twin(request: pytest.FixtureRequest) -> AsyncIterator[Twin]:
    marker = request.node.get_closest_marker("twin")
    t = Twin(**(marker.kwargs if marker else {}))
    await t.start("127.0.0.1", 0)
    yield t
    await t.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


@pytest.fixture
def probe_run(tmp_path: Path) -> Iterator[Callable[..., ProbeRun]]:
    """`probe_run(config_path, VAR="value", ...)` starts `probe run`; all are stopped after."""
    started: list[ProbeRun] = []

    def start(config: Path, **env: str) -> ProbeRun:
        p = ProbeRun(config, tmp_path, env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


@pytest.fixture
async def start_daemon() -> AsyncIterator[StartDaemon]:
    """`await start_daemon(config, gate_token=..., port=...)`: the real Daemon in this test's
    loop on loopback (its `url` is set); every one started is stopped after the test."""
    started: list[Daemon] = []

    async def start(config: Config, *, gate_token: str | None = None, port: int = 0) -> Daemon:
        daemon = Daemon(config, gate_token=gate_token)
        await daemon.start("127.0.0.1", port)
        started.append(daemon)
        return daemon

    yield start
    for daemon in reversed(started):
        await daemon.stop()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A loopback listener that never accepts, its queue filled: the kernel drops further SYNs,
    so a connect there hangs (a real connect_timeout without leaving loopback). The same
    listener as the `blackhole` fault server."""
    try:
        server = FaultServer("blackhole").start()
    except RuntimeError:
        pytest.skip("this kernel completes every handshake; the TLS connect_timeout tests remain")
    try:
        yield server.port
    finally:
        server.stop()
