"""Probers, one module per kind, every one with the same signature.

    async def check(target: Target, ctx: CheckContext) -> Outcome

A check never raises for anything the target does: every failure becomes an Outcome with a
Failure from the closed vocabulary. Checks know nothing of metrics or readiness.
"""

from __future__ import annotations

import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, TypeVar

from probe import __version__
from probe.config import Target
from probe.credentials import Credentials
from probe.outcome import Failure, Outcome

USER_AGENT = f"stageprobe/{__version__}"

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
    """One SSLContext per (verify, CA file): building one loads the trust store; never per
    probe."""
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return ctx


class Fail(Exception):
    """A failure already named (from the closed vocabulary, with its one-line detail and the
    status / close code seen): raised inside a check, turned into its Outcome by check()."""

    def __init__(
        self, failure: Failure, detail: str, *, status: int | None = None, close: int | None = None
    ) -> None:
        super().__init__(detail)
        self.failure, self.detail, self.status, self.close = failure, detail, status, close


# --- what a check derives once per config object ---------------------------------------------

_V = TypeVar("_V")
PerObject = dict[int, tuple[weakref.ref[Any], object, _V]]


def recall(store: PerObject[_V], obj: object, stamp: object = None) -> _V | None:
    """What `keep` stored for `obj` (built for `stamp`), or None.

    Keyed by id(): the config models are frozen but hold dicts, so they cannot be hashed. The
    entry goes when `obj` is garbage collected (a reload builds new objects), so neither a
    changed config nor a reused id ever sees a stale value."""
    held = store.get(id(obj))
    if held is not None and held[0]() is obj and held[1] == stamp:
        return held[2]
    return None


def keep(store: PerObject[_V], obj: object, value: _V, stamp: object = None) -> _V:
    """Store `value` for `obj` (and `stamp`) until `obj` goes; returns `value`."""
    key = id(obj)

    def forget(ref: weakref.ref[Any], key: int = key) -> None:
        held = store.get(key)
        if held is not None and held[0] is ref:
            del store[key]

    store[key] = (weakref.ref(obj, forget), stamp, value)
    return value


# --- what every check's details share ---------------------------------------------------------


def host_port(host: str | None, port: int | None) -> str:
    """`host:port` as a detail names a peer, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clip(text: str, limit: int = 80) -> str:
    """`text` on one line (control characters dropped, whitespace collapsed), at most `limit`
    characters: a detail is one line whatever the peer sent."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s?#'\"]*)[?#][^\s'\"]*")


def scrub(detail: str, secrets: list[str]) -> str:
    """No query strings, no credential values, one line, short: applied to every failure detail
    just before it leaves a check, whatever built it."""
    detail = _URL_QUERY.sub(r"\1", detail)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 8:  # also catches a secret cut short by clip()
            detail = re.sub(re.escape(secret[:8]) + r"\S*", "***", detail)
        elif secret:
            detail = detail.replace(secret, "***")
    return clip(detail, 200)
