"""One WebSocket session of a probe, its opening: connect, TLS, upgrade — and the failure named
when it does not open (what an open session does is in _ws_steps).

Each session raises `Fail` (a failure from the closed vocabulary, a one-line detail, and the
status / close code seen) or returns with its timings in its `Session`.

One deadline per session: a session runs inside a single asyncio.Timeout at the probe's
deadline, entered by its caller (each asyncio.timeout is a timer and a context manager: one per
stage would cost six per session). A step whose own timeout ends sooner moves it earlier for
that step and back afterwards; a successful session moves it to the close's bound. When it runs
out, the stage the session had reached names the failure (`timed_out`), as the HTTP check does.

Why not websockets.connect(): the TCP connection is made with loop.create_connection(host, port)
(uvloop's sock_connect + create_connection(sock=...) costs ~100 us more per session on
loopback), TLS is started on it with loop.start_tls (so `connect` and `handshake` are timed
apart), and websockets' ClientConnection (the bounded one of _ws_conn) does the upgrade.
connect() would also parse the URL and arm a timeout per session, and offer permessage-deflate:
a probe has no use for compression, and a server accepting it would cost a zlib context per
connection on both sides.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import InvalidHandshake, InvalidMessage, InvalidStatus
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI

from probe.checks import USER_AGENT, Fail, by_protocol, clip, host_port, tls_context
from probe.checks._tls_sessions import Handshake, TlsSessions
from probe.checks._trace import HEADER, traceparent
from probe.checks._ws_conn import BoundedConnection, BoundedProtocol
from probe.config import Target
from probe.config.base import fmt
from probe.outcome import Failure

CLOSE_TIMEOUT = 1.0  # the closing handshake after the steps; a slow close is not a failure

# websockets logs every handshake header at DEBUG, Authorization included. Its logger for our
# connections is pinned at WARNING, so PROBE_LOG_LEVEL=debug can never print a token.
_WIRE_LOG = logging.getLogger("probe.checks.websocket.wire")
_WIRE_LOG.setLevel(logging.WARNING)


@dataclass
class Plan:
    """What every session of one probe connects to and sends, built once per target and token
    (the credential-bearing fields are kept out of repr, so a stray log of a Plan shows no
    token)."""

    url: str = field(repr=False)
    host: str
    port: int
    secure: bool
    headers: list[tuple[str, str]] = field(repr=False)
    subprotocols: list[Subprotocol] = field(repr=False)
    credential: str | None
    uri: WebSocketURI = field(repr=False)
    origin: Origin | None = None
    infos: list[Any] | None = None  # an IP literal's address: no resolver needed
    payloads: tuple[str | None, ...] = ()  # what each step sends, encoded once
    offered: str = ""  # the subprotocols offered, as a detail names them (no token)
    ip_protocol: str | None = None  # the address family dialled first (checks.by_protocol)
    ip_fallback: bool = True

    @property
    def where(self) -> str:
        return host_port(self.host, self.port)


@dataclass(slots=True)
class Session:
    """Where one session got to, and its timings (perf_counter seconds)."""

    index: int
    stage: str = "connect"  # connect, tls, upgrade, step, steps done, hold, settle, close, done
    connect: float | None = None
    handshake: float | None = None
    t_connected: float | None = None  # when the TCP connection was made
    t_open: float = 0.0  # when the upgrade was answered 101: a session's age counts from here
    t_hold: float = 0.0  # when the hold (or the linger without one) began
    lingered: float = 0.0  # the linger after the steps: not part of the `total` measure
    step: int = 0
    own_timeout: bool = False  # the step in progress is bounded by its own timeout
    skipped: int = 0  # messages an `until` step passed over
    received: int = 0
    rtts: list[float] = field(default_factory=list)
    named: dict[str, float] = field(default_factory=dict)  # each named step's time: a measure
    matched: str | bytes | None = None  # the last message a step's expect/until matched
    steps_time: float = 0.0
    close_code: int | None = None
    ws: BoundedConnection | None = None  # once the upgrade succeeded
    trace_id: str | None = None  # the probe's trace: a traceparent on the upgrade (_trace)
    tls_sessions: TlsSessions | None = None  # the daemon's TLS session memory (wss)
    tls: Handshake | None = None  # this session's TLS handshake, once started


# --- opening ---------------------------------------------------------------------------------


async def resolve(plan: Plan) -> list[Any]:
    """Addresses to try (the caller's deadline bounds the resolver)."""
    if plan.infos is not None:
        return plan.infos
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM)
        if plan.ip_protocol is None:
            return infos
        order = by_protocol([i[4][0] for i in infos], plan.ip_protocol, plan.ip_fallback,
                            plan.host)
        return sorted((i for i in infos if i[4][0] in order), key=lambda i: order.index(i[4][0]))
    except socket.gaierror as exc:
        raise Fail(Failure.DNS, f"cannot resolve {plan.host}: {exc.strerror}") from None


class _Tcp(asyncio.Protocol):
    """The TCP phase of a wss:// session: notes when it connected; TLS is started on top."""

    def __init__(self, conn: BoundedConnection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.t_connected = time.perf_counter()


async def _connect_tcp(
    target: Target, plan: Plan, infos: list[Any], conn: BoundedConnection
) -> asyncio.BaseTransport:
    """The first address (in resolver order) that accepts; refused ones are skipped. Plain ws://
    connects `conn` itself; wss:// a placeholder protocol, replaced when TLS starts."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol] = (
        (lambda: _Tcp(conn)) if plan.secure else (lambda: conn))
    last: OSError | None = None
    for family, _, _, _, addr in infos:
        try:
            transport, _ = await loop.create_connection(factory, addr[0], addr[1], family=family)
            return transport
        except TimeoutError:  # ETIMEDOUT from the kernel, before our own deadline
            detail = f"no TCP connection to {plan.where} within {fmt(target.timeout)}"
            raise Fail(Failure.CONNECT_TIMEOUT, detail) from None
        except OSError as exc:
            last = exc
    if last is None or isinstance(last, ConnectionRefusedError):
        raise Fail(Failure.REFUSED, f"connection to {plan.where} refused")
    raise Fail(
        Failure.REFUSED, f"cannot connect to {plan.where}: {last.strerror or type(last).__name__}"
    )


async def open_session(
    target: Target, plan: Plan, infos: list[Any], s: Session
) -> BoundedConnection:
    """TCP, TLS if wss, then the upgrade; times `connect` and `handshake` (TLS + upgrade)."""
    context = tls_context(target) if plan.secure else None
    conn = BoundedConnection(
        BoundedProtocol(
            plan.uri,
            origin=plan.origin,
            subprotocols=plan.subprotocols or None,
            max_size=target.body_limit,
            logger=_WIRE_LOG,
        ),
        ping_interval=None,
        close_timeout=min(CLOSE_TIMEOUT, target.timeout),
    )
    t0 = time.perf_counter()
    transport = await _connect_tcp(target, plan, infos, conn)
    t1 = conn.t_connected if conn.t_connected is not None else time.perf_counter()
    s.t_connected = t1
    s.connect = t1 - t0
    try:
        if context is not None:
            s.stage = "tls"
            name = target.tls_server_name or plan.host
            hs = s.tls = (s.tls_sessions.handshake(target, plan.host, plan.port, context)
                          if s.tls_sessions is not None else None)
            try:
                tls = await asyncio.get_running_loop().start_tls(
                    transport, conn, context,  # type: ignore[arg-type]
                    server_hostname=hs.server_hostname(name) if hs is not None else name,
                )
            finally:
                if hs is not None:
                    hs.withdraw()
            assert tls is not None
            if hs is not None:
                hs.done(tls.get_extra_info("ssl_object"))
            transport = tls
            conn.connection_made(tls)
        s.stage = "upgrade"
        headers = plan.headers if s.trace_id is None else [
            *plan.headers, (HEADER, traceparent(s.trace_id))]
        await conn.handshake(headers, USER_AGENT)
    except BaseException as exc:
        transport.abort()  # type: ignore[attr-defined]
        fail = open_failure(exc, target, plan, s)
        if fail is None:
            raise
        raise fail from None
    finally:  # a rejected upgrade took time too: how long until the answer
        s.t_open = time.perf_counter()
        s.handshake = s.t_open - t1
    if plan.offered and conn.protocol.subprotocol is None:
        # Browsers fail this handshake (WHATWG WebSocket, "establish a WebSocket connection"),
        # so a client of this server would never get a session: neither does the probe.
        transport.abort()  # type: ignore[attr-defined]
        detail = ("WebSocket upgrade accepted without any of the offered subprotocols "
                  f"({plan.offered})")
        raise Fail(Failure.WS_REJECTED, detail, status=101)
    return conn


# A bare 403 is what ASGI servers (uvicorn, hypercorn, Starlette) answer to any upgrade they
# do not accept, before the application sees a credential: the detail must not blame it.
_BARE_403 = ("a 403 with no body can also mean an unknown path, an HTTP-only route or a "
             "missing subprotocol")


def _rejected(plan: Plan, exc: InvalidStatus) -> Fail:
    response = exc.response
    status = response.status_code
    if status in (401, 403):
        sent = (f"credential {plan.credential} was sent" if plan.credential
                else "no credential was sent")
        if status == 403 and not response.body:
            sent += f"; {_BARE_403}"
        return Fail(
            Failure.WS_AUTH, f"WebSocket upgrade rejected: HTTP {status} ({sent})", status=status
        )
    detail = f"WebSocket upgrade rejected: HTTP {status}"
    location = response.headers.get("Location")
    if status == 200:
        detail += " (not a WebSocket endpoint)"
    elif 300 <= status < 400 and location is not None:
        detail += f" redirect to {_bare(location)} (not followed for WebSocket targets)"
    elif response.body:
        detail += f": {clip(response.body.decode('utf-8', 'replace'), 60)!r}"
    return Fail(Failure.WS_REJECTED, detail, status=status)


def _bare(location: str) -> str:
    """A redirect's Location without userinfo, query or fragment (they may carry secrets)."""
    try:
        parts = urlsplit(clip(location, 200))
        netloc = parts.netloc.rpartition("@")[2]
        return clip(urlunsplit(parts._replace(netloc=netloc, query="", fragment="")), 80)
    except ValueError:  # e.g. a bad port or bracket: say nothing of it rather than quote it
        return "an unparsable Location"


def open_failure(exc: BaseException, target: Target, plan: Plan, s: Session) -> Fail | None:
    """Name what went wrong between the TCP connection and an open session (None: not ours)."""
    if isinstance(exc, InvalidStatus):
        return _rejected(plan, exc)
    in_tls = s.stage == "tls"
    limit = fmt(target.timeout)
    if isinstance(exc, TimeoutError):
        if in_tls:
            return Fail(
                Failure.CONNECT_TIMEOUT, f"no TLS handshake with {plan.where} within {limit}"
            )
        return Fail(Failure.TIMEOUT, f"no answer to the WebSocket upgrade within {limit}")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
        return Fail(Failure.TLS, f"TLS handshake with {plan.host} failed: {reason}")
    if isinstance(exc, OSError) and in_tls:
        return Fail(Failure.TLS, f"connection lost during the TLS handshake with {plan.host}")
    if isinstance(exc, InvalidMessage):
        cause = exc.__cause__
        if cause is None or isinstance(cause, EOFError | OSError):
            detail = "connection closed before the WebSocket upgrade was answered"
            return Fail(Failure.DISCONNECTED, detail)
        return Fail(
            Failure.PROTOCOL, f"invalid answer to the WebSocket upgrade: {clip(str(cause))}"
        )
    if isinstance(exc, InvalidHandshake):
        return Fail(
            Failure.PROTOCOL, f"invalid answer to the WebSocket upgrade: {clip(str(exc))}"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return Fail(
            Failure.DISCONNECTED, f"connection lost during the WebSocket upgrade ({reason})"
        )
    return None
