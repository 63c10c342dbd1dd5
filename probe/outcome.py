"""One probe's result, and the closed set of reasons a probe can fail.

The failure set is also a Prometheus label value, so it never grows per error: anything a check
cannot name precisely becomes `protocol` (or `disconnected`) with the specifics in `detail`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Kind = Literal["http", "websocket"]


class Failure(StrEnum):
    DNS = "dns"
    REFUSED = "refused"
    CONNECT_TIMEOUT = "connect_timeout"
    TLS = "tls"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    ASSERTION = "assertion"
    VERSION_MISMATCH = "version_mismatch"
    WS_AUTH = "ws_auth"
    WS_REJECTED = "ws_rejected"
    WS_CLOSED = "ws_closed"
    WS_DROPPED = "ws_dropped"
    WS_NO_REPLY = "ws_no_reply"
    CREDENTIAL = "credential"
    DISCONNECTED = "disconnected"
    PROTOCOL = "protocol"
    BODY_TOO_LARGE = "body_too_large"
    LATENCY = "latency"


@dataclass(slots=True)
class Outcome:
    """What one probe of one target saw.

    `phases` are blackbox_exporter-style durations in seconds (http: resolve, connect, tls,
    processing, transfer; websocket: resolve, connect, handshake, rtt). `latency` holds the
    measures a latency target can be set on (total, handshake, rtt, ttfb), in seconds.
    """

    target: str
    kind: Kind
    success: bool
    duration: float
    failure: Failure | None = None
    detail: str = ""
    status_code: int | None = None
    close_code: int | None = None
    version: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    leaf_expiry: float | None = None  # the server certificate's own notAfter
    cert_expiry: float | None = None
    trace_id: str | None = None  # the traceparent's trace id the probe's requests carried
    started_at: float = field(default_factory=time.time)

    @classmethod
    def failed(
        cls,
        target: str,
        kind: Kind,
        failure: Failure,
        detail: str,
        duration: float,
        **extra: object,
    ) -> Outcome:
        return cls(
            target=target, kind=kind, success=False, duration=duration, failure=failure,
            detail=detail, **extra,  # type: ignore[arg-type]
        )

    def __post_init__(self) -> None:
        if self.success != (self.failure is None):
            raise ValueError("an Outcome has a failure exactly when it is not a success")
