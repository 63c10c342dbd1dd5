"""Probers, one module per kind, every one with the same signature.

    async def check(target: Target, ctx: CheckContext) -> Outcome

A check never raises for anything the target does: every failure becomes an Outcome with a
Failure from the closed vocabulary. Checks know nothing of metrics or readiness.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module
from pathlib import Path

from probe.config import Target
from probe.credentials import Credentials
from probe.outcome import Outcome

Check = Callable[[Target, "CheckContext"], Awaitable[Outcome]]

_MODULES = {"http": "probe.checks.http", "websocket": "probe.checks.websocket"}


@dataclass
class CheckContext:
    """What a check needs beyond its target: credentials and the expected build, if any."""

    credentials: Credentials = field(default_factory=Credentials)
    expect_version: str | None = None


def checker_for(target: Target) -> Check:
    module = import_module(_MODULES[target.kind])
    return module.check  # type: ignore[no-any-return]


@lru_cache(maxsize=64)
def ssl_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """One SSLContext per (verify, CA file): building one loads the trust store; never per probe."""
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
