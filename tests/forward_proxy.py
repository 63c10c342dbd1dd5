"""A real forward proxy on loopback for the proxy tests: Debian's tinyproxy, in the foreground
with its own config in a temporary directory (`.ci/run` installs it). Plain HTTP goes through it
in absolute form, HTTPS through CONNECT; `connect_ports` limits the ports it tunnels to, so a
test can have it refuse a tunnel (403), as a corporate proxy does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port, stop_process, until

_CONF = """\
{user}Port {port}
Listen 127.0.0.1
Timeout 10
MaxClients 50
LogLevel Connect
PidFile "{dir}/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
{connect_ports}
"""


@dataclass
class ForwardProxy:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """The request lines the proxy was sent (GET http://..., CONNECT host:port ...)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [ln.split("): ", 1)[1] for ln in text.splitlines() if "Request (file" in ln]


def have_tinyproxy() -> None:
    """Skip outside CI when tinyproxy is not installed; in CI its absence fails."""
    if shutil.which("tinyproxy") is None:
        if os.environ.get("CI"):
            raise AssertionError("tinyproxy is not installed (.ci/run installs it)")
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy)")


def _start(tmp: Path, port: int, connect_ports: tuple[int, ...], log: Path
           ) -> subprocess.Popen[bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "tinyproxy.conf"
    conf.write_text(_CONF.format(
        user="User nobody\nGroup nogroup\n" if os.geteuid() == 0 else "", port=port, dir=tmp,
        connect_ports="\n".join(f"ConnectPort {p}" for p in connect_ports)), encoding="utf-8")
    with log.open("wb") as out:
        return subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def tinyproxy(tmp: Path, connect_ports: tuple[int, ...] = ()) -> AsyncIterator[ForwardProxy]:
    have_tinyproxy()
    port = free_port()
    log = tmp / "tinyproxy.log"
    proc = await asyncio.to_thread(_start, tmp, port, connect_ports, log)
    try:
        async def listening() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await until(listening, "tinyproxy to listen", within=10.0)
        yield ForwardProxy(port, log)
    finally:
        await asyncio.to_thread(stop_process, proc)
