"""The daemon's listener, bounded against a neighbour who opens connections and never uses them.

What a neighbour on the network can drive here is connections, and each costs the daemon one file
descriptor: the same descriptors every probe needs for its own socket. So:

- `keepalive_timeout` (PROBE_KEEPALIVE_TIMEOUT, default 5 s): a connection that sends no request
  for that long is closed, a fresh one that never sends its first request included (aiohttp
  arms the same timer at accept). aiohttp's own default is an hour.
- `max_connections` (PROBE_MAX_CONNECTIONS, default 256): when a new connection arrives with
  that many open, the oldest idle ones (no request being handled: idle keep-alive connections,
  and ones that never finished sending a head) are closed to make room, so a newcomer, a
  /livez or /readyz check among them, always gets in. Only when every open connection is in the
  middle of a request is the newcomer closed at once instead. Either way the daemon never holds
  more than `max_connections` of them.
- and loop.raise_fd_limit(), at the start of every command: the soft RLIMIT_NOFILE raised to
  the hard limit (often 1024 of a much larger one), so probes keep their descriptors.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from pydantic import ValidationError

from probe.config import Settings

KEEPALIVE_TIMEOUT = 5.0  # the defaults of Settings.keepalive_timeout / max_connections
MAX_CONNECTIONS = 256


@dataclass(frozen=True)
class ServerLimits:
    """What the daemon's own HTTP server allows each client (see the module docstring)."""

    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS

    @classmethod
    def from_environ(cls) -> ServerLimits:
        """PROBE_KEEPALIVE_TIMEOUT and PROBE_MAX_CONNECTIONS. They are validated with the other
        PROBE_* settings, which `probe run` loads first and reports (exit 2); a caller that
        never loads them (`probe demo`, a test's in-process daemon) gets the defaults instead
        of an error about a variable it does not use."""
        try:
            settings = Settings()
        except ValidationError:
            return cls()
        return cls(settings.keepalive_timeout, settings.max_connections)


class GuardedSite(web.TCPSite):
    """A TCPSite whose protocol factory enforces `max_connections` (see the module docstring)."""

    __slots__ = ("_limit",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int,
                 **kwargs: object) -> None:
        super().__init__(runner, host, port, **kwargs)  # type: ignore[arg-type]
        self._limit = limit

    async def start(self) -> None:
        """As TCPSite.start, with the guarded factory in place of the runner's server."""
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            _Guard(server, self._limit), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class _Guard:
    """The protocol factory: one RequestHandler per accepted connection, at most `limit` open.

    It keeps its own list of the handlers it made, in accept order: the server's list only
    gains a handler at connection_made, a loop turn after this factory ran, and a burst of
    connections is accepted in one turn."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server, self.limit = server, limit
        self.handlers: dict[RequestHandler, None] = {}

    def __call__(self) -> asyncio.Protocol:
        handlers = self.handlers
        for gone in [h for h in handlers if _closed(h)]:
            del handlers[gone]
        excess = len(handlers) - self.limit + 1
        for handler in list(handlers):  # oldest first
            if excess <= 0:
                break
            if handler.transport is not None and _idle(handler):
                handler.force_close()
                del handlers[handler]
                excess -= 1
        if excess > 0:
            return _Refused()
        handler = self.server()
        handlers[handler] = None
        return handler


def _closed(handler: RequestHandler) -> bool:
    """Closed or closing (aiohttp sets the flag in force_close and in connection_lost)."""
    return bool(getattr(handler, "_force_close", False))


def _idle(handler: RequestHandler) -> bool:
    """No request being handled (aiohttp sets the flag around a handler and its response).

    aiohttp has no public word for either state; tests/test_daemon_limits.py fails if these
    private flags stop meaning what they mean in aiohttp 3.9-3.14."""
    return not getattr(handler, "_request_in_progress", False)


class _Refused(asyncio.Protocol):
    """Every open connection is busy with a request: this one is closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
