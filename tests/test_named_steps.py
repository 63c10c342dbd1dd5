"""Named WebSocket steps: a named step is a latency measure of its own, judged by a latency
block on its name, and names itself in a failure; its name is checked when the file loads.
Against websockets' own server on loopback (tests/ws_servers.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from helpers import unnamed
from websockets.asyncio.server import ServerConnection
from ws_servers import probe, setup, websockets_server

from probe.checks.websocket import check
from probe.config import ConfigError, parse_config
from probe.readiness import Readiness

AGENT_DELAY = 0.3  # the agent's start the server stages: far over the 50 ms bound below


def agent(delay: float | None) -> Any:
    """A chat backend: hello on connect; on a user message, agent_started after `delay`
    (None: never), then agent_completed at once."""
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connection_established"}))
        async for raw in ws:
            if json.loads(raw).get("type") != "user_message":
                continue
            if delay is None:
                continue
            await asyncio.sleep(delay)
            await ws.send(json.dumps({"type": "agent_started"}))
            await ws.send(json.dumps({"type": "agent_completed"}))
    return handler


def steps(start_timeout: str = "2s") -> list[dict[str, Any]]:
    return [
        {"expect": {"json": {"type": "connection_established"}}},
        {"name": "agent-start", "send": {"type": "user_message", "text": "hello"},
         "until": {"json": {"type": "agent_started"}}, "timeout": start_timeout},
        {"name": "agent-done", "until": {"json": {"type": "agent_completed"}}},
    ]


async def test_named_steps_are_measures_and_a_breach_names_the_step() -> None:
    latency = [{"measure": "total", "p95": "10s", "min_samples": 2},  # within: not named
               {"measure": "agent-start", "p95": "50ms", "min_samples": 2, "window": 10}]
    async with websockets_server(agent(AGENT_DELAY)) as url:
        target, ctx = setup({"url": url, "messages": steps(), "latency": latency,
                             "success_threshold": 1})
        outcomes = [await check(target, ctx) for _ in range(2)]
    for out in outcomes:
        assert out.success, out.detail
        assert {"agent-start", "agent-done"} <= out.latency.keys()
        # from the send to the match: the staged delay is in it, the reply after it is not
        assert out.latency["agent-start"] >= AGENT_DELAY > out.latency["agent-done"]
    cfg = parse_config(json.dumps({"targets": [{
        "name": "ws", "url": url, "messages": steps(), "latency": latency,
        "success_threshold": 1}]}))
    readiness = Readiness(cfg)
    for i, out in enumerate(outcomes):
        readiness.observe(out, float(i))
    (t,) = readiness.verdict(1.0).targets
    assert (t.ready, t.failure) == (False, "latency")
    assert t.detail.startswith("agent-start p95 ") and "> 50ms" in t.detail, t.detail


async def test_a_named_step_that_gets_no_reply_is_named() -> None:
    async with websockets_server(agent(None)) as url:
        out = await probe({"url": url, "messages": steps("300ms")})
    assert (out.success, out.failure) == (False, "ws_no_reply")
    assert out.detail == "step agent-start: no matching reply within 300ms"


async def test_a_named_step_whose_reply_does_not_match_is_named() -> None:
    async with websockets_server(agent(0.0)) as url:
        out = await probe({"url": url, "messages": [
            {"expect": {"json": {"type": "connection_established"}}},
            {"name": "agent-start", "send": {"type": "user_message"},
             "expect": {"json": {"type": "agent_ready"}}}]})
    assert out.failure == "assertion"
    assert out.detail.startswith("step agent-start: ")


async def test_unnamed_steps_keep_their_numbers() -> None:
    async with websockets_server(agent(None)) as url:
        out = await probe({"url": url, "messages": [
            {"expect": {"json": {"type": "connection_established"}}},
            {"send": {"type": "user_message"}, "until": {"json": {"type": "agent_started"}},
             "timeout": "300ms"}]})
    assert out.detail == "no matching reply to step 2 within 300ms"


def _errors(messages: list[dict[str, Any]], latency: dict[str, Any] | None = None) -> list[str]:
    target: dict[str, Any] = {"name": "chat", "url": "ws://127.0.0.1:1/ws", "messages": messages}
    if latency is not None:
        target["latency"] = latency
    with pytest.raises(ConfigError) as err:
        parse_config(json.dumps({"targets": [{"name": "ok", "url": "http://127.0.0.1:1/"},
                                             target]}))
    return err.value.errors


@pytest.mark.parametrize(("messages", "latency", "expected"), [
    ([{"name": "a", "send": "x"}, {"name": "a", "send": "y"}], None,
     "targets[1].messages[1].name: step name 'a' is used twice in target chat"),
    ([{"name": "rtt", "send": "x"}], None,
     "targets[1].messages[0].name: 'rtt' is a built-in latency measure"),
    ([{"name": "agent-start", "send": "x"}], {"measure": "agent-stop", "p95": "1s"},
     "targets[1].latency.measure: unknown measure 'agent-stop': one of total, handshake, rtt,"
     " ttfb or a step name of this target (agent-start)"),
    ([{"name": "bad name", "send": "x"}], None, "targets[1].messages[0].name: must be 1-100"),
])
def test_step_names_are_checked_with_their_place(
        messages: list[dict[str, Any]], latency: dict[str, Any] | None, expected: str) -> None:
    (error,) = unnamed(_errors(messages, latency))
    assert error.startswith(expected), error
