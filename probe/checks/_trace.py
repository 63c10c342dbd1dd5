"""W3C Trace Context: a `traceparent` header on every probe request and upgrade.

A failed probe then names the trace id its request carried (the Outcome, the failure's log
line, the JSON verdict), so the request can be found in the backend's traces (Cloud Trace,
Tempo) without any tracing SDK here: the probe is a client that starts a sampled trace.

Format (https://www.w3.org/TR/trace-context/#traceparent-header): version `00`, a 16-byte
trace id and an 8-byte parent id in lowercase hex (never all zeros), flags `01` (sampled, so a
backend that samples by the caller's decision keeps the failed request's trace).

The ids come from `random.getrandbits` (Mersenne Twister, ~0.3 µs per id): they must be unique,
not secret, and a probe must not pay for the OS's CSPRNG (bench/trace_cost.py measures it).
A target that configures its own `traceparent` header keeps it and gets none of ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from random import getrandbits

HEADER = "traceparent"


def new_trace_id() -> str:
    """32 lowercase hex digits, not all zeros."""
    return f"{getrandbits(128) or 1:032x}"


def traceparent(trace_id: str) -> str:
    """A `traceparent` value for one request of the trace `trace_id` (its own parent id)."""
    return f"00-{trace_id}-{getrandbits(64) or 1:016x}-01"


def configured(headers: Iterable[str]) -> bool:
    """Whether a target's header names include its own `traceparent` (any case): it is sent as
    written, and the probe reports no trace id (a configured header value is treated as a
    secret, never quoted)."""
    return any(name.lower() == HEADER for name in headers)
