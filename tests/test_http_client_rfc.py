"""The HTTP check where it once disagreed with curl and blackbox_exporter (issue 17): each test
plays a real server on loopback (aiohttp, or a raw peer byte for byte) and fails on a client
that gets the case wrong. tests/conformance/test_http_curl.py plays the same cases against
nginx, node and uvicorn and compares the verdicts with curl's.
"""

from __future__ import annotations

from pathlib import Path

from faults.certs import make_chain
from helpers import samples, value
from http_servers import serve_app
from test_http_wire import probe, target

from probe.metrics import Metrics


async def test_earliest_expiry_is_the_chains_and_the_leaf_has_its_own(tmp_path: Path) -> None:
    chain = make_chain(tmp_path, intermediate_days=5, leaf_days=20)
    async with serve_app(chain.server.server_context()) as (_app, port):
        out = await probe(f"https://127.0.0.1:{port}/ok", ca_file=str(chain.ca_file))
    assert out.success, out.detail
    assert out.cert_expiry == chain.intermediate_not_after  # not the leaf's, 15 days later
    assert out.leaf_expiry == chain.leaf_not_after
    m = Metrics()
    t = target(f"https://127.0.0.1:{port}/ok")
    m.add_target(t)
    m.record(out, t)
    s = samples(m)
    assert value(s, "probe_ssl_earliest_cert_expiry", target="t") == chain.intermediate_not_after
    assert value(s, "probe_ssl_leaf_cert_expiry", target="t") == chain.leaf_not_after
