"""The daemon's own server against a neighbour who opens connections and never uses them.

Measured before these bounds: 1 100 idle connections to a daemon with the usual soft file limit
of 1024 made /livez and /readyz unreachable for an hour (aiohttp's keep-alive default) and failed
a healthy target with "Too many open files". Now: idle connections close after the keep-alive
timeout, at most max_connections are open (the oldest idle ones make room for a newcomer), and
the soft file limit is raised to the hard one at start (probe.daemon.listener, probe.loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from faults.fixtures import StartFaultServer
from helpers import ProbeRun, http_get, run_cli, until
from prometheus_client.parser import text_string_to_metric_families

from probe.daemon.listener import ServerLimits
from probe.daemon.run import Daemon
from probe.loop import raise_fd_limit

FLOOD = 1100


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line in /proc/PID/limits")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def _soft_nofile(soft: int) -> Iterator[None]:
    """This process's soft file limit lowered (a child started meanwhile inherits it)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


async def _flood(port: int, count: int, within: float = 10.0) -> list[socket.socket]:
    """Open `count` connections and send nothing on them; the ones that got connected."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def one() -> None:
        s = socket.socket()
        s.setblocking(False)
        socks.append(s)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(within):
                await loop.sock_connect(s, ("127.0.0.1", port))

    await asyncio.gather(*(one() for _ in range(count)))
    connected = []
    for s in socks:
        try:
            s.getpeername()
            connected.append(s)
        except OSError:
            s.close()
    return connected


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the socket listening on `port` (the rx_queue
    of a LISTEN line in /proc/net/tcp): ones the kernel completed and the daemon has not taken."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def _hung_up(socks: list[socket.socket]) -> int:
    """How many of `socks` the other side has closed (EOF or reset waiting to be read)."""
    poller = select.poll()
    for s in socks:
        poller.register(s.fileno(), select.POLLIN | select.POLLRDHUP | select.POLLHUP)
    return len(poller.poll(0))


def _results(text: str, target: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "probe_results_total" and s.labels.get("target") == target:
                out[s.labels["result"]] = s.value
    return out


def _config(tmp: Path, healthy_url: str) -> Path:
    cfg = tmp / "probe.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [
        {"name": "healthy", "url": healthy_url, "interval": "200ms", "timeout": "200ms"}]}))
    return cfg


async def test_the_soft_file_limit_is_raised_to_the_hard_one_at_start(
    tmp_path: Path, fault_server: StartFaultServer, probe_run: Callable[..., ProbeRun],
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with _soft_nofile(256):
        run = probe_run(_config(tmp_path, fault_server("ok").url("/health")))
    await run.live()
    assert _soft_limit(run.proc.pid) == hard


def test_raise_fd_limit_in_this_process() -> None:
    with _soft_nofile(300):
        soft, hard = raise_fd_limit()
        assert soft == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[1]


async def test_a_flood_of_idle_connections_leaves_health_endpoints_and_probes_working(
    tmp_path: Path, fault_server: StartFaultServer, probe_run: Callable[..., ProbeRun],
) -> None:
    """A real `probe run` held to 1024 open files (soft and hard, as on many hosts): 1 100 idle
    connections from a neighbour, and /livez and /readyz still answer, the healthy target keeps
    succeeding, the daemon never holds more than max_connections of them, and once the
    keep-alive timeout has passed it has closed every one."""
    run = probe_run(_config(tmp_path, fault_server("ok").url("/health")),
                    PROBE_KEEPALIVE_TIMEOUT="3")
    await run.live()
    resource.prlimit(run.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    base_fds = _fds(run.proc.pid)
    await until(lambda: _ready(run), "the healthy target ready", within=20)
    socks = await _flood(run.port, FLOOD)
    try:
        assert len(socks) >= FLOOD * 0.9, f"only {len(socks)} connections made"
        got = await http_get(f"{run.url}/metrics")
        assert got is not None and got[0] == 200, "/metrics unreachable under the flood"
        before = _results(got[1], "healthy")
        for path in ("/livez", "/readyz"):
            answer = await http_get(f"{run.url}{path}", within=2)
            assert answer is not None and answer[0] == 200, (path, answer)
        assert _fds(run.proc.pid) <= base_fds + 256 + 32, _fds(run.proc.pid)

        async def probed_on() -> bool:
            got = await http_get(f"{run.url}/metrics", within=2)
            now = _results(got[1], "healthy") if got else {}
            return now.get("success", 0) >= before.get("success", 0) + 5

        await until(probed_on, "five more successes of the healthy target", within=10)
        got = await http_get(f"{run.url}/metrics")
        assert got is not None
        assert _results(got[1], "healthy").get("failure", 0) == 0, run.log_text()[-2000:]
        # Every connection the daemon took is closed once idle: its descriptors go back to
        # where they were and none waits in its accept queue. Not every client socket sees a
        # hang-up: a flood overflows the listen backlog, and a connection whose final ACK the
        # kernel dropped there is open on the client's side only (the daemon never had it).
        await until(lambda: _fds(run.proc.pid) <= base_fds + 8 and _accept_queue(run.port) == 0,
                    "the daemon to close every idle connection (keep-alive timeout)", within=30,
                    detail=lambda: f"{_hung_up(socks)} of {len(socks)} closed, daemon fds "
                                   f"{_fds(run.proc.pid)} (from {base_fds}), accept queue "
                                   f"{_accept_queue(run.port)}")
        assert _hung_up(socks) > 256, "no more closed than the cap holds: no eviction, no timeout"
    finally:
        for s in socks:
            s.close()
    assert "Too many open files" not in run.log_text()


async def _ready(run: ProbeRun) -> bool:
    got = await http_get(f"{run.url}/readyz", within=2)
    return got is not None and got[0] == 200


async def test_at_the_connection_cap_the_oldest_idle_connection_makes_room(
    fault_server: StartFaultServer,
) -> None:
    """In-process, with a cap of 16: 100 idle connections, and the daemon holds 16 at most,
    while a fresh request always gets in."""
    from faults.fixtures import config_of

    daemon = Daemon(config_of([{"name": "ok", "url": fault_server("ok").url("/health")}]),
                    limits=ServerLimits(keepalive_timeout=30, max_connections=16))
    url = await daemon.start("127.0.0.1", 0)
    socks: list[socket.socket] = []
    try:
        socks = await _flood(int(url.rsplit(":", 1)[1]), 100)
        assert daemon._runner is not None and daemon._runner.server is not None
        server = daemon._runner.server
        await until(lambda: len(server.connections) <= 16, "at most 16 connections held",
                    within=5, detail=lambda: f"{len(server.connections)} open")
        assert _hung_up(socks) >= len(socks) - 16
        for _ in range(3):
            answer = await http_get(f"{url}/livez", within=2)
            assert answer is not None and answer[0] == 200, answer
    finally:
        for s in socks:
            s.close()
        await daemon.stop()


async def test_the_limits_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PROBE_KEEPALIVE_TIMEOUT", "1.5")
    monkeypatch.setenv("PROBE_MAX_CONNECTIONS", "17")
    assert ServerLimits.from_environ() == ServerLimits(keepalive_timeout=1.5, max_connections=17)
    monkeypatch.setenv("PROBE_MAX_CONNECTIONS", "3")  # below the floor of 8: `probe run` says so
    cfg = _config(tmp_path, "http://127.0.0.1:9/")
    assert await run_cli("run", "-c", str(cfg)) == 2
    assert "max_connections" in capsys.readouterr().err.lower()
