"""Probers, one module per kind, every one with the same signature.

    async def check(target: Target, ctx: CheckContext) -> Outcome

A check never raises for anything the target does: every failure becomes an Outcome with a
Failure from the closed vocabulary. Checks know nothing of metrics or readiness.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from probe import __version__
from probe.checks._tls_sessions import TlsSessions, resumable
from probe.config import Target
from probe.config.http import TLS_VERSIONS
from probe.credentials import Attached, Credentials
from probe.outcome import Failure, Outcome
from probe.redact import KNOWN, Secrets, clip

__all__ = ["clip"]  # re-exported: the checks import it from here

USER_AGENT = f"stageprobe/{__version__}"

Check = Callable[[Target, "CheckContext"], Awaitable[Outcome]]

_MODULES = {"http": "probe.checks.http", "websocket": "probe.checks.websocket",
            "flow": "probe.checks.flow"}
Answer = Callable[[list[tuple[bytes, bytes]], bytes], None]  # an HTTP answer's headers, body


PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY", "no_proxy", "NO_PROXY")


def proxy_environ() -> dict[str, str]:
    """The proxy variables the process has (probe.checks._http_dial.proxy_for reads them), taken
    once per CheckContext (a daemon's start or reload, one `probe check`): the environment of a
    running process does not change, and reading it per probe is a visible share of a plain
    probe's CPU (bench/profile_daemon.py)."""
    return {name: os.environ[name] for name in PROXY_VARIABLES if os.environ.get(name)}


@dataclass
class CheckContext:
    """What a check needs beyond its target: credentials and the expected build, if any."""

    credentials: Credentials = field(default_factory=Credentials)
    expect_version: str | None = None
    answer: Answer | None = None  # handed a successful HTTP answer (a flow step's extract)
    tls_sessions: TlsSessions = field(default_factory=TlsSessions)  # resumption, per daemon
    proxy_env: dict[str, str] = field(default_factory=proxy_environ)


def checker_for(target: Target) -> Check:
    module = import_module(_MODULES[target.kind])
    return module.check  # type: ignore[no-any-return]


@lru_cache(maxsize=64)
def ssl_context(verify: bool, ca_file: Path | None, min_version: str | None = None,
                cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """One SSLContext per distinct TLS settings (verify, CA file, minimum version, client
    certificate): building one loads the trust store; never per probe."""
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if min_version is not None:
        ctx.minimum_version = TLS_VERSIONS[min_version]
    if cert_file is not None:  # mTLS: the client certificate a server asks for
        ctx.load_cert_chain(cert_file, key_file)
    return resumable(ctx)


def tls_context(target: Target) -> ssl.SSLContext:
    """The target's SSLContext (see ssl_context); OSError / ssl.SSLError if a file of it
    cannot be loaded, which the checks name with tls_files(). Remembered per Target object
    once loaded, as every probe asks (hashing the settings' paths for ssl_context's cache is
    not free); a file that fails is tried again on the next probe."""
    ctx = recall(_TLS_CONTEXTS, target)
    if ctx is None:
        ctx = keep(_TLS_CONTEXTS, target, ssl_context(
            target.tls_verify, target.ca_file, target.tls_min_version, target.cert_file,
            target.key_file))
    return ctx


def tls_files(target: Target) -> str:
    """The TLS files a target names, as a failure to load them is worded."""
    named = [f"{key} {path}" for key, path in (("ca_file", target.ca_file),
             ("cert_file", target.cert_file), ("key_file", target.key_file)) if path]
    return ", ".join(named) or "the system trust store"


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


_TLS_CONTEXTS: PerObject[ssl.SSLContext] = {}


# --- what every check's details share ---------------------------------------------------------


def host_port(host: str | None, port: int | None) -> str:
    """`host:port` as a detail names a peer, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if host and ":" in host else f"{host}:{port}"


def scrub(detail: str, *secrets: Secrets) -> str:
    """No query strings, no secret in any form (see probe.redact), one line, short: applied to
    every failure detail just before it leaves a check, whatever built it."""
    detail = _URL_QUERY.sub(r"\1", detail)
    for known in secrets:
        detail = known.mask(detail)
    return clip(detail, 200)


_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s?#'\"]*)[?#][^\s'\"]*")

_BASE: PerObject[Secrets] = {}
_FULL: PerObject[Secrets] = {}


def target_secrets(target: Target, credentials: Credentials, attached: Attached | None = None
                   ) -> Secrets:
    """Everything a detail about `target` must never quote, in any form (see probe.redact):
    every configured header value (but Host: an address, not a secret) whole and without its
    scheme word, every query value of the URL, its userinfo (user, password, `user:password`
    and the Basic value built from it), the static secrets of the target's credential (a
    bearer token, a JWT secret, a client secret) and, once `attached`, the token and the
    header or query value that carries it.

    One path for every check, computed once per target (and once per token), cached until the
    Target is collected, and known meanwhile to the log processor (probe.redact.KNOWN)."""
    stamp = id(credentials)
    base = recall(_BASE, target, stamp)
    if base is None:
        base = keep(_BASE, target, Secrets(_configured(target, credentials)), stamp)
        KNOWN.add(target, base)
    if attached is None or not attached.token:
        return base
    stamp = (stamp, attached.token)
    full = recall(_FULL, target, stamp)
    if full is None:
        full = keep(_FULL, target, Secrets.merge((base, Secrets(attached.secrets()))), stamp)
        KNOWN.add(target, full)
    return full


def _configured(target: Target, credentials: Credentials) -> list[str]:
    values = [v for k, v in target.headers.items() if k.lower() != "host"]
    values += [v.partition(" ")[2] for v in values]
    parts = urlsplit(target.url)
    for part in (parts.query, parts.fragment):
        values += [v for _, v in parse_qsl(part, keep_blank_values=True)]
    if parts.username is not None or parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        values += [user, password, f"{user}:{password}", basic, f"Basic {basic}"]
    for proxy in (getattr(target, "proxy_url", None), *map(os.environ.get, _PROXY_VARS)):
        parts = urlsplit(proxy if proxy and "://" in proxy else "")
        if parts.password is not None:  # a proxy's user:password (its Proxy-Authorization)
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password)}"
            values += [unquote(parts.password), pair, base64.b64encode(pair.encode()).decode()]
    if target.credential is not None:
        values += credentials.secrets(target.credential)
    return values


_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
               "ALL_PROXY")


def by_protocol(hosts: list[str], ip_protocol: str | None, fallback: bool, name: str
                ) -> list[str]:
    """`hosts` with the preferred family's addresses first (`ip_protocol`), the other family's
    after them only with `fallback`; a resolver answer with none left is a `dns` failure."""
    if ip_protocol is None:
        return hosts
    want6 = ip_protocol == "ip6"
    preferred = [h for h in hosts if (":" in h) == want6]
    out = preferred + ([h for h in hosts if (":" in h) != want6] if fallback else [])
    if not out:
        family = "IPv6" if want6 else "IPv4"
        raise socket.gaierror(socket.EAI_NONAME, f"no {family} address for {name} "
                              f"(ip_protocol: {ip_protocol}, ip_protocol_fallback: false)")
    return out
