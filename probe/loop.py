"""The one way every command runs its coroutine: on uvloop when installed, else asyncio."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005


def run_loop(main: Coroutine[Any, Any, T], *, daemon: bool = False) -> T:
    """Run `main` on uvloop when it is installed (fewer microseconds per probe), else asyncio.

    With `daemon` (`probe run`, `probe demo`) the GIL switch interval is shortened because
    /metrics renders in a worker thread: each time the loop thread comes back from epoll it must
    win the GIL back from the renderer, and at the default 5 ms that handoff alone made the
    scheduler lag p99 ~80 ms during a 2 000-target scrape; at 1 ms it is ~10 ms (bench/:
    measured on this project's 2-core machine). One-shot commands render nothing in threads.
    """
    if daemon:
        sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where available
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
