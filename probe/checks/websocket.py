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
import contextlib
import ssl
import statistics
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.typing import Subprotocol

from probe.checks import CheckContext, scrub, ssl_context
from probe.checks._ws_session import Fail, Plan, Session, resolve, run_session
from probe.config import Target
from probe.config_base import fmt
from probe.credentials import Attached, CredentialError, attach
from probe.outcome import Failure, Outcome

_BACKSTOP = 0.25  # beyond the target's timeout, in case an await escaped its own deadline


def _plan(target: Target, attached: Attached) -> Plan:
    parts = urlsplit(target.url)
    url = target.url
    if attached.query:
        query = "&".join(q for q in (parts.query, urlencode(attached.query)) if q)
        url = urlunsplit(parts._replace(query=query))
    secure = parts.scheme == "wss"
    overridden = {k.lower() for k in attached.headers}
    headers = [(k, v) for k, v in target.headers.items() if k.lower() not in overridden]
    headers += list(attached.headers.items())
    return Plan(
        url=url,
        host=parts.hostname or "",
        port=parts.port or (443 if secure else 80),
        secure=secure,
        headers=headers,
        subprotocols=[Subprotocol(p) for p in [*target.subprotocols, *attached.subprotocols]],
        credential=target.credential,
    )


# --- the probe -------------------------------------------------------------------------------


async def _run(
    target: Target, plan: Plan, infos: list[Any], sessions: list[Session], deadline: float
) -> None:
    """All sessions at once; the first to fail (lowest index among those failed together)
    decides, the others are cancelled."""
    if len(sessions) == 1:
        await run_session(target, plan, infos, sessions[0], deadline)
        return
    tasks = [asyncio.create_task(run_session(target, plan, infos, s, deadline)) for s in sessions]
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


async def check(target: Target, ctx: CheckContext) -> Outcome:
    """Probe one WebSocket target; never raises for anything the target does."""
    loop = asyncio.get_running_loop()
    started_at = time.time()
    if target.url.startswith("wss:"):  # build the cached TLS context outside the clock (~45 ms)
        with contextlib.suppress(OSError, ssl.SSLError):  # a bad ca_file is reported in-session
            ssl_context(target.tls_verify, target.ca_file)
    start = time.perf_counter()
    deadline = loop.time() + target.timeout
    sessions = [Session(i) for i in range(1, target.connections + 1)]
    phases: dict[str, float] = {}
    secrets: list[str] = []
    try:
        async with asyncio.timeout_at(deadline + _BACKSTOP):
            try:
                async with asyncio.timeout_at(deadline):
                    attached = await attach(target, ctx.credentials)
            except CredentialError as exc:
                raise Fail(Failure.CREDENTIAL, str(exc)) from None
            except TimeoutError:
                detail = (
                    f"credential {target.credential}: not obtained within {fmt(target.timeout)}"
                )
                raise Fail(Failure.CREDENTIAL, detail) from None
            secrets = [attached.token, *attached.headers.values()]
            plan = _plan(target, attached)
            t0 = time.perf_counter()
            infos = await resolve(plan, deadline)
            phases["resolve"] = time.perf_counter() - t0
            await _run(target, plan, infos, sessions, deadline)
    except Fail as fail:
        _phases(phases, sessions)
        return Outcome.failed(
            target.name,
            "websocket",
            fail.failure,
            scrub(fail.detail, secrets),
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
            f"no complete answer within {fmt(target.timeout)}",
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


def _phases(phases: dict[str, float], sessions: list[Session]) -> None:
    """Each phase as the slowest session saw it (only phases some session got through)."""
    for name, values in (
        ("connect", [s.connect for s in sessions if s.connect is not None]),
        ("handshake", [s.handshake for s in sessions if s.handshake is not None]),
        ("rtt", [s.steps_time for s in sessions if s.rtts]),
    ):
        if values:
            phases[name] = max(values)
