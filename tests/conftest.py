"""Fixtures shared by several test modules."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A loopback listener that never accepts, its queue filled: the kernel drops further SYNs,
    so a connect there hangs (a real connect_timeout without leaving loopback)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):  # bounded: Linux queues backlog+1 connections
            client = socket.socket()
            client.setblocking(False)
            fillers.append(client)
            client.connect_ex(("127.0.0.1", port))
            _, writable, _ = select.select([], [client], [], 0.3)
            if not writable:  # this SYN was dropped: the queue is full
                yield port
                return
        pytest.skip("this kernel completes every handshake; the TLS connect_timeout tests remain")
    finally:
        for client in fillers:
            client.close()
        listener.close()
