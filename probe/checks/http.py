"""The HTTP(S) prober: one fresh connection per probe, per-phase timings, every failure named.

Why a fresh connection per probe (`Connection: close`): a pooled keep-alive connection would
hide DNS, connect and TLS time, and would hide a server that stopped accepting new connections.
The transport is our own small HTTP/1.1 client (_http_wire: a thin asyncio Protocol driving
_http_response's sans-I/O reader over httptools' llhttp parser), because aiohttp's client
machinery cost ~30% of a probe's CPU; the request's bytes are built once per target
(_http_request, via the Plan).

Phases follow blackbox_exporter and are summed over redirect hops: resolve (DNS, none for an IP
literal), connect (TCP), tls (handshake), processing (request sent -> response headers),
transfer (body read). `cert_expiry` is the earliest notAfter of the certificate chains seen
(the verified chain, root included), `leaf_expiry` that of the servers' own certificates.

The whole probe runs under one asyncio.timeout(target.timeout); the stage reached when it runs
out names the failure (still resolving: dns; no TCP/TLS connection yet: connect_timeout;
connected: timeout); see _http_classify. Phases not reached are absent from Outcome.phases.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from probe.checks import CheckContext, Fail, clip, scrub, target_secrets, tls_context, tls_files
from probe.checks._http2 import H2Parser, h2_tls, negotiated
from probe.checks._http_classify import Progress, classify, os_text, timed_out
from probe.checks._http_cookies import Jar
from probe.checks._http_dial import connect, h2_only, proxy_for
from probe.checks._http_expect import Plan, answer_failure, evaluate, plan_for, regex_failed
from probe.checks._http_request import BadRedirect, Hop, redirect_hop
from probe.checks._http_response import ResponseReader
from probe.checks._http_wire import Wire
from probe.checks._trace import new_trace_id, traceparent
from probe.config import Target
from probe.credentials import Attached, CredentialError, attach
from probe.outcome import Failure, HttpFacts, Outcome


async def check(target: Target, ctx: CheckContext) -> Outcome:
    """Probe `target` once; never raises for anything the target does (only on cancellation)."""
    started = time.time()
    secrets = target_secrets(target, ctx.credentials)
    # Cached per target/process, and outside the clock: loading a trust store takes ~45 ms the
    # first time, which is the prober's cost, not the target's latency.
    try:
        plan = plan_for(target)
    except Exception as exc:  # a request that cannot even be built (validated config: rare)
        detail = scrub(f"cannot build the request: {type(exc).__name__}: {exc}", secrets)
        return Outcome.failed(
            target.name, "http", Failure.PROTOCOL, detail, 0.0, started_at=started
        )
    try:  # also for plain HTTP: a ca_file that cannot load is a config fault either way
        tls = tls_context(target)
    except (OSError, ssl.SSLError) as exc:
        detail = f"cannot load {tls_files(target)}: {os_text(exc)}"
        return Outcome.failed(target.name, "http", Failure.TLS, detail, 0.0, started_at=started)
    t0 = time.perf_counter()
    probe = Progress(t0, plan.hop.where, secrets)
    version: str | None = None
    failure: Failure | None = None
    detail = ""
    budget = asyncio.timeout(target.timeout)
    trace_id = new_trace_id() if plan.traced else None  # one trace for every hop of the probe
    seen = _Seen()
    try:
        async with budget:
            version, failure, detail = await _run(target, plan, tls, ctx, probe, trace_id, seen)
    except Fail as exc:
        failure, detail = exc.failure, exc.detail
    except Exception as exc:  # the contract: classify, never raise out of check()
        if budget.expired():
            failure, detail = timed_out(target, probe)
        else:
            failure, detail = classify(exc, probe, target)
    duration = time.perf_counter() - t0
    if probe.handshakes:
        ctx.tls_sessions.settle(target, probe.handshakes, failure is None)
    if probe.foreign:  # nothing read from another host goes out, unless redirect_hosts allows it
        version = None
        if failure in _QUOTING:
            detail = (f"the answer of {probe.where} (a redirect to another origin, not in"
                      " redirect_hosts) does not pass; it is not quoted")
    elif version is not None:
        version = probe.secrets.mask(version)
    latency = {"total": duration}
    if probe.t_headers is not None:
        latency["ttfb"] = probe.t_headers - t0
    return Outcome(
        target=target.name,
        kind="http",
        success=failure is None,
        duration=duration,
        failure=failure,
        detail=scrub(detail, probe.secrets) if failure is not None else "",
        status_code=probe.status,
        version=version,
        phases=probe.phases,
        latency=latency,
        cert_expiry=probe.cert_expiry,
        trace_id=trace_id,
        http=seen.facts(failure, detail),
        started_at=started,
        leaf_expiry=probe.leaf_expiry,
    )


async def _run(
    target: Target,
    plan: Plan,
    tls: ssl.SSLContext,
    ctx: CheckContext,
    probe: Progress,
    trace_id: str | None,
    seen: _Seen,
) -> tuple[str | None, Failure | None, str]:
    cred_headers: dict[str, str] | None = None
    query: dict[str, str] | None = None
    placed = Attached()
    if target.credential is not None:
        probe.stage = "credential"
        try:
            placed = await attach(target, ctx.credentials)
        except CredentialError as exc:  # its message already starts "credential NAME:"
            raise Fail(Failure.CREDENTIAL, clip(str(exc), 120)) from None
        probe.secrets = target_secrets(target, ctx.credentials, placed)
        cred_headers, query = placed.headers or None, placed.query or None
        probe.stage = "start"
    loop = asyncio.get_running_loop()
    hop = plan.hop
    try:
        request = hop.request(cred_headers, query, trace_id and traceparent(trace_id))
    except ValueError:
        raise Fail(Failure.CREDENTIAL, f"credential {target.credential}: the value cannot go in"
                                       " a header (a line break or NUL in it)") from None
    redirects, same_origin = 0, True  # same_origin: the credential went with this hop
    jar = Jar()  # this probe's cookies: set on a redirect hop, sent on the next ones
    while True:
        wire = Wire(plan, hop.method == "HEAD", target.body_limit, probe)
        reader = wire.reader  # the response, as far as it came
        try:
            proxy = proxy_for(hop.url, target.proxy_url, ctx.proxy_env)
            h2p = _http2(wire, hop, proxy) if target.http_version == "2" else None
            handshake = (ctx.tls_sessions.handshake(target, hop.host, hop.port, tls)
                         if hop.tls and h2p is None else None)
            await connect(loop, wire, hop, (h2_tls(target) if h2p else tls) if hop.tls else None,
                          probe, target.timeout + 1, proxy, handshake)
            if h2p is not None and hop.tls:
                negotiated(wire)
            wire.send(h2p.request(request) if h2p is not None else request)
            try:
                await wire.head()
            except Fail as exc:  # hung up on an HTTP/1.1 request unanswered: HTTP/2 only?
                if (exc.failure is Failure.DISCONNECTED and hop.tls and proxy is None
                        and h2p is None
                        and not reader.received and await h2_only(loop, hop)):
                    raise Fail(Failure.PROTOCOL, f"{hop.where} refuses HTTP/1.1: it speaks"
                                                 " HTTP/2 only (TLS ALPN h2); set http_version:"
                                                 " \"2\"") from None
                raise
            status = reader.status
            seen.answered(wire, hop.tls, redirects)
            if reader.follow:
                redirects += 1
                if redirects > plan.max_redirects:
                    raise Fail(Failure.HTTP_STATUS,
                               f"more than {plan.max_redirects} redirects, last HTTP {status}")
                location = reader.location.decode("utf-8", "surrogateescape")
                jar.store(hop.url, reader.set_cookies())
                try:
                    hop = redirect_hop(hop, status, location, plan.headers, plan.hop.origin)
                except BadRedirect as exc:
                    raise Fail(Failure.PROTOCOL, str(exc)) from None
                # The credential goes to the target's origin only (a query one: first hop only,
                # as aiohttp did: the Location decides the query from then on).
                same_origin = hop.origin == plan.hop.origin
                probe.foreign = not plan.quotable(hop)
                request = hop.request(_cookie(cred_headers if same_origin else None, jar, hop),
                                      None, trace_id and traceparent(trace_id))
                continue
            if not plan.status_ok(status):
                detail = _status_detail(plan, reader, probe.foreign)
                if status in (401, 403) and target.credential is not None and same_origin:
                    ctx.credentials.invalidate(target.credential, placed.token)
                    detail += f"; credential {placed.source} was sent"
                return None, Failure.HTTP_STATUS, detail
            why = answer_failure(plan, hop.tls, seen.http_version)
            if why is not None:
                return None, Failure.ASSERTION, why
            await wire.rest()
            probe.close_phase("transfer", reader.t_done)
            seen.body = reader.decoded if reader.decoder is not None else reader.body_raw
            if ctx.answer is not None:  # a flow step's `extract` reads the answer
                ctx.answer(reader.headers, reader.body_bytes())
            return evaluate(plan, reader.header_map(), reader.body_bytes(), reader.charset(),
                            ctx.expect_version)
        finally:
            wire.close()


class _Seen:
    """What the last answer showed, for the Outcome's HttpFacts (blackbox_exporter's series)."""

    __slots__ = ("body", "http_version", "length", "redirects", "tls", "tls_version")

    def __init__(self) -> None:
        self.tls, self.redirects, self.length, self.body = False, 0, -1, 0
        self.http_version = "0"
        self.tls_version: str | None = None

    def answered(self, wire: Wire, tls: bool, redirects: int) -> None:
        """A response head came (of a redirect hop or the final answer): the latest wins."""
        self.tls, self.redirects = tls, redirects
        reader = wire.reader
        self.length = -1 if reader.length is None else reader.length
        if reader.parser is not None:
            self.http_version = reader.parser.get_http_version()
        ssl_object = wire.transport.get_extra_info("ssl_object") if wire.transport else None
        version = ssl_object.version() if ssl_object is not None else None
        # "TLSv1.3" -> "TLS 1.3", blackbox_exporter's label value
        self.tls_version = version.replace("v", " ", 1) if version else None

    def facts(self, failure: Failure | None, detail: str) -> HttpFacts:
        return HttpFacts(
            ssl=self.tls, version=float(self.http_version), redirects=self.redirects,
            tls_version=self.tls_version, content_length=self.length, body_length=self.body,
            failed_regex=regex_failed(failure, detail),
        )


def _http2(wire: Wire, hop: Hop, proxy: object) -> H2Parser:
    """The HTTP/2 stand-in for the wire's parser (h2c cannot go through an HTTP proxy)."""
    if proxy is not None and not hop.tls:
        raise Fail(Failure.PROTOCOL, "http_version 2 on http:// (h2c) cannot go through a proxy")
    h2p = H2Parser(wire.reader, b"https" if hop.tls else b"http")
    wire.reader.over_h2(h2p)
    return h2p


def _cookie(headers: dict[str, str] | None, jar: Jar, hop: Hop) -> dict[str, str] | None:
    """`headers` (the credential's) plus the jar's Cookie for `hop`, if any matches."""
    cookie = jar.header(hop.url) if jar.cookies else None
    return {**(headers or {}), "Cookie": cookie} if cookie else headers


# Failures whose detail may quote the answer (a body excerpt, a header or JSON value, a build).
_QUOTING = frozenset({Failure.ASSERTION, Failure.VERSION_MISMATCH, Failure.PROTOCOL})


def _status_detail(plan: Plan, reader: ResponseReader, foreign: bool) -> str:
    status = reader.status
    location = reader.location.decode("latin-1") if 300 <= status < 400 and not foreign else ""
    if location:
        where = clip(location.split("?", 1)[0], 60)
        return (
            f"HTTP {status} (expected {plan.expected_status}; redirect to {where} not followed)"
        )
    return f"HTTP {status} (expected {plan.expected_status})"

