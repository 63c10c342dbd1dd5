"""Fault servers for tests and the soak: loopback servers that misbehave in one chosen way each.

    with FaultServer("drip") as srv:           # or the `fault_server` fixture in conftest.py
        target = {"name": "t", "url": srv.url("/health")}

`HTTP_EXPECTED` / `WS_EXPECTED` name the failure class each fault must produce (None: success),
so tests and bench/soak.py judge classification from one table.
"""

from __future__ import annotations

from .certs import CertPair, TestCerts, make_certs
from .server import HOST, FaultServer

HTTP_EXPECTED: dict[str, str | None] = {
    "ok": None,
    "status:500": "http_status",
    "refuse": "refused",
    "blackhole": "connect_timeout",
    "accept_no_read": "timeout",
    "no_answer": "timeout",
    "stall_body": "timeout",
    "drip": "timeout",
    "big_body": "body_too_large",
    "big_body:length": "body_too_large",
    "garbage": "protocol",
    "bad_chunk": "protocol",
    "header_flood": "protocol",
    "header_flood:long": "protocol",
    "reset": "disconnected",
    "reset:chunked": "disconnected",
    "reset:fin": "disconnected",
    "reset:chunked,fin": "disconnected",
    "redirect_loop": "http_status",  # not followed (the default): a 302 is outside 2xx
    "trailer_flood": "protocol",  # trailer lines without end: the trailer line cap
    "trailer_flood:long": "protocol",  # one trailer line without end: the head cap
    "chunk_ext_flood": "protocol",  # chunk extensions without end: the head cap
    "slowloris": "timeout",  # a header line every 50 ms: only the deadline ends it
}

WS_EXPECTED: dict[str, str | None] = {
    "ws_ok": None,
    "refuse": "refused",
    "blackhole": "connect_timeout",
    "ws_reject:403": "ws_auth",
    "ws_reject:401": "ws_auth",
    "ws_reject:500": "ws_rejected",
    "ws_no_upgrade": "timeout",
    "ws_garbage": "protocol",
    "header_flood": "protocol",
    "header_flood:long": "protocol",
    "ws_big": "body_too_large",
    "ws_huge": "body_too_large",
    "ws_ping_flood": "protocol",  # pings past the session's bound are named a flood
    "ws_close:1000": "ws_closed",
    "ws_close:1001": "ws_closed",
    "ws_close:1008": "ws_closed",
    "ws_close:1011": "ws_closed",
    "ws_close:4000": "ws_closed",
    "ws_close:4403": "ws_closed",
    "ws_drop": "ws_dropped",
    "ws_silent": "ws_no_reply",
}

# The TestCerts leaves that fail verification: each is a `tls` failure (http and ws alike) whose
# detail names one of these words.
CERT_EXPECTED: dict[str, tuple[str, ...]] = {
    "expired": ("expired",),
    "self_signed": ("self-signed", "self signed"),
    "wrong_host": ("hostname", "match"),
}

__all__ = ["CERT_EXPECTED", "HOST", "HTTP_EXPECTED", "WS_EXPECTED", "CertPair", "FaultServer",
           "TestCerts", "make_certs"]
