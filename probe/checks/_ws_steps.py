"""An open WebSocket session: its steps, its hold, its close — and how it ended, named.

A session succeeds only if the server kept it open until the probe closed it: a close frame
the server sends first, right after the upgrade (with no steps, whatever its code), between
steps or while held, fails it as `ws_closed` with its code and reason (a server-first 1000 once
the steps are done, without a hold, is the server's own normal end and passes). The probe
closes with 1000; an answer with another code (a server whose own close crossed the probe's, as
when an application accepts the upgrade and at once closes it with 4001 for a bad token) fails
it too. Without a hold, the session lingers SETTLE after the steps before the probe closes it,
reading what the server sends: an application that accepts the upgrade and then closes it (a
FastAPI handler turning down a bad token) does so within that moment, and a server whose stack
handles the probe's close first (uvicorn's websockets backend does, some of the time) would
answer 1000 and drop the application's own code, a false success. The linger is not counted in
the `total` latency measure (`Session.lingered`).

Every close or drop detail says how long the session had lasted, counted from the upgrade, and
where it was (which step, or how far into the hold).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from websockets.exceptions import ConnectionClosed, PayloadTooBig, ProtocolError
from websockets.protocol import State

from probe.checks import Fail, clip
from probe.checks._ws_conn import BoundedConnection, PingFlood
from probe.checks._ws_session import CLOSE_TIMEOUT, Plan, Session, open_failure, open_session
from probe.checks.messages import mismatch
from probe.config import Target
from probe.config.base import fmt
from probe.outcome import Failure

SETTLE = 0.25  # the linger after the steps without a hold (node's ws needs as long to see it)
BIG = 64 * 1024  # a message this large gives the loop a turn before the next one is handled
_ANSWER_CODES = (1000, 1005)  # a normal answer to the probe's close (1005: an empty close frame)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _span(seconds: float) -> str:
    if seconds < 0.001:
        return "under 1 ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _context(s: Session, target: Target) -> str:
    """How long the session had lasted and where it was: `after 30.1 s (while held, ...)`."""
    now = time.perf_counter()
    if s.stage == "step":
        where = f"step {label(target, s.step)}"
    elif s.stage == "hold":
        where = f"while held, {_span(now - s.t_hold)} of {fmt(target.hold)}"
    elif s.stage == "settle":
        where = "just after the steps" if target.messages else "with no steps"
    elif s.stage == "close":
        where = "in answer to the probe's close"
    else:
        where = "after the steps" if target.messages else "with no steps"
    if target.messages or s.received:
        where += f", {_plural(s.received, 'message')} received"
    return f"after {_span(now - s.t_open)} ({where})"


def ended(s: Session, target: Target) -> Fail:
    """Name why an open session ended: our verdict on the server's frames, its close, a drop."""
    assert s.ws is not None
    proto = s.ws.protocol
    exc, sent, rcvd = proto.parser_exc, proto.close_sent, proto.close_rcvd
    ours_first = sent is not None and (rcvd is None or not proto.close_rcvd_then_sent)
    ctx = _context(s, target)
    if isinstance(exc, PingFlood):
        return Fail(Failure.PROTOCOL, f"server sent {exc} {ctx}", status=101)
    if isinstance(exc, PayloadTooBig) or (ours_first and sent is not None and sent.code == 1009):
        detail = f"a message larger than body_limit ({target.body_limit} bytes) arrived {ctx}"
        return Fail(Failure.BODY_TOO_LARGE, detail, status=101)
    if isinstance(exc, ProtocolError | UnicodeDecodeError) or (
        ours_first and sent is not None and sent.code in (1002, 1007)
    ):
        why = str(exc) if exc is not None else sent.reason if sent is not None else ""
        detail = f"server sent an invalid frame {ctx}: {clip(why)}"
        return Fail(Failure.PROTOCOL, detail, status=101)
    if rcvd is not None:
        reason = f' "{clip(rcvd.reason)}"' if rcvd.reason else ""
        note = " (server error)" if rcvd.code == 1011 else ""
        detail = f"server closed the session: {rcvd.code}{reason}{note} {ctx}"
        return Fail(Failure.WS_CLOSED, detail, status=101, close=rcvd.code)
    detail = f"connection lost without a close frame (1006) {ctx}"
    return Fail(Failure.WS_DROPPED, detail, status=101, close=1006)


def label(target: Target, i: int) -> str:
    """How a detail names step `i` (from 1): by its name, else by its number."""
    return target.messages[i - 1].name or str(i)


async def _breathe(message: str | bytes, count: int) -> None:
    """A turn for the other targets after a large message, or every 32 small ones: queued
    messages are handed over without the loop running in between."""
    if len(message) >= BIG or count % 32 == 0:
        await asyncio.sleep(0)


async def _exchange(
    target: Target, plan: Plan, ws: BoundedConnection, s: Session, budget: asyncio.Timeout,
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
                s.matched = message  # a flow step's `extract` reads it
                break
            if step.expect is not None:
                raise Fail(Failure.ASSERTION, f"step {label(target, i)}: {why}", status=101)
            s.skipped += 1
            await _breathe(message, s.skipped)
        elapsed = time.perf_counter() - started
        s.steps_time += elapsed
        if wait is not None:
            s.rtts.append(elapsed)
        if step.name is not None:  # from its send, or the previous step's end, to its match
            s.named[step.name] = elapsed
        if moved:
            budget.reschedule(deadline)
    s.step, s.stage = 0, "steps done"


async def _hold(
    target: Target, ws: BoundedConnection, s: Session, seconds: float, every: float | None,
    stage: str = "hold",
) -> None:
    """Keep the session open `seconds` after the steps, reading (and dropping) what the server
    sends and pinging every `every`; each ping's pong is due before the next ping."""
    loop = asyncio.get_running_loop()
    s.stage, s.t_hold = stage, time.perf_counter()
    now = loop.time()
    end = now + seconds
    next_ping = now + every if every else math.inf
    pong: asyncio.Future[Any] | None = None
    while (now := loop.time()) < end:
        if now >= next_ping:
            if pong is not None and not pong.done():
                detail = f"no pong to the keepalive ping within {fmt(every or 0)} " + _context(
                    s, target)
                raise Fail(Failure.WS_NO_REPLY, detail, status=101)
            pong = await ws.ping()  # type: ignore[assignment]
            next_ping = now + (every or math.inf)
        try:
            async with asyncio.timeout_at(min(end, next_ping)):
                message = await ws.recv(decode=False)  # dropped: no need to decode it
        except TimeoutError:
            continue
        s.received += 1
        await _breathe(message, s.received)


def timed_out(target: Target, plan: Plan, s: Session) -> Fail | None:
    """The failure a session's deadline running out names, by the stage it had reached (None:
    it ran out during the closing handshake of a session that had succeeded)."""
    limit = fmt(target.timeout)
    if s.stage == "connect":
        return Fail(Failure.CONNECT_TIMEOUT, f"no TCP connection to {plan.where} within {limit}")
    if s.stage in ("tls", "upgrade"):
        return open_failure(TimeoutError(), target, plan, s)
    if s.stage == "hold":
        held = _span(time.perf_counter() - s.t_hold)
        detail = (f"the target's timeout ({limit}) ran out {held} into the {fmt(target.hold)} "
                  "hold: the steps took longer than the timeout leaves for them")
        return Fail(Failure.TIMEOUT, detail, status=101)
    if s.stage != "step":
        return None
    i = s.step
    step = target.messages[i - 1]
    within = fmt(step.timeout) if s.own_timeout else f"{limit} (the target's timeout)"
    if step.expect is None and step.until is None:
        return Fail(Failure.TIMEOUT, f"step {label(target, i)}: could not send within {within}",
                    status=101)
    if step.until is not None:
        extra = f"; {_plural(s.skipped, 'other message')} skipped" if s.skipped else ""
        detail = (f"step {step.name}: no matching reply within {within}{extra}" if step.name
                  else f"no matching reply to step {i} within {within}{extra}")
        return Fail(Failure.WS_NO_REPLY, detail, status=101)
    detail = (f"step {step.name}: no reply within {within}" if step.name
              else f"no reply to step {i} within {within}")
    return Fail(Failure.WS_NO_REPLY, detail, status=101)


async def run_session(
    target: Target, plan: Plan, infos: list[Any], s: Session, budget: asyncio.Timeout,
    deadline: float,
) -> None:
    """The whole session inside `budget` (an entered asyncio.Timeout at `deadline`); a
    failure raised here is passed to websocket._settle by the caller, which closes the
    connection."""
    ws = s.ws = await open_session(target, plan, infos, s)
    proto = ws.protocol
    try:
        await _exchange(target, plan, ws, s, budget, deadline)
        if target.hold:
            await _hold(target, ws, s, target.hold, target.keepalive)
        elif proto.state is State.OPEN:
            # The linger, within the deadline less what the close may take.
            linger = min(SETTLE, deadline - asyncio.get_running_loop().time() - CLOSE_TIMEOUT)
            t0 = time.perf_counter()
            if linger > 0:
                await _hold(target, ws, s, linger, None, "settle")
            else:  # no time to linger: what already arrived is delivered before our close
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            s.lingered = time.perf_counter() - t0
    except ConnectionClosed:
        raise ended(s, target) from None
    if proto.state is not State.OPEN:  # the server ended it before we did
        rcvd = proto.close_rcvd
        done = bool(target.messages) and not target.hold  # its end after the steps is normal
        if not done or proto.parser_exc is not None or rcvd is None or rcvd.code != 1000:
            raise ended(s, target)
    s.stage = "close"  # the closing handshake, bounded; a peer that never answers it is cut off
    now = asyncio.get_running_loop().time()
    budget.reschedule(now + max(0.05, min(CLOSE_TIMEOUT, deadline - now)))
    await ws.close()
    rcvd = proto.close_rcvd
    if proto.parser_exc is not None or (rcvd is not None and rcvd.code not in _ANSWER_CODES):
        raise ended(s, target)
    finish(s)


def finish(s: Session) -> None:
    """The session is over: note how the server closed it."""
    s.stage = "done"
    if s.ws is not None and s.ws.protocol.close_rcvd is not None:
        s.close_code = s.ws.protocol.close_rcvd.code
