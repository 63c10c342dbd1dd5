"""Helpers shared by the tests, so each exists once: loopback ports, polling with a deadline,
a server that never answers, and `probe run` as a real subprocess.

Fixtures built on these (twin, http, probe_run, start_daemon) are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from probe.daemon import Daemon
from probe.metrics import Metrics

StartDaemon = Callable[..., Awaitable[Daemon]]  # the type of conftest's `start_daemon`


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    """One sample of what /metrics would serve right now (the rendered text, parsed back by
    prometheus-client), or None when that series is absent."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then closed): also a refused port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    cond: Callable[[], Any | Awaitable[Any]], what: str = "a condition", within: float = 20.0,
    every: float = 0.05,
) -> Any:
    """Poll `cond` (sync or async) until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + within
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(every)


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but never listening, for as long as the block runs: connects there
    are refused, and no other test can start listening on it meanwhile (unlike free_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


async def http_get(url: str, headers: dict[str, str] | None = None,
                   within: float = 5.0) -> tuple[int, str] | None:
    """(status, body) of a GET, or None while nothing answers there (not up yet, or gone)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as http, \
                http.get(url, headers=headers or {}) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None



async def run_cli(*argv: str) -> int:
    """`probe ARGV...` in-process, in a worker thread: the CLI runs its own event loop (as from a
    shell) while the test's loop keeps serving the twin or daemon it talks to."""
    from probe.cli import main

    return await asyncio.to_thread(main, list(argv))


async def until_stderr(capsys: pytest.CaptureFixture[str], text: str, within: float = 20.0) -> str:
    """Everything written to stderr (pytest's capsys) until `text` has appeared in it: the
    progress of a `--wait` run in a worker thread."""
    seen: list[str] = []

    def appeared() -> bool:
        seen.append(capsys.readouterr().err)
        return text in "".join(seen)

    await until(appeared, f"{text!r} on stderr", within=within)
    return "".join(seen)

# --- a server that accepts and never answers ---------------------------------------------------


@dataclass
class Silent:
    """Where a silent server listens, and how many connections it has accepted and seen closed."""

    port: int
    accepted: int = 0
    closed: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[Silent]:
    """Accepts and reads whatever comes, never writes a byte: a peer that hangs every client.

    Reading (rather than not reading) lets it count a connection as closed when the client
    hangs up, so a test can check that a prober let go of what it opened."""
    silent = Silent(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.accepted += 1
        silent.writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass
        silent.closed += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    silent.port = server.sockets[0].getsockname()[1]
    try:
        yield silent
    finally:
        server.close()
        for writer in silent.writers:
            writer.close()
        await server.wait_closed()


# --- `probe run` as a real subprocess -----------------------------------------------------------


class ProbeRun:
    """`probe run -c CONFIG` as a real subprocess listening on a free loopback port.

    Its output goes to a file, never to a pipe nobody reads (a full pipe would block the daemon);
    `stderr=subprocess.PIPE` is for the one test that wants to close the reading end itself.
    `env` is laid over os.environ (PROBE_LISTEN and JSON logs are set first, so it can
    override them); PORT is dropped because it would win over PROBE_LISTEN.
    """

    def __init__(self, config: Path, cwd: Path, env: dict[str, str] | None = None,
                 stderr: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"probe-run-{self.port}.log"
        environ = {**os.environ, "PROBE_LISTEN": f"127.0.0.1:{self.port}",
                   "PROBE_LOG_FORMAT": "json"}
        environ.pop("PORT", None)
        environ.update(env or {})
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "probe", "run", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT if stderr is None else stderr,
                env=environ, cwd=cwd)

    @property
    def stderr(self) -> IO[bytes]:
        """The read end of its stderr pipe (only with stderr=subprocess.PIPE)."""
        assert self.proc.stderr is not None, "started without stderr=subprocess.PIPE"
        return self.proc.stderr

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """Its JSON log lines, parsed."""
        return [json.loads(line) for line in self.log_text().splitlines()
                if line.startswith("{")]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, within: float) -> int:
        """Its exit code, once it has exited (fails if it runs `within` seconds more)."""
        await until(lambda: self.proc.poll() is not None, f"probe run to exit within {within}s",
                    within=within, every=0.02)
        return self.proc.returncode

    async def live(self, within: float = 20.0) -> ProbeRun:
        """Return once /livez answers (200 or 503); fail with its log if it exits first."""
        async def listening() -> bool:
            code = self.proc.poll()
            assert code is None, f"probe run exited {code}:\n{self.log_text()}"
            got = await http_get(f"{self.url}/livez")
            return got is not None and got[0] in (200, 503)

        await until(listening, f"probe run to listen on {self.url}", within=within)
        return self

    async def stop(self, within: float = 10.0) -> None:
        """SIGTERM (a clean stop) without blocking the test's loop; SIGKILL if it hangs on."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                await self.wait(within)
        self.close()

    def close(self) -> None:
        """SIGTERM (a clean stop), SIGKILL if it does not exit within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.asynccontextmanager
async def run_daemon(config_text: str, tmp: Path, env: dict[str, str] | None = None,
                     start_within: float = 20.0) -> AsyncIterator[ProbeRun]:
    """Write the config, start `probe run`, yield once it listens; stop it cleanly on exit."""
    cfg = tmp / "probe.yaml"
    cfg.write_text(config_text, encoding="utf-8")
    daemon = ProbeRun(cfg, tmp, env)
    try:
        yield await daemon.live(start_within)
    finally:
        await daemon.stop()
