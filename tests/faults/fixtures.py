"""Pytest fixtures and helpers shared by the fault tests (imported by those test modules).

Leak checks poll with a deadline rather than sleeping: sockets and tasks are released a few loop
iterations after a probe returns, and a 2-core CI machine may need a moment more.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import until

from probe.checks import CheckContext, checker_for
from probe.config import Config, Target
from probe.outcome import Outcome

from .certs import TestCerts, make_certs
from .server import FaultServer

MARGIN = 1.5  # seconds a probe may run past its timeout (generous: the CI machine has 2 cores)


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    """`fault_server("drip")` starts a server for that fault; all are stopped after the test."""
    started: list[FaultServer] = []

    def start(fault: str, **kwargs: Any) -> FaultServer:
        server = FaultServer(fault, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("fault-certs"))


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


def fd_names() -> list[str]:
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sorted(names)


def other_tasks() -> set[asyncio.Task[Any]]:
    """Every task of the running loop except the test's own."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """helpers.until, in the argument order the fault tests use."""
    await until(predicate, what, within=within)


def ca_target_fields(certs: TestCerts) -> dict[str, Any]:
    return {"ca_file": str(Path(certs.ca_file))}
