"""Tokens fetched over HTTP: the OAuth2 client-credentials grant and a login at the auth service.

One fetch path for both (`_Fetched`): one aiohttp session per credential, the whole exchange
under the credential's timeout, the answer read up to 64 KiB, every transport failure named by
the server's kind and address (never its query or userinfo), one in-flight fetch shared by the
concurrent callers, the token cached until shortly before it expires and dropped when a target
rejects it (`invalidate`). Each kind only builds its request and reads its answer.

Every token obtained is known to the log processor (probe.redact.KNOWN) for as long as it is
the credential's, so a token a target echoes is masked in every output, not only in a check's
detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import structlog

from probe.config.base import fmt
from probe.config.credentials import LoginSpec, OAuth2Spec
from probe.redact import KNOWN, Secrets, clip

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
_MAX_TOKEN_ANSWER = 64 * 1024  # bytes read from a token endpoint; a token answer is small
_DEFAULT_OAUTH_LIFETIME = 60.0  # seconds to keep a token whose answer has no expires_in


class CredentialError(Exception):
    """No credential could be obtained; the message names the credential, never its value."""


def margin(lifetime: float) -> float:
    """How long before expiry a cached token is replaced: a tenth of its life, at most 60 s."""
    return min(60.0, lifetime / 10)


def where(url: str) -> str:
    """`scheme://host:port/path` of `url`: how a detail names a server (no userinfo, query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class Provider:
    """One credential; `get` returns a currently valid token or raises CredentialError."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, reason: str) -> CredentialError:
        return CredentialError(f"credential {self.name}: {reason}")

    async def get(self) -> str:
        raise NotImplementedError

    def invalidate(self, token: str) -> bool:
        """A target rejected `token`: obtain a new one next time (if it is still the cached
        one; a token a concurrent caller already replaced stays). True if one was dropped."""
        return False

    def source(self) -> str:
        """How a detail names this credential and where its token comes from, to go between
        `credential ` and ` was sent`."""
        return self.name

    async def aclose(self) -> None:
        """Release what the provider holds (an HTTP session)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Fetched(Provider):
    """A token fetched over HTTP; concurrent callers share one in-flight fetch."""

    what = "token endpoint"  # how details name the server

    def __init__(self, name: str, url: str, timeout: float, clock: Clock) -> None:
        super().__init__(name)
        self._url, self._timeout, self._clock = url, timeout, clock
        self._where = where(url)
        self._cached: tuple[str, float] | None = None  # (token, replace at, monotonic)
        self._inflight: asyncio.Task[str] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def get(self) -> str:
        if self._cached is not None and self._clock() < self._cached[1]:
            return self._cached[0]
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight.add_done_callback(_retrieve)
        try:
            # shield: a caller cancelled by its probe's timeout leaves the fetch to the others.
            return await asyncio.shield(self._inflight)
        except CredentialError as exc:
            raise CredentialError(str(exc)) from None  # a fresh exception per caller

    def invalidate(self, token: str) -> bool:
        if self._cached is None or self._cached[0] != token:
            return False
        self._cached = None
        # debug: the failing probe's own line already says so, once per probe would be noise
        log.debug("credential token rejected by a target; obtaining a new one next",
                  credential=self.name)
        return True

    def _request(self) -> dict[str, Any]:
        """aiohttp request arguments: method, data or json, headers."""
        raise NotImplementedError

    def _accept(self, status: int, body: bytes) -> str:
        """The token of this answer (cached with `_keep`), or CredentialError."""
        raise NotImplementedError

    def _document(self, status: int, body: bytes, said: tuple[str, ...]) -> dict[str, Any]:
        """The answer's JSON object, or CredentialError: its status when not 2xx (with what an
        error answer says under the keys `said`), or that it is no JSON object."""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not 200 <= status < 300:
            raise self.fail(f"{self.what} answered HTTP {status}{self._said(doc, said)}")
        if not isinstance(doc, dict):
            raise self.fail(f"{self.what} answered with a body that is not a JSON object")
        return doc

    def _own(self) -> Secrets:
        """This credential's configured secrets, masked in anything quoted from an answer."""
        return Secrets()

    async def _fetch(self) -> str:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=True)  # proxies from the env
        what, at = self.what, self._where
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.request(
                    url=self._url, allow_redirects=False, **self._request()
                ) as resp:
                    status = resp.status
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(8192):
                        body += chunk
                        if len(body) > _MAX_TOKEN_ANSWER:
                            raise self.fail(f"{what} answer is larger than 64 KiB")
        except TimeoutError:
            raise self.fail(f"{what} {at} did not answer within {fmt(self._timeout)}") from None
        except aiohttp.ClientConnectorError as exc:
            err = exc.os_error  # asyncio's strerror is "Connect call failed (addr)": errno's
            reason = os.strerror(err.errno) if err.errno else err.strerror or type(err).__name__
            raise self.fail(f"cannot reach the {what} {at}: {reason}") from None
        except aiohttp.ServerDisconnectedError:
            raise self.fail(f"{what} {at} closed the connection") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise self.fail(f"token request to {at} failed ({type(exc).__name__})") from None
        return self._accept(status, bytes(body))

    def _keep(self, token: str, lifetime: float) -> str:
        lifetime = max(lifetime, 0.0)
        self._cached = (token, self._clock() + lifetime - margin(lifetime))
        KNOWN.add(self, Secrets([token]))  # replaces the previous token's set
        log.debug("credential token fetched", credential=self.name, expires_in=lifetime)
        return token

    def _said(self, doc: Any, keys: tuple[str, ...]) -> str:
        """` (error: description)` of an error answer, clipped and with this credential's
        secrets (and anything else known secret) masked: a hostile server may echo them."""
        if not isinstance(doc, dict):
            return ""
        said = [clip(v, 60) for v in (doc.get(k) for k in keys) if isinstance(v, str) and v.strip()]
        if not said:
            return ""
        return f" ({KNOWN.mask(self._own().mask(': '.join(said)))})"

    async def aclose(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, CredentialError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retrieve(task: asyncio.Task[str]) -> None:
    """Mark a fetch's exception as seen: when every caller was cancelled, nobody awaits it."""
    if not task.cancelled():
        task.exception()


class OAuth2(_Fetched):
    """OAuth2 client-credentials grant."""

    def __init__(self, name: str, spec: OAuth2Spec, clock: Clock) -> None:
        super().__init__(name, spec.token_url, spec.timeout, clock)
        self.spec = spec

    def source(self) -> str:
        return f"{self.name}, from the token endpoint {self._where},"

    def _request(self) -> dict[str, Any]:
        form = {"grant_type": "client_credentials", "client_id": self.spec.client_id,
                "client_secret": self.spec.client_secret.get_secret_value()}
        if self.spec.scopes:
            form["scope"] = " ".join(self.spec.scopes)
        if self.spec.audience:
            form["audience"] = self.spec.audience
        return {"method": "POST", "data": form, "headers": {"Accept": "application/json"}}

    def _own(self) -> Secrets:
        return Secrets([self.spec.client_secret.get_secret_value()])

    def _accept(self, status: int, body: bytes) -> str:
        doc = self._document(status, body, ("error", "error_description"))
        token = doc.get("access_token")
        if not isinstance(token, str) or not token.strip():
            raise self.fail("token endpoint answer has no access_token")
        expires = doc.get("expires_in")
        try:
            lifetime = float(expires) if expires is not None else _DEFAULT_OAUTH_LIFETIME
        except (TypeError, ValueError):
            lifetime = _DEFAULT_OAUTH_LIFETIME
        return self._keep(token.strip(), lifetime)


class Login(_Fetched):
    """A login at the auth service: the token the application's own clients would get.

    Its lifetime is the answer's `expires_in_path`, else the token's own `exp` claim (a JWT read
    without verifying it: the probe holds no key, it only needs to know when to log in again),
    else the configured `ttl`."""

    what = "auth service"

    def __init__(self, name: str, spec: LoginSpec, clock: Clock, wall: Clock = time.time) -> None:
        super().__init__(name, spec.url, spec.timeout, clock)
        self.spec = spec
        self._wall = wall

    def source(self) -> str:
        return f"{self.name}, from the login at {self._where},"

    def _request(self) -> dict[str, Any]:
        headers = {"Accept": "application/json",
                   **{k: v.get_secret_value() for k, v in self.spec.headers.items()}}
        out: dict[str, Any] = {"method": self.spec.method, "headers": headers}
        if self.spec.json_ is not None:
            out["json"] = self.spec.json_
        elif self.spec.form is not None:
            out["data"] = {k: v.get_secret_value() for k, v in self.spec.form.items()}
        return out

    def _own(self) -> Secrets:
        held = [*self.spec.headers.values(), *(self.spec.form or {}).values()]
        return Secrets([*self.spec.body_values(), *(v.get_secret_value() for v in held)])

    def _accept(self, status: int, body: bytes) -> str:
        doc = self._document(status, body, ("error", "message", "detail"))
        token = dig(doc, self.spec.token_path)
        if not isinstance(token, str) or not token.strip():
            raise self.fail(f"auth service answer has no token at {self.spec.token_path}")
        token = token.strip()
        return self._keep(token, self._lifetime(doc, token))

    def _lifetime(self, doc: dict[str, Any], token: str) -> float:
        if self.spec.expires_in_path is not None:
            expires = dig(doc, self.spec.expires_in_path)
            if isinstance(expires, int | float | str) and not isinstance(expires, bool):
                with contextlib.suppress(ValueError):
                    return float(expires)
        try:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            exp = None
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            return float(exp) - self._wall()
        return self.spec.ttl


def dig(doc: Any, path: str) -> Any:
    """The value at dotted `path` in `doc` (a list index is a number), or None."""
    for key in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(key)
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            return None
    return doc
