"""Helpers shared by the fault tests (their fixtures, `fault_server` and `test_certs`, are in
conftest.py, so a test module asks for them by name without importing them).

Leak checks poll with a deadline rather than sleeping: sockets and tasks are released a few loop
iterations after a probe returns, and a 2-core CI machine may need a moment more.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from helpers import until

from probe.checks import CheckContext, checker_for
from probe.config import Config, Target
from probe.outcome import Outcome

from .server import FaultServer

MARGIN = 1.5  # seconds a probe may run past its timeout (generous: the CI machine has 2 cores)

StartFaultServer = Callable[..., FaultServer]  # the type of conftest's `fault_server`


def make_target(url: str, **fields: Any) -> Target:
    """A fully validated Target (defaults merged the way the config loader merges them)."""
    fields.setdefault("timeout", "1s")
    fields.setdefault("interval", "2s")
    return config_of([{"name": "t", "url": url, **fields}]).targets[0]


def config_of(targets: list[dict[str, Any]], **top: Any) -> Config:
    return Config.model_validate({"targets": targets, **top})


PING_STEP = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "1s"}


async def probe_once(target: Target, ctx: CheckContext | None = None) -> tuple[Outcome, float]:
    """Run the target's real check once; the Outcome and the wall time it took."""
    check = checker_for(target)
    start = time.perf_counter()
    outcome = await check(target, ctx or CheckContext())
    return outcome, time.perf_counter() - start


def assert_bounded(target: Target, outcome: Outcome, wall: float) -> None:
    limit = target.timeout + MARGIN
    assert wall <= limit, f"probe took {wall:.2f}s, over timeout {target.timeout}s + {MARGIN}s"
    assert outcome.duration <= limit, f"Outcome.duration {outcome.duration:.2f}s over {limit}s"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def other_tasks() -> set[asyncio.Task[Any]]:
    """Every task of the running loop except the test's own."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def assert_no_leaks(servers: list[FaultServer], targets: list[Target],
                          expected: list[str | None]) -> None:
    """Three rounds of every target probed at once (each classified as `expected`, in order)
    leave no task of the prober behind and, once the fault servers hang up their side, no more
    fds than before. A warm-up round first pays for lazy imports, the resolver and pools."""
    await asyncio.gather(*(probe_once(t) for t in targets))
    for s in servers:
        s.drop_connections()
    await until(lambda: not other_tasks(), "tasks of the warm-up to finish", within=5,
                detail=lambda: f"left: {other_tasks()}")
    fds_before = open_fds()
    for _ in range(3):
        outcomes = await asyncio.gather(*(probe_once(t) for t in targets))
        assert [o.failure for o, _ in outcomes] == expected
    await until(lambda: not other_tasks(), "no task left", within=5,
                detail=lambda: f"left: {other_tasks()}")
    for s in servers:
        s.drop_connections()
    await until(lambda: open_fds() <= fds_before, f"fds back to {fds_before}", within=5,
                detail=lambda: f"now {open_fds()}")
