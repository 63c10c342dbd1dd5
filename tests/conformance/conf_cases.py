"""The conformance cases: what each one asks of a server, the target stageprobe probes, and the
servers a case does not apply to or on which stageprobe knowingly differs from the reference.

A verdict is one string in stageprobe's failure vocabulary: `success`, a failure name, and for
`ws_auth` / `ws_rejected` the HTTP status, for `ws_closed` the close code (`ws_closed:4001`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probe.outcome import Outcome

TOKEN = "conformance-secret-token"  # the bearer credential of some cases: never in a detail
HOLD = 3.0  # a held session lasts this long; the cuts it must outlast come at 1 s and 1.5 s
KEEPALIVE = 0.4  # ping interval while held: well inside nginx's 1.5 s proxy_read_timeout


@dataclass(frozen=True)
class Step:
    """Send `send` (if any), then expect the next message to match the regex `expect`."""

    send: str | None
    expect: str | None = None
    timeout: float = 2.0


@dataclass(frozen=True)
class Case:
    """One way a server can answer or end a session, played on the path `path` of every server
    (each server's code for that path is in asgi_app, py_servers or node/server.js)."""

    id: str
    title: str  # what the server does, for docs/conformance.md
    path: str
    steps: tuple[Step, ...] = ()
    subprotocols: tuple[str, ...] = ()
    hold: float = 0.0
    keepalive: float = 0.0
    timeout: float = 5.0
    credential_in: str | None = None  # send TOKEN as a bearer header or as a subprotocol
    # stageprobe probes this many times at once and must give one verdict every time: a race
    # between the server's close and the probe's own then fails most runs, not an odd one
    repeat: int = 1
    # Verdicts a correct client may reach here (which one depends on the server): the reference
    # client must give one of them, or the case does not test what it says.
    expect: frozenset[str] = frozenset()
    # verdict -> a regex stageprobe's detail must match when it gives that verdict
    detail: dict[str, str] = field(default_factory=dict)

    def target(self, base: str) -> dict[str, Any]:
        """The stageprobe target for this case on a server at ws:// `base`."""
        fields: dict[str, Any] = {
            "name": self.id, "url": base + self.path, "interval": "30s",
            "timeout": f"{self.timeout:g}s",
            "messages": [{k: v for k, v in (
                ("send", s.send), ("expect", {"regex": s.expect} if s.expect else None),
                ("timeout", f"{s.timeout:g}s")) if v is not None} for s in self.steps],
        }
        if self.subprotocols:
            fields["subprotocols"] = list(self.subprotocols)
        if self.credential_in:
            fields |= {"credential": "token", "credential_in": self.credential_in}
        if self.hold:
            fields["hold"] = f"{self.hold:g}s"
        if self.keepalive:
            fields["keepalive"] = f"{round(self.keepalive * 1000)}ms"
        return fields

    def credentials(self) -> dict[str, Any]:
        """The config's credentials section for this case."""
        return {"token": {"bearer": {"token": TOKEN}}} if self.credential_in else {}

    def reference(self, base: str) -> dict[str, Any]:
        """The same case for the reference client (node/client.js)."""
        protocols = [*self.subprotocols]
        headers = {}
        if self.credential_in == "subprotocol":
            protocols.append(TOKEN)
        elif self.credential_in == "header":
            headers["Authorization"] = f"Bearer {TOKEN}"
        return {"id": self.id, "url": base + self.path, "protocols": protocols, "headers": headers,
                "messages": [{"send": s.send, "expect": s.expect, "timeout": s.timeout}
                             for s in self.steps],
                "hold": self.hold, "keepalive": self.keepalive, "timeout": self.timeout}


def _v(*verdicts: str) -> frozenset[str]:
    return frozenset(verdicts)


HELLO = (Step("hello", "^hello$"),)
REJECTED_ANY = ("ws_rejected:400", "ws_rejected:426")  # what a proxy without Upgrade gets back
BARE_403 = r"(?i)\b(path|route|subprotocol)"  # a bare 403 names what else it can mean

CASES: tuple[Case, ...] = (
    Case("echo", "echo", "/echo", HELLO, expect=_v("success", *REJECTED_ANY)),
    Case("close_4001", "accept, then close(4001, \"bad token\") at once", "/close-4001",
         repeat=16, expect=_v("ws_closed:4001", *REJECTED_ANY)),
    Case("close_1008", "accept, close(1008) after the first message", "/close-1008-after-msg",
         HELLO, expect=_v("ws_closed:1008", *REJECTED_ANY)),
    Case("crash_1011", "the handler raises after the first message", "/crash-after-msg",
         HELLO, expect=_v("ws_closed:1011", "ws_dropped", *REJECTED_ANY)),
    Case("subprotocol_none", "chat.v1 offered, none selected", "/echo", HELLO, ("chat.v1",),
         expect=_v("ws_rejected", *REJECTED_ANY), detail={"ws_rejected": r"chat\.v1"}),
    Case("token_subprotocol", "the token offered as a subprotocol, none selected", "/echo",
         HELLO, credential_in="subprotocol", expect=_v("ws_rejected", *REJECTED_ANY)),
    Case("subprotocol_ok", "chat.v1 offered and selected", "/subprotocol", HELLO, ("chat.v1",),
         expect=_v("success", *REJECTED_ANY)),
    Case("reject_403", "upgrade answered 403 \"bad token\"", "/reject", credential_in="header",
         expect=_v("ws_auth:403", *REJECTED_ANY)),
    Case("unknown_path", "no route for the path (a bearer token sent)", "/nowhere",
         credential_in="header",
         expect=_v("ws_auth:403", "ws_rejected:404", "disconnected", *REJECTED_ANY),
         detail={"ws_auth:403": BARE_403}),
    Case("http_only", "an HTTP-only route", "/http",
         expect=_v("ws_auth:403", "ws_rejected:200", "ws_rejected:404", "disconnected",
                   *REJECTED_ANY),
         detail={"ws_auth:403": BARE_403}),
    Case("redirect", "upgrade answered 302 to /echo?token=...", "/redirect",
         expect=_v("ws_rejected:302", *REJECTED_ANY),
         detail={"ws_rejected:302": r"/echo(?!\?)"}),
    Case("moved", "upgrade answered 301 to /echo?token=...", "/moved",
         expect=_v("ws_rejected:301", *REJECTED_ANY),
         detail={"ws_rejected:301": r"/echo(?!\?)"}),
    Case("no_reply", "accepts, never sends", "/silent", (Step("hello", "^hello$", 1.0),),
         expect=_v("ws_no_reply", *REJECTED_ANY)),
    Case("mismatch", "echo, a reply other than the one expected", "/echo",
         (Step("hello", "^goodbye$"),), expect=_v("assertion", *REJECTED_ANY)),
    Case("app_cut", f"the app ends every session after 1 s (1001); held {HOLD:g} s",
         "/cut-1s", hold=HOLD, timeout=HOLD + 3, expect=_v("ws_closed:1001", *REJECTED_ANY)),
    Case("hold", f"echo, held {HOLD:g} s without pings", "/echo", HELLO, hold=HOLD,
         timeout=HOLD + 3, expect=_v("success", "ws_dropped", *REJECTED_ANY)),
    Case("hold_keepalive", f"echo, held {HOLD:g} s, pinged every {KEEPALIVE:g} s", "/echo",
         HELLO, hold=HOLD, keepalive=KEEPALIVE, timeout=HOLD + 3,
         expect=_v("success", *REJECTED_ANY)),
    Case("close_tcp_open", "close(4000) instead of a reply, TCP left open 3 s", "/close-open",
         HELLO, expect=_v("ws_closed:4000", *REJECTED_ANY)),
)
BY_ID = {c.id: c for c in CASES}

ASGI = ("uvicorn-websockets", "uvicorn-wsproto", "hypercorn")
NO_CLOSE_OPEN = "the server offers no way to send a close frame and keep the connection open"

# (server, case) -> why the case cannot be played on that server
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    **{(s, "close_tcp_open"): NO_CLOSE_OPEN for s in (*ASGI, "aiohttp", "tornado", "node-ws")},
}

# Notes for the table: where a server plays a case in its own way.
NOTES: dict[tuple[str, str], str] = {
    ("node-ws", "crash_1011"): "a throwing handler would end the node process: ws.close(1011)",
    ("node-ws", "unknown_path"): "ws's README way: socket.destroy() for an unhandled upgrade",
    ("node-ws", "http_only"): "node hands every upgrade to the 'upgrade' handler, none reaches "
                              "the HTTP route",
}

# (server, case) -> why stageprobe's verdict differs from the reference client's there, and
# why stageprobe's is the right one for a readiness gate. Listed disagreements that no longer
# disagree fail the suite, so this list stays true.
KNOWN_DISAGREEMENTS: dict[tuple[str, str], str] = {}


def verdict(outcome: Outcome) -> str:
    """stageprobe's Outcome as a verdict string."""
    if outcome.success:
        return "success"
    assert outcome.failure is not None
    name = outcome.failure.value
    if name in ("ws_auth", "ws_rejected") and outcome.status_code not in (None, 101):
        return f"{name}:{outcome.status_code}"
    if name == "ws_closed":
        return f"{name}:{outcome.close_code}"
    return name
