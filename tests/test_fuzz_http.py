"""Fuzzing the HTTP check (its own wire, probe/checks/_http_wire.py) with generated answers:
heads, framings, encodings and endings built from strategies, and raw bytes, often echoing the
request's secrets. The invariants are tests/fuzzing.py's; FUZZ_EXAMPLES=N for a longer run
(bench/fuzz_long.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from faults.scripted import Script, ScriptedServer
from fuzzing import (
    FUZZ_SETTINGS,
    HTTP_HEALTHY,
    Fuzzer,
    fuzz_loop,
    http_answers,
    http_fields,
    make_target,
)
from fuzzing import target_fields as base_fields
from hypothesis import example, given

from probe.checks._http_wire import Wire


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def test_http_check_survives_any_answer(server: ScriptedServer) -> None:
    fuzzer = Fuzzer(server, Wire, strict=True)
    with fuzz_loop() as runner:

        @FUZZ_SETTINGS
        @example(script=HTTP_HEALTHY, fields={})
        @given(script=http_answers, fields=http_fields)
        def one(script: Script, fields: dict[str, Any]) -> None:
            target = make_target({**base_fields(f"127.0.0.1:{server.port}", ws=False), **fields})
            runner.run(fuzzer.run(script, target))

        one()
    # The generator reaches both ends: answers that pass and several kinds of failure.
    print(f"outcomes: {fuzzer.failures}")
    assert "None" in fuzzer.failures and len(fuzzer.failures) >= 4, fuzzer.failures
