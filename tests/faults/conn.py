"""One accepted connection of a fault server, and what every handler does with it.

`send` notices a client that hung up (asyncio's write to a closed transport only logs), so a
handler that floods ends with its client instead of writing into the void.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CHUNK = 64 * 1024


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    arg: str | None

    async def send(self, data: bytes) -> None:
        """Write and drain; ConnectionResetError once the client is gone (asyncio's write to a
        closed transport only logs a warning, so a flood would otherwise never notice)."""
        if self.writer.transport.is_closing():
            raise ConnectionResetError("the client hung up")
        self.writer.write(data)
        await self.writer.drain()

    async def delivered(self, within: float = 5.0) -> None:
        """Return once the client's kernel has acknowledged every byte written so far.

        Our send queue (SIOCOUTQ: bytes not yet ACKed by the peer) and the transport's own
        buffer both empty: what was sent is in the client's receive queue, so whatever we do
        next (a RST) comes after it. There is no event for this, so it polls the kernel every
        millisecond (loopback ACKs at once), bounded by `within`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        fd = self.writer.get_extra_info("socket").fileno()
        while self.writer.transport.get_write_buffer_size() or _unacked(fd):
            if loop.time() > deadline:
                return  # the client stopped reading (window full): RST it as it is
            await asyncio.sleep(0.001)

    async def until_eof(self) -> None:
        """Read (and discard) whatever the client sends until it hangs up."""
        while await self.reader.read(CHUNK):
            pass


Handler = Callable[[Conn], Awaitable[None]]


def _unacked(fd: int) -> int:
    """Bytes in this socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
