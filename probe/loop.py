"""The one way every command runs its coroutine: on uvloop when installed, else asyncio."""

from __future__ import annotations

import asyncio
import resource
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
    Every command raises its soft file limit first (raise_fd_limit).
    """
    if daemon:
        sys.setswitchinterval(SWITCH_INTERVAL)
    raise_fd_limit()
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where available
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one; the (soft, hard) now in force.

    Why: every probe holds a socket, and so does every client of the daemon's server; a soft
    limit of 1024 (a common default, under a hard limit many times that) was the first thing a
    neighbour's idle connections used up, failing healthy targets with "Too many open files".
    Best effort: where the limit cannot be read or raised, what was there stays."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ValueError, OSError):
        return (-1, -1)
