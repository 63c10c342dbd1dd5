"""One WebSocket session of a probe: connect, upgrade, run the steps, close — and name the failure.

Each session raises `Fail` (a failure from the closed vocabulary, a one-line detail, and the
status / close code seen) or returns with its timings in its `Session`. Every await is bounded
by the probe's deadline or the step's timeout, whichever comes first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol

from probe.checks import USER_AGENT, clip, host_port, ssl_context
from probe.checks.messages import mismatch, payload
from probe.config import Step, Target
from probe.config_base import fmt
from probe.outcome import Failure

CLOSE_TIMEOUT = 1.0  # the closing handshake after the steps; a slow close is not a failure

# websockets logs every handshake header at DEBUG, Authorization included. Its logger for our
# connections is pinned at WARNING, so PROBE_LOG_LEVEL=debug can never print a token.
_WIRE_LOG = logging.getLogger("probe.checks.websocket.wire")
_WIRE_LOG.setLevel(logging.WARNING)


class Fail(Exception):
    """A classified failure of one session; becomes the probe's Outcome."""

    def __init__(
        self, failure: Failure, detail: str, *, status: int | None = None, close: int | None = None
    ) -> None:
        super().__init__(detail)
        self.failure, self.detail, self.status, self.close = failure, detail, status, close


@dataclass
class Plan:
    """What every session of one probe connects to and sends (the credential-bearing fields are
    kept out of repr, so a stray log of a Plan shows no token)."""

    url: str = field(repr=False)
    host: str
    port: int
    secure: bool
    headers: list[tuple[str, str]] = field(repr=False)
    subprotocols: list[Subprotocol] = field(repr=False)
    credential: str | None

    @property
    def where(self) -> str:
        return host_port(self.host, self.port)


@dataclass
class Session:
    """Where one session got to, and its timings (perf_counter seconds)."""

    index: int
    connect: float | None = None
    handshake: float | None = None
    transport_ready: bool = False  # TCP (and TLS) done: connection_made was called
    step: int = 0
    received: int = 0
    rtts: list[float] = field(default_factory=list)
    steps_time: float = 0.0
    close_code: int | None = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- one session -----------------------------------------------------------------------------


async def resolve(plan: Plan, deadline: float) -> list[Any]:
    """Addresses to try; an IP literal skips the resolver (its thread pool hop costs ms)."""
    try:
        ip = ipaddress.ip_address(plan.host)
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (plan.host, plan.port))]
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(deadline):
            return await loop.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Fail(Failure.DNS, f"cannot resolve {plan.host}: {exc.strerror}") from None
    except TimeoutError:
        raise Fail(Failure.DNS, f"{plan.host} did not resolve in time") from None


async def _connect_tcp(
    plan: Plan, infos: list[Any], deadline: float, budget: float
) -> socket.socket:
    """The first address (in resolver order) that accepts; refused ones are skipped."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            async with asyncio.timeout_at(deadline):
                await loop.sock_connect(sock, addr)
            return sock
        except TimeoutError:
            sock.close()
            raise Fail(
                Failure.CONNECT_TIMEOUT, f"no TCP connection to {plan.where} within {fmt(budget)}"
            ) from None
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    if last is None or isinstance(last, ConnectionRefusedError):
        raise Fail(Failure.REFUSED, f"connection to {plan.where} refused")
    raise Fail(
        Failure.REFUSED, f"cannot connect to {plan.where}: {last.strerror or type(last).__name__}"
    )


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


async def _handshake(
    target: Target, plan: Plan, sock: socket.socket, s: Session, deadline: float
) -> ClientConnection:
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()

    def factory(protocol: Any, **kwargs: Any) -> ClientConnection:
        conn = _Connection(protocol, **kwargs)
        conn.session = s
        return conn

    extra: dict[str, Any] = {}
    if plan.secure:
        extra["ssl"] = ssl_context(target.tls_verify, target.ca_file)
    try:
        if remaining <= 0:
            raise TimeoutError
        return await connect(
            plan.url,
            sock=sock,
            additional_headers=plan.headers,
            subprotocols=plan.subprotocols or None,
            origin=Origin(target.origin) if target.origin else None,
            open_timeout=remaining,
            close_timeout=min(CLOSE_TIMEOUT, target.timeout),
            ping_interval=None,
            max_size=target.body_limit,
            user_agent_header=USER_AGENT,
            proxy=None,
            logger=_WIRE_LOG,
            create_connection=factory,  # type: ignore[arg-type]
            **extra,
        )
    except BaseException as exc:
        sock.close()  # websockets closes it too; closing twice is harmless
        fail = _open_failure(exc, target, plan, s)
        if fail is None:
            raise
        raise fail from None


def _open_failure(exc: BaseException, target: Target, plan: Plan, s: Session) -> Fail | None:
    """Name what went wrong between the TCP connection and an open session (None: not ours)."""
    if isinstance(exc, ValueError) and isinstance(exc.__cause__, InvalidStatus):
        exc = exc.__cause__  # a redirect, which a probe does not follow
    if isinstance(exc, InvalidStatus):
        return _rejected(plan, exc)
    in_tls = plan.secure and not s.transport_ready
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


class _Connection(ClientConnection):
    """Notes when the transport is ready (asyncio calls connection_made after TLS completes,
    which tells a TLS timeout from an unanswered upgrade) and cuts off a server that broke the
    protocol."""

    session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.session is not None:
            self.session.transport_ready = True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A server that sent an invalid or oversized frame has already been told (1002/1009);
        # waiting for it to acknowledge would turn a precise failure into a timeout.
        if self.protocol.parser_exc is not None and not self.transport.is_closing():
            self.transport.abort()


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


async def _exchange(target: Target, ws: ClientConnection, s: Session, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    for i, step in enumerate(target.messages, 1):
        s.step = i
        await _step(i, step, ws, s, deadline - loop.time(), target)
    s.step = 0


async def _step(
    i: int, step: Step, ws: ClientConnection, s: Session, left: float, target: Target
) -> None:
    wait = step.expect if step.expect is not None else step.until
    budget = min(step.timeout, left)
    skipped = 0
    started = time.perf_counter()
    try:
        if budget <= 0:
            raise TimeoutError
        async with asyncio.timeout(budget):
            if step.send is not None:
                await ws.send(payload(step.send))
            while wait is not None:
                message = await ws.recv()
                s.received += 1
                why = mismatch(wait, message)
                if why is None:
                    break
                if step.expect is not None:
                    raise Fail(Failure.ASSERTION, f"step {i}: {why}", status=101)
                skipped += 1
    except TimeoutError:
        within = (
            fmt(step.timeout)
            if step.timeout <= left
            else f"{fmt(target.timeout)} (the target's timeout)"
        )
        if wait is None:
            raise Fail(
                Failure.TIMEOUT, f"step {i}: could not send within {within}", status=101
            ) from None
        if step.until is not None:
            extra = f"; {_plural(skipped, 'other message')} skipped" if skipped else ""
            raise Fail(
                Failure.WS_NO_REPLY,
                f"no matching reply to step {i} within {within}{extra}",
                status=101,
            ) from None
        raise Fail(
            Failure.WS_NO_REPLY, f"no reply to step {i} within {within}", status=101
        ) from None
    elapsed = time.perf_counter() - started
    s.steps_time += elapsed
    if wait is not None:
        s.rtts.append(elapsed)


async def _close(ws: ClientConnection, deadline: float) -> None:
    """The closing handshake, bounded; a peer that never answers it is cut off."""
    left = deadline - asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(max(0.05, min(CLOSE_TIMEOUT, left))):
            await ws.close()
    except TimeoutError:
        ws.transport.abort()


async def run_session(
    target: Target, plan: Plan, infos: list[Any], s: Session, deadline: float
) -> None:
    t0 = time.perf_counter()
    sock = await _connect_tcp(plan, infos, deadline, target.timeout)
    s.connect = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        ws = await _handshake(target, plan, sock, s, deadline)
    finally:  # a rejected upgrade took time too: how long until the answer
        s.handshake = time.perf_counter() - t1
    proto = ws.protocol
    try:
        try:
            await _exchange(target, ws, s, deadline)
        except ConnectionClosed as exc:
            raise _closed(exc.rcvd, exc.sent, exc.rcvd_then_sent, s, target) from None
        if proto.state in (State.CLOSING, State.CLOSED):  # the server ended it before we did
            rcvd = proto.close_rcvd
            if rcvd is None or rcvd.code != 1000:
                raise _closed(rcvd, proto.close_sent, proto.close_rcvd_then_sent, s, target)
    except Fail:
        await _close(ws, deadline)
        raise
    except BaseException:  # cancelled (another session failed, or the backstop): no goodbyes
        ws.transport.abort()
        raise
    await _close(ws, deadline)
    if proto.close_rcvd is not None:
        s.close_code = proto.close_rcvd.code
