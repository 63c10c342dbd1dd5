"""Small helpers shared by the tests: a free loopback port, and polling with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then closed): also a refused port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    cond: Callable[[], Any | Awaitable[Any]], what: str = "a condition", within: float = 20.0,
    every: float = 0.05,
) -> Any:
    """Poll `cond` (sync or async) until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + within
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(every)
