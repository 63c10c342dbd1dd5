"""Helpers for the status page tests: a real `probe run` subprocess and headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from helpers import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REPO = Path(__file__).resolve().parent.parent


@dataclass
class DaemonProc:
    url: str
    proc: asyncio.subprocess.Process
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextlib.asynccontextmanager
async def run_daemon(
    config_text: str, tmp: Path, env: dict[str, str] | None = None, start_within: float = 20.0
) -> AsyncIterator[DaemonProc]:
    """`probe run` on a free loopback port; yields once /livez answers, SIGTERMs on exit."""
    cfg = tmp / "probe.yaml"
    cfg.write_text(config_text, encoding="utf-8")
    port = free_port()
    log = tmp / "daemon.log"
    full_env = {
        **os.environ, "PROBE_LISTEN": f"127.0.0.1:{port}", "PROBE_LOG_FORMAT": "json",
        "PYTHONPATH": str(REPO), **(env or {}),
    }
    full_env.pop("PORT", None)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "probe", "run", "-c", str(cfg),
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=full_env, cwd=str(tmp),
        )
    daemon = DaemonProc(f"http://127.0.0.1:{port}", proc, log)
    try:
        await _wait_live(daemon, start_within)
        yield daemon
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_live(daemon: DaemonProc, within: float) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            if daemon.proc.returncode is not None:
                code = daemon.proc.returncode
                raise RuntimeError(f"probe run exited {code}:\n{daemon.log_text()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(daemon.url + "/livez") as r:
                    if r.status in (200, 503):
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"probe run not listening after {within}s:\n{daemon.log_text()}")
            await asyncio.sleep(0.05)


async def wait_for(check: Any, within: float, what: str) -> Any:
    """Poll an async predicate until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


class ConsoleErrors:
    """Collects console errors and uncaught page exceptions of a Playwright page."""

    def __init__(self, page: Any, allow: tuple[str, ...] = ()) -> None:
        self.errors: list[str] = []
        self.allow = allow
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(a in msg.text for a in self.allow):
            self.errors.append(f"console: {msg.text}")
