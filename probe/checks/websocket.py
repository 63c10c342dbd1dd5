"""WebSocket check: an authenticated session opened and exercised the way a real client does.

Why the connection is opened by hand: to time `resolve` and `connect` separately, the name is
resolved with loop.getaddrinfo and the TCP connection made with loop.sock_connect; the connected
socket is then handed to websockets, which does TLS (SNI and certificate checked against the
URL's host name) and the HTTP upgrade (Host header from the URL) — the `handshake` phase.

Timings (time.perf_counter, never the loop clock, which moves in 1 ms steps under uvloop):
- phases: resolve (once per probe), connect, handshake (TLS + upgrade), rtt (time spent in the
  message steps). With `connections: N` each phase is the slowest session's: the probe is as slow
  as its slowest session.
- latency: total (the whole probe, close included), handshake (the slowest session's), rtt (the
  median round trip of one step, over every step of every session; a step's round trip runs from
  its send to the message that satisfies it). Latency is reported on success only, so a latency
  target is never judged on failures; phases are kept on failure to show how far a probe got.

Every wait has a deadline: the target's timeout bounds the whole probe and each step's timeout
bounds that step, so a server that upgrades and then stays silent is `ws_no_reply`, on time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus
from websockets.frames import Close
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol

from probe import __version__
from probe.checks import CheckContext, ssl_context
from probe.checks.messages import mismatch, oneline, payload
from probe.config import Step, Target
from probe.credentials import Attached, CredentialError, attach
from probe.outcome import Failure, Outcome

USER_AGENT = f"stageprobe/{__version__}"
CLOSE_TIMEOUT = 1.0  # the closing handshake after the steps; a slow close is not a failure
_BACKSTOP = 0.25  # beyond the target's timeout, in case an await escaped its own deadline

# websockets logs every handshake header at DEBUG, Authorization included. Its logger for our
# connections is pinned at WARNING, so PROBE_LOG_LEVEL=debug can never print a token.
_WIRE_LOG = logging.getLogger("probe.checks.websocket.wire")
_WIRE_LOG.setLevel(logging.WARNING)


class _Fail(Exception):
    """A classified failure of one session; becomes the probe's Outcome."""

    def __init__(
        self, failure: Failure, detail: str, *, status: int | None = None, close: int | None = None
    ) -> None:
        super().__init__(detail)
        self.failure, self.detail, self.status, self.close = failure, detail, status, close


@dataclass
class _Plan:
    """What every session of one probe connects to and sends."""

    url: str
    host: str
    port: int
    secure: bool
    headers: list[tuple[str, str]]
    subprotocols: list[Subprotocol]
    credential: str | None

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class _Session:
    index: int
    connect: float | None = None
    handshake: float | None = None
    transport_ready: bool = False  # TCP (and TLS) done: connection_made was called
    step: int = 0
    received: int = 0
    rtts: list[float] = field(default_factory=list)
    steps_time: float = 0.0
    status: int | None = None
    close_code: int | None = None


def _fmt(seconds: float) -> str:
    """5s, 2.5s, 250ms: durations as the config file writes them."""
    return f"{round(seconds, 3):g}s" if seconds >= 1 else f"{round(seconds * 1000):d}ms"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _plan(target: Target, attached: Attached) -> _Plan:
    parts = urlsplit(target.url)
    url = target.url
    if attached.query:
        query = "&".join(q for q in (parts.query, urlencode(attached.query)) if q)
        url = urlunsplit(parts._replace(query=query))
    secure = parts.scheme == "wss"
    overridden = {k.lower() for k in attached.headers}
    headers = [(k, v) for k, v in target.headers.items() if k.lower() not in overridden]
    headers += list(attached.headers.items())
    return _Plan(
        url=url,
        host=parts.hostname or "",
        port=parts.port or (443 if secure else 80),
        secure=secure,
        headers=headers,
        subprotocols=[Subprotocol(p) for p in [*target.subprotocols, *attached.subprotocols]],
        credential=target.credential,
    )


# --- one session -----------------------------------------------------------------------------


async def _resolve(plan: _Plan, deadline: float) -> list[Any]:
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
        raise _Fail(Failure.DNS, f"cannot resolve {plan.host}: {exc.strerror}") from None
    except TimeoutError:
        raise _Fail(Failure.DNS, f"{plan.host} did not resolve in time") from None


async def _connect_tcp(
    plan: _Plan, infos: list[Any], deadline: float, budget: float
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
            raise _Fail(
                Failure.CONNECT_TIMEOUT, f"no TCP connection to {plan.where} within {_fmt(budget)}"
            ) from None
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    if last is None or isinstance(last, ConnectionRefusedError):
        raise _Fail(Failure.REFUSED, f"connection to {plan.where} refused")
    raise _Fail(
        Failure.REFUSED, f"cannot connect to {plan.where}: {last.strerror or type(last).__name__}"
    )


def _rejected(plan: _Plan, exc: InvalidStatus) -> _Fail:
    status = exc.response.status_code
    if status in (401, 403):
        sent = (
            f"credential {plan.credential} was sent"
            if plan.credential
            else "no credential was sent"
        )
        return _Fail(
            Failure.WS_AUTH, f"WebSocket upgrade rejected: HTTP {status} ({sent})", status=status
        )
    detail = f"WebSocket upgrade rejected: HTTP {status}"
    if status == 200:
        detail += " (not a WebSocket endpoint)"
    elif exc.response.body:
        detail += f": {oneline(exc.response.body.decode('utf-8', 'replace'), 60)!r}"
    return _Fail(Failure.WS_REJECTED, detail, status=status)


async def _handshake(
    target: Target, plan: _Plan, sock: socket.socket, s: _Session, deadline: float
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


def _open_failure(exc: BaseException, target: Target, plan: _Plan, s: _Session) -> _Fail | None:
    """Name what went wrong between the TCP connection and an open session (None: not ours)."""
    if isinstance(exc, ValueError) and isinstance(exc.__cause__, InvalidStatus):
        exc = exc.__cause__  # a redirect, which a probe does not follow
    if isinstance(exc, InvalidStatus):
        return _rejected(plan, exc)
    in_tls = plan.secure and not s.transport_ready
    limit = _fmt(target.timeout)
    if isinstance(exc, TimeoutError):
        if in_tls:
            return _Fail(
                Failure.CONNECT_TIMEOUT, f"no TLS handshake with {plan.where} within {limit}"
            )
        return _Fail(Failure.TIMEOUT, f"no answer to the WebSocket upgrade within {limit}")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
        return _Fail(Failure.TLS, f"TLS handshake with {plan.host} failed: {reason}")
    if isinstance(exc, OSError) and in_tls:
        return _Fail(Failure.TLS, f"connection lost during the TLS handshake with {plan.host}")
    if isinstance(exc, InvalidMessage):
        cause = exc.__cause__
        if cause is None or isinstance(cause, EOFError | OSError):
            detail = "connection closed before the WebSocket upgrade was answered"
            return _Fail(Failure.DISCONNECTED, detail)
        return _Fail(
            Failure.PROTOCOL, f"invalid answer to the WebSocket upgrade: {oneline(str(cause))}"
        )
    if isinstance(exc, InvalidHandshake):
        return _Fail(
            Failure.PROTOCOL, f"invalid answer to the WebSocket upgrade: {oneline(str(exc))}"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        return _Fail(
            Failure.DISCONNECTED, f"connection lost during the WebSocket upgrade ({reason})"
        )
    return None


class _Connection(ClientConnection):
    """Notes when the transport is ready (asyncio calls connection_made after TLS completes,
    which tells a TLS timeout from an unanswered upgrade) and cuts off a server that broke the
    protocol."""

    session: _Session | None = None

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
    rcvd: Close | None, sent: Close | None, rcvd_first: bool | None, s: _Session, target: Target
) -> _Fail:
    """Name why a session ended: our own verdict on the server's frames, its close, or a drop."""
    at = f" (step {s.step})" if s.step else ""
    after = f"after {_plural(s.received, 'message')}"
    if sent is not None and (rcvd is None or not rcvd_first):  # we failed the session first
        if sent.code == 1009:
            detail = f"a message larger than body_limit ({target.body_limit} bytes) arrived{at}"
            return _Fail(Failure.BODY_TOO_LARGE, detail, status=101)
        if sent.code in (1002, 1007):
            detail = f"server sent an invalid frame{at}: {oneline(sent.reason)}"
            return _Fail(Failure.PROTOCOL, detail, status=101)
    if rcvd is not None:
        reason = f' "{oneline(rcvd.reason)}"' if rcvd.reason else ""
        note = " (server error)" if rcvd.code == 1011 else ""
        detail = f"server closed the session: {rcvd.code}{reason}{note} {after}{at}"
        return _Fail(Failure.WS_CLOSED, detail, status=101, close=rcvd.code)
    detail = f"connection lost without a close frame (1006) {after}{at}"
    return _Fail(Failure.WS_DROPPED, detail, status=101, close=1006)


async def _exchange(target: Target, ws: ClientConnection, s: _Session, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    for i, step in enumerate(target.messages, 1):
        s.step = i
        await _step(i, step, ws, s, deadline - loop.time(), target)
    s.step = 0


async def _step(
    i: int, step: Step, ws: ClientConnection, s: _Session, left: float, target: Target
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
                    raise _Fail(Failure.ASSERTION, f"step {i}: {why}", status=101)
                skipped += 1
    except TimeoutError:
        within = (
            _fmt(step.timeout)
            if step.timeout <= left
            else f"{_fmt(target.timeout)} (the target's timeout)"
        )
        if wait is None:
            raise _Fail(
                Failure.TIMEOUT, f"step {i}: could not send within {within}", status=101
            ) from None
        if step.until is not None:
            extra = f"; {_plural(skipped, 'other message')} skipped" if skipped else ""
            raise _Fail(
                Failure.WS_NO_REPLY,
                f"no matching reply to step {i} within {within}{extra}",
                status=101,
            ) from None
        raise _Fail(
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


async def _session(
    target: Target, plan: _Plan, infos: list[Any], s: _Session, deadline: float
) -> None:
    t0 = time.perf_counter()
    sock = await _connect_tcp(plan, infos, deadline, target.timeout)
    s.connect = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        ws = await _handshake(target, plan, sock, s, deadline)
    finally:  # a rejected upgrade took time too: how long until the answer
        s.handshake = time.perf_counter() - t1
    s.status = ws.response.status_code if ws.response is not None else 101
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
    except _Fail:
        await _close(ws, deadline)
        raise
    except BaseException:  # cancelled (another session failed, or the backstop): no goodbyes
        ws.transport.abort()
        raise
    await _close(ws, deadline)
    if proto.close_rcvd is not None:
        s.close_code = proto.close_rcvd.code


# --- the probe -------------------------------------------------------------------------------


async def _run(
    target: Target, plan: _Plan, infos: list[Any], sessions: list[_Session], deadline: float
) -> None:
    """All sessions at once; the first to fail (lowest index among those failed together)
    decides, the others are cancelled."""
    if len(sessions) == 1:
        await _session(target, plan, infos, sessions[0], deadline)
        return
    tasks = [asyncio.create_task(_session(target, plan, infos, s, deadline)) for s in sessions]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for s, task in zip(sessions, tasks, strict=True):
        if task in done and not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, _Fail):
                exc.detail = f"session {s.index}/{len(sessions)}: {exc.detail}"
            raise exc


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _secrets_of(attached: Attached) -> list[str]:
    values = [*attached.headers.values(), *attached.query.values(), *attached.subprotocols]
    values += [v.split(" ", 1)[1] for v in attached.headers.values() if " " in v]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


async def check(target: Target, ctx: CheckContext) -> Outcome:
    """Probe one WebSocket target; never raises for anything the target does."""
    loop = asyncio.get_running_loop()
    started_at = time.time()
    start = time.perf_counter()
    deadline = loop.time() + target.timeout
    sessions = [_Session(i) for i in range(1, target.connections + 1)]
    phases: dict[str, float] = {}
    secrets: list[str] = []
    try:
        async with asyncio.timeout_at(deadline + _BACKSTOP):
            try:
                async with asyncio.timeout_at(deadline):
                    attached = await attach(target, ctx.credentials)
            except CredentialError as exc:
                raise _Fail(Failure.CREDENTIAL, str(exc)) from None
            except TimeoutError:
                detail = (
                    f"credential {target.credential}: not obtained within {_fmt(target.timeout)}"
                )
                raise _Fail(Failure.CREDENTIAL, detail) from None
            secrets = _secrets_of(attached)
            plan = _plan(target, attached)
            t0 = time.perf_counter()
            infos = await _resolve(plan, deadline)
            phases["resolve"] = time.perf_counter() - t0
            await _run(target, plan, infos, sessions, deadline)
    except _Fail as fail:
        _phases(phases, sessions)
        return Outcome.failed(
            target.name,
            "websocket",
            fail.failure,
            _scrub(fail.detail, secrets),
            time.perf_counter() - start,
            status_code=fail.status,
            close_code=fail.close,
            phases=phases,
            started_at=started_at,
        )
    except TimeoutError:  # the backstop: some await outlived its own deadline
        _phases(phases, sessions)
        return Outcome.failed(
            target.name,
            "websocket",
            Failure.TIMEOUT,
            f"no complete answer within {_fmt(target.timeout)}",
            time.perf_counter() - start,
            phases=phases,
            started_at=started_at,
        )
    duration = time.perf_counter() - start
    _phases(phases, sessions)
    latency = {"total": duration, "handshake": phases["handshake"]}
    rtts = [r for s in sessions for r in s.rtts]
    if rtts:
        latency["rtt"] = statistics.median(rtts)
    closes = [s.close_code for s in sessions if s.close_code is not None]
    return Outcome(
        target=target.name,
        kind="websocket",
        success=True,
        duration=duration,
        status_code=101,
        close_code=max(closes) if closes else None,
        phases=phases,
        latency=latency,
        started_at=started_at,
    )


def _phases(phases: dict[str, float], sessions: list[_Session]) -> None:
    """Each phase as the slowest session saw it (only phases some session got through)."""
    for name, values in (
        ("connect", [s.connect for s in sessions if s.connect is not None]),
        ("handshake", [s.handshake for s in sessions if s.handshake is not None]),
        ("rtt", [s.steps_time for s in sessions if s.rtts]),
    ):
        if values:
            phases[name] = max(values)
