"""The HTTP(S) prober: one fresh connection per probe, per-phase timings, every failure named.

Why a fresh ClientSession and connector per probe (force_close, no DNS cache): a pooled
keep-alive connection would hide DNS, connect and TLS time, and would hide a server that stopped
accepting new connections. A session costs ~25 us to make, far below the connect it measures.

Phases follow blackbox_exporter and are summed over redirect hops: resolve (DNS), connect (TCP),
tls (handshake), processing (request sent -> response headers), transfer (body read). aiohttp's
trace hooks mark DNS and connection start/end, but TCP connect and TLS handshake happen in one
aiohttp call; the split comes from the SSL object: the cached SSLContext is built with an SSLObject
subclass whose first do_handshake() marks "TCP connected, TLS begins" and whose completed
handshake yields the peer certificate (DER, so it works with verification off too) for
`cert_expiry`. The hook finds the running probe through a ContextVar and does nothing elsewhere.
`cert_expiry` is the earliest notAfter of the leaf certificates seen (Python 3.11 cannot list
the verified chain).

The whole probe runs under asyncio.timeout(target.timeout); aiohttp's own timeouts are off, so
one budget decides, and the stage reached when it runs out names the failure (still resolving:
dns; no TCP/TLS connection yet: connect_timeout; connected: timeout); see _http_classify.
Phases not reached are absent from Outcome.phases (a plain-HTTP probe has no `tls`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from contextvars import ContextVar
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import aiohttp
from cryptography import x509
from multidict import CIMultiDict
from yarl import URL

from probe.checks import CheckContext, clip, host_port, scrub, ssl_context
from probe.checks._http_classify import Progress, classify, os_text, timed_out
from probe.checks._http_expect import Plan, evaluate, plan_for, size
from probe.config import Target
from probe.credentials import CredentialError, attach
from probe.outcome import Failure, Outcome

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)
_CHUNK_LIMIT = 64 * 1024

_CURRENT: ContextVar[Progress | None] = ContextVar("stageprobe_http_progress", default=None)


class _Fail(Exception):
    def __init__(self, failure: Failure, detail: str) -> None:
        self.failure, self.detail = failure, detail


# --- TLS split and certificate expiry --------------------------------------------------------


@lru_cache(maxsize=256)
def _not_after(der: bytes) -> float | None:
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:
        return None


class _TimedSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        probe = _CURRENT.get()
        if probe is not None and probe.stage == "connect":
            probe.close_phase("connect", time.perf_counter())
            probe.stage = "tls"
        super().do_handshake()  # raises SSLWantReadError until the handshake is complete
        if probe is not None and probe.stage == "tls":
            probe.close_phase("tls", time.perf_counter())
            probe.stage = "request"
            der = self.getpeercert(binary_form=True)
            expiry = _not_after(der) if der else None
            if expiry is not None:
                probe.cert_expiry = min(expiry, probe.cert_expiry or expiry)


def _tls_context(target: Target) -> ssl.SSLContext:
    """The shared context for the target's TLS settings, with the timing hook built in."""
    return ssl_context(target.tls_verify, target.ca_file, _TimedSSLObject)


# --- trace hooks -----------------------------------------------------------------------------


def _probe_of(trace_ctx: SimpleNamespace) -> Progress | None:
    probe = trace_ctx.trace_request_ctx
    return probe if isinstance(probe, Progress) else None


async def _on_create_start(_s: Any, trace_ctx: SimpleNamespace, _p: Any) -> None:
    if (probe := _probe_of(trace_ctx)) is not None:
        probe.mark, probe.stage = time.perf_counter(), "connect"


async def _on_dns_start(_s: Any, trace_ctx: SimpleNamespace, _p: Any) -> None:
    if (probe := _probe_of(trace_ctx)) is not None:
        probe.mark, probe.stage = time.perf_counter(), "resolve"


async def _on_dns_end(_s: Any, trace_ctx: SimpleNamespace, _p: Any) -> None:
    if (probe := _probe_of(trace_ctx)) is not None:
        probe.close_phase("resolve", time.perf_counter())
        probe.stage = "connect"


async def _on_create_end(_s: Any, trace_ctx: SimpleNamespace, _p: Any) -> None:
    if (probe := _probe_of(trace_ctx)) is not None:
        if probe.stage in ("connect", "tls"):  # plain TCP, or a TLS hook that did not fire
            probe.close_phase(probe.stage, time.perf_counter())
        probe.stage = "request"


async def _on_sent(_s: Any, trace_ctx: SimpleNamespace, _p: Any) -> None:
    if (probe := _probe_of(trace_ctx)) is not None:
        probe.t_sent = time.perf_counter()


async def _on_redirect(_s: Any, trace_ctx: SimpleNamespace, params: Any) -> None:
    if (probe := _probe_of(trace_ctx)) is not None:
        probe.headers_received(time.perf_counter())
        probe.stage = "connect"
        location = params.response.headers.get("Location")
        if location:
            try:
                nxt = params.url.join(URL(location))
                probe.where = host_port(nxt.host, nxt.port)
            except ValueError:
                pass


def _trace_config() -> aiohttp.TraceConfig:
    tc = aiohttp.TraceConfig()
    tc.on_connection_create_start.append(_on_create_start)
    tc.on_dns_resolvehost_start.append(_on_dns_start)
    tc.on_dns_resolvehost_end.append(_on_dns_end)
    tc.on_connection_create_end.append(_on_create_end)
    tc.on_request_headers_sent.append(_on_sent)
    tc.on_request_chunk_sent.append(_on_sent)
    tc.on_request_redirect.append(_on_redirect)
    tc.freeze()
    return tc


_TRACE = _trace_config()


# --- the probe -------------------------------------------------------------------------------


async def check(target: Target, ctx: CheckContext) -> Outcome:
    """Probe `target` once; never raises for anything the target does (only on cancellation)."""
    started = time.time()
    # Cached per target/process, and outside the clock: loading a trust store takes ~45 ms the
    # first time, which is the prober's cost, not the target's latency.
    try:
        plan = plan_for(target)
    except Exception as exc:  # a request that cannot even be built (validated config: rare)
        detail = scrub(f"cannot build the request: {type(exc).__name__}: {exc}", [])
        return Outcome.failed(
            target.name, "http", Failure.PROTOCOL, detail, 0.0, started_at=started
        )
    try:
        tls = _tls_context(target)
    except (OSError, ssl.SSLError) as exc:
        detail = f"cannot load ca_file {target.ca_file}: {os_text(exc)}"
        return Outcome.failed(target.name, "http", Failure.TLS, detail, 0.0, started_at=started)
    t0 = time.perf_counter()
    probe = Progress(t0, plan.where)
    secrets: list[str] = []
    version: str | None = None
    failure: Failure | None = None
    detail = ""
    budget = asyncio.timeout(target.timeout)
    token = _CURRENT.set(probe)
    try:
        async with budget:
            version, failure, detail = await _run(target, plan, tls, ctx, probe, secrets)
    except _Fail as exc:
        failure, detail = exc.failure, exc.detail
    except Exception as exc:  # the contract: classify, never raise out of check()
        if budget.expired():  # whatever aiohttp made of the cancellation, the budget ran out
            failure, detail = timed_out(target, probe)
        else:
            failure, detail = classify(exc, probe, target)
    finally:
        _CURRENT.reset(token)
    duration = time.perf_counter() - t0
    latency = {"total": duration}
    if probe.t_headers is not None:
        latency["ttfb"] = probe.t_headers - t0
    return Outcome(
        target=target.name,
        kind="http",
        success=failure is None,
        duration=duration,
        failure=failure,
        detail=scrub(detail, secrets) if failure is not None else "",
        status_code=probe.status,
        version=version,
        phases=probe.phases,
        latency=latency,
        cert_expiry=probe.cert_expiry,
        started_at=started,
    )


async def _run(
    target: Target,
    plan: Plan,
    tls: ssl.SSLContext,
    ctx: CheckContext,
    probe: Progress,
    secrets: list[str],
) -> tuple[str | None, Failure | None, str]:
    headers = plan.headers
    query: dict[str, str] | None = None
    if target.credential is not None:
        probe.stage = "credential"
        try:
            placed = await attach(target, ctx.credentials)
        except CredentialError as exc:  # its message already starts "credential NAME:"
            raise _Fail(Failure.CREDENTIAL, clip(str(exc), 120)) from None
        secrets += [placed.token, *placed.headers.values()]
        if placed.headers:
            headers = CIMultiDict(headers)
            headers.update(placed.headers)
        query = placed.query or None
        probe.stage = "start"
    connector = aiohttp.TCPConnector(ssl=tls, force_close=True, use_dns_cache=False, limit=0)
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=_NO_TIMEOUT, trace_configs=[_TRACE], trust_env=False
        ) as session,
        session.request(
            plan.method, plan.url, headers=headers, data=plan.data, params=query,
            allow_redirects=plan.allow_redirects, max_redirects=plan.max_redirects,
            trace_request_ctx=probe,
        ) as resp,
    ):
        now = time.perf_counter()
        probe.headers_received(now)
        probe.t_headers = now
        probe.status = resp.status
        if not plan.status_ok(resp.status):
            return None, Failure.HTTP_STATUS, _status_detail(plan, resp)
        probe.stage = "body"
        body = await _read_body(resp, target.body_limit, plan.keep_body, probe)
        probe.close_phase("transfer", time.perf_counter())
        return evaluate(plan, resp.headers, body, resp.charset, ctx.expect_version)


async def _read_body(
    resp: aiohttp.ClientResponse, limit: int, keep: bool, probe: Progress
) -> bytes:
    """Read at most `limit` bytes (decoded), in chunks; a larger body fails without being read."""
    length = resp.content_length
    if length is not None and length > limit and resp.method != "HEAD":
        raise _Fail(
            Failure.BODY_TOO_LARGE,
            f"body of {length} bytes (Content-Length) exceeds the {size(limit)} limit",
        )
    buf = bytearray()
    while chunk := await resp.content.read(_CHUNK_LIMIT):
        probe.bytes_read += len(chunk)
        if probe.bytes_read > limit:
            resp.close()  # drop the connection rather than drain the rest
            raise _Fail(
                Failure.BODY_TOO_LARGE,
                f"body exceeds the {size(limit)} limit"
                f" (stopped reading at {probe.bytes_read} bytes)",
            )
        if keep:
            buf += chunk
    return bytes(buf)


def _status_detail(plan: Plan, resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location") if 300 <= resp.status < 400 else None
    if location:
        where = clip(location.split("?", 1)[0], 60)
        return (
            f"HTTP {resp.status} (expected {plan.expected_status};"
            f" redirect to {where} not followed)"
        )
    return f"HTTP {resp.status} (expected {plan.expected_status})"
