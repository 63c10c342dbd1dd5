"""The third-party servers of the conformance suite, each started as a child process on a free
loopback port (its output in a log file in a temporary directory), waited for with a deadline,
and stopped when its cases are done.

nginx runs in the foreground (`daemon off`) with its own prefix, config, pid file and logs in the
temporary directory, in front of the `websockets` server: once configured right (Upgrade and
Connection forwarded, and a short proxy_read_timeout playing a load balancer that cuts idle
sessions) and once misconfigured (neither header forwarded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

from helpers import free_port, stop_process, until

HERE = Path(__file__).parent
NODE = HERE / "node"
NGINX_READ_TIMEOUT = "1500ms"  # the proxy's idle cut: between the app's 1 s cut and the 3 s hold

SERVERS = ("uvicorn-websockets", "uvicorn-wsproto", "hypercorn", "aiohttp", "websockets",
           "tornado", "node-ws", "nginx-proxy", "nginx-misconfigured")

_PROXY_HEADERS = """
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";"""

# Every path of nginx's under the prefix directory `dir` (also test_http_curl's nginx).
NGINX_HEAD = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
"""

_NGINX_CONF = NGINX_HEAD + """\
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{backend};
      proxy_http_version 1.1;{headers}
      proxy_read_timeout {read_timeout};
    }}
  }}
}}
"""


def _command(name: str, port: int) -> list[str]:
    py = sys.executable
    return {
        "uvicorn-websockets": [py, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1",
                               "--port", str(port), "--ws", "websockets", "--log-level",
                               "warning"],
        "uvicorn-wsproto": [py, "-m", "uvicorn", "asgi_app:app", "--host", "127.0.0.1",
                            "--port", str(port), "--ws", "wsproto", "--log-level", "warning"],
        "hypercorn": [py, "-m", "hypercorn", "asgi_app:app", "--bind", f"127.0.0.1:{port}",
                      "--log-level", "warning"],
        "aiohttp": [py, "py_servers.py", "aiohttp", str(port)],
        "websockets": [py, "py_servers.py", "websockets", str(port)],
        "tornado": [py, "py_servers.py", "tornado", str(port)],
        "node-ws": ["node", str(NODE / "server.js"), str(port)],
    }[name]


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def _process(name: str, argv: list[str], port: int, tmp: Path) -> AsyncIterator[None]:
    """`argv` running until the block ends, once it accepts connections on `port`."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = await asyncio.to_thread(subprocess.Popen, argv, stdout=out,
                                       stderr=subprocess.STDOUT, cwd=HERE,
                                       stdin=subprocess.DEVNULL)
    try:
        def detail() -> str:
            return f"{name} ({proc.poll()=}):\n{log.read_text(errors='replace')}"

        async def listening() -> bool:
            assert proc.poll() is None, detail()
            return await _accepts(port)

        await until(listening, f"{name} to listen on 127.0.0.1:{port}", within=20.0,
                    detail=detail)
        yield
    finally:
        await asyncio.to_thread(stop_process, proc)


def nginx_conf(dir: Path, port: int, backend: int, forward_upgrade: bool) -> str:
    """nginx.conf for a proxy on `port` in front of `backend`, every path under `dir`."""
    return _NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "", dir=dir, port=port, backend=backend,
        headers=_PROXY_HEADERS if forward_upgrade else "", read_timeout=NGINX_READ_TIMEOUT)


@contextlib.asynccontextmanager
async def started(name: str, tmp: Path) -> AsyncIterator[str]:
    """Server `name` on a free loopback port for as long as the block runs: its ws:// base."""
    port = free_port()
    if not name.startswith("nginx"):
        async with _process(name, _command(name, port), port, tmp):
            yield f"ws://127.0.0.1:{port}"
        return
    backend = free_port()
    prefix = tmp / name
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, backend, name == "nginx-proxy"), encoding="utf-8")
    nginx = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
             "-g", "daemon off;"]
    async with _process(f"{name}-backend", _command("websockets", backend), backend, tmp), \
            _process(name, nginx, port, tmp):
        yield f"ws://127.0.0.1:{port}"


def versions() -> dict[str, str]:
    """What each server is, for docs/conformance.md."""
    ws_js = json.loads((NODE / "node_modules" / "ws" / "package.json").read_text())["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    found = re.search(r"nginx/(\S+)", nginx_v)
    nginx = found.group(1) if found else "?"
    behind = f"websockets {version('websockets')}"
    return {
        "uvicorn-websockets": f"uvicorn {version('uvicorn')} --ws websockets",
        "uvicorn-wsproto": f"uvicorn {version('uvicorn')} --ws wsproto "
                           f"(wsproto {version('wsproto')})",
        "hypercorn": f"hypercorn {version('hypercorn')}",
        "aiohttp": f"aiohttp {version('aiohttp')} web server",
        "websockets": f"websockets {version('websockets')} server",
        "tornado": f"tornado {version('tornado')} web server",
        "node-ws": f"ws {ws_js} on node {node}",
        "nginx-proxy": f"nginx {nginx} (Upgrade/Connection forwarded, proxy_read_timeout "
                       f"{NGINX_READ_TIMEOUT}) -> {behind}",
        "nginx-misconfigured": f"nginx {nginx} (no Upgrade/Connection forwarded) -> {behind}",
    }
