"""TLS session resumption between the probes of one target, bounded by the evidence's age.

Why resume at all: a full handshake is most of an HTTPS probe's CPU (the ECDHE key exchange,
the chain's signatures, OpenSSL's bookkeeping), on the prober and on the staging server alike;
a resumed one (TLS 1.3 PSK with (EC)DHE, or a TLS 1.2 session) skips the certificate and its
verification. Browsers and most HTTP clients resume too, so a resumed probe still meets what a
real client meets. Each probe keeps a fresh TCP connection (see probe.checks.http). Used by
the HTTP/1.1 check (every hop) and the WebSocket check (every session of a wss target).

Why bounded: on a resumed handshake the server sends no certificate, so a chain that broke
since (expired, replaced by one for another name, signed by another CA, while the server or its
load balancer still accepts the old ticket) would go unseen. So a target resumes only a session
whose chain was verified by a full handshake less than `target.stale_after` ago (two missed
results plus the time a probe may take: the same age past which a probe's result no longer
counts for readiness), and only after a probe that succeeded; a failed probe, a reloaded target,
an expired memory or a server that declines the ticket make the next handshake a full one. The
certificate expiries a resumed probe reports are those of that last full handshake.

How the session reaches the handshake: the event loop (uvloop or asyncio) creates the SSLObject
inside `start_tls` through `SSLContext.wrap_bio`, with no way to pass a session. The contexts are
shared between targets, so the session travels with the one argument that is per call: the
`server_hostname` string. Each offer uses a string object of its own (equal to the name, so SNI
and the verified name are unchanged), and the context's wrap_bio looks the offer up by that
object's identity. An offer that wrap_bio never took (the handshake was cancelled before it
started) is withdrawn by the probe. Sessions are read and offered through _tls_native (OpenSSL's
own copy, not CPython's round trip through DER, where that holds).
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probe.checks import _tls_native
from probe.config import Target

# id(server_hostname string) -> (that string, the session to offer); see the module docstring
_OFFERS: dict[int, tuple[str, object]] = {}
# Full handshakes without an offer after 1, 2+ declined offers in a row. A declined offer costs
# more than a plain full handshake (a bigger ClientHello, and the new session is read for the
# next offer: ~0.13 ms where CPython's copy through DER is used), and a server that declines twice
# (load-balanced replicas without a shared ticket key, a server whose tickets never resume)
# mostly keeps on.
_SKIP_AFTER_DECLINES = (0, 3, 255)


def resumable(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """`ctx`, whose wrap_bio now offers a session handed over with `Handshake.server_hostname`.
    An instance attribute, so the context stays what ssl.create_default_context() made."""
    wrap_bio = ctx.wrap_bio

    def wrap_bio_offering(incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                          server_side: bool = False, server_hostname: str | None = None,
                          session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        offer = _OFFERS.pop(id(server_hostname), None) if server_hostname else None
        conn = wrap_bio(incoming, outgoing, server_side=server_side,
                        server_hostname=server_hostname, session=session)
        if offer is not None and offer[0] is server_hostname and session is None:
            _tls_native.SESSIONS.offer(conn, offer[1], ctx)
        return conn

    ctx.wrap_bio = wrap_bio_offering  # type: ignore[method-assign]
    return ctx


@dataclass(slots=True)
class _Memory:
    """A target's last verified session with one server (host, port)."""

    target: Target  # the definition it was made for: a reloaded target starts over
    ctx: ssl.SSLContext  # a session resumes only with the context that made it
    session: object | None  # from _tls_native.SESSIONS.read; None while offers are skipped
    verified_at: float  # time.monotonic() of the full handshake that verified the chain
    cert_expiry: float | None
    leaf_expiry: float | None
    declined: int = 0  # offers the server declined in a row (a server without shared keys)
    skip: int = 0  # handshakes to make without an offer before the next one


@dataclass(slots=True)
class Handshake:
    """One hop's TLS handshake of one probe: what was offered, what happened."""

    key: tuple[str, str, int]
    ctx: ssl.SSLContext
    clock: Callable[[], float]
    memory: _Memory | None  # the target's fresh memory of this server, if any
    offered: bool = False  # its session went into the ClientHello
    ssl_object: Any = None
    resumed: bool = False
    at: float = 0.0  # time.monotonic() when the handshake finished
    expiries: tuple[float | None, float | None] = (None, None)  # (chain's earliest, leaf's)
    _name: str | None = None

    def server_hostname(self, name: str) -> str:
        """The string to pass as start_tls's server_hostname: `name` itself, or, to offer the
        remembered session, an equal string object of this handshake's own."""
        memory = self.memory
        if memory is None or len(name) < 2:  # a 1-character str is a shared object
            return name
        if memory.skip or memory.session is None:
            memory.skip = max(0, memory.skip - 1)
            return name
        own = name.encode().decode()
        _OFFERS[id(own)] = (own, memory.session)
        self._name, self.offered = own, True
        return own

    def withdraw(self) -> None:
        """Forget an offer wrap_bio did not take (a cancelled or failed start)."""
        if self._name is not None:
            offer = _OFFERS.get(id(self._name))
            if offer is not None and offer[0] is self._name:
                del _OFFERS[id(self._name)]
            self._name = None

    def done(self, ssl_object: Any) -> bool:
        """The handshake finished on `ssl_object`; whether it resumed the offered session (then
        `expiries` are the remembered ones: the server sent no chain; else the caller sets them
        from the chain it verified)."""
        self.ssl_object, self.at = ssl_object, self.clock()
        memory = self.memory
        self.resumed = bool(self.offered and memory is not None and ssl_object is not None
                            and ssl_object.session_reused)
        if self.resumed and memory is not None:
            self.expiries = memory.cert_expiry, memory.leaf_expiry
        return self.resumed


class TlsSessions:
    """Per daemon (in CheckContext): each target's last verified session per server, at most
    `limit` of them (the oldest used goes first)."""

    def __init__(self, limit: int = 16384, clock: Callable[[], float] = time.monotonic) -> None:
        self._known: OrderedDict[tuple[str, str, int], _Memory] = OrderedDict()
        self._limit, self._clock = limit, clock

    def __len__(self) -> int:
        return len(self._known)

    def handshake(self, target: Target, host: str, port: int, ctx: ssl.SSLContext
                  ) -> Handshake:
        """The handshake about to start for `target` with `host`:`port`: offering the last
        session when it is still fresh evidence (see the module docstring)."""
        key = (target.name, host, port)
        if not target.tls_resume:
            return Handshake(key, ctx, self._clock, None)
        memory = self._known.get(key)
        if memory is not None:
            if (memory.target is not target or memory.ctx is not ctx
                    or self._clock() - memory.verified_at >= target.stale_after):
                del self._known[key]
                memory = None
        return Handshake(key, ctx, self._clock, memory)

    def settle(self, target: Target, handshakes: list[Handshake], ok: bool) -> None:
        """After a probe: keep each hop's session when the probe succeeded (a full handshake
        resets the evidence's age, a resumed one keeps it), else forget the target's."""
        if not target.tls_resume:
            return
        if not ok:
            for hs in handshakes:
                self._known.pop(hs.key, None)
            return
        for hs in handshakes:
            old = hs.memory
            if hs.resumed and old is not None:  # the evidence keeps its age, the ticket its use
                old.declined = 0
                self._known[hs.key] = old
                self._known.move_to_end(hs.key)
                continue
            declined = skip = 0
            if old is not None and hs.offered:  # declined: see _SKIP_AFTER_DECLINES
                declined = old.declined + 1
                skip = _SKIP_AFTER_DECLINES[min(declined, len(_SKIP_AFTER_DECLINES) - 1)]
            elif old is not None:  # a handshake without an offer (skipped): no news
                declined, skip = old.declined, old.skip
            # Read only when the next handshake will offer it (see _tls_native for its cost).
            session = (_tls_native.SESSIONS.read(hs.ssl_object, hs.ctx)
                       if skip == 0 and hs.ssl_object is not None else None)
            if session is None and skip == 0:
                self._known.pop(hs.key, None)
                continue
            self._known[hs.key] = _Memory(target, hs.ctx, session, hs.at, *hs.expiries,
                                          declined, skip)
            self._known.move_to_end(hs.key)
            while len(self._known) > self._limit:
                self._known.popitem(last=False)

