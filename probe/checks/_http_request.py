"""What goes out on the wire: one request per hop, its bytes built once per target.

A daemon sends the same request to the same target every few seconds, so the request line,
the headers and the body are joined into bytes when the target's Plan is built; a probe only
adds its credential (a header, or a query parameter in the request line) when it has one.
Redirect hops are built here too, with the semantics aiohttp has (and this check had with it):
303 -> GET (unless HEAD), 301/302 POST -> GET; the Location is joined to the hop's URL.

Requests carry the headers aiohttp sent (`Accept: */*`, `Accept-Encoding: gzip, deflate`) and
always `Connection: close`: every probe opens a fresh connection, so that DNS, connect and TLS
are measured every time and a server that stops accepting is seen.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urljoin, urlsplit

from yarl import URL

from probe.checks import host_port

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULTS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"))
_OURS = frozenset({"host", "connection", "content-length", "transfer-encoding"})
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BREAK = re.compile(r"[\r\n\0]")
# Headers a redirect to another origin must not carry (as aiohttp drops them).
PRIVATE = frozenset({"authorization", "cookie", "proxy-authorization"})


class BadRedirect(ValueError):
    """A Location the check cannot follow: not HTTP(S), or not a URL at all."""


@dataclass(frozen=True, slots=True)
class Hop:
    """One request to one origin: where to connect and the bytes to send."""

    url: URL
    method: str
    host: str  # to connect to and for SNI: IDNA-encoded, an IPv6 address without brackets
    port: int
    tls: bool
    literal: bool  # an IP address: nothing to resolve
    where: str  # host:port as details name it
    origin: tuple[str, str, int]
    line: bytes  # b"GET /path?q": the request line up to the query's end
    rest: bytes  # b" HTTP/1.1\r\nHost: ...\r\n...": every header line but the credential's
    body: bytes
    whole: bytes  # line + rest + blank line + body: the request without a credential

    def request(self, headers: Mapping[str, str] | None, query: Mapping[str, str] | None,
                trace: str | None = None) -> bytes:
        """The request with the probe's credential and `traceparent` value placed (none of
        them: the prebuilt bytes); the header block is spliced, never rebuilt."""
        if not headers and not query and trace is None:
            return self.whole
        line = self.line
        if query:
            line += (b"&" if b"?" in line else b"?") + urlencode(query).encode()
        extra = b""
        if headers:
            extra = "".join(f"{n}: {v}\r\n" for n, v in _checked(headers.items())).encode()
        if trace is not None:
            extra += b"traceparent: " + trace.encode("ascii") + b"\r\n"
        return b"".join((line, self.rest, extra, b"\r\n", self.body))


# Every printable ASCII byte goes as written; only what cannot be on a request line (space,
# controls, non-ASCII) is percent-encoded, as curl does.
_AS_WRITTEN = "".join(chr(c) for c in range(0x21, 0x7F))


def as_written(text: str) -> URL:
    """`text` as a URL whose path and query go on the wire as written: a `%2F`, a `%7E` or a
    signed query's own escapes are not decoded nor re-encoded (yarl's URL() normalises them,
    which breaks signatures and routes that tell `/` from `%2F`). The host is IDNA-encoded, a
    fragment dropped."""
    url = URL(text)  # validates the URL, IDNA-encodes the host
    split = urlsplit(text)
    host = url.raw_host or ""
    return URL.build(
        scheme=url.scheme, user=url.raw_user, password=url.raw_password,
        host=f"[{host}]" if ":" in host else host,  # encoded: the brackets are the caller's
        port=url.explicit_port, path=quote(split.path, safe=_AS_WRITTEN),
        query_string=quote(split.query, safe=_AS_WRITTEN), encoded=True,
    )


def build_hop(method: str, url: URL, headers: Iterable[tuple[str, str]], data: bytes | None) -> Hop:
    """The hop for `url`; ValueError if the URL or a header cannot go on the wire (the message
    never quotes a header's value: it may be a secret)."""
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError(f"not an http(s) URL with a host (scheme {url.scheme or 'none'!r})")
    host, port = url.raw_host, url.port or (443 if url.scheme == "https" else 80)
    method = method.upper()
    if not method.isalpha():
        raise ValueError("the method is not a token")
    checked = list(_checked(headers))
    # A configured Host replaces the URL's (as aiohttp let it): a staging name served behind
    # an address; the connection and SNI still go to the URL's host.
    host_header = next((v for n, v in reversed(checked) if n.lower() == "host"),
                       url.host_port_subcomponent)
    lines = [f"Host: {host_header}"]
    given = [(n, v) for n, v in checked if n.lower() not in _OURS]
    names = {n.lower() for n, _ in given}
    lines += [f"{n}: {v}" for n, v in _DEFAULTS if n.lower() not in names]
    lines += [f"{n}: {v}" for n, v in given]
    body = data or b""
    if data is not None or method not in _BODYLESS:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    line = f"{method} {url.raw_path_qs or '/'}".encode("ascii")
    rest = (" HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in lines)).encode("utf-8")
    return Hop(
        url=url, method=method, host=host, port=port, tls=url.scheme == "https",
        literal=is_ip(host), where=host_port(url.host, port), origin=(url.scheme, host, port),
        line=line, rest=rest, body=body, whole=b"".join((line, rest, b"\r\n", body)),
    )


def is_ip(host: str) -> bool:
    """An IP address (nothing to resolve, and no cookie Domain applies to it)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _checked(headers: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BREAK.search(value):
            raise ValueError(f"header {name[:40]!r}: a line break or NUL in its name or value")
        yield name, value


def redirect_hop(
    hop: Hop, status: int, location: str, headers: Iterable[tuple[str, str]],
    home: tuple[str, str, int],
) -> Hop:
    """The hop a followed redirect leads to. Headers in PRIVATE go only to the origin `home`."""
    try:
        scheme = urlsplit(location).scheme.lower()
        if scheme and scheme not in ("http", "https"):
            raise BadRedirect(f"redirect to a non-HTTP URL ({scheme}:)")
        nxt = as_written(urljoin(str(hop.url), location))  # a relative one joined as curl does
        if not nxt.raw_host:
            raise BadRedirect("redirect to a URL without a host")
    except BadRedirect:
        raise
    except ValueError:
        raise BadRedirect("redirect to an invalid URL") from None
    method, data = hop.method, (hop.body or None)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, data = "GET", None
    port = nxt.port or (443 if nxt.scheme == "https" else 80)
    if (nxt.scheme, nxt.raw_host, port) != home:  # nor a configured Host
        headers = [(n, v) for n, v in headers if n.lower() not in PRIVATE and n.lower() != "host"]
    return build_hop(method, nxt, headers, data)
