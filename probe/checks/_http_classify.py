"""How a failed HTTP probe is named: the progress it made, and the exception that ended it.

The Failure is decided by what went wrong AND how far the probe had got (its `stage`): a timeout
while resolving is `dns`, before a TCP/TLS connection `connect_timeout`, after it `timeout`; an
error while connecting is `refused` (or `connect_timeout` with the OS reason: unreachable and the
like), during the TLS handshake `tls`, after the request `disconnected`. What the transport
itself can name (not valid HTTP, a body over the limit, an undecodable body) it raises as `Fail`
with its failure and detail already decided; check() takes those as they are, never through
classify(). Details never carry a URL's query string.
"""

from __future__ import annotations

import re
import ssl
from typing import TYPE_CHECKING

import structlog

from probe.checks import clip
from probe.config import Target
from probe.config.base import fmt
from probe.outcome import Failure
from probe.redact import NONE, Secrets

if TYPE_CHECKING:
    from probe.checks._tls_sessions import Handshake

log = structlog.get_logger("probe.checks.http")


class Progress:
    """Timing and progress of one probe (all hops), fed by the connection steps, the parser's
    callbacks and check() itself; `stage` is how far it got, for naming a failure."""

    __slots__ = (
        "bytes_read", "cert_expiry", "foreign", "handshakes", "leaf_expiry", "mark", "phases",
        "secrets", "stage", "status", "t_headers", "t_sent", "where",
    )

    def __init__(self, t0: float, where: str, secrets: Secrets = NONE) -> None:
        self.mark = t0  # start of the phase in progress
        self.stage = "start"  # credential, resolve, connect, tls, request, body
        self.where = where  # host:port of the hop in progress
        self.phases: dict[str, float] = {}
        self.t_sent: float | None = None
        self.t_headers: float | None = None
        self.status: int | None = None
        self.cert_expiry: float | None = None  # earliest notAfter of the chains seen
        self.leaf_expiry: float | None = None  # earliest notAfter of the servers' own certs
        self.bytes_read = 0
        self.secrets = secrets  # what the detail must not quote (probe.checks.target_secrets)
        self.foreign = False  # the hop in progress is one whose answer a detail must not quote
        self.handshakes: list[Handshake] = []  # each hop's TLS handshake (_tls_sessions)

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
    if stage == "tunnel":
        return Failure.CONNECT_TIMEOUT, f"{probe.where} opened no tunnel {within}"
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


def disconnected(exc: BaseException | None, probe: Progress) -> tuple[Failure, str]:
    """The connection went away before the answer was complete."""
    if exc is None:
        if probe.stage == "body":
            return Failure.DISCONNECTED, f"connection closed {_when(probe)}"
        return Failure.DISCONNECTED, f"server closed the connection {_when(probe)}"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Failure.DISCONNECTED, f"connection reset {_when(probe)}"
    return Failure.DISCONNECTED, f"connection error {_when(probe)}: {clip(os_text(exc))}"


def classify(exc: Exception, probe: Progress, target: Target) -> tuple[Failure, str]:
    """An exception out of resolving, connecting or the TLS handshake (or an unexpected one)."""
    stage = probe.stage
    if stage == "resolve" and isinstance(exc, OSError):
        host = probe.where.rpartition(":")[0]
        return Failure.DNS, f"cannot resolve {host}: {clip(os_text(exc))}"
    if stage == "connect" and isinstance(exc, OSError):
        if isinstance(exc, ConnectionRefusedError):
            return Failure.REFUSED, f"connection refused by {probe.where}"
        return Failure.CONNECT_TIMEOUT, f"cannot connect to {probe.where}: {clip(os_text(exc))}"
    if stage == "tls" and isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or os_text(exc)
        return Failure.TLS, f"certificate verify failed: {clip(why)}"
    if stage == "tls" and isinstance(exc, OSError | EOFError):
        return Failure.TLS, f"TLS handshake with {probe.where} failed: {clip(os_text(exc))}"
    if isinstance(exc, OSError):  # after the handshake: the transport reports these itself
        return disconnected(exc, probe)
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
