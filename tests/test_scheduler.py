"""Scheduler: cadence, timeout backstop, no overlap, bounded concurrency, lag, reconfigure, stop.

Checks here talk to real loopback servers. Most tests use `naive_check`, an HTTP GET that has no
timeout of its own, so the scheduler's backstop is the only thing that can bound it; one test uses
the real HTTP check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
import yaml
from helpers import silent_server, until

from probe.checks import Check, CheckContext, checker_for
from probe.config import Config, Target, parse_config
from probe.daemon.scheduler import BACKSTOP, Scheduler, load_check, probe_once
from probe.outcome import Failure, Outcome
from probe.twin import Twin

MARGIN = 1.0  # seconds of slack for a 2-core CI machine


def make_config(targets: list[dict[str, Any]], **top: Any) -> Config:
    return parse_config(yaml.safe_dump({"targets": targets, **top}), env={})


async def naive_check(target: Target, ctx: CheckContext) -> Outcome:
    """A GET with no timeout at all: only the scheduler can stop it."""
    t0 = time.perf_counter()
    parts = urlsplit(target.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET {parts.path or '/'} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     .encode())
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.read()
        status = int(head.split(b" ", 2)[1])
    finally:
        writer.close()
    duration = time.perf_counter() - t0
    if status == 200:
        return Outcome(target.name, target.kind, True, duration, status_code=status)
    return Outcome.failed(target.name, target.kind, Failure.HTTP_STATUS, f"HTTP {status}",
                          duration, status_code=status)


class Recorder:
    """Collects outcomes and lags; lets a test wait for a condition with a deadline."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[Outcome]] = defaultdict(list)
        self.lags: list[float] = []
        self.changed = asyncio.Event()

    def on_outcome(self, outcome: Outcome, target: Target) -> None:
        assert outcome.target == target.name
        self.outcomes[target.name].append(outcome)
        self.changed.set()

    def on_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def count(self, name: str) -> int:
        return len(self.outcomes[name])

    async def until(self, cond: Callable[[], bool], within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while not cond():
            left = deadline - time.monotonic()
            assert left > 0, "condition not reached before the deadline"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


def _with(check: Check) -> Callable[[Target], Check]:
    return lambda target: check


async def test_silent_server_times_out_while_others_keep_their_schedule(twin: Twin) -> None:
    async with silent_server() as silent:
        config = make_config([
            {"name": "silent", "url": f"{silent.url}/", "interval": "1s",
             "timeout": "400ms"},
            {"name": "a", "url": f"{twin.url}/health", "interval": "200ms", "timeout": "200ms"},
            {"name": "b", "url": f"{twin.url}/api/health", "interval": "200ms",
             "timeout": "200ms"},
        ])
        rec = Recorder()
        sched = Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag,
                          checker=_with(naive_check))
        async with running(sched):
            t0 = time.monotonic()
            await rec.until(lambda: rec.count("silent") >= 2)
            elapsed = time.monotonic() - t0
    for outcome in rec.outcomes["silent"]:
        assert outcome.failure is Failure.TIMEOUT
        assert "0.4s" in outcome.detail
        assert 0.4 <= outcome.duration <= 0.4 + BACKSTOP + MARGIN
    for name, path in (("a", "/health"), ("b", "/api/health")):
        outcomes = rec.outcomes[name]
        assert all(o.success for o in outcomes)
        # ~elapsed / 0.2 probes expected; demand at least half of that despite the stalled target
        assert len(outcomes) >= elapsed / 0.2 * 0.5, (name, len(outcomes), elapsed)
        assert twin.requests(path) >= len(outcomes)


async def test_real_http_check_bounds_a_silent_server() -> None:
    async with silent_server() as silent:
        config = make_config([{"name": "silent", "url": f"{silent.url}/",
                               "interval": "1s", "timeout": "400ms"}])
        rec = Recorder()
        async with running(Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag)):
            await rec.until(lambda: rec.count("silent") >= 2)
    for outcome in rec.outcomes["silent"]:
        assert outcome.failure is Failure.TIMEOUT, outcome
        assert outcome.duration <= 0.4 + BACKSTOP + MARGIN
    assert checker_for(config.targets[0]).__module__ == "probe.checks.http"


async def test_never_two_probes_of_one_target_and_missed_slots_are_skipped(twin: Twin) -> None:
    twin.set_fault(health="slow", slow_ms=2000)  # every probe overruns into the backstop
    in_flight: dict[str, int] = defaultdict(int)
    most: dict[str, int] = defaultdict(int)
    starts: list[float] = []

    async def counting(target: Target, ctx: CheckContext) -> Outcome:
        in_flight[target.name] += 1
        most[target.name] = max(most[target.name], in_flight[target.name])
        starts.append(time.monotonic())
        try:
            return await naive_check(target, ctx)
        finally:
            in_flight[target.name] -= 1

    config = make_config([{"name": "slow", "url": f"{twin.url}/health", "interval": "200ms",
                           "timeout": "200ms"}])
    rec = Recorder()
    async with running(Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag,
                                 checker=_with(counting))):
        await rec.until(lambda: rec.count("slow") >= 4)
    assert most["slow"] == 1
    assert all(o.failure is Failure.TIMEOUT for o in rec.outcomes["slow"])
    probe_time = 0.2 + BACKSTOP
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # no burst after an overrun: the next probe waits for the next slot on the cadence
    assert all(gap >= probe_time - 0.05 for gap in gaps), gaps
    # skipped slots do not count as lag: each probe starts at a slot, not 0.5 s behind
    assert sorted(rec.lags)[len(rec.lags) // 2] < 0.2, rec.lags


async def test_a_raising_check_becomes_protocol_and_the_loop_goes_on(twin: Twin) -> None:
    calls = 0

    async def flaky(target: Target, ctx: CheckContext) -> Outcome:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise RuntimeError("bug in a check")
        return await naive_check(target, ctx)

    config = make_config([{"name": "flaky", "url": f"{twin.url}/health", "interval": "200ms",
                           "timeout": "200ms"}])
    rec = Recorder()
    with structlog.testing.capture_logs() as logs:
        async with running(Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag,
                                     checker=_with(flaky))):
            await rec.until(lambda: rec.count("flaky") >= 6)
    outcomes = rec.outcomes["flaky"]
    failed = [o for o in outcomes if not o.success]
    assert failed and all(o.failure is Failure.PROTOCOL for o in failed)
    assert all("RuntimeError" in o.detail for o in failed)
    assert any(o.success for o in outcomes)
    crashes = [e for e in logs if e["event"] == "check raised"]
    assert len(crashes) == 1 and crashes[0]["target"] == "flaky"  # once per target, not per probe
    assert crashes[0]["exc_info"] is not None


async def test_a_raising_consumer_or_missing_check_does_not_stop_the_loop(twin: Twin) -> None:
    config = make_config([{"name": "t", "url": f"{twin.url}/health", "interval": "200ms",
                           "timeout": "200ms"}])
    seen: list[Outcome] = []
    done = asyncio.Event()

    def on_outcome(outcome: Outcome, target: Target) -> None:
        seen.append(outcome)
        if len(seen) >= 3:
            done.set()
        raise ValueError("consumer bug")

    def no_module(target: Target) -> Check:
        raise ModuleNotFoundError("probe.checks.nothing")

    async with running(Scheduler(config, CheckContext(), on_outcome, lambda s: None,
                                 checker=no_module)):
        await asyncio.wait_for(done.wait(), 10)
    assert all(o.failure is Failure.PROTOCOL for o in seen)
    assert "ModuleNotFoundError" in seen[0].detail


async def test_lag_is_measured_under_the_concurrency_cap(twin: Twin) -> None:
    twin.set_fault(delay_ms=150)
    targets = [{"name": f"t{i}", "url": f"{twin.url}/health", "interval": "200ms",
                "timeout": "200ms"} for i in range(3)]
    rec = Recorder()
    config = make_config(targets, concurrency=1)  # 3 x 150 ms of work per 200 ms: queueing
    async with running(Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag,
                                 checker=_with(naive_check))):
        await rec.until(lambda: all(rec.count(f"t{i}") >= 3 for i in range(3)))
    assert rec.lags and min(rec.lags) >= 0
    assert max(rec.lags) >= 0.1  # a probe waited for another's 150 ms


async def test_reconfigure_adds_removes_and_restarts(twin: Twin) -> None:
    def cfg(*targets: tuple[str, str]) -> Config:
        return make_config([{"name": n, "url": f"{twin.url}{p}", "interval": "200ms",
                             "timeout": "200ms"} for n, p in targets])

    rec = Recorder()
    sched = Scheduler(cfg(("keep", "/health"), ("drop", "/health"), ("move", "/health")),
                      CheckContext(), rec.on_outcome, rec.on_lag, checker=_with(naive_check))
    async with running(sched):
        await rec.until(lambda: all(rec.count(n) >= 2 for n in ("keep", "drop", "move")))
        before_api = twin.requests("/api/health")
        sched.reconfigure(cfg(("keep", "/health"), ("move", "/api/health"), ("new", "/health")))
        dropped = rec.count("drop")
        moved = rec.count("move")
        await rec.until(lambda: rec.count("new") >= 2 and rec.count("move") >= moved + 2)
        assert rec.count("drop") == dropped  # no result of a removed target after reconfigure
        assert twin.requests("/api/health") > before_api  # the changed target uses its new URL
        assert set(sched._tasks) == {"keep", "move", "new"}


async def test_stop_cancels_probes_in_flight_promptly() -> None:
    async with silent_server() as silent:
        config = make_config([{"name": f"s{i}", "url": f"{silent.url}/",
                               "interval": "10s", "timeout": "9s"} for i in range(5)])
        rec = Recorder()
        sched = Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag,
                          checker=_with(naive_check))
        await sched.start()
        await until(lambda: silent.accepted >= 5,
                    "every target to have a probe hanging on the silent server", within=10)
        assert sched.stuck() == []
        t0 = time.monotonic()
        await sched.stop()
        assert time.monotonic() - t0 < 1.5
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("probe")] == []
        await until(lambda: silent.closed >= 5,
                    "the prober to close every connection it had open", within=10)
    assert rec.count("s0") == 0
    assert sched.stuck() == ["scheduler is not running"]


async def test_stuck_reports_a_stale_heartbeat(twin: Twin) -> None:
    config = make_config([{"name": "t", "url": f"{twin.url}/health", "interval": "1s"}])
    rec = Recorder()
    async with running(Scheduler(config, CheckContext(), rec.on_outcome, rec.on_lag,
                                 checker=_with(naive_check))) as sched:
        assert sched.stuck() == []
        later = time.monotonic() + 60
        reasons = sched.stuck(now=later)
        assert any("heartbeat" in r for r in reasons)
        assert any("target t: no probe started" in r for r in reasons)


async def test_probe_once_turns_any_check_bug_into_an_outcome(twin: Twin) -> None:
    """The one probe step the scheduler and `probe check` share."""
    target = make_config([{"name": "b", "url": f"{twin.url}/health", "timeout": "200ms"}]
                         ).targets[0]

    async def not_an_outcome(target: Target, ctx: CheckContext) -> Outcome:
        return "ok"  # type: ignore[return-value]

    def no_module(target: Target) -> Check:
        raise ImportError("no check module")

    crashed: set[str] = set()
    with structlog.testing.capture_logs() as logs:
        wrong = await probe_once(target, not_an_outcome, CheckContext(), crashed=crashed)
        broken = load_check(target, no_module)
        missing = [await probe_once(target, broken, CheckContext(), crashed=crashed)
                   for _ in range(2)]
    assert wrong.failure is Failure.PROTOCOL and "TypeError" in wrong.detail
    assert all(o.failure is Failure.PROTOCOL and "ImportError" in o.detail for o in missing)
    assert [e["event"] for e in logs] == ["check raised"]  # once per target name
    ok = await probe_once(target, load_check(target), CheckContext())
    assert ok.success, ok
