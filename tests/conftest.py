"""Fixtures shared by several test modules (plain helpers are in helpers.py).

`twin`: the twin on a loopback port. A module (or test) that needs a particular one says so with
a marker instead of defining its own fixture: `pytestmark = pytest.mark.twin(version="abc")`;
the marker's keyword arguments go to `Twin(...)`.
`fault_server`, `test_certs` and `full_backlog`: the misbehaving servers of tests/faults.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from faults import FaultServer, TestCerts, make_certs
from faults.fixtures import StartFaultServer
from helpers import ProbeRun, StartDaemon, running_twin

from probe.config import Config
from probe.daemon.run import Daemon
from probe.twin import Twin


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "twin(**kwargs): keyword arguments for the Twin the `twin` fixture starts")
    config.addinivalue_line(
        "markers", "image: builds and runs the container image (minutes); only with -m image")


@pytest.fixture
async def twin(request: pytest.FixtureRequest) -> AsyncIterator[Twin]:
    marker = request.node.get_closest_marker("twin")
    async with running_twin(**(marker.kwargs if marker else {})) as t:
        yield t


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
def fault_server() -> Iterator[StartFaultServer]:
    """`fault_server("drip", tls=...)` starts a tests/faults server for that fault; all are
    stopped after the test."""
    started: list[FaultServer] = []

    def start(fault: str, **kwargs: Any) -> FaultServer:
        server = FaultServer(fault, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    """A test CA and leaves that fail verification in one way each (tests/faults/certs.py)."""
    return make_certs(tmp_path_factory.mktemp("fault-certs"))


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


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """A test that calls probe.logging.configure leaves the root logger and structlog as found."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
