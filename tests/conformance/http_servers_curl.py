"""The servers of test_http_curl.py, started once for the module and stopped after it: nginx
(Debian's, in the foreground with its own prefix: a TLS server, HTTP/2 too, sending a private
chain whose intermediate expires before the leaf, and 150 add_header lines), nghttpd (HTTP/2
only: TLS with the same chain, and h2c), node (node/http_server.js: its http server and a raw
`net` one), uvicorn (http_app.py) and tinyproxy (tests/forward_proxy.py, tunnelling to nginx's
TLS port only, so a tunnel elsewhere is refused as a corporate proxy does). Each is a child
process on a free loopback port (conf_servers._process: waited for, logged, stopped).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from conf_servers import NGINX_HEAD, NODE, _process
from faults.certs import Chain, make_chain
from forward_proxy import ForwardProxy, tinyproxy
from helpers import free_port

MANY = 150  # nginx add_header lines on /many-headers

_NGINX = NGINX_HEAD + """\
  default_type application/json;
  server {{
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{tls_port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location = /ok {{ return 200 '{{"status": "healthy"}}'; }}
    location = /many-headers {{
{adds}
      return 200 '{{"status": "healthy"}}';
    }}
  }}
}}
"""


@dataclass
class Servers:
    nginx: str  # http://127.0.0.1:port
    nginx_tls: str  # https://127.0.0.1:port (the chain below)
    node: str
    node_raw: str
    uvicorn: str
    nghttpd_tls: str  # https://127.0.0.1:port: HTTP/2 only
    nghttpd_h2c: str  # http://127.0.0.1:port: HTTP/2 with prior knowledge only
    proxy: ForwardProxy
    chain: Chain

    def base(self, server: str) -> str:
        return getattr(self, server.replace("-", "_"))  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def started(tmp: Path) -> AsyncIterator[Servers]:
    chain = make_chain(tmp / "chain", intermediate_days=5, leaf_days=20)
    ports = {n: free_port() for n in ("nginx", "tls", "node", "raw", "uvicorn", "h2", "h2c")}
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX.format(
        user="user root;\n" if os.geteuid() == 0 else "", dir=prefix, port=ports["nginx"],
        tls_port=ports["tls"], cert=chain.server.cert, key=chain.server.key,
        adds="\n".join(f"      add_header X-Pad-{i} {i};" for i in range(MANY))),
        encoding="utf-8")
    nginx = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
             "-g", "daemon off;"]
    node = ["node", str(NODE / "http_server.js"), str(ports["node"]), str(ports["raw"])]
    uvicorn = [sys.executable, "-m", "uvicorn", "http_app:app", "--host", "127.0.0.1",
               "--port", str(ports["uvicorn"]), "--log-level", "warning"]
    (tmp / "h2").mkdir()
    (tmp / "h2" / "ok").write_text('{"status": "healthy"}', encoding="utf-8")
    (tmp / "h2" / "big").write_bytes(b"x" * (2 << 20))  # over the 1 MiB body_limit
    nghttpd = ["nghttpd", "-d", str(tmp / "h2"), str(ports["h2"]), str(chain.server.key),
               str(chain.server.cert)]
    async with _process("nginx", nginx, ports["nginx"], tmp), \
            _process("nghttpd", nghttpd, ports["h2"], tmp), \
            _process("nghttpd-h2c", ["nghttpd", "--no-tls", "-d", str(tmp / "h2"),
                                     str(ports["h2c"])], ports["h2c"], tmp), \
            _process("node-http", node, ports["raw"], tmp), \
            _process("uvicorn-http", uvicorn, ports["uvicorn"], tmp), \
            tinyproxy(tmp / "tinyproxy", connect_ports=(ports["tls"],)) as proxy:
        yield Servers(
            nginx=f"http://127.0.0.1:{ports['nginx']}",
            nginx_tls=f"https://127.0.0.1:{ports['tls']}",
            node=f"http://127.0.0.1:{ports['node']}",
            node_raw=f"http://127.0.0.1:{ports['raw']}",
            uvicorn=f"http://127.0.0.1:{ports['uvicorn']}",
            nghttpd_tls=f"https://127.0.0.1:{ports['h2']}",
            nghttpd_h2c=f"http://127.0.0.1:{ports['h2c']}",
            proxy=proxy, chain=chain,
        )
