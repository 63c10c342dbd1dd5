"""stageprobe's HTTP verdicts against nginx, node, uvicorn and tinyproxy, each compared with
curl's answer for the same URL (issue 17: where the two once disagreed).

For each case, stageprobe's HTTP check probes the URL, and curl fetches it (`-sS`, the body to a
file, `-w` for the status, the header the case checks, the certificates); curl's answer is judged
by the same rule the target sets (status 2xx, a body regex, a header's full match), so the two
verdicts, success or failure, must agree, and stageprobe's failure must be the one the case
names. A case that disagrees by design says why (`known`). Servers: http_servers_curl.py.

Run: python3 -m pytest -q tests/conformance/test_http_curl.py (needs nginx, node, curl,
tinyproxy and nghttpd: `.ci/run` installs them; outside CI a missing one skips the module).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from http_app import SIGNED
from http_servers_curl import MANY, Servers, started

from probe.checks import CheckContext
from probe.checks.http import check
from probe.config import Target
from probe.outcome import Failure, Outcome

pytestmark = pytest.mark.conformance
BROTLI = find_spec("brotli") is not None


@dataclass(frozen=True)
class HttpCase:
    id: str
    server: str  # a Servers field: nginx(-tls), nghttpd-tls / -h2c, node(-raw), uvicorn
    path: str
    target: dict[str, Any] = field(default_factory=dict)  # more Target keys
    curl: tuple[str, ...] = ()  # curl's options for the same request
    body_regex: str | None = None
    header: tuple[str, str] | None = None  # (name, full-match regex)
    ours: Failure | None = None  # stageprobe's verdict (None: success)
    known: str = ""  # why the verdicts disagree on purpose ("": they agree)


CASES = [
    HttpCase("tls-chain", "nginx-tls", "/ok"),
    HttpCase("many-headers-nginx", "nginx", "/many-headers",
             header=(f"X-Pad-{MANY - 1}", str(MANY - 1))),
    HttpCase("many-headers-node", "node", "/many-headers", header=("X-Pad-199", "199")),
    HttpCase("trailer-is-no-header", "node", "/trailer", header=("X-Build", r"4\.5\.6"),
             ours=Failure.ASSERTION),
    HttpCase("gzip-cut-short", "node", "/gzip-cut", body_regex="healthy",
             curl=("--compressed",), ours=Failure.PROTOCOL,
             known="curl 7.88 keeps what it could inflate of a cut gzip or deflate stream and"
                   " exits 0; stageprobe fails both (issue 17)"),
    HttpCase("gzip-gzip", "node", "/gzip-twice", body_regex="healthy", curl=("--compressed",)),
    HttpCase("br-unasked", "node", "/br", body_regex="healthy", curl=("--compressed",),
             ours=None if BROTLI else Failure.PROTOCOL,
             known="" if BROTLI else "no brotli module here: named, never matched compressed"),
    HttpCase("bare-lf", "node-raw", "/bare-lf", header=("X-Build", r"4\.5\.6")),
    HttpCase("obs-fold", "node-raw", "/folded", header=("X-Build", r"4\.5\s+\.6")),
    HttpCase("cookie-on-redirect", "uvicorn", "/login", target={"follow_redirects": True},
             curl=("-L", "-b", ""), body_regex="in"),
    HttpCase("url-as-written", "uvicorn", "/files/a%2Fb/%7Euser"),
    HttpCase("signed-query", "uvicorn", "/signed?" + SIGNED.decode()),
    HttpCase("h2-only", "nghttpd-tls", "/ok", curl=("--http1.1",), ours=Failure.PROTOCOL),
    HttpCase("h2-tls", "nghttpd-tls", "/ok", target={"http_version": "2"}, curl=("--http2",),
             body_regex="healthy"),
    HttpCase("h2c-prior-knowledge", "nghttpd-h2c", "/ok", target={"http_version": "2"},
             curl=("--http2-prior-knowledge",), body_regex="healthy"),
    HttpCase("h2-body-limit", "nghttpd-tls", "/big", target={"http_version": "2"},
             curl=("--http2", "--max-filesize", str(1 << 20)), ours=Failure.BODY_TOO_LARGE),
    HttpCase("h2-nginx-many-headers", "nginx-tls", "/many-headers",
             target={"http_version": "2"}, curl=("--http2",),
             header=(f"X-Pad-{MANY - 1}", str(MANY - 1))),
    HttpCase("proxy-plain", "nginx", "/ok", target={"proxy_url": "PROXY"}, curl=("-x", "PROXY")),
    HttpCase("proxy-connect", "nginx-tls", "/ok", target={"proxy_url": "PROXY"},
             curl=("-x", "PROXY")),
    HttpCase("proxy-refuses-tunnel", "node", "/ok", target={"proxy_url": "PROXY"},
             curl=("-x", "PROXY", "--proxytunnel"), ours=Failure.REFUSED),
]


@dataclass
class Curl:
    ok: bool
    why: str
    certs: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    missing = [b for b in ("nginx", "node", "curl", "tinyproxy", "nghttpd")
               if shutil.which(b) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"not installed: {', '.join(missing)} (.ci/run installs them)")
    tmp = tmp_path_factory.mktemp("http-curl")
    with asyncio.Runner() as runner, contextlib.ExitStack() as stack:
        cm = started(tmp)
        got = runner.run(cm.__aenter__())
        stack.callback(lambda: runner.run(cm.__aexit__(None, None, None)))
        yield got


def _url(case: HttpCase, servers: Servers) -> str:
    if case.id == "proxy-refuses-tunnel":  # https to a port tinyproxy does not tunnel to
        return servers.node.replace("http://", "https://") + case.path
    return servers.base(case.server) + case.path


def _target(case: HttpCase, servers: Servers) -> Target:
    fields = {k: servers.proxy.url if v == "PROXY" else v for k, v in case.target.items()}
    expect: dict[str, Any] = {}
    if case.body_regex:
        expect["body_regex"] = case.body_regex
    if case.header:
        expect["headers"] = {case.header[0]: case.header[1]}
    return Target.model_validate({
        "name": case.id, "url": _url(case, servers), "timeout": 5, "interval": 10,
        "ca_file": str(servers.chain.ca_file), "expect": expect, **fields})


def _curl(case: HttpCase, servers: Servers, tmp: Path) -> Curl:
    body = tmp / f"{case.id}.body"
    header = case.header[0] if case.header else "x-none"
    options = [servers.proxy.url if o == "PROXY" else o for o in case.curl]
    argv = ["curl", "-sS", "--max-time", "5", "--cacert", str(servers.chain.ca_file),
            "--noproxy", "" if "-x" in options else "*", "-o", str(body),
            "-w", f"%{{http_code}}\n%header{{{header}}}\n%{{certs}}", *options,
            _url(case, servers)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=15,
                         env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    code, value, certs = [*run.stdout.split("\n", 2), "", ""][:3]
    if run.returncode != 0:
        return Curl(False, f"curl exit {run.returncode}: {run.stderr.strip()[:80]}", certs)
    if not code.startswith("2"):
        return Curl(False, f"HTTP {code}", certs)
    text = body.read_bytes().decode("utf-8", "replace")
    if case.body_regex and not re.search(case.body_regex, text):
        return Curl(False, f"body does not match {case.body_regex}", certs)
    if case.header and not re.fullmatch(case.header[1], value):
        return Curl(False, f"header {header}: {value!r}", certs)
    return Curl(True, "", certs)


def _earliest_expiry(certs: str) -> float:
    """The earliest 'Expire date' in curl's %{certs} (the chain the server sent)."""
    dates = re.findall(r"Expire date:\s*(.+? GMT)", certs)
    assert dates, certs[:200]
    return min(dt.datetime.strptime(d, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC).timestamp()
               for d in (re.sub(r"\s+", " ", d) for d in dates))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_stageprobe_agrees_with_curl(case: HttpCase, servers: Servers,
                                           tmp_path: Path) -> None:
    curl = await asyncio.to_thread(_curl, case, servers, tmp_path)
    ours: Outcome = await check(_target(case, servers), CheckContext())
    assert ours.failure is case.ours, f"stageprobe: {ours.failure} {ours.detail}"
    if case.known:
        assert ours.success != curl.ok, f"a known disagreement agrees again: {case.known}"
    else:
        assert ours.success == curl.ok, (
            f"stageprobe {'ok' if ours.success else ours.detail!r} vs curl"
            f" {'ok' if curl.ok else curl.why!r}")
    if case.id == "h2-only":  # the cause named, not "connection reset"
        assert "speaks HTTP/2 only" in ours.detail, ours.detail
    if case.target.get("http_version") == "2" and ours.success:
        assert ours.http is not None and ours.http.version == 2.0
    if case.server == "nginx-tls" and curl.ok:  # both read the chain: the intermediate's date
        assert ours.cert_expiry == _earliest_expiry(curl.certs)
        assert ours.cert_expiry == servers.chain.intermediate_not_after
        assert ours.leaf_expiry == servers.chain.leaf_not_after
