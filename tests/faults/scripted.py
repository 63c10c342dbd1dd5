"""A fault server that answers whatever bytes the test scripts: the peer of the fuzz tests.

    with ScriptedServer() as srv:
        srv.script = Script(b"HTTP/1.1 200 OK\\r\\n...", ending="hold", echo=True)

Every connection reads one request head, then gets `script.answer` (for `upgrade`, after a
valid 101 computed from the request's key), with the request's secrets pasted where the answer
says ECHO_* (a hostile server echoing what it was sent), and ends as `script.ending` says: `close`
(FIN), `reset` (RST) or `hold` (open until the client hangs up, bounded by the server's stop).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .conn import Conn
from .server import HOST, FaultServer
from .wire import read_request, upgrade_response

Ending = Literal["close", "reset", "hold"]
ECHO_AUTH, ECHO_KEY, ECHO_QUERY = b"\x00ECHO_AUTH\x00", b"\x00ECHO_KEY\x00", b"\x00ECHO_QUERY\x00"


@dataclass(frozen=True)
class Script:
    answer: bytes
    ending: Ending = "close"
    upgrade: bool = False  # a valid 101 first, then `answer` (WebSocket frames)


class ScriptedServer(FaultServer):
    def __init__(self, host: str = HOST) -> None:
        super().__init__("ok", host=host)
        self.script = Script(b"")
        self.handler = self._answer

    async def _answer(self, c: Conn) -> None:
        script = self.script  # the one in force when the connection came
        req = await read_request(c.reader)
        if req is None:
            return
        answer = script.answer
        if b"\x00ECHO_" in answer:
            query = urlsplit(req.path).query.encode("latin-1")
            answer = (answer.replace(ECHO_AUTH, req.headers.get("authorization", "").encode())
                      .replace(ECHO_KEY, req.headers.get("x-api-key", "").encode())
                      .replace(ECHO_QUERY, query))
        if script.upgrade:
            answer = upgrade_response(req) + answer
        await c.send(answer)
        if script.ending == "hold":
            await c.until_eof()
        elif script.ending == "reset":
            await c.delivered()
            sock = c.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.writer.transport.abort()
        else:
            await c.delivered()
            c.writer.close()
