"""The twin: answers like staging when healthy, misbehaves on command, stops promptly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import jwt
import pytest
from helpers import free_port, until

from probe.twin import STATE, Twin, TwinState

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


pytestmark = pytest.mark.twin(version="build-7", jwt_secret=SECRET)


async def test_healthy_answers(twin: Twin, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{twin.url}/health") as r:
        assert r.status == 200
        assert await r.json() == {"status": "healthy", "version": "build-7"}
    async with http.get(f"{twin.url}/api/health") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"
    assert twin.requests("/health") == 1


async def test_post_endpoint_needs_a_valid_jwt(twin: Twin, http: aiohttp.ClientSession) -> None:
    url = f"{twin.url}/api/agents/stop"
    async with http.post(url, json={"agent_id": "a1"}) as r:
        assert r.status == 401
    bad = jwt.encode({"sub": "u"}, "another-secret-that-is-long-enough-xx", algorithm="HS256")
    async with http.post(url, json={"agent_id": "a1"},
                         headers={"Authorization": f"Bearer {bad}"}) as r:
        assert r.status == 401
    good = jwt.encode({"sub": "e2e", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    auth = {"Authorization": f"Bearer {good}"}
    async with http.post(url, json={"agent_id": "a1"}, headers=auth) as r:
        assert r.status == 200
        assert await r.json() == {"stopped": True, "agent_id": "a1", "user": "e2e"}
    async with http.post(url, data=b"not json", headers=auth) as r:
        assert r.status == 400
    twin.set_fault(api="500")
    async with http.post(url, json={"agent_id": "a1"}, headers=auth) as r:
        assert r.status == 500


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [
        ("starting", 503, {"status": "starting"}),
        ("503", 503, None),
        ("500", 500, None),
        ("degraded", 200, {"status": "degraded", "version": "build-7"}),
    ],
)
async def test_status_faults(
    twin: Twin, http: aiohttp.ClientSession, fault: str, status: int, body: object
) -> None:
    twin.set_fault(health=fault)
    async with http.get(f"{twin.url}/health") as r:
        assert r.status == status
        if body is not None:
            assert await r.json() == body


async def test_connection_faults(twin: Twin, http: aiohttp.ClientSession) -> None:
    twin.set_fault(health="drop")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.get(f"{twin.url}/health") as r:
            await r.read()
    twin.set_fault(health="garbage")
    with pytest.raises(aiohttp.ClientResponseError, match="status line"):
        async with http.get(f"{twin.url}/health") as r:
            await r.read()
    twin.set_fault(health="big")
    async with http.get(f"{twin.url}/health") as r:
        assert len(await r.read()) == 2 << 20


async def test_delay_and_slow(twin: Twin, http: aiohttp.ClientSession) -> None:
    twin.set_fault(delay_ms=150)
    t0 = time.perf_counter()
    async with http.get(f"{twin.url}/health") as r:
        assert r.status == 200
    assert time.perf_counter() - t0 >= 0.15
    twin.set_fault(delay_ms=0, health="slow", slow_ms=200)
    t0 = time.perf_counter()
    async with http.get(f"{twin.url}/health") as r:
        assert r.status == 200
    assert time.perf_counter() - t0 >= 0.2


async def test_version_switch_and_reset(twin: Twin, http: aiohttp.ClientSession) -> None:
    twin.set_fault(version="build-8", health="503")
    twin.reset()
    assert twin.state == TwinState(version="build-8")
    async with http.get(f"{twin.url}/health") as r:
        assert (await r.json())["version"] == "build-8"


async def test_control_api(twin: Twin, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{twin.url}/_twin/fault", json={"health": "503", "delay_ms": 5}) as r:
        assert r.status == 200
        state = await r.json()
    assert state["health"] == "503" and state["delay_ms"] == 5 and state["api"] == "ok"
    assert twin.state.health == "503"
    for bad, words in [({"health": "nope"}, "health"), ({"colour": "red"}, "colour"),
                       ({"delay_ms": -1}, "delay_ms"), ({"delay_ms": True}, "delay_ms"),
                       ({"version": ""}, "version")]:
        async with http.post(f"{twin.url}/_twin/fault", json=bad) as r:
            assert r.status == 400
            assert words in (await r.json())["error"]
    async with http.post(f"{twin.url}/_twin/fault", data=b"[1,") as r:
        assert r.status == 400
    assert twin.state.health == "503"  # a rejected change changes nothing
    async with http.post(f"{twin.url}/_twin/reset") as r:
        assert (await r.json())["health"] == "ok"
    async with http.get(f"{twin.url}/_twin/state") as r:
        assert (await r.json())["requests"] == {}


async def test_hung_requests_are_released_on_stop() -> None:
    twin = Twin()
    url = await twin.start()
    twin.set_fault(health="hang")
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.get(f"{url}/health"))
        await until(lambda: twin.requests("/health") > 0, "the hung request to arrive",
                    within=5, every=0.01)
        assert not pending.done()
        t0 = time.monotonic()
        await twin.stop()
        assert time.monotonic() - t0 < 3
        try:  # released with a 503, or its connection closed; either way, not hanging
            resp = await asyncio.wait_for(pending, 5)
        except aiohttp.ClientError:
            return
        assert resp.status == 503
        resp.release()


async def test_starting_then_healthy(http: aiohttp.ClientSession) -> None:
    twin = Twin(starting=0.3)
    url = await twin.start()
    try:
        async with http.get(f"{url}/health") as r:
            assert r.status == 503
        await until(lambda: twin.state.health != "starting", "the twin to finish booting",
                    within=5, every=0.02)
        async with http.get(f"{url}/health") as r:
            assert r.status == 200
    finally:
        await twin.stop()


@pytest.mark.parametrize(
    ("sig", "ignored"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "sigint-ignored-by-parent"],
)
def test_standalone_module(sig: signal.Signals, ignored: bool) -> None:
    """`python -m probe.twin` serves, and stops cleanly on Ctrl-C or a container's SIGTERM, also
    when started from a script with `&` (which leaves SIGINT ignored in the child)."""
    port = free_port()
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignored else None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "probe.twin", "--port", str(port), "--build", "cli-1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
        )
    finally:
        if inherited is not None:
            signal.signal(signal.SIGINT, inherited)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert b"cli-1" in r.read()
    finally:
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the twin did not stop within 10 s of {sig.name}; stderr: {err[-500:]}")
    assert proc.returncode == 0, err[-500:]
    assert "Traceback" not in err


# --- the chat loop: threads, agent events, the load balancer's cut -------------------------------


def bearer(secret: str = SECRET) -> dict[str, str]:
    token = jwt.encode({"sub": "e2e", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def test_threads_need_the_backends_token_and_join_the_websocket(
    twin: Twin, http: aiohttp.ClientSession
) -> None:
    url = f"{twin.url}/api/threads"
    async with http.post(url, json={"title": "t"}) as r:
        assert r.status == 401
    async with http.post(url, json={"title": "t"},
                         headers=bearer("another-secret-that-is-long-enough-xx")) as r:
        assert r.status == 401
    async with http.post(url, json={"title": "t"}, headers=bearer()) as r:
        assert r.status == 201
        thread = (await r.json())["id"]
        assert r.headers["X-Thread-Id"] == thread
    async with http.ws_connect(f"{twin.url}/ws?thread={thread}", headers=bearer()) as ws:
        await ws.send_json({"type": "user_message", "text": "hi"})
        events = [await ws.receive_json(timeout=5) for _ in range(3)]
    assert [e["type"] for e in events] == ["agent_started", "agent_thinking", "agent_completed"]
    assert {e["thread"] for e in events} == {thread}
    async with http.ws_connect(f"{twin.url}/ws?thread=thr-never-made", headers=bearer()) as ws:
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4004
    twin.set_fault(api="503")
    async with http.post(url, json={}, headers=bearer()) as r:
        assert r.status == 503


async def test_remembered_threads_are_bounded(twin: Twin, http: aiohttp.ClientSession) -> None:
    from probe.twin.threads import MAX_THREADS

    for _ in range(MAX_THREADS + 5):
        async with http.post(f"{twin.url}/api/threads", headers=bearer()) as r:
            assert r.status == 201
    assert twin.requests("/api/threads") == MAX_THREADS + 5
    assert len(twin.app[STATE]["threads"]) == MAX_THREADS


async def test_agent_events_follow_their_delays(twin: Twin, http: aiohttp.ClientSession) -> None:
    twin.set_fault(agent_start_delay_ms=150, agent_done_delay_ms=100)
    async with http.ws_connect(f"{twin.url}/ws", headers=bearer()) as ws:
        t0 = time.perf_counter()
        await ws.send_json({"type": "user_message", "text": "hi"})
        assert (await ws.receive_json(timeout=5))["type"] == "agent_started"
        started = time.perf_counter()
        assert (await ws.receive_json(timeout=5))["type"] == "agent_thinking"
        assert (await ws.receive_json(timeout=5))["type"] == "agent_completed"
        done = time.perf_counter()
    assert started - t0 >= 0.15 and done - started >= 0.1


async def test_the_load_balancer_cuts_sessions_opened_while_switched(
    twin: Twin, http: aiohttp.ClientSession
) -> None:
    twin.set_fault(ws_cut_after_s=1)
    async with http.ws_connect(f"{twin.url}/ws", headers=bearer()) as ws:
        msg = await ws.receive(timeout=10)  # nothing sent: the cut is all that comes
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code != 1000
    twin.set_fault(ws_cut_after_s=0)
    async with http.ws_connect(f"{twin.url}/ws", headers=bearer()) as ws:
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5)) == {"type": "pong"}


def test_reset_keeps_the_deployments_settings() -> None:
    state = TwinState(version="v2", token_ttl_s=5, ws="crash", agent_start_delay_ms=900)
    assert state.reset() == TwinState(version="v2", token_ttl_s=5)
    with pytest.raises(ValueError, match="agent_done_delay_ms: expected milliseconds"):
        state.changed({"agent_done_delay_ms": -5})
    with pytest.raises(ValueError, match="ws_cut_after_s: expected seconds"):
        state.changed({"ws_cut_after_s": "soon"})


async def test_a_login_never_says_its_token_lives_longer_than_it_does(
    twin: Twin, http: aiohttp.ClientSession
) -> None:
    """expires_in is what is left of the JWT's whole-second exp, so a client refreshing by it
    never sends an expired token (with a 2 s token it otherwise would, every other probe)."""
    from probe.twin.auth import DEV_E2E_PASSWORD, E2E_EMAIL

    twin.set_fault(token_ttl_s=2)
    before = time.time()
    async with http.post(f"{twin.url}/auth/login",
                         json={"email": E2E_EMAIL, "password": DEV_E2E_PASSWORD}) as r:
        answer = await r.json()
    claims = jwt.decode(answer["access_token"], SECRET, algorithms=["HS256"],
                        options={"verify_aud": False})
    assert 1 <= answer["expires_in"] <= 2
    assert before + answer["expires_in"] <= claims["exp"]
