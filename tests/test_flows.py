"""Flows: a target's steps (HTTP requests and WebSocket sessions) in order, values extracted
from one answer carried into the next steps, each failure named by its step, each step's time a
measure, extracted values masked. Against a real loopback chat backend (aiohttp: a thread
endpoint and a WebSocket route that records what it was sent)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from helpers import http_get, run_cli, run_daemon, samples, serving, unnamed, until, value

from probe.checks import CheckContext, checker_for
from probe.cli import main
from probe.config import Config
from probe.credentials import Credentials
from probe.daemon.reload import diff_configs
from probe.metrics import Metrics
from probe.outcome import Outcome


class Backend:
    """POST /api/threads -> 201 {"id": ...} (or `create_status`), the id also in X-Thread-Id;
    GET /ws?thread=ID: replies agent_completed to a user message, or closes the session with
    a reason quoting the thread (`close_with_id`, a server echoing what it was sent)."""

    def __init__(self) -> None:
        self.thread_id = str(uuid.uuid4())
        self.create_status = 201
        self.close_with_id = False
        self.ws_queries: list[str | None] = []
        self.ws_messages: list[dict[str, Any]] = []
        self.created: list[Any] = []
        self.auth: list[str | None] = []  # the Authorization each step's request carried
        app = self.app = web.Application()
        app.router.add_post("/api/threads", self.create)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/version", self.version)
        app.router.add_get("/api/threads/{id}", self.read)
        self.read_id: str | None = None  # what GET /api/threads/ID answers as its id, else ID
        self.read_sessions: list[str | None] = []  # the X-Session header of each read

    async def create(self, request: web.Request) -> web.Response:
        self.created.append(await request.json())
        self.auth.append(request.headers.get("Authorization"))
        if self.create_status != 201:
            return web.Response(status=self.create_status, text="thread store down")
        return web.json_response({"id": self.thread_id, "n": 7, "title": "probe+1"}, status=201,
                                 headers={"X-Thread-Id": self.thread_id})

    async def read(self, request: web.Request) -> web.Response:
        self.read_sessions.append(request.headers.get("X-Session"))
        tid = self.read_id or request.match_info["id"]
        return web.json_response({"id": tid, "n": 7, "title": "probe+1"},
                                 headers={"X-Thread-Id": tid})

    async def version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "abc1234"})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers["X-Session"] = f"session-{self.thread_id}"
        await ws.prepare(request)
        self.auth.append(request.headers.get("Authorization"))
        self.ws_queries.append(request.query.get("thread"))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            self.ws_messages.append(data)
            if self.close_with_id:
                await ws.close(code=4004, message=f"no thread {data.get('text')}".encode())
                break
            await ws.send_json({"type": "agent_completed", "thread": data.get("thread")})
        return ws


@asynccontextmanager
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    b = Backend()
    async with serving(b.app) as base:
        yield b, base


def flow(base: str, chat_url: str | None = None, **extra: Any) -> dict[str, Any]:
    ws = base.replace("http://", "ws://")
    return {
        "name": "thread-roundtrip", "interval": "10s", "timeout": "5s", **extra,
        "steps": [
            {"name": "create-thread", "url": f"{base}/api/threads", "method": "POST",
             "json_body": {"title": "probe"}, "expect": {"status": [201]},
             "extract": {"thread_id": "json.id", "header_id": "header:X-Thread-Id",
                         "n": "json.n"}},
            {"name": "chat", "url": chat_url or f"{ws}/ws?thread={{{{thread_id}}}}",
             "messages": [{"name": "agent-reply",
                           "send": {"type": "user_message", "text": "hello {{thread_id}}",
                                    "thread": "{{header_id}}", "n": "{{n}}"},
                           "until": {"json": {"type": "agent_completed",
                                              "thread": "{{thread_id}}"}},
                           "timeout": "2s"}]},
        ]}


TOKEN = "flow-step-token-0123456789"


async def run(target: dict[str, Any], expect_version: str | None = None) -> Outcome:
    cfg = Config.model_validate({"targets": [target], "credentials": {
        "api": {"bearer": {"token": TOKEN}}}})
    t = cfg.targets[0]
    assert t.kind == "flow"
    ctx = CheckContext(Credentials(cfg.credentials), expect_version)
    try:
        return await checker_for(t)(t, ctx)
    finally:
        await ctx.credentials.aclose()


async def test_an_extracted_id_goes_into_the_websocket_url_and_message() -> None:
    async with backend() as (b, base):
        target = flow(base)
        for step in target["steps"]:
            step["credential"] = "api"
        out = await run(target)
    assert out.success, out.detail
    assert b.auth == [f"Bearer {TOKEN}"] * 2  # each step sends its credential
    assert out.kind == "flow"
    assert b.ws_queries == [b.thread_id]
    (sent,) = b.ws_messages
    assert sent == {"type": "user_message", "text": f"hello {b.thread_id}",
                    "thread": b.thread_id, "n": 7}  # a lone placeholder keeps the JSON number
    assert {"create-thread", "chat", "agent-reply", "total"} <= out.latency.keys()
    assert out.latency["total"] >= out.latency["create-thread"] + out.latency["chat"]
    assert out.latency["total"] < out.duration  # the session's linger is not in it


async def test_a_flow_whose_first_step_fails_names_it_and_stops() -> None:
    async with backend() as (b, base):
        b.create_status = 500
        out = await run(flow(base))
    assert (out.success, out.failure, out.status_code) == (False, "http_status", 500)
    assert out.detail == "step create-thread: HTTP 500 (expected 201)"
    assert b.ws_queries == [], "the steps after a failed one do not run"


async def test_extracted_values_are_masked_in_a_failure_detail() -> None:
    async with backend() as (b, base):
        b.close_with_id = True  # the server's close reason quotes the id it was sent
        out = await run(flow(base, chat_url=base.replace("http://", "ws://") + "/ws"))
    assert out.failure == "ws_closed"
    assert out.detail.startswith("step chat: server closed the session: 4004"), out.detail
    assert b.thread_id not in out.detail and b.thread_id[:8] not in out.detail
    assert "***" in out.detail


async def test_a_missing_value_to_extract_fails_the_step() -> None:
    async with backend() as (_, base):
        target = flow(base)
        target["steps"][0]["extract"] = {"thread_id": "json.thread.id"}
        target["steps"][1]["messages"][0]["send"] = {"type": "user_message"}
        target["steps"][1]["messages"][0]["until"] = {"json": {"type": "agent_completed"}}
        out = await run(target)
    assert out.failure == "assertion"
    assert out.detail == ("step create-thread: extract thread_id: json.thread.id not found in "
                          "the answer")


async def test_the_flows_timeout_bounds_every_step() -> None:
    async with backend() as (_, base):
        target = flow(base, timeout="1s")
        target["steps"][1]["messages"][0]["until"] = {"json": {"type": "never"}}
        target["steps"][1]["messages"][0]["timeout"] = "5s"
        target["steps"][1]["timeout"] = "1s"
        out = await run(target)
    assert out.failure == "ws_no_reply"
    assert out.detail.startswith("step chat: step agent-reply: no matching reply within")
    assert out.detail.endswith("(what was left of the flow's 1s timeout)")


async def test_each_step_has_its_latency_histogram_and_no_phases() -> None:
    async with backend() as (_, base):
        target = flow(base)
        cfg = Config.model_validate({"targets": [target]})
        out = await run(target)
    metrics = Metrics()
    metrics.record(out, cfg.targets[0])
    s = samples(metrics)
    for measure in ("total", "create-thread", "chat", "agent-reply"):
        assert value(s, "probe_latency_seconds_count", target="thread-roundtrip",
                     measure=measure) == 1.0
    assert value(s, "probe_success", target="thread-roundtrip") == 1.0
    assert value(s, "probe_failures_total", target="thread-roundtrip", failure="ws_closed") == 0
    names = {name for name, _ in s}
    assert not names & {"probe_http_status_code", "probe_websocket_status_code"}
    assert not any(n.startswith(("probe_http_duration", "probe_websocket_duration"))
                   for n in names)


async def test_probe_check_runs_a_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    async with backend() as (b, base):
        f = tmp_path / "flow.json"
        f.write_text(json.dumps({"targets": [flow(base, success_threshold=1)]}))
        code = await run_cli("check", "-c", str(f), "--format", "json")
        report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    (t,) = report["targets"]
    assert (t["name"], t["kind"], t["ready"]) == ("thread-roundtrip", "flow", True)
    assert b.ws_queries and set(b.ws_queries) == {b.thread_id}


@pytest.mark.timeout(120)
async def test_no_extracted_value_reaches_the_daemons_outputs(tmp_path: Path) -> None:
    async with backend() as (b, base):
        b.close_with_id = True  # the close reason quotes the id: every probe's detail has it
        target = flow(base, chat_url=base.replace("http://", "ws://") + "/ws",
                      interval="1s", timeout="1s", failure_threshold=1)
        env = {"PROBE_LOG_LEVEL": "debug"}
        async with run_daemon(json.dumps({"targets": [target]}), tmp_path, env) as daemon:
            async def failing() -> bool:
                answer = await http_get(f"{daemon.url}/api/v1/status")
                return answer is not None and '"state": "failing"' in answer[1].replace(
                    '":"', '": "')

            await until(failing, "the flow to fail", within=30, every=0.2,
                        detail=daemon.log_text)
            outputs = [daemon.log_text()]
            for path in ("/metrics", "/readyz", "/api/v1/status", "/status"):
                answer = await http_get(daemon.url + path)
                assert answer is not None, path
                outputs.append(answer[1])
    assert "step chat: server closed the session: 4004" in outputs[0]  # the detail is logged
    for text in outputs:
        assert b.thread_id not in text and b.thread_id[:8] not in text


@pytest.mark.parametrize(("expected", "failure"), [("abc1234", None),
                                                   ("def5678", "version_mismatch")])
async def test_a_steps_served_version_is_the_flows(expected: str, failure: str | None) -> None:
    async with backend() as (_, base):
        target = flow(base)
        target["steps"].insert(0, {"name": "build", "url": f"{base}/version",
                                   "version_path": "version"})
        out = await run(target, expect_version=expected)
    assert (out.failure, out.version) == (failure, "abc1234"), out.detail


def test_an_unknown_placeholder_is_rejected_by_validate_with_its_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = flow("http://127.0.0.1:9")
    target["steps"][0]["extract"] = {"other": "json.id"}
    cfg = {"targets": [{"name": f"t{i}", "url": "http://127.0.0.1:9/"} for i in range(3)]
           + [target]}
    f = tmp_path / "flow.yaml"
    f.write_text(json.dumps(cfg))
    assert main(["validate", "-c", str(f)]) == 2
    err = capsys.readouterr().err
    assert ("targets[3].steps[1].url: {{thread_id}} is not extracted by an earlier step"
            in unnamed([err])[0]), err


def read_back(base: str) -> dict[str, Any]:
    """A flow that creates a thread and reads it back, expecting its own id in the answer."""
    target = flow(base)
    target["steps"][1] = {
        "name": "read-thread", "url": f"{base}/api/threads/{{{{thread_id}}}}",
        "expect": {"json": {"id": "{{thread_id}}", "n": "{{n}}"},
                   "body_regex": '"id": "{{thread_id}}"',
                   "headers": {"X-Thread-Id": "{{header_id}}"}}}
    return target


async def test_extracted_values_fill_an_http_steps_expectations() -> None:
    async with backend() as (b, base):
        ok = await run(read_back(base))
        b.read_id = str(uuid.uuid4())  # the read answers another thread than the one made
        wrong = await run(read_back(base))
    assert ok.success, ok.detail
    assert not wrong.success and wrong.failure is not None
    assert wrong.failure.value == "assertion", wrong.detail
    assert wrong.detail.startswith("step read-thread: "), wrong.detail
    assert b.thread_id not in wrong.detail and b.thread_id[9:13] not in wrong.detail  # masked


async def test_an_extracted_value_is_matched_literally_in_a_regex() -> None:
    """The title `probe+1` has regex syntax in it: unescaped, `probe+1` would not match the
    text `probe+1` (it matches `probeee1`)."""
    async with backend() as (_b, base):
        target = flow(base)
        target["steps"][0]["extract"]["title"] = "json.title"
        target["steps"][1] = {"name": "read-thread",
                              "url": f"{base}/api/threads/{{{{thread_id}}}}",
                              "expect": {"body_regex": '"title": "{{title}}"'}}
        out = await run(target)
    assert out.success, out.detail


async def test_an_extracted_value_fills_a_messages_regex() -> None:
    async with backend() as (_b, base):
        target = flow(base)
        target["steps"][1]["messages"][0]["until"] = {"regex": '"thread": "{{thread_id}}"'}
        ok = await run(target)
        target["steps"][1]["messages"][0]["until"] = {"regex": '"thread": "{{n}}"'}
        target["steps"][1]["messages"][0]["timeout"] = "300ms"
        missed = await run(target)
    assert ok.success, ok.detail
    assert missed.failure is not None and missed.failure.value == "ws_no_reply", missed.detail


async def test_a_websocket_step_extracts_from_its_matched_message_and_upgrade() -> None:
    async with backend() as (b, base):
        target = flow(base)
        target["steps"][1]["extract"] = {"reply": "json.thread", "session": "header:X-Session"}
        target["steps"].append({
            "name": "read-thread", "url": f"{base}/api/threads/{{{{reply}}}}",
            "headers": {"X-Session": "{{session}}"},
            "expect": {"headers": {"X-Thread-Id": "{{thread_id}}"}}})
        ok = await run(target)
        target["steps"][1]["extract"] = {"reply": "json.nowhere"}
        target["steps"][2]["headers"] = {}
        missing = await run(target)
        target["steps"][1]["messages"][0] = {"send": {"type": "hi"}}  # nothing awaited: no match
        target["steps"][1]["extract"] = {"reply": "json.thread"}
        unmatched = await run(target)
    assert ok.success, ok.detail
    assert b.read_sessions == [f"session-{b.thread_id}"]  # from the 101's header, via {{session}}
    assert missing.detail == "step chat: extract reply: json.nowhere not found in the answer"
    assert unmatched.detail.startswith("step chat: extract reply: no message of the session"), (
        unmatched.detail)


def test_an_unknown_placeholder_in_an_expectation_is_rejected_by_validate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = read_back("http://127.0.0.1:9")
    target["steps"][1]["expect"]["json"]["title"] = "{{nowhere}}"
    f = tmp_path / "flow.yaml"
    f.write_text(json.dumps({"targets": [target]}))
    assert main(["validate", "-c", str(f)]) == 2
    err = capsys.readouterr().err
    assert ("targets[0].steps[1].expect.json.title: {{nowhere}} is not extracted by an earlier"
            " step" in unnamed([err])[0]), err


def test_a_reload_restarts_a_flow_whose_steps_credential_changed() -> None:
    def cfg(token: str) -> Config:
        target = flow("http://127.0.0.1:9")
        target["steps"][0]["credential"] = "api"
        return Config.model_validate({"credentials": {"api": {"bearer": {"token": token}}},
                                      "targets": [target]})
    assert diff_configs(cfg("token-one-123"), cfg("token-two-456")).changed == [
        "thread-roundtrip"]
    assert diff_configs(cfg("token-one-123"), cfg("token-one-123")).changed == []
