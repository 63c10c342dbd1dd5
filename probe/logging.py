"""structlog setup: JSON with a `severity` field for Cloud Logging, console lines for a terminal.

Two rules that shape this module:
- a target's state change is one log line with its reason (log_transition), never one line per
  probe: a prober that logs every probe buries the one line that matters;
- nothing that looks like a credential reaches a log line: every event passes through `redact`,
  which masks bearer tokens, JWTs and secret-looking query parameters, including in tracebacks,
  and every secret this process knows (probe.redact.KNOWN: configured header, query and userinfo
  values, credential secrets and tokens) in every form, in the event's values and again in the
  rendered line (a value the renderer escaped or nested is masked there too).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, TextIO

import structlog

from probe.readiness import Transition
from probe.redact import KNOWN

_SEVERITY = {
    "debug": "DEBUG", "info": "INFO", "warning": "WARNING", "warn": "WARNING",
    "error": "ERROR", "critical": "CRITICAL", "exception": "ERROR",
}
_SECRETS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 [redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (
        re.compile(
            r"(?i)\b(access_token|id_token|refresh_token|token|client_secret|secret|password|"
            r"api_key|apikey|key)=([^&\s'\"]+)"
        ),
        r"\1=[redacted]",
    ),
]


def scrub(text: str) -> str:
    """`text` with anything credential-shaped, and every known secret, masked."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return KNOWN.mask(text)


def _scrubbed(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth < 4 and isinstance(value, list | tuple):
        return [_scrubbed(v, depth + 1) for v in value]
    if depth < 4 and isinstance(value, dict):
        return {k: _scrubbed(v, depth + 1) for k, v in value.items()}
    if isinstance(value, BaseException):  # an exception's message, not its live object
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if key != "exc_info":
            event[key] = _scrubbed(value)
    return event


def _mask_line(_: Any, __: str, line: str) -> str:
    """The rendered line, masked once more: the last step before it is written."""
    return KNOWN.mask(line)


def _severity(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    level = event.pop("level", method)
    event["severity"] = _SEVERITY.get(str(level).lower(), str(level).upper())
    return event


class _SafePrintLogger(structlog.PrintLogger):
    """A PrintLogger that never raises: a closed or broken stderr (a pipe whose reader went away)
    must not turn a log call into an exception in a signal handler or a probe loop."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except (OSError, ValueError):
            pass

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _SafePrintLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _SafePrintLogger:
        return _SafePrintLogger(self._file)


def choose_format(explicit: str | None = None, stream: TextIO | None = None) -> str:
    """PROBE_LOG_FORMAT when set, else console on a terminal and JSON everywhere else."""
    fmt = explicit or os.environ.get("PROBE_LOG_FORMAT", "").strip().lower()
    if fmt in ("json", "console"):
        return fmt
    stream = stream or sys.stderr
    return "console" if hasattr(stream, "isatty") and stream.isatty() else "json"


def _color(stream: TextIO) -> bool:
    """Console colours on a terminal only, and never with NO_COLOR set (no-color.org)."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def configure(fmt: str | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and route stdlib logging (aiohttp, asyncio) through the same renderer."""
    stream = stream or sys.stderr
    fmt = choose_format(fmt, stream)
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # `time` (RFC 3339) is the field Cloud Logging takes as the entry's timestamp
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time" if fmt == "json"
                                         else "timestamp"),
    ]
    if fmt == "json":
        tail: list[Any] = [
            structlog.processors.format_exc_info, redact, _severity,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(), _mask_line,
        ]
    else:
        tail = [structlog.processors.format_exc_info, redact,
                structlog.dev.ConsoleRenderer(colors=_color(stream)), _mask_line]
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_SafePrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name,
                               structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))  # libraries: warnings and up only
    logging.getLogger("aiohttp.access").disabled = True


def log_transition(transition: Transition, stale_for: float | None = None) -> None:
    """One line per state change of a target, with the reason when it is a failure.
    `stale_for`: a result ended staleness (old `stale`), this long after the one before it."""
    log = structlog.get_logger("probe.readiness")
    fields: dict[str, Any] = {
        "target": transition.target, "old": transition.old, "new": transition.new,
    }
    if stale_for is not None:
        fields["stale_for"] = round(stale_for, 1)
    if transition.failure is not None:
        fields["failure"] = str(transition.failure)
    if transition.detail:
        fields["detail"] = transition.detail
    if transition.trace_id is not None and transition.failure is not None:
        fields["trace_id"] = transition.trace_id  # the failed request in the backend's traces
    if transition.new == "failing":
        # the reason is in `message` too: Cloud Logging's summary line shows only `message`
        why = f"{transition.failure}: {transition.detail}" if transition.detail else (
            str(transition.failure))
        log.warning(f"target {transition.target} is failing: {why}", **fields)
    elif transition.old == "stale":
        gap = f", the first in {stale_for:.1f}s" if stale_for is not None else ""
        log.info(f"target {transition.target} is {transition.new}: a fresh result{gap}",
                 **fields)
    else:
        log.info(f"target {transition.target} is {transition.new}", **fields)
