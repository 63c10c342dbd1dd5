"""How a failed HTTP probe is named: the progress it made, and the exception that ended it.

The Failure is decided by what went wrong AND how far the probe had got (its `stage`): a timeout
while resolving is `dns`, before a TCP/TLS connection `connect_timeout`, after it `timeout`; a
reset during the TLS handshake is `tls`, after the request `disconnected`. Connect errors other
than "refused" (unreachable network and the like) become `connect_timeout` with the OS reason.
Details never quote aiohttp's exception text whole (it carries the URL with its query string).
"""

from __future__ import annotations

import errno
import re

import aiohttp
import structlog
from aiohttp import http_exceptions as hx

from probe.checks import clip, host_port
from probe.config import Target
from probe.config_base import fmt
from probe.outcome import Failure

log = structlog.get_logger("probe.checks.http")


class Progress:
    """Timing and progress of one probe, fed by trace hooks, the TLS hook and check() itself."""

    __slots__ = (
        "bytes_read", "cert_expiry", "mark", "phases", "stage", "status", "t_headers", "t_sent",
        "where",
    )

    def __init__(self, t0: float, where: str) -> None:
        self.mark = t0  # start of the phase in progress
        self.stage = "start"  # credential, resolve, connect, tls, request, body
        self.where = where  # host:port of the hop in progress
        self.phases: dict[str, float] = {}
        self.t_sent: float | None = None
        self.t_headers: float | None = None
        self.status: int | None = None
        self.cert_expiry: float | None = None
        self.bytes_read = 0

    def close_phase(self, phase: str, now: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + (now - self.mark)
        self.mark = now

    def headers_received(self, now: float) -> None:
        self.phases["processing"] = self.phases.get("processing", 0.0) + (
            now - (self.t_sent if self.t_sent is not None else self.mark)
        )
        self.t_sent = None
        self.mark = now


def timed_out(target: Target, probe: Progress) -> tuple[Failure, str]:
    within = f"within {fmt(target.timeout)}"
    stage = probe.stage
    if stage == "credential":
        return Failure.CREDENTIAL, f"credential {target.credential} not obtained {within}"
    if stage == "resolve":
        return Failure.DNS, f"{probe.where.rpartition(':')[0]} did not resolve {within}"
    if stage == "tls":
        return Failure.CONNECT_TIMEOUT, f"TLS handshake with {probe.where} not complete {within}"
    if stage in ("start", "connect"):
        return Failure.CONNECT_TIMEOUT, f"no TCP connection to {probe.where} {within}"
    if stage == "body":
        return Failure.TIMEOUT, (
            f"HTTP {probe.status} but body not complete {within} ({probe.bytes_read} bytes read)"
        )
    return Failure.TIMEOUT, f"no response {within} (connected to {probe.where}, request sent)"


def os_text(exc: BaseException) -> str:
    """The OS / OpenSSL reason alone: no errno prefix, no `[SSL: X]`, no `(_ssl.c:1006)`."""
    if isinstance(exc, ConnectionError) and not exc.strerror and not str(exc).strip():
        return "connection closed by the server"
    text = getattr(exc, "strerror", None) or (exc.args[1] if len(exc.args) > 1 else str(exc))
    text = re.sub(r"^\[[A-Z0-9_: ]+\]\s*", "", str(text))
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text) or type(exc).__name__


def _when(probe: Progress) -> str:
    if probe.stage == "body":
        return f"during the body ({probe.bytes_read} bytes read)"
    return "before the response headers"


def classify(exc: Exception, probe: Progress, target: Target) -> tuple[Failure, str]:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        err = exc.certificate_error
        why = getattr(err, "verify_message", None) or os_text(err)
        return Failure.TLS, f"certificate verify failed: {why}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        where = host_port(exc.host, exc.port)
        return Failure.TLS, f"TLS handshake with {where} failed: {os_text(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Failure.DNS, f"cannot resolve {exc.host}: {os_text(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error, where = exc.os_error, host_port(exc.host, exc.port)
        if probe.stage == "tls":
            return Failure.TLS, f"TLS handshake with {where} failed: {os_text(os_error)}"
        refused = f"[Errno {errno.ECONNREFUSED}]" in str(os_error)  # one of several addresses
        if os_error.errno in (errno.ECONNREFUSED, errno.ECONNRESET) or refused:
            return Failure.REFUSED, f"connection refused by {where}"
        return Failure.CONNECT_TIMEOUT, f"cannot connect to {where}: {os_text(os_error)}"
    if isinstance(exc, aiohttp.TooManyRedirects):
        last = exc.history[-1] if exc.history else None
        probe.status = last.status if last is not None else probe.status
        code = f", last HTTP {last.status}" if last is not None else ""
        return Failure.HTTP_STATUS, f"more than {target.max_redirects} redirects{code}"
    if isinstance(exc, aiohttp.RedirectClientError):
        return Failure.PROTOCOL, f"redirect to an invalid or non-HTTP URL ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Failure.DISCONNECTED, f"server closed the connection {_when(probe)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__
        if isinstance(cause, hx.DecompressSizeError):
            return Failure.BODY_TOO_LARGE, f"decompressed body too large: {clip(cause.message)}"
        if isinstance(cause, hx.ContentEncodingError):
            return Failure.PROTOCOL, f"cannot decode the body: {clip(cause.message)}"
        return Failure.DISCONNECTED, f"connection closed {_when(probe)}"
    if isinstance(exc, aiohttp.ClientResponseError):  # the parser's verdict on what came back
        lines = [ln.strip() for ln in exc.message.splitlines() if ln.strip() not in ("", "^")]
        return Failure.PROTOCOL, f"not valid HTTP: {clip(' '.join(lines), 120)}"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Failure.DISCONNECTED, f"connection reset {_when(probe)}"
    if isinstance(exc, aiohttp.ClientOSError):
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return Failure.DISCONNECTED, f"connection reset {_when(probe)}"
        return Failure.DISCONNECTED, f"connection error {_when(probe)}: {os_text(exc)}"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return Failure.DISCONNECTED, f"connection lost {_when(probe)}: {clip(str(exc))}"
    _log_unexpected(exc, target)
    return Failure.PROTOCOL, clip(f"{type(exc).__name__}: {exc}", 160)


_LOGGED: set[tuple[str, str]] = set()  # (target, exception type) already logged; bounded below


def _log_unexpected(exc: Exception, target: Target) -> None:
    """An exception no rule above names is most likely a bug here, not the target's doing: log
    it with its traceback, once per target and exception type, so it is seen but never floods."""
    key = (target.name, type(exc).__name__)
    if key in _LOGGED or len(_LOGGED) >= 1024:
        return
    _LOGGED.add(key)
    log.error("unexpected error in the http check, classified protocol", target=target.name,
              exc_info=exc)
