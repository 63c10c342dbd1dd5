"""One probe's result, and the closed set of reasons a probe can fail.

The failure set is also a Prometheus label value, so it never grows per error: anything a check
cannot name precisely becomes `protocol` (or `disconnected`) with the specifics in `detail`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

Kind = Literal["http", "websocket", "flow"]


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


@dataclass(frozen=True, slots=True)
class HttpFacts:
    """What blackbox_exporter reports of an HTTP probe beside its success (probe_http_ssl,
    _version, _redirects, _content_length, _uncompressed_body_length, probe_tls_version_info,
    probe_failed_due_to_regex), so dashboards built for it read ours: of the final hop."""

    ssl: bool  # the final answer came over TLS
    version: float  # HTTP version of the final answer (1.1); 0 when none came
    redirects: int  # redirects followed
    tls_version: str | None  # "TLS 1.3", as blackbox_exporter labels it
    content_length: int  # the final answer's Content-Length; -1 when it has none
    body_length: int  # body bytes after gzip/deflate decoding (0: body not read)
    failed_regex: bool  # a body or header pattern of `expect` failed


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
    http: HttpFacts | None = None  # HTTP checks only
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
