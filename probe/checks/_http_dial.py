"""Getting a connection for one HTTP hop (`connect`): every address of the name, Happy Eyeballs
style, a forward proxy when the environment or the target names one, and TLS with the
certificate chain's expiry noted.

Addresses (RFC 8305, as curl): when a name has several, the next attempt starts 250 ms after the
previous one unless that one has failed already, the families interleaved; the first to connect
wins and the others are closed. A path that drops SYNs (an IPv6 route that goes nowhere) costs
250 ms, not the probe's whole timeout.

Proxies, as curl and aiohttp's trust_env read them: `http_proxy` / `HTTP_PROXY` (curl takes
the lower case one only, for CGI's sake: no concern of a daemon), `https_proxy` /
`HTTPS_PROXY`, `all_proxy` / `ALL_PROXY`, and `no_proxy` / `NO_PROXY` (`*`, host names
matching as domain suffixes, IP addresses and CIDR ranges); a target's `proxy_url` replaces
them (`proxy_url: none` goes direct). Plain HTTP goes to the proxy in absolute form; HTTPS
through a CONNECT tunnel, timed as the `tunnel` phase. The proxy's address is what resolve and
connect time then, and failures there name the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import ssl
import time
from asyncio.staggered import staggered_race
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from cryptography import x509
from yarl import URL

from probe.checks import Fail, by_protocol, clip, host_port
from probe.checks._http_classify import Progress
from probe.checks._http_request import Hop, is_ip
from probe.outcome import Failure

if TYPE_CHECKING:
    from probe.checks._http_wire import Wire
    from probe.checks._tls_sessions import Handshake

HAPPY_EYEBALLS_DELAY = 0.25  # curl's and RFC 8305's connection attempt delay
MAX_TUNNEL_HEAD = 16 * 1024  # a CONNECT answer's head
_DER = 2  # _ssl.ENCODING_DER, for the internals' Certificate.public_bytes


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    literal: bool
    where: str  # "proxy host:port", as details name it
    authorization: bytes  # a Proxy-Authorization header line from the URL's user:password, or b""


def proxy_for(url: URL, configured: str | None, env: Mapping[str, str]) -> Proxy | None:
    """The proxy a request to `url` goes through (None: direct); `env` the proxy variables
    (probe.checks.proxy_environ)."""
    if configured is not None:
        return None if configured.lower() in ("", "none") else _proxy(configured)
    if not env:
        return None
    scheme = url.scheme
    names = ("http_proxy", "HTTP_PROXY") if scheme == "http" else ("https_proxy", "HTTPS_PROXY")
    value = next((env[n] for n in (*names, "all_proxy", "ALL_PROXY") if env.get(n)), None)
    if value is None or _no_proxy(url.raw_host or "", env.get("no_proxy", env.get("NO_PROXY"))):
        return None
    return _proxy(value)


@lru_cache(maxsize=64)
def _proxy(text: str) -> Proxy:
    url = URL(text if "://" in text else f"http://{text}")
    if url.scheme != "http" or not url.raw_host:
        raise Fail(Failure.PROTOCOL, f"proxy {clip(text, 40)}: not supported (an http:// proxy"
                                     " with a host)")
    host, port = url.raw_host, url.explicit_port or 1080  # curl's default proxy port
    auth = b""
    if url.raw_user is not None:
        pair = f"{unquote(url.raw_user)}:{unquote(url.raw_password or '')}".encode()
        auth = b"Proxy-Authorization: Basic " + base64.b64encode(pair) + b"\r\n"
    return Proxy(host, port, is_ip(host), "proxy " + host_port(url.host, port), auth)


def _no_proxy(host: str, no_proxy: str | None) -> bool:
    if not no_proxy:
        return False
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower().lstrip(".").rstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or entry == host or (entry and host.endswith("." + entry)):
            return True
        if "/" in entry and is_ip(host):
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
    return False


async def dial(loop: asyncio.AbstractEventLoop, hosts: list[str], port: int,
               delay: float = HAPPY_EYEBALLS_DELAY) -> socket.socket:
    """A connected non-blocking socket to the first of `hosts` (IP addresses) to answer; an
    attempt every `delay` s. When all fail: the first refusal, else the first error."""
    if len(hosts) == 1:
        return await _attempt(loop, hosts[0], port, [], None)
    errors: list[OSError] = []
    won: list[socket.socket] = []
    attempts = [partial(_attempt, loop, h, port, errors, won) for h in _interleave(hosts)]
    sock, _, _ = await staggered_race(attempts, delay)
    if sock is not None:
        return sock  # type: ignore[no-any-return]
    refused = [e for e in errors if isinstance(e, ConnectionRefusedError)]
    try:
        raise (refused or errors or [OSError("no address answered")])[0]
    finally:  # the lists hold the error, its traceback this frame: no cycle left behind
        errors = refused = []


async def _attempt(loop: asyncio.AbstractEventLoop, host: str, port: int,
                   errors: list[OSError], won: list[socket.socket] | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, (host, port))
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            errors.append(exc.with_traceback(None))
        raise
    if won is not None:
        if won:  # another attempt connected in the same loop turn: this one is not needed
            sock.close()
            raise OSError("another address connected first")
        won.append(sock)
    return sock


def _interleave(hosts: list[str]) -> list[str]:
    """The resolver's order, the families alternating from the first one (RFC 8305 §4)."""
    first = ":" in hosts[0]
    same = [h for h in hosts if (":" in h) == first]
    other = [h for h in hosts if (":" in h) != first]
    out: list[str] = []
    for i in range(max(len(same), len(other))):
        out += same[i:i + 1] + other[i:i + 1]
    return out


async def tunnel(loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy,
                 target: str) -> None:
    """CONNECT `target` (host:port) through `proxy` on `sock`; Fail(REFUSED) if the proxy says
    no. Nothing may follow the answer's head: in TLS the client speaks first."""
    await loop.sock_sendall(sock, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
        target.encode(), target.encode(), proxy.authorization))
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        data = await loop.sock_recv(sock, 4096)
        if not data:
            raise Fail(Failure.DISCONNECTED, f"{proxy.where} closed the connection before"
                                             f" answering CONNECT {target}")
        head += data
        if len(head) > MAX_TUNNEL_HEAD:
            raise Fail(Failure.PROTOCOL, f"{proxy.where}: CONNECT answer head without end")
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise Fail(Failure.PROTOCOL, f"{proxy.where} answered CONNECT with {clip(line, 40)!r}")
    if not 200 <= int(parts[1]) < 300:
        raise Fail(Failure.REFUSED, f"{proxy.where} refused the tunnel to {target}:"
                                    f" {clip(line, 60)}")
    if not (head.endswith(b"\r\n\r\n") or head.endswith(b"\n\n")):
        raise Fail(Failure.PROTOCOL, f"{proxy.where} sent data after its CONNECT answer")


@lru_cache(maxsize=256)
def _not_after(der: bytes) -> float | None:
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:
        return None


def _chain(ssl_object: Any) -> list[bytes]:
    """The DER certificates of the verified chain (leaf first, the trusted root last), else
    of the chain the server sent (tls_verify off: nothing was verified). Python 3.13 has it
    public; 3.10-3.12 have it on the SSLObject's _ssl internals."""
    for holder in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        for name in ("get_verified_chain", "get_unverified_chain"):
            get = getattr(holder, name, None)
            chain = get() if get is not None else None
            if chain:
                return [c if isinstance(c, bytes) else c.public_bytes(_DER) for c in chain]
    return []


@lru_cache(maxsize=256)
def _expiries(chain: tuple[bytes, ...]) -> tuple[float | None, float | None]:
    """(the earliest notAfter of `chain`, its first certificate's), from the DER bytes: parsed
    once per distinct chain, as a server presents the same one on every probe."""
    dates = [d for d in map(_not_after, chain) if d is not None]
    return (min(dates) if dates else None), _not_after(chain[0])


def _chain_expiries(ssl_object: Any) -> tuple[float | None, float | None]:
    """(the earliest notAfter of the chain, as blackbox_exporter's
    probe_ssl_earliest_cert_expiry: an intermediate expiring first is what breaks clients;
    the server's own certificate's: the chain's first, both for the verified chain and for the
    one the server sent)."""
    if ssl_object is None:
        return None, None
    chain = _chain(ssl_object)
    if not chain:
        leaf = ssl_object.getpeercert(binary_form=True)
        chain = [leaf] if leaf else []
    return _expiries(tuple(chain)) if chain else (None, None)


def _note_expiry(probe: Progress, expiries: tuple[float | None, float | None]) -> None:
    """probe.cert_expiry / probe.leaf_expiry: the earliest over the probe's hops."""
    earliest, expiry = expiries
    if earliest is not None:
        probe.cert_expiry = min(earliest, probe.cert_expiry or earliest)
    if expiry is not None:
        probe.leaf_expiry = min(expiry, probe.leaf_expiry or expiry)


async def _dialled(loop: asyncio.AbstractEventLoop, wire: Wire, hop: Hop, hosts: list[str],
                   port: int, probe: Progress, tls: ssl.SSLContext | None, proxy: Proxy | None,
                   ) -> asyncio.BaseTransport:
    """A transport over the socket dial() won (several addresses raced), through `proxy` if
    any: its CONNECT tunnel for TLS, else the request line in absolute form."""
    sock = await dial(loop, hosts, port)
    try:
        probe.close_phase("connect", time.perf_counter())
        if proxy is not None and tls is not None:
            probe.stage = "tunnel"
            await tunnel(loop, sock, proxy, host_port(hop.host, hop.port))
            probe.close_phase("tunnel", time.perf_counter())
        elif proxy is not None:  # plain HTTP: the request line in absolute form
            wire.via = (b"http://" + host_port(hop.host, hop.port).encode(), proxy.authorization)
        transport, _ = await loop.create_connection(wire, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


async def connect(
    loop: asyncio.AbstractEventLoop, wire: Wire, hop: Hop, tls: ssl.SSLContext | None,
    probe: Progress, handshake_timeout: float, proxy: Proxy | None = None,
    handshake: Handshake | None = None,
) -> None:
    """Resolve (unless an IP literal), connect (every address, Happy Eyeballs: _http_dial), via
    `proxy` if any (its address resolved and connected; a CONNECT tunnel for TLS), and start
    TLS, timing each; OSError / ssl.SSLError escape for the classifier, `probe.stage` telling
    how far it got and `probe.where` with whom (the proxy until the tunnel is open). With
    `handshake`, TLS offers the target's last verified session (_tls_sessions)."""
    host, port, literal = (proxy.host, proxy.port, proxy.literal) if proxy else (
        hop.host, hop.port, hop.literal)
    probe.where = proxy.where if proxy else hop.where
    probe.mark = time.perf_counter()
    if literal:
        hosts = [host]
    else:
        probe.stage = "resolve"
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        probe.close_phase("resolve", time.perf_counter())
        hosts = list(dict.fromkeys(info[4][0] for info in infos))
        if not hosts:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        plan = wire.plan
        hosts = by_protocol(hosts, plan.ip_protocol, plan.ip_fallback, host)
    probe.stage = "connect"
    if len(hosts) == 1 and proxy is None:
        # One address and nothing to say before the request: the loop makes and connects the
        # socket itself, without a Python socket object and a second wrapping step.
        transport, _ = await loop.create_connection(wire, hosts[0], port)
        probe.close_phase("connect", time.perf_counter())
    else:
        transport = await _dialled(loop, wire, hop, hosts, port, probe, tls, proxy)
    probe.where = hop.where
    if tls is not None:
        probe.stage = "tls"
        name = wire.plan.sni(hop)
        try:
            transport = await loop.start_tls(
                transport, wire, tls,
                server_hostname=handshake.server_hostname(name) if handshake else name,
                ssl_handshake_timeout=handshake_timeout,
            )
        finally:
            if handshake is not None:
                handshake.withdraw()
        probe.close_phase("tls", time.perf_counter())
        if transport is None:  # typed Optional by asyncio; treated as a hang-up mid-handshake
            raise ConnectionResetError()
        wire.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if handshake is None:
            _note_expiry(probe, _chain_expiries(ssl_object))
        else:
            probe.handshakes.append(handshake)
            if not handshake.done(ssl_object):
                handshake.expiries = _chain_expiries(ssl_object)
            _note_expiry(probe, handshake.expiries)
    probe.stage = "request"


@lru_cache(maxsize=1)
def _h2_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only the ALPN answer matters
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def h2_only(loop: asyncio.AbstractEventLoop, hop: Hop) -> bool:
    """Whether `hop`'s server, which hung up on an HTTP/1.1 request without a byte, selects h2
    when a handshake offers it (nghttpd, a gRPC or Cloud Run end-to-end HTTP/2 service): one
    more handshake, on that failure only, inside the probe's remaining time."""
    try:
        transport, _ = await loop.create_connection(
            asyncio.Protocol, hop.host, hop.port, ssl=_h2_context(), server_hostname=hop.host)
    except (OSError, ssl.SSLError):
        return False
    try:
        ssl_object = transport.get_extra_info("ssl_object")
        return bool(ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2")
    finally:
        transport.abort()
