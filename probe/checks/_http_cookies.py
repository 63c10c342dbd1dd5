"""The cookies of one probe: set on a redirect hop, sent on the next hops (a login redirect
sets a session cookie and sends the probe on to the page that needs it), never kept between
probes, so every probe starts as a new visitor.

The rules are curl's cookie engine's (RFC 6265 §5): a cookie without Domain goes back to its
host only; with Domain, to that domain and its subdomains (never to an IP address, nor a
Domain the setting host is not inside); Path defaults to the request path's directory and
matches by prefix on a `/` boundary; Secure ones go over https only; Max-Age <= 0 or an
Expires in the past deletes. Bounded: at most MAX_COOKIES, each at most MAX_COOKIE bytes.
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime

from yarl import URL

from probe.checks._http_request import is_ip

MAX_COOKIES = 50
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
MAX_COOKIE = 4096


class Jar:
    """Cookies by (domain, path, name): (value, host_only, secure)."""

    __slots__ = ("cookies",)

    def __init__(self) -> None:
        self.cookies: dict[tuple[str, str, str], tuple[str, bool, bool]] = {}

    def store(self, url: URL, set_cookies: list[bytes]) -> None:
        host = (url.raw_host or "").lower().rstrip(".")
        for raw in set_cookies:
            if len(raw) <= MAX_COOKIE:
                self._one(host, url.raw_path or "/", raw.decode("latin-1"))

    def header(self, url: URL) -> str | None:
        """The Cookie header value for a request to `url`, None if no cookie matches."""
        host = (url.raw_host or "").lower().rstrip(".")
        path = url.raw_path or "/"
        secure = url.scheme == "https"
        pairs = [
            (len(cpath), f"{name}={value}")
            for (domain, cpath, name), (value, host_only, only_tls) in self.cookies.items()
            if (host == domain or (not host_only and host.endswith("." + domain)))
            and _path_match(path, cpath) and (secure or not only_tls)
        ]
        pairs.sort(key=lambda p: -p[0])  # longer paths first (RFC 6265 §5.4)
        return "; ".join(p for _, p in pairs) or None

    def _one(self, host: str, request_path: str, line: str) -> None:
        first, *attrs = line.split(";")
        name, eq, value = first.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not _PRINTABLE.fullmatch(name + value):
            return  # nothing that could break the Cookie line (the head parser is lenient)
        domain, path, secure, gone = "", "", False, False
        for attr in attrs:
            key, _, val = attr.partition("=")
            key, val = key.strip().lower(), val.strip()
            if key == "domain" and val:
                domain = val.lower().lstrip(".").rstrip(".")
            elif key == "path" and val.startswith("/"):
                path = val
            elif key == "secure":
                secure = True
            elif key == "max-age":
                gone = val.lstrip("-").isdigit() and int(val) <= 0
            elif key == "expires" and not gone:
                gone = _past(val)
        if domain:
            if is_ip(host) or not (host == domain or host.endswith("." + domain)):
                return  # a Domain the host is not inside: refused, as curl does
        if not path:  # default-path: the request path up to its last /
            path = request_path[: request_path.rfind("/")] or "/"
        key = (domain or host, path, name)
        if gone:
            self.cookies.pop(key, None)
        elif key in self.cookies or len(self.cookies) < MAX_COOKIES:
            self.cookies[key] = (value, not domain, secure)


def _path_match(path: str, cookie_path: str) -> bool:
    if path == cookie_path:
        return True
    return path.startswith(cookie_path) and (
        cookie_path.endswith("/") or path[len(cookie_path)] == "/")


def _past(date: str) -> bool:
    try:
        return parsedate_to_datetime(date).timestamp() <= time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
