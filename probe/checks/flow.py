"""Flow check: a target's steps in order, each an HTTP request or a WebSocket session run by
that kind's own check, with values one step's answer gives carried into the steps after it.

Why each step runs through the http / websocket check with a Target of its own (the FlowStep,
its `{{name}}` placeholders filled and its timeout cut to what the flow has left): every rule
of those checks (credentials and their refresh after a 401, redirects, body caps, the close and
hold rules of a session, secret scrubbing) applies to a step exactly as to a target.

- The flow's timeout bounds the whole flow: a step gets its own timeout or what is left,
  whichever is less; a step that gets less and runs out says so.
- A failure is the step's own failure with its detail, prefixed by the step's name
  (`step create-thread: HTTP 500 (expected 201)`); later steps do not run.
- Latency (on success): `total` is the whole flow and each step's time is a measure under its
  name (its check's `total`), both without the linger a WebSocket session has after its steps
  (see _ws_steps: the probe's wait, not the server's); a named WebSocket step inside a step is
  a measure under its own name.
- `extract` reads a successful HTTP answer (`json.PATH` from the JSON body, `header:NAME`), or
  a WebSocket session (the last message a step matched as the body, the 101's headers);
  extracted values are secrets for the rest of the probe: every later detail is masked with
  them (probe.redact, so an id echoed in a body or clipped in a reason is masked too), and the
  log processor knows them while the probe runs. Values shorter than redact.MIN_SECRET
  characters are not masked (`1` would mask every digit of every detail).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from probe.checks import CheckContext, checker_for, scrub
from probe.checks._http_expect import MISSING, resolve
from probe.config import MEASURES, FlowStep, Match, Step, Target
from probe.config.base import fmt
from probe.config.steps import fill, fill_regex, fill_url, has_placeholder, text
from probe.outcome import Failure, Outcome
from probe.redact import KNOWN, NONE, Secrets

# A step cut short by the flow's timeout and failing with one of these ran out of the flow's time.
_TIMED = frozenset({Failure.TIMEOUT, Failure.CONNECT_TIMEOUT, Failure.WS_NO_REPLY,
                    Failure.CREDENTIAL, Failure.DNS})


class _Probe:
    """One probe's extracted values; the owner their secrets are known to the log processor
    under (probe.redact.KNOWN forgets them when the probe is over and this is collected)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.secrets: Secrets = NONE
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.answered = False

    def answer(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.headers, self.body, self.answered = list(headers), body, True

    def keep(self, got: dict[str, Any]) -> None:
        self.values.update(got)
        self.secrets = Secrets.merge((self.secrets, Secrets(text(v) for v in got.values())))
        KNOWN.add(self, self.secrets)


async def check(target: Target, ctx: CheckContext) -> Outcome:
    """Run the flow's steps in order; never raises for anything a step's server does."""
    loop = asyncio.get_running_loop()
    started_at, start = time.time(), time.perf_counter()
    deadline = loop.time() + target.timeout
    run = _Probe()
    latency: dict[str, float] = {}
    version: str | None = None
    lingered = 0.0  # the WebSocket steps' linger after their messages: no one's latency

    def failed(failure: Failure, detail: str, last: Outcome | None = None) -> Outcome:
        return Outcome.failed(
            target.name, "flow", failure, scrub(detail, run.secrets),
            time.perf_counter() - start, started_at=started_at,
            status_code=last.status_code if last else None,
            close_code=last.close_code if last else None,
            version=last.version if last else version)

    for step in target.steps:
        left = deadline - loop.time()
        if left <= 0.001:
            return failed(Failure.TIMEOUT, f"step {step.name}: the flow's timeout "
                          f"({fmt(target.timeout)}) ran out before it started")
        filled = _filled(step, run.values, left)
        run.answered = False
        step_ctx = CheckContext(ctx.credentials, ctx.expect_version,
                                answer=run.answer if step.extract else None,
                                tls_sessions=ctx.tls_sessions, proxy_env=ctx.proxy_env)
        out = await checker_for(filled)(filled, step_ctx)
        if not out.success:
            assert out.failure is not None
            detail = f"step {step.name}: {out.detail}"
            if filled.timeout < step.timeout and out.failure in _TIMED:
                detail += f" (what was left of the flow's {fmt(target.timeout)} timeout)"
            return failed(out.failure, detail, out)
        latency[step.name] = out.latency.get("total", out.duration)
        lingered += max(0.0, out.duration - latency[step.name])
        latency.update((k, v) for k, v in out.latency.items() if k not in MEASURES)
        version = out.version or version
        if step.extract:
            got = _extract(step, run)
            if isinstance(got, str):
                return failed(Failure.ASSERTION, f"step {step.name}: {got}", out)
            run.keep(got)
    duration = time.perf_counter() - start
    latency["total"] = duration - lingered
    return Outcome(target=target.name, kind="flow", success=True, duration=duration,
                   version=version, latency=latency, started_at=started_at)


def _filled(step: FlowStep, values: dict[str, Any], left: float) -> FlowStep:
    """The step as this probe sends it: placeholders filled, timeout within what is left."""
    update: dict[str, Any] = {}
    if left < step.timeout:
        update["timeout"] = left
    if values:
        if has_placeholder(step.url):
            update["url"] = fill_url(step.url, values)
        if has_placeholder(step.headers):
            update["headers"] = {k: text(fill(v, values)) for k, v in step.headers.items()}
        if has_placeholder(step.json_body):
            update["json_body"] = fill(step.json_body, values)
        if has_placeholder(step.body):
            update["body"] = text(fill(step.body, values))
        expect = step.expect
        if has_placeholder([expect.json_, expect.body_regex, expect.headers]):
            update["expect"] = expect.model_copy(update={
                "json_": fill(expect.json_, values),
                "body_regex": expect.body_regex and fill_regex(expect.body_regex, values),
                "headers": {k: fill_regex(v, values) for k, v in expect.headers.items()}})
        if any(map(_message_has_placeholder, step.messages)):
            update["messages"] = [_message(m, values) for m in step.messages]
    return step.model_copy(update=update) if update else step


def _message_has_placeholder(m: Step) -> bool:
    return has_placeholder(m.send) or any(
        w is not None and has_placeholder([w.json_, w.regex]) for w in (m.expect, m.until))


def _message(m: Step, values: dict[str, Any]) -> Step:
    send = m.send
    if send is not None:
        send = text(fill(send, values)) if isinstance(send, str) else fill(send, values)

    def match(w: Match | None) -> Match | None:
        return None if w is None else w.model_copy(update={
            "json_": fill(w.json_, values), "regex": w.regex and fill_regex(w.regex, values)})

    return m.model_copy(update={"send": send, "expect": match(m.expect),
                                "until": match(m.until)})


def _extract(step: FlowStep, run: _Probe) -> dict[str, Any] | str:
    """The step's values from its answer, or why one is not there (an assertion detail)."""
    got: dict[str, Any] = {}
    doc: Any = MISSING
    for name, where in step.extract.items():
        if where.startswith("header:"):
            wanted = where[7:].strip().lower().encode()
            value = next((v.decode("utf-8", "surrogateescape") for n, v in run.headers
                          if n.lower() == wanted), None)
            if value is None:
                return f"extract {name}: no {where[7:].strip()} header in the answer"
            got[name] = value
            continue
        if doc is MISSING:
            if not run.answered:
                return f"extract {name}: no answer was read"
            if not run.body and step.kind == "websocket":
                return f"extract {name}: no message of the session matched a step ({where})"
            try:
                doc = json.loads(run.body)
            except (ValueError, RecursionError):
                return f"extract {name}: the answer is not JSON ({where})"
        value = resolve(doc, tuple(where[5:].split(".")))
        if value is MISSING or value is None:
            return f"extract {name}: {where} not found in the answer"
        if isinstance(value, dict | list):
            return f"extract {name}: {where} is an object or list, not a value"
        got[name] = value
    return got
