"""One WebSocket session of a probe: connect, upgrade, run the steps, close — and name the failure.

Each session raises `Fail` (a failure from the closed vocabulary, a one-line detail, and the
status / close code seen) or returns with its timings in its `Session`.

One deadline per session: a session runs inside a single asyncio.Timeout at the probe's
deadline, entered by its caller (each asyncio.timeout is a timer and a context manager, and a
session used to make six). A step whose own timeout ends sooner moves it earlier for that step
and back afterwards; a successful session moves it to the close's bound. When it runs out, the
stage the session had reached names the failure (`timed_out`), as the HTTP check does.

Why not websockets.connect(): the TCP connection is made with loop.create_connection(host, port)
(uvloop's sock_connect + create_connection(sock=...), used before, cost ~100 us more per session
on loopback), TLS is started on it with loop.start_tls (so `connect` and `handshake` are timed
apart), and websockets' own ClientConnection then does the upgrade. connect() would also parse
the URL and arm a timeout per session, and offer permessage-deflate: a probe has no use for
compression, and a server accepting it would cost a zlib context per connection on both sides.
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

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI

from probe.checks import USER_AGENT, Fail, clip, host_port, ssl_context
from probe.checks.messages import mismatch
from probe.config import Target
from probe.config_base import fmt
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

    @property
    def where(self) -> str:
        return host_port(self.host, self.port)


@dataclass(slots=True)
class Session:
    """Where one session got to, and its timings (perf_counter seconds)."""

    index: int
    stage: str = "connect"  # connect, tls, upgrade, step, close, done: names a timeout
    connect: float | None = None
    handshake: float | None = None
    t_connected: float | None = None  # when the TCP connection was made
    step: int = 0
    own_timeout: bool = False  # the step in progress is bounded by its own timeout
    skipped: int = 0  # messages an `until` step passed over
    received: int = 0
    rtts: list[float] = field(default_factory=list)
    steps_time: float = 0.0
    close_code: int | None = None
    ws: ClientConnection | None = None  # once the upgrade succeeded


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- opening ---------------------------------------------------------------------------------


async def resolve(plan: Plan) -> list[Any]:
    """Addresses to try (the caller's deadline bounds the resolver)."""
    if plan.infos is not None:
        return plan.infos
    loop = asyncio.get_running_loop()
    try:
        return await loop.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Fail(Failure.DNS, f"cannot resolve {plan.host}: {exc.strerror}") from None


class _Tcp(asyncio.Protocol):
    """The TCP phase of a wss:// session: notes when it connected; TLS is started on top."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.s.t_connected = time.perf_counter()


class _Connection(ClientConnection):
    """Notes when the transport is ready (TCP, or TLS on it) and cuts off a server that broke
    the protocol."""

    session: Session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        s = self.session
        if s.t_connected is None:
            s.t_connected = time.perf_counter()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A server that sent an invalid or oversized frame has already been told (1002/1009);
        # waiting for it to acknowledge would turn a precise failure into a timeout.
        if self.protocol.parser_exc is not None and not self.transport.is_closing():
            self.transport.abort()


async def _connect_tcp(
    target: Target, plan: Plan, infos: list[Any], s: Session, conn: _Connection
) -> asyncio.BaseTransport:
    """The first address (in resolver order) that accepts; refused ones are skipped. Plain ws://
    connects `conn` itself; wss:// a placeholder protocol, replaced when TLS starts."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol] = (lambda: _Tcp(s)) if plan.secure else (lambda: conn)
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


async def _open(target: Target, plan: Plan, infos: list[Any], s: Session) -> ClientConnection:
    """TCP, TLS if wss, then the upgrade; times `connect` and `handshake` (TLS + upgrade)."""
    context = ssl_context(target.tls_verify, target.ca_file) if plan.secure else None
    conn = _Connection(
        ClientProtocol(
            plan.uri,
            origin=plan.origin,
            subprotocols=plan.subprotocols or None,
            max_size=target.body_limit,
            logger=_WIRE_LOG,
        ),
        ping_interval=None,
        close_timeout=min(CLOSE_TIMEOUT, target.timeout),
    )
    conn.session = s
    t0 = time.perf_counter()
    transport = await _connect_tcp(target, plan, infos, s, conn)
    t1 = s.t_connected if s.t_connected is not None else time.perf_counter()
    s.connect = t1 - t0
    try:
        if context is not None:
            s.stage = "tls"
            tls = await asyncio.get_running_loop().start_tls(
                transport, conn, context, server_hostname=plan.host  # type: ignore[arg-type]
            )
            assert tls is not None
            transport = tls
            conn.connection_made(tls)
        s.stage = "upgrade"
        await conn.handshake(plan.headers, USER_AGENT)
    except BaseException as exc:
        transport.abort()  # type: ignore[attr-defined]
        fail = _open_failure(exc, target, plan, s)
        if fail is None:
            raise
        raise fail from None
    finally:  # a rejected upgrade took time too: how long until the answer
        s.handshake = time.perf_counter() - t1
    return conn


def _rejected(plan: Plan, exc: InvalidStatus) -> Fail:
    status = exc.response.status_code
    if status in (401, 403):
        sent = (
            f"credential {plan.credential} was sent"
            if plan.credential
            else "no credential was sent"
        )
        return Fail(
            Failure.WS_AUTH, f"WebSocket upgrade rejected: HTTP {status} ({sent})", status=status
        )
    detail = f"WebSocket upgrade rejected: HTTP {status}"
    if status == 200:
        detail += " (not a WebSocket endpoint)"
    elif exc.response.body:
        detail += f": {clip(exc.response.body.decode('utf-8', 'replace'), 60)!r}"
    return Fail(Failure.WS_REJECTED, detail, status=status)


def _open_failure(exc: BaseException, target: Target, plan: Plan, s: Session) -> Fail | None:
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


# --- the steps and the end of a session ------------------------------------------------------


def _closed(
    rcvd: Close | None, sent: Close | None, rcvd_first: bool | None, s: Session, target: Target
) -> Fail:
    """Name why a session ended: our own verdict on the server's frames, its close, or a drop."""
    at = f" (step {s.step})" if s.step else ""
    after = f"after {_plural(s.received, 'message')}"
    if sent is not None and (rcvd is None or not rcvd_first):  # we failed the session first
        if sent.code == 1009:
            detail = f"a message larger than body_limit ({target.body_limit} bytes) arrived{at}"
            return Fail(Failure.BODY_TOO_LARGE, detail, status=101)
        if sent.code in (1002, 1007):
            detail = f"server sent an invalid frame{at}: {clip(sent.reason)}"
            return Fail(Failure.PROTOCOL, detail, status=101)
    if rcvd is not None:
        reason = f' "{clip(rcvd.reason)}"' if rcvd.reason else ""
        note = " (server error)" if rcvd.code == 1011 else ""
        detail = f"server closed the session: {rcvd.code}{reason}{note} {after}{at}"
        return Fail(Failure.WS_CLOSED, detail, status=101, close=rcvd.code)
    detail = f"connection lost without a close frame (1006) {after}{at}"
    return Fail(Failure.WS_DROPPED, detail, status=101, close=1006)


async def _exchange(
    target: Target, plan: Plan, ws: ClientConnection, s: Session, budget: asyncio.Timeout,
    deadline: float,
) -> None:
    loop = asyncio.get_running_loop()
    s.stage = "step"
    for i, step in enumerate(target.messages, 1):
        now = loop.time()
        left = deadline - now
        s.step, s.skipped, s.own_timeout = i, 0, step.timeout <= left
        if left <= 0:
            raise TimeoutError
        moved = step.timeout < left  # the step's own timeout ends first: bring the deadline in
        if moved:
            budget.reschedule(now + step.timeout)
        wait = step.expect if step.expect is not None else step.until
        started = time.perf_counter()
        send = plan.payloads[i - 1]
        if send is not None:
            await ws.send(send)
        while wait is not None:
            message = await ws.recv()
            s.received += 1
            why = mismatch(wait, message)
            if why is None:
                break
            if step.expect is not None:
                raise Fail(Failure.ASSERTION, f"step {i}: {why}", status=101)
            s.skipped += 1
        elapsed = time.perf_counter() - started
        s.steps_time += elapsed
        if wait is not None:
            s.rtts.append(elapsed)
        if moved:
            budget.reschedule(deadline)
    s.step = 0


def timed_out(target: Target, plan: Plan, s: Session) -> Fail | None:
    """The failure a session's deadline running out names, by the stage it had reached (None:
    it ran out during the closing handshake of a session that had succeeded)."""
    limit = fmt(target.timeout)
    if s.stage == "connect":
        return Fail(Failure.CONNECT_TIMEOUT, f"no TCP connection to {plan.where} within {limit}")
    if s.stage in ("tls", "upgrade"):
        return _open_failure(TimeoutError(), target, plan, s)
    if s.stage != "step":
        return None
    i = s.step
    step = target.messages[i - 1]
    within = fmt(step.timeout) if s.own_timeout else f"{limit} (the target's timeout)"
    if step.expect is None and step.until is None:
        return Fail(Failure.TIMEOUT, f"step {i}: could not send within {within}", status=101)
    if step.until is not None:
        extra = f"; {_plural(s.skipped, 'other message')} skipped" if s.skipped else ""
        detail = f"no matching reply to step {i} within {within}{extra}"
        return Fail(Failure.WS_NO_REPLY, detail, status=101)
    return Fail(Failure.WS_NO_REPLY, f"no reply to step {i} within {within}", status=101)


async def run_session(
    target: Target, plan: Plan, infos: list[Any], s: Session, budget: asyncio.Timeout,
    deadline: float,
) -> None:
    """The whole session inside `budget` (an entered asyncio.Timeout at `deadline`); a
    failure raised here is passed to websocket._settle by the caller, which closes the
    connection."""
    ws = s.ws = await _open(target, plan, infos, s)
    proto = ws.protocol
    try:
        await _exchange(target, plan, ws, s, budget, deadline)
    except ConnectionClosed as exc:
        raise _closed(exc.rcvd, exc.sent, exc.rcvd_then_sent, s, target) from None
    if proto.state in (State.CLOSING, State.CLOSED):  # the server ended it before we did
        rcvd = proto.close_rcvd
        if rcvd is None or rcvd.code != 1000:
            raise _closed(rcvd, proto.close_sent, proto.close_rcvd_then_sent, s, target)
    s.stage = "close"  # the closing handshake, bounded; a peer that never answers it is cut off
    now = asyncio.get_running_loop().time()
    budget.reschedule(now + max(0.05, min(CLOSE_TIMEOUT, deadline - now)))
    await ws.close()
    finish(s)


def finish(s: Session) -> None:
    """The session is over: note how the server closed it."""
    s.stage = "done"
    if s.ws is not None and s.ws.protocol.close_rcvd is not None:
        s.close_code = s.ws.protocol.close_rcvd.code
