"""Fuzzing the WebSocket check (probe/checks/_ws_session.py) with generated answers: a valid 101
followed by generated frames (any opcode, reserved bits, masking, declared lengths that lie,
close codes and reasons, fragments, pings), a 101 followed by raw bytes, or no valid upgrade at
all (the HTTP answers of test_fuzz_http). The invariants are tests/fuzzing.py's; FUZZ_EXAMPLES=N
for a longer run (bench/fuzz_long.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from faults.scripted import Script, ScriptedServer
from fuzzing import (
    FUZZ_SETTINGS,
    PING_PONG,
    WS_HEALTHY,
    Fuzzer,
    fuzz_loop,
    make_target,
    ws_answers,
    ws_fields,
)
from fuzzing import target_fields as base_fields
from hypothesis import example, given
from websockets.asyncio.client import ClientConnection


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def test_websocket_check_survives_any_answer(server: ScriptedServer) -> None:
    # A websockets connection may be freed by the collector (the library's own objects refer to
    # each other), but none may stay reachable after the probe.
    fuzzer = Fuzzer(server, ClientConnection, strict=False)
    with fuzz_loop() as runner:

        @FUZZ_SETTINGS
        @example(script=WS_HEALTHY, fields={"messages": PING_PONG})
        @given(script=ws_answers, fields=ws_fields)
        def one(script: Script, fields: dict[str, Any]) -> None:
            target = make_target({**base_fields(f"127.0.0.1:{server.port}", ws=True), **fields})
            runner.run(fuzzer.run(script, target))

        one()
    print(f"outcomes: {fuzzer.failures}")
    assert "None" in fuzzer.failures and len(fuzzer.failures) >= 4, fuzzer.failures
