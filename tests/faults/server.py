"""A loopback server that misbehaves in one chosen way, run on a thread with its own event loop.

Why a thread: the prober under test keeps its event loop to itself, so counting its tasks
(`asyncio.all_tasks()`) or timing it measures the prober only, and a fault that streams 50 MB
cannot starve the loop whose timeouts we are checking. The same class serves the soak's child
process (`python -m faults`).

Two faults need no handler: `refuse` binds a port and never listens (the kernel answers RST), and
`blackhole` listens with a full accept backlog, so a connect hangs (connect_timeout) without
leaving loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from typing import Self

from .conn import Conn, Handler
from .handlers import FAULTS

HOST = "127.0.0.1"


class FaultServer:
    def __init__(self, fault: str, *, tls: ssl.SSLContext | None = None, host: str = HOST) -> None:
        kind, _, arg = fault.partition(":")
        if kind not in FAULTS and kind not in ("refuse", "blackhole"):
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        self.fault, self.kind, self.arg = fault, kind, arg or None
        self.handler: Handler | None = FAULTS.get(kind)  # a subclass may serve its own
        self.tls, self.host = tls, host
        self.port = 0
        self.accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._socks: list[socket.socket] = []

    # --- addresses ---------------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{path}"

    def ws_url(self, path: str = "/") -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{path}"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self.kind == "refuse":
            self._socks.append(s := socket.socket())
            s.bind((self.host, 0))  # bound, never listening: connects get ECONNREFUSED
            self.port = s.getsockname()[1]
            return self
        if self.kind == "blackhole":
            self._start_blackhole()
            return self
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda _loop, _ctx: None)  # failed TLS handshakes etc.
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-{self.fault}",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, 0, ssl=self.tls, backlog=512,
            ssl_handshake_timeout=5.0 if self.tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            assert self.handler is not None
            await self.handler(Conn(reader, writer, self.arg))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    def drop_connections(self) -> None:
        """Hang up every accepted connection (the listener stays), e.g. before counting fds."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result(timeout=10)

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        for s in self._socks:
            s.close()
        self._socks.clear()
        if self._loop is None:
            return
        loop, self._loop = self._loop, None

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            await self._cancel_all()
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- a listener nobody accepts from ------------------------------------------------------

    def _start_blackhole(self) -> None:
        """Listen with backlog 0, then fill the accept queue until a connect no longer completes.

        Linux drops a SYN when the listener's accept queue is full, so the next client's connect
        neither succeeds nor is refused: it times out, all on loopback.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        lsock = socket.socket(family)
        lsock.bind((self.host, 0))
        lsock.listen(0)
        self._socks.append(lsock)
        self.port = lsock.getsockname()[1]
        for _ in range(64):  # bounded: the queue holds backlog+1 on Linux
            s = socket.socket(family)
            s.setblocking(False)
            self._socks.append(s)
            with contextlib.suppress(BlockingIOError):
                s.connect((self.host, self.port))
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _connected(s):
                    break
                time.sleep(0.01)
            else:
                return  # this one hangs: the queue is full
        raise RuntimeError("could not fill the accept backlog of a loopback listener")


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
    except OSError:
        return False
    return True
