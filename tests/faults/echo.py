"""Echo faults: a careless (or hostile) server that sends the client's secrets back.

The path says what to echo and in which form, so one server plays every echo a test needs:

    /<what>/<form>[/<rest>]

<what>:  `h.NAME` a request header's whole value, `a.NAME` that value without its scheme word
         (`Bearer x` -> `x`), `pw` the password of a Basic Authorization, `q.KEY` a query value,
         `f.KEY` a form field of the request body, `all` the whole request head.
<form>:  raw, quote (nothing safe), plus (quote_plus), b64, b64url, p8 (the first 8 characters).

`echo` (HTTP): 200 with the echo at the start of a text body (a body_regex then quotes it), as
the `version` of a JSON body for a path ending in /version, or
for POST /token... an OAuth2 token endpoint's 400 whose `error` and `error_description` are the
echo; POST /token-ok answers ACCESS_TOKEN. `ws_echo`: the WebSocket upgrade answered by
`/reject/...` a 400 whose body is the echo (a 401/403 body is never quoted), `/close/...` a
101 then a close frame whose reason is the echo, `/message/...` a 101 then the echo as the reply
to the client's first message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

from .conn import Conn, Handler
from .wire import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Request,
    close_frame,
    frame,
    json_response,
    read_frame,
    read_request,
    response,
    upgrade_response,
)

ACCESS_TOKEN = "oauth2-access-tok/en+Aq7=Wx3"  # what POST /token-ok issues
MAX_ECHO = 2048  # bytes of echo at most (a close reason: 123)

FORMS = {
    "raw": lambda v: v,
    "quote": lambda v: quote(v, safe=""),
    "plus": quote_plus,
    "b64": lambda v: base64.b64encode(v.encode()).decode(),
    "b64url": lambda v: base64.urlsafe_b64encode(v.encode()).decode(),
    "p8": lambda v: v[:8],
}


def echo_of(req: Request, skip: int = 0) -> str:
    """What the request's path asks to echo (its first `skip` segments name the channel)."""
    url = urlsplit(req.path)
    parts = url.path.strip("/").split("/")[skip:]
    what, form = [*parts, "all", "raw"][:2]
    kind, _, name = what.partition(".")
    name = name.lower()
    value = ""
    if kind == "h":
        value = req.headers.get(name, "")
    elif kind == "a":
        value = req.headers.get(name, "").partition(" ")[2]
    elif kind == "pw":
        try:
            pair = base64.b64decode(req.headers.get("authorization", "").partition(" ")[2])
        except (binascii.Error, ValueError):
            pair = b""
        value = pair.decode("utf-8", "replace").partition(":")[2]
    elif kind == "q":
        value = (parse_qs(url.query).get(name) or [""])[0]
    elif kind == "f":
        value = (parse_qs(req.body.decode("utf-8", "replace")).get(name) or [""])[0]
    else:
        head = [f"{req.method} {unquote(req.path)}"] + [f"{k}: {v}" for k, v in req.headers.items()]
        value = " | ".join(head)
    return FORMS.get(form, FORMS["raw"])(value)[:MAX_ECHO]


async def echo(c: Conn) -> None:
    """HTTP: the echo at the start of a 200 body, or in a token endpoint's error (keep-alive)."""
    while (req := await read_request(c.reader)) is not None:
        path = urlsplit(req.path).path
        if path == "/token-ok":
            await c.send(json_response(200, {"access_token": ACCESS_TOKEN, "expires_in": 3600}))
        elif path.startswith("/token"):
            said = echo_of(req, 1)
            await c.send(json_response(400, {"error": said, "error_description": said}))
        elif path.endswith("/version"):
            await c.send(json_response(200, {"status": "ok", "version": echo_of(req)}))
        else:
            await c.send(response(200, f"{echo_of(req)} was sent".encode(),
                                  Content_Type="text/plain; charset=utf-8"))


async def ws_echo(c: Conn) -> None:
    """WebSocket: the echo in a 400 body, a close reason, or the reply to the first message."""
    req = await read_request(c.reader)
    if req is None:
        return
    channel = urlsplit(req.path).path.strip("/").partition("/")[0]
    said = echo_of(req, 1)
    if channel == "reject":
        await c.send(response(400, said.encode(), Connection="close"))
        return
    await c.send(upgrade_response(req))
    if channel == "close":
        await c.send(close_frame(4000, said.encode()[:123].decode("utf-8", "ignore")))
    try:
        async with asyncio.timeout(10):
            while True:
                opcode, _ = await read_frame(c.reader)
                if opcode == OP_CLOSE:
                    await c.send(frame(OP_CLOSE, b"\x03\xe8"))
                    return
                if opcode != OP_PING and channel == "message":
                    await c.send(frame(OP_TEXT, f"{said} was sent".encode()))
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
        return


ECHO_FAULTS: dict[str, Handler] = {"echo": echo, "ws_echo": ws_echo}
