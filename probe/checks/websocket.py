"""WebSocket check: an authenticated session opened and exercised the way a real client does
(credentials, subprotocols, Origin, messages), except that it offers no compression: a probe has
no use for it, and it would cost both sides a zlib context per session (see _ws_session).

Why the connection is opened by hand: to time `resolve` and `connect` separately, the name is
resolved with loop.getaddrinfo and each address dialled with loop.create_connection; TLS is then
started on that connection (SNI and certificate checked against the URL's host name) and
websockets' ClientConnection does the HTTP upgrade (Host header from the URL) — TLS + upgrade
are the `handshake` phase. See _ws_session for why not websockets.connect().

Timings (time.perf_counter, never the loop clock, which moves in 1 ms steps under uvloop):
- phases: resolve (once per probe), connect, handshake (TLS + upgrade), rtt (time spent in the
  message steps). With `connections: N` each phase is the slowest session's: the probe is as slow
  as its slowest session.
- latency: total (the whole probe, close included), handshake (the slowest session's), rtt (the
  median round trip of one step, over every step of every session; a step's round trip runs from
  its send to the message that satisfies it); a named step, its own measure under its name (from
  its send, or the previous step's end, to its match; the slowest session's). Latency is
  reported on success only, so a latency target is never judged on failures; phases are kept on
  failure to show how far a probe got.

Every wait has a deadline: the target's timeout bounds the whole probe and each step's timeout
bounds that step, so a server that upgrades and then stays silent is `ws_no_reply`, on time.
After the steps a session is held open `hold` (pinged every `keepalive`); a close the server
sends before the probe's own, and how every session ended, is judged in _ws_steps.
One asyncio.Timeout carries that deadline for the credential, the resolver and (with one
connection) the session; the stage reached when it runs out names the failure.

What depends only on the target and its current token (URL and query, headers, subprotocols,
an IP literal's address, each step's encoded message) is built once per token and reused by
every probe (`plan_for`), not rebuilt per probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import ssl
import statistics
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.exceptions import InvalidURI
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from probe.checks import (
    Answer,
    CheckContext,
    Fail,
    PerObject,
    keep,
    recall,
    scrub,
    target_secrets,
    tls_context,
    tls_files,
)
from probe.checks._http_classify import os_text
from probe.checks._trace import configured, new_trace_id
from probe.checks._ws_session import CLOSE_TIMEOUT, Plan, Session, resolve
from probe.checks._ws_steps import finish, run_session, timed_out
from probe.checks.messages import payload
from probe.config import Target
from probe.config.base import fmt
from probe.credentials import Attached, CredentialError, attach
from probe.outcome import Failure, Outcome
from probe.redact import Secrets


def _plan(target: Target, attached: Attached) -> Plan:
    parts = urlsplit(target.url)
    query = parts.query
    if attached.query:
        query = "&".join(q for q in (query, urlencode(attached.query)) if q)
    # No fragment: it never goes on the wire (the HTTP check ignores it), and websockets
    # refuses a URI that has one.
    url = urlunsplit(parts._replace(query=query, fragment=""))
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    overridden = {k.lower() for k in attached.headers} | {"host"}
    headers = [(k, v) for k, v in target.headers.items() if k.lower() not in overridden]
    headers += list(attached.headers.items())
    uri = parse_uri(url)
    vhost = next((v for k, v in target.headers.items() if k.lower() == "host"), None)
    if vhost is not None:
        # A configured Host is the one Host line (websockets would add it as a second), as in
        # the HTTP check; the connection and SNI still go to the URL's host.
        uri = dataclasses.replace(uri, host=vhost, port=443 if secure else 80)
    infos: list[Any] | None = None
    with contextlib.suppress(ValueError):  # an IP literal skips the resolver (a thread hop)
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        infos = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    return Plan(
        url=url,
        host=host,
        port=port,
        secure=secure,
        headers=headers,
        subprotocols=[Subprotocol(p) for p in [*target.subprotocols, *attached.subprotocols]],
        offered=", ".join([*target.subprotocols, *(
            ["the credential subprotocol"] if attached.subprotocols else [])]),
        credential=attached.source or target.credential,
        uri=uri,
        origin=Origin(target.origin) if target.origin else None,
        infos=infos,
        payloads=tuple(None if m.send is None else payload(m.send) for m in target.messages),
        ip_protocol=target.ip_protocol,
        ip_fallback=target.ip_protocol_fallback,
    )


_PLANS: PerObject[Plan] = {}


def plan_for(target: Target, attached: Attached) -> Plan:
    """The target's Plan for this token: built when the token changes (a cached JWT lasts
    minutes), dropped when the Target is garbage collected (a reload builds new Targets)."""
    token = attached.token
    return recall(_PLANS, target, token) or keep(_PLANS, target, _plan(target, attached), token)


# --- the probe -------------------------------------------------------------------------------


async def _settle(
    target: Target, plan: Plan, s: Session, exc: Fail | TimeoutError, deadline: float
) -> None:
    """After run_session raised `exc` (a Fail, or the TimeoutError of its deadline): raise the
    session's failure once its connection is closed politely, or return if it had succeeded
    and only its close ran out of time (that connection is cut off)."""
    fail = exc if isinstance(exc, Fail) else timed_out(target, plan, s)
    ws = s.ws
    if fail is None:
        if ws is not None:
            ws.transport.abort()
        finish(s)
        return
    if ws is not None:
        left = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.05, min(CLOSE_TIMEOUT, left))):
                await ws.close()
        except BaseException as exc:  # out of time, or cancelled meanwhile: no goodbyes
            ws.transport.abort()
            if not isinstance(exc, TimeoutError):
                raise
    raise fail


def _abort(s: Session) -> None:
    """Cancelled (another session failed, or the daemon stops): no goodbyes."""
    if s.ws is not None:
        s.ws.transport.abort()


async def _guarded(
    target: Target, plan: Plan, infos: list[Any], s: Session, deadline: float
) -> None:
    """One of several sessions, in a task of its own: its own deadline, its failure named."""
    budget = asyncio.timeout_at(deadline)
    try:
        async with budget:
            await run_session(target, plan, infos, s, budget, deadline)
    except (Fail, TimeoutError) as exc:
        await _settle(target, plan, s, exc, deadline)
    except BaseException:
        _abort(s)
        raise


async def _run(
    target: Target, plan: Plan, infos: list[Any], sessions: list[Session], deadline: float
) -> None:
    """All sessions at once, each in a task with its own deadline; the first to fail (lowest
    index among those failed together) decides, the others are cancelled."""
    tasks = [asyncio.create_task(_guarded(target, plan, infos, s, deadline)) for s in sessions]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for s, task in zip(sessions, tasks, strict=True):
        if task in done and not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, Fail):
                exc.detail = f"session {s.index}/{len(sessions)}: {exc.detail}"
            raise exc


async def _probe(
    target: Target,
    ctx: CheckContext,
    sessions: list[Session],
    phases: dict[str, float],
    secrets: list[Secrets],
    deadline: float,
    placed: list[Attached],
) -> None:
    """Everything a probe does, under one deadline; raises Fail."""
    stage = "credential"
    plan: Plan | None = None
    budget = asyncio.timeout_at(deadline)
    try:
        async with budget:
            try:
                attached = await attach(target, ctx.credentials)
            except CredentialError as exc:
                raise Fail(Failure.CREDENTIAL, str(exc)) from None
            placed.append(attached)
            secrets.append(target_secrets(target, ctx.credentials, attached))
            try:
                plan = plan_for(target, attached)
            except (ValueError, InvalidURI) as exc:  # e.g. a port out of range
                detail = f"cannot build the request: {type(exc).__name__}: {exc}"
                raise Fail(Failure.PROTOCOL, detail) from None
            stage = "resolve"
            t0 = time.perf_counter()
            infos = await resolve(plan)
            phases["resolve"] = time.perf_counter() - t0
            stage = "session"
            if len(sessions) == 1:
                await run_session(target, plan, infos, sessions[0], budget, deadline)
                return
    except TimeoutError as exc:
        if stage == "credential":
            detail = f"credential {target.credential}: not obtained within {fmt(target.timeout)}"
            raise Fail(Failure.CREDENTIAL, detail) from None
        assert plan is not None
        if stage == "resolve":
            raise Fail(Failure.DNS, f"{plan.host} did not resolve in time") from None
        await _settle(target, plan, sessions[0], exc, deadline)
        return
    except Fail as fail:
        if stage == "session":
            assert plan is not None
            await _settle(target, plan, sessions[0], fail, deadline)
        raise
    except BaseException:
        _abort(sessions[0])
        raise
    await _run(target, plan, infos, sessions, deadline)  # several: each its own deadline


async def check(target: Target, ctx: CheckContext) -> Outcome:
    """Probe one WebSocket target; never raises for anything the target does."""
    loop = asyncio.get_running_loop()
    started_at = time.time()
    if target.url.startswith("wss:"):  # build the cached TLS context outside the clock (~45 ms)
        try:
            tls_context(target)
        except (OSError, ssl.SSLError) as exc:  # as the HTTP check names it
            detail = f"cannot load {tls_files(target)}: {os_text(exc)}"
            return Outcome.failed(target.name, "websocket", Failure.TLS, detail, 0.0,
                                  started_at=started_at)
    start = time.perf_counter()
    deadline = loop.time() + target.timeout
    trace_id = None if configured(target.headers) else new_trace_id()  # one for all sessions
    sessions = [Session(i, trace_id=trace_id, tls_sessions=ctx.tls_sessions)
                for i in range(1, target.connections + 1)]
    phases: dict[str, float] = {}
    secrets = [target_secrets(target, ctx.credentials)]
    placed: list[Attached] = []
    ok = False
    try:
        await _probe(target, ctx, sessions, phases, secrets, deadline, placed)
        ok = True
    except Fail as fail:
        if fail.failure is Failure.WS_AUTH and placed:  # a fetched token is obtained anew
            ctx.credentials.invalidate(target.credential, placed[0].token)
        _phases(phases, sessions)
        return Outcome.failed(
            target.name,
            "websocket",
            fail.failure,
            scrub(fail.detail, secrets[-1]),
            time.perf_counter() - start,
            status_code=fail.status,
            close_code=fail.close,
            phases=phases,
            trace_id=trace_id,
            started_at=started_at,
        )
    except TimeoutError:  # not expected: every wait is bounded and named by its stage
        _phases(phases, sessions)
        return Outcome.failed(
            target.name,
            "websocket",
            Failure.TIMEOUT,
            f"no complete answer within {fmt(target.timeout)}",
            time.perf_counter() - start,
            phases=phases,
            trace_id=trace_id,
            started_at=started_at,
        )
    finally:  # wss: keep each session's TLS session for the next probe, or forget it
        handshakes = [s.tls for s in sessions if s.tls is not None]
        if handshakes:
            ctx.tls_sessions.settle(target, handshakes, ok)
    duration = time.perf_counter() - start
    _phases(phases, sessions)
    latency = {"total": duration - max(s.lingered for s in sessions),
               "handshake": phases["handshake"]}
    for s in sessions:  # a named step's measure: the slowest session's, as the phases
        for name, seconds in s.named.items():
            latency[name] = max(seconds, latency.get(name, 0.0))
    rtts = [r for s in sessions for r in s.rtts]
    if rtts:
        latency["rtt"] = rtts[0] if len(rtts) == 1 else statistics.median(rtts)
    closes = [s.close_code for s in sessions if s.close_code is not None]
    if ctx.answer is not None:  # a flow step's `extract`: the upgrade's headers, the last match
        _answer(ctx.answer, sessions[0])
    return Outcome(
        target=target.name,
        kind="websocket",
        success=True,
        duration=duration,
        status_code=101,
        close_code=max(closes) if closes else None,
        phases=phases,
        latency=latency,
        trace_id=trace_id,
        started_at=started_at,
    )


def _phases(phases: dict[str, float], sessions: list[Session]) -> None:
    """Each phase as the slowest session saw it (only phases some session got through)."""
    for name, values in (
        ("connect", [s.connect for s in sessions if s.connect is not None]),
        ("handshake", [s.handshake for s in sessions if s.handshake is not None]),
        ("rtt", [s.steps_time for s in sessions if s.rtts]),
    ):
        if values:
            phases[name] = max(values)


def _answer(answer: Answer, s: Session) -> None:
    """Hand a flow step's extract what a session answered: the 101's header lines, and as the
    body the last message a step matched (none matched: no body, so `json.` paths say so)."""
    response = getattr(s.ws, "response", None)
    headers = [(k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
               for k, v in response.headers.raw_items()] if response is not None else []
    message = s.matched
    if message is None:
        answer(headers, b"")
        return
    answer(headers, message.encode() if isinstance(message, str) else message)
