"""Helpers shared by the tests, so each exists once: loopback ports, polling with a deadline,
a server that never answers, the twin on a loopback port, `probe run` and the Debian
`prometheus` binary as real subprocesses.

Fixtures built on these (twin, http, probe_run, start_daemon) are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from probe.daemon.run import Daemon
from probe.metrics import Metrics
from probe.twin import Twin

StartDaemon = Callable[..., Awaitable[Daemon]]  # the type of conftest's `start_daemon`


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    """What /metrics serves right now (Metrics.render, in both formats), read by
    prometheus-client's own parsers; the two formats must carry the same samples. Parse once and
    look up many values with `value`: a render is a whole exposition."""
    got: list[Samples] = []
    for openmetrics, parse in ((False, text_string_to_metric_families), (True, om_parse)):
        out: Samples = {}
        for family in parse(metrics.render(openmetrics).decode()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        got.append(out)
    assert got[0] == got[1]
    return got[0]


def value(s: Samples, name: str, **labels: str) -> float | None:
    """One sample of `s`, or None when that series is absent."""
    return s.get((name, frozenset(labels.items())))


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then closed): also a refused port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    cond: Callable[[], Any | Awaitable[Any]], what: str = "a condition", within: float = 20.0,
    every: float = 0.05, detail: Callable[[], str] | None = None,
) -> Any:
    """Poll `cond` (sync or async) until it returns something truthy; fail naming `what`, with
    `detail()` (logs of the processes involved, say) when the reason is elsewhere to be found.
    An exception in `cond` is not retried: it fails at once, as something waiting cannot fix."""
    deadline = time.monotonic() + within
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            why = f"timed out after {within}s waiting for {what}"
            raise AssertionError(f"{why}\n{detail()}" if detail else why)
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


@contextlib.asynccontextmanager
async def running_twin(ssl_context: ssl.SSLContext | None = None, **kwargs: Any
                       ) -> AsyncIterator[Twin]:
    """`Twin(**kwargs)` on a free loopback port (over TLS with `ssl_context`), stopped after."""
    twin = Twin(**kwargs)
    await twin.start("127.0.0.1", 0, ssl_context=ssl_context)
    try:
        yield twin
    finally:
        await twin.stop()


@contextlib.asynccontextmanager
async def serving(app: web.Application, ssl_context: ssl.SSLContext | None = None
                  ) -> AsyncIterator[str]:
    """`app` on a free loopback port (over TLS with `ssl_context`): its base URL, for as long as
    the block runs. A request still in flight at the end is cut after half a second."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        scheme = "https" if ssl_context else "http"
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


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
    override them; a None value removes the variable, for a daemon that must not inherit one);
    PORT is dropped because it would win over PROBE_LISTEN.
    """

    def __init__(self, config: Path, cwd: Path, env: Mapping[str, str | None] | None = None,
                 stderr: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"probe-run-{self.port}.log"
        environ = {**os.environ, "PROBE_LISTEN": f"127.0.0.1:{self.port}",
                   "PROBE_LOG_FORMAT": "json"}
        environ.pop("PORT", None)
        for name, value in (env or {}).items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
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
        """stop_process (blocking), then close the stderr pipe if it has one."""
        stop_process(self.proc)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a clean stop), SIGKILL if it does not exit within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


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


# --- a real Prometheus server -------------------------------------------------------------------


class PromQLError(AssertionError):
    """Prometheus rejected a request (bad syntax, many-to-many matching, ...): waiting will not
    make it right, so `until` fails at once on it."""


class Prometheus:
    """The Debian `prometheus` binary on a free loopback port, with the caller's configuration;
    its output goes to `prometheus.log` in `tmp`. Queries go over a fresh connection each, so one
    instance serves tests running in different event loops (a module-scoped fixture)."""

    def __init__(self, tmp: Path, config_text: str, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        config = tmp / "prometheus.yml"
        config.write_text(config_text, encoding="utf-8")
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", *flags],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def _running(self) -> None:
        code = self.proc.poll()
        assert code is None, f"prometheus exited with {code}:\n{self.log_text()}"

    async def ready(self, within: float = 30.0) -> Prometheus:
        """Return once /-/ready answers 200; fail with its log if it exits first."""
        async def answers() -> bool:
            self._running()
            got = await http_get(f"{self.url}/-/ready")
            return got is not None and got[0] == 200

        await until(answers, f"Prometheus to be ready on {self.url}", within=within)
        return self

    async def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The `data` of an HTTP API answer, or None while Prometheus does not answer yet."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        got = await http_get(f"{self.url}{path}{query}", within=10.0)
        if got is None or got[0] == 503:  # not listening, or not ready
            self._running()
            return None
        status, text = got
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
        if status != 200 or answer.get("status") != "success":
            raise PromQLError(f"HTTP {status} from {path} {dict(params or {})}: {text}")
        return answer["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector ([] while Prometheus does not answer)."""
        data = await self.api("/api/v1/query", {"query": promql})
        return list(data["result"]) if data else []

    async def values(self, promql: str) -> list[float]:
        """The sample values of an instant query, sorted."""
        return sorted(float(s["value"][1]) for s in await self.query(promql))

    def stop(self) -> None:
        stop_process(self.proc)


def unnamed(errors: list[str]) -> list[str]:
    """Config error lines without the target names after their places (`targets[3] (chat-ws)`
    -> `targets[3]`), for tests about the places and wording themselves."""
    return [re.sub(r"(targets\[\d+\]) \([^)]*\)", r"\1", e) for e in errors]


@dataclass
class TlsServer:
    port: int
    ctx: ssl.SSLContext
    resumed: list[bool] = field(default_factory=list)  # per handshake, the server's view
    status: int = 200


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext | Callable[[], ssl.SSLContext]) -> AsyncIterator[
        TlsServer]:
    """An HTTPS server answering 200 to anything; `ctx` a context (session tickets under one
    key: resumable) or a factory called per connection (a new ticket key each time: every
    offered ticket declined, like load-balanced servers that share no keys)."""
    fixed = ctx if isinstance(ctx, ssl.SSLContext) else None
    state = TlsServer(0, fixed or ctx())  # type: ignore[operator]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if fixed is None:
                await writer.start_tls(ctx())  # type: ignore[operator]
            state.resumed.append(writer.get_extra_info("ssl_object").session_reused)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
                         % state.status)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=fixed)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
