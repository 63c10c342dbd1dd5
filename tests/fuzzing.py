"""Property-based fuzzing of the HTTP and WebSocket checks against a server answering generated
bytes (tests/faults/scripted.py), shared by tests/test_fuzz_http.py, tests/test_fuzz_ws.py and
bench/fuzz_long.py.

What every generated answer must leave true (`Fuzzer.run`):
- the probe ends within its timeout + 10 % (plus SLACK for a loaded 2-core CI machine: this is a
  correctness bound, a probe that waits for more than its deadline, not a speed goal);
- it succeeds, or names a failure from the closed vocabulary with a one-line detail;
- no configured secret (a bearer token, an API-key header, a URL query token) is in the Outcome,
  raw or by its first 8 characters, although the answers often echo them;
- it leaves no task, no descriptor and no buffer behind: no other task on the loop, the fd count
  back to where it was once the server hung up its side, and no Wire (HTTP) or websockets
  connection (WebSocket) alive afterwards.

FUZZ_EXAMPLES sets the number of examples per test (CI: 60; bench/fuzz_long.py: thousands).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faults.fixtures import config_of, open_fds, other_tasks
from faults.scripted import ECHO_AUTH, ECHO_KEY, ECHO_QUERY, Script, ScriptedServer
from helpers import until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from probe.checks import CheckContext, checker_for
from probe.config import Target
from probe.outcome import Failure, Outcome

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
TIMEOUT = 0.4  # seconds: an answer held open costs the whole timeout, so keep it short
SLACK = 0.6  # seconds past timeout * 1.1 that a loaded CI machine may add to a probe

BEARER = "Zq8rT3vW9bearer"
API_KEY = "Kp2mX7cL4apikey"
QUERY_TOKEN = "Hs5nB1dQ6query"
SECRETS = (BEARER, API_KEY, QUERY_TOKEN)
SECRET_BYTES = [s.encode() for s in SECRETS]
ECHOES = [ECHO_AUTH, ECHO_KEY, ECHO_QUERY, *SECRET_BYTES]

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)


def target_fields(base_url: str, ws: bool) -> dict[str, Any]:
    """The target every example probes: secrets in a header, the Authorization and the query."""
    scheme = "ws" if ws else "http"
    return {
        "name": "fuzz", "url": f"{scheme}://{base_url}/p?token={QUERY_TOKEN}&x=1",
        "timeout": TIMEOUT, "interval": 5, "body_limit": 4096,
        "headers": {"Authorization": f"Bearer {BEARER}", "X-Api-Key": API_KEY},
    }


def make_target(fields: dict[str, Any]) -> Target:
    return config_of([fields]).targets[0]


# --- strategies ------------------------------------------------------------------------------

_text = st.binary(max_size=40)
_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.encode)
_echo = st.sampled_from(ECHOES)
_value = st.one_of(_printable, _printable, _printable, _text, _echo,
                   st.builds(lambda a, b: a + b, _printable, _echo))


def pieces(*parts: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(*parts).map(b"".join)


# --- HTTP answers ----------------------------------------------------------------------------

# Mostly valid at each step (a head that breaks at its first byte only tests the first byte),
# with the invalid choices still drawn often.
_version = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTX/1.1",
                                                 b""])
_code = st.one_of(
    st.sampled_from([b"200"] * 8 + [b"204", b"301", b"302", b"304", b"101", b"100", b"103",
                                    b"404", b"500", b"999", b"20", b"-1", b"abc"]),
    st.integers(0, 1000).map(lambda i: str(i).encode()),
)
_reason = st.one_of(st.sampled_from([b"OK", b"Fine", b""]), _value)
_good_status = st.tuples(st.just(b"HTTP/1.1"), _code, st.sampled_from([b"OK", b"Fine", b""]))
_status_line = st.deferred(lambda: weighted(
    (6, _good_status.map(b" ".join)), (2, st.tuples(_version, _code, _reason).map(b" ".join)),
    (1, _text)))
_header = st.one_of(
    st.tuples(st.just(b"Content-Length"), st.one_of(
        st.sampled_from([b"0", b"5", b"100000000", b"-1", b"abc", b"5, 5", b""]),
        st.integers(0, 9000).map(lambda i: str(i).encode()))),
    st.tuples(st.just(b"Transfer-Encoding"),
              st.sampled_from([b"chunked", b"gzip, chunked", b"identity", b"chunked, gzip",
                               b"xchunked"])),
    st.tuples(st.just(b"Content-Encoding"),
              st.sampled_from([b"gzip", b"deflate", b"br", b"x-gzip", b"identity", b"gzip, gzip"])),
    st.tuples(st.just(b"Location"),
              st.sampled_from([b"/again?" + ECHO_QUERY, b"/p?token=" + ECHO_QUERY,
                               b"http://127.0.0.1:1/x?" + ECHO_KEY, b"//elsewhere/", b"ftp://x/",
                               b"http://[::1", ECHO_AUTH, b"/a b"])),
    st.tuples(st.just(b"Content-Type"),
              st.sampled_from([b"application/json", b"text/html; charset=utf-8",
                               b"text/plain; charset=bogus", b'application/json; charset="l1"'])),
    st.tuples(st.sampled_from([b"Connection", b"Upgrade", b"X-Build", b"Set-Cookie", b"X-Echo"]),
              st.one_of(st.sampled_from([b"close", b"1.0", b"a=b"]), _value)),
    st.tuples(st.sampled_from([b"X-Any", b"x-\xff", b"Bad Name", b""]), _value),
)
_json = st.sampled_from([
    b'{"status": "healthy", "version": "1.0"}', b'{"status": "down"}', b"[[[[[[[[",
    b'{"status": "' + ECHO_KEY + b'"}', b'{"version": "' + ECHO_AUTH + b'"}', b"\xff\xfe{}",
])
_plain = st.one_of(_json, st.binary(max_size=600), pieces(_text, _echo, _text),
                   st.integers(4000, 12000).map(lambda n: b"x" * n))


def _chunked(chunks: list[bytes], ext: bytes, trailer: bytes, cut: int | None) -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks) + b"0\r\n" + trailer
    body += b"\r\n"
    return body[:cut] if cut is not None else body


_chunked_body = st.builds(
    _chunked, st.lists(st.binary(min_size=1, max_size=200), max_size=6),
    st.sampled_from([b"", b";a=b", b";" + ECHO_KEY, b";" + b"e" * 100]),
    st.sampled_from([b"", b"X-T: 1\r\n", b"X-T: " + ECHO_AUTH + b"\r\n"]),
    st.one_of(st.none(), st.integers(0, 300)),
)
_gzipped = st.builds(lambda b, cut: gzip.compress(b)[:cut] if cut else gzip.compress(b),
                     _plain, st.one_of(st.none(), st.integers(1, 40)))
_body = st.one_of(_plain, _chunked_body, _gzipped)
_eol = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


def _assemble(interim: bool, status: bytes, headers: list[tuple[bytes, bytes]], eol: bytes,
              body: bytes) -> bytes:
    head = status + eol + b"".join(n + b": " + v + eol for n, v in headers) + eol
    return (b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b"") + head + body


_ending = st.sampled_from(["close", "close", "close", "reset", "hold"])


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `choices`, drawn by weight (st.one_of leans on its simplest branches)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(table))).flatmap(lambda i: table[i])


_structured = st.builds(_assemble, st.booleans(), _status_line, st.lists(_header, max_size=8),
                        _eol, _body)
http_answers = st.builds(
    Script,
    weighted((7, _structured), (2, st.binary(max_size=3000)),
             (1, pieces(st.binary(max_size=200), _echo, st.binary(max_size=200)))),
    _ending,
)
http_fields = st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["GET", "HEAD", "POST"]),
    "follow_redirects": st.booleans(),
    "max_redirects": st.integers(0, 3),
    "expect": st.sampled_from([{"body_regex": "healthy"}, {"json": {"status": "healthy"}},
                               {"headers": {"content-type": "json"}}, {"status": [200, 204]}]),
    "version_path": st.just("version"),
})


# --- WebSocket answers -----------------------------------------------------------------------


def _frame(fin: bool, rsv: int, opcode: int, masked: bool, payload: bytes,
           length: int | None) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, mask | n])
    elif n < 1 << 16:
        head = bytes([first, mask | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, mask | 127]) + n.to_bytes(8, "big")
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


_close_payload = st.one_of(
    st.builds(lambda code, reason: code.to_bytes(2, "big") + reason,
              st.sampled_from([1000, 1001, 1002, 1005, 1006, 1008, 1011, 1015, 3000, 4403, 999,
                               5000, 65535]),
              st.one_of(_value, st.just(b"\xff\xfe"))),
    st.just(b""), st.just(b"\x03"),
)
_ws_payload = st.one_of(
    st.just(b'{"type": "pong"}'), st.just(b'{"type": "error", "detail": "' + ECHO_AUTH + b'"}'),
    _value, st.binary(max_size=300), st.just(b"\xc3\x28"),
    st.integers(3000, 9000).map(lambda n: b"y" * n),
)
_ws_frame = st.one_of(
    st.builds(_frame, st.booleans(), st.just(0), st.sampled_from([0x1, 0x2, 0x0]), st.just(False),
              _ws_payload, st.none()),
    st.builds(_frame, st.just(True), st.just(0), st.sampled_from([0x9, 0xA]), st.just(False),
              _value, st.none()),
    st.builds(_frame, st.just(True), st.just(0), st.just(0x8), st.just(False), _close_payload,
              st.none()),
    st.builds(_frame, st.booleans(), st.integers(0, 7), st.integers(0, 15), st.booleans(),
              st.binary(max_size=60),
              st.one_of(st.none(), st.integers(0, 1 << 20), st.just((1 << 63) - 1))),
)
_pong = _frame(True, 0, 0x1, False, b'{"type": "pong"}', None)
ws_answers = st.one_of(
    st.builds(lambda frames, ending: Script(b"".join(frames), ending, upgrade=True),
              st.lists(_ws_frame, max_size=6), _ending),
    st.builds(lambda frames, ending: Script(_pong + b"".join(frames), ending, upgrade=True),
              st.lists(_ws_frame, max_size=4), _ending),
    st.builds(lambda raw, ending: Script(raw, ending, upgrade=True),
              st.binary(max_size=400), _ending),
    http_answers,  # no (valid) upgrade at all
)
ws_fields = st.fixed_dictionaries({}, optional={
    "messages": st.sampled_from([
        [{"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}}],
        [{"send": "hello", "expect": {"regex": "^h"}}],
        [{"expect": {"json": {"type": "pong"}}}],
    ]),
})


# Always among the examples: an answer that passes, so a generator that only ever breaks the
# probe cannot hide a check that never succeeds.
HTTP_HEALTHY = Script(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 39"
                      b"\r\n\r\n" + b'{"status": "healthy", "version": "1.0"}')
WS_HEALTHY = Script(_pong, "hold", upgrade=True)
PING_PONG = [{"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}}]


# --- the invariants --------------------------------------------------------------------------


@contextmanager
def fuzz_loop() -> Iterator[asyncio.Runner]:
    """One event loop for every example of a test: the daemon's (uvloop) where installed."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner


@contextmanager
def collector_off() -> Iterator[None]:
    """The cyclic GC off: what a probe leaves alive now is kept by a reference, not a cycle."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def alive(cls: type) -> int:
    """How many `cls` objects exist. type(), not isinstance(): isinstance asks an object for its
    __class__, which a weakref.proxy whose referent is gone answers with ReferenceError."""
    return sum(1 for o in gc.get_objects() if issubclass(type(o), cls))


class Fuzzer:
    """One loopback ScriptedServer and the invariants every example is held to."""

    def __init__(self, server: ScriptedServer, buffer_type: type, strict: bool) -> None:
        """`buffer_type`: the per-probe object that must not outlive a probe; `strict`: freed by
        reference counting alone (else a collection may free it: a cycle, but no leak)."""
        self.server, self.buffer_type, self.strict = server, buffer_type, strict
        self.fds: int | None = None
        self.failures: dict[str, int] = {}

    async def run(self, script: Script, target: Target) -> Outcome:
        self.server.script = script
        check = checker_for(target)
        if self.fds is None:  # after a first probe: lazy imports and caches are in place
            await check(target, CheckContext())
            await self._settle()
            self.fds = open_fds()
        # What earlier tests left in cycles goes now, so what is alive after the probe is its.
        gc.collect()
        with collector_off():
            start = time.perf_counter()
            outcome = await check(target, CheckContext())
            wall = time.perf_counter() - start
            await self._settle()
            # Given the loop turns in which the transport lets go of its protocol; with the
            # collector off unless `strict` is False: freed by reference counting alone.
            strict, kind = self.strict, self.buffer_type
            with contextlib.suppress(AssertionError):
                await until(lambda: (strict or gc.collect() >= 0) and not alive(kind),
                            f"no {kind.__name__} left", within=3)
            left = alive(kind)
        self.failures[str(outcome.failure)] = self.failures.get(str(outcome.failure), 0) + 1
        limit = target.timeout * 1.1 + SLACK
        assert wall <= limit, f"took {wall:.2f}s, over {target.timeout}s + 10% (+{SLACK}s)"
        assert_named(outcome)
        assert_no_secret(outcome)
        assert left == 0, f"{left} {self.buffer_type.__name__} alive after the probe"
        return outcome

    async def _settle(self) -> None:
        await until(lambda: not other_tasks(), "no task of the probe left", within=3,
                    detail=lambda: f"left: {other_tasks()}")
        self.server.drop_connections()
        if self.fds is not None:
            fds = self.fds
            await until(lambda: open_fds() <= fds, f"fds back to {fds}", within=3,
                        detail=lambda: f"now {open_fds()}")


def assert_named(outcome: Outcome) -> None:
    assert outcome.success is (outcome.failure is None), outcome
    if outcome.failure is None:
        return
    assert isinstance(outcome.failure, Failure), outcome.failure
    detail = outcome.detail
    assert detail and len(detail) <= 200, detail
    assert not any(c in detail for c in "\r\n\x00"), repr(detail)


def assert_no_secret(outcome: Outcome) -> None:
    seen = repr(outcome)
    for secret in SECRETS:
        assert secret[:8] not in seen, f"secret {secret[:3]}... in {seen}"

