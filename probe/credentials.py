"""Named credentials for targets: static bearer, minted JWT, OAuth2 client credentials.

Secrets stay inside this module and the request that carries them. Every error names the
credential and the reason, never a value: an operator reads `credential oauth: token endpoint
answered HTTP 500`, and a leaked log line costs nothing. Tokens are cached as late as is safe, so
a probe every few seconds does not mint or fetch a token every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import structlog
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, SecretStr

from probe.config import BearerSpec, CredentialSpec, JwtSpec, OAuth2Spec, Target
from probe.config_base import fmt
from probe.redact import KNOWN, Secrets, clip

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
_MAX_TOKEN_ANSWER = 64 * 1024  # bytes read from a token endpoint; a token answer is small
_DEFAULT_OAUTH_LIFETIME = 60.0  # seconds to keep a token whose answer has no expires_in


class CredentialError(Exception):
    """No credential could be obtained; the message names the credential, never its value."""


def _margin(lifetime: float) -> float:
    """How long before expiry a cached token is replaced: a tenth of its life, at most 60 s."""
    return min(60.0, lifetime / 10)


class _Watched:
    """A file re-read only when it changes (mtime, size or inode: a Kubernetes secret swap
    replaces the file behind a symlink, so the inode changes even if mtime does not)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._data = b""

    def read(self) -> tuple[bytes, bool]:
        """The file's bytes and whether they changed since the last read (OSError passes up)."""
        st = self.path.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self._key:
            return self._data, False
        self._data = self.path.read_bytes()
        self._key = key
        return self._data, True


class _Provider:
    """One credential; `get` returns a currently valid token or raises CredentialError."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, reason: str) -> CredentialError:
        return CredentialError(f"credential {self.name}: {reason}")

    async def get(self) -> str:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the provider holds (an HTTP session)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Bearer(_Provider):
    """A static token; the environment variable is read at use, the file re-read on change."""

    def __init__(self, name: str, spec: BearerSpec) -> None:
        super().__init__(name)
        self.spec = spec
        self._file = _Watched(spec.token_file) if spec.token_file is not None else None

    async def get(self) -> str:
        return self._read()

    def _read(self) -> str:
        if self.spec.token is not None:
            token = self.spec.token.get_secret_value().strip()
            where = "the inline token"
        elif self.spec.token_env is not None:
            token = os.environ.get(self.spec.token_env, "").strip()
            where = f"environment variable {self.spec.token_env}"
            if not token:
                raise self.fail(f"{where} is not set or empty")
        else:
            assert self._file is not None
            where = f"token file {self._file.path}"
            try:
                data, _ = self._file.read()
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise self.fail(f"cannot read {where}: {reason}") from None
            token = data.decode("utf-8", "replace").strip()
        if not token:
            raise self.fail(f"{where} is empty")
        return token


class _Jwt(_Provider):
    """A JWT minted here, per use or cached until shortly before it expires."""

    def __init__(self, name: str, spec: JwtSpec, clock: Clock) -> None:
        super().__init__(name)
        self.spec = spec
        self._clock = clock
        self._file = _Watched(spec.private_key_file) if spec.private_key_file is not None else None
        self._key: Any = None
        self._cached: tuple[str, float] | None = None  # (token, replace at, wall clock)

    async def get(self) -> str:
        now = self._clock()
        key = self._signing_key()  # first: a rotated key file drops the cached token
        if self.spec.cache and self._cached is not None and now < self._cached[1]:
            return self._cached[0]
        return self._mint(now, key)

    def _signing_key(self) -> Any:
        if self._file is None:
            assert self.spec.secret is not None
            return self.spec.secret.get_secret_value()
        try:
            data, changed = self._file.read()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise self.fail(f"cannot read private key file {self._file.path}: {reason}") from None
        if changed or self._key is None:
            try:
                self._key = load_pem_private_key(data, password=None)
            except (ValueError, TypeError):
                self._key = None
                raise self.fail(
                    f"private key file {self._file.path} is not an unencrypted PEM private key"
                ) from None
            self._cached = None  # a new key: never hand out a token signed by the old one
        return self._key

    def _mint(self, now: float, key: Any) -> str:
        claims: dict[str, Any] = {"iat": int(now), "exp": int(now + self.spec.ttl),
                                  **self.spec.claims}
        headers = {"kid": self.spec.kid} if self.spec.kid else None
        try:
            token = jwt.encode(claims, key, algorithm=self.spec.algorithm, headers=headers)
        except (jwt.PyJWTError, ValueError, TypeError, NotImplementedError) as exc:
            # PyJWT's messages describe the key's kind, never its bytes; still, name only the type.
            raise self.fail(
                f"cannot sign a {self.spec.algorithm} token with the configured key "
                f"({type(exc).__name__})"
            ) from None
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            lifetime = float(exp) - now
            self._cached = (token, now + lifetime - _margin(max(lifetime, 0.0)))
        return token


class _OAuth2(_Provider):
    """OAuth2 client-credentials grant; concurrent callers share one in-flight fetch."""

    def __init__(self, name: str, spec: OAuth2Spec, clock: Clock) -> None:
        super().__init__(name)
        self.spec = spec
        self._clock = clock
        self._cached: tuple[str, float] | None = None  # (token, replace at, monotonic)
        self._inflight: asyncio.Task[str] | None = None
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(spec.token_url)
        self._where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"

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

    async def _fetch(self) -> str:
        form = {"grant_type": "client_credentials", "client_id": self.spec.client_id,
                "client_secret": self.spec.client_secret.get_secret_value()}
        if self.spec.scopes:
            form["scope"] = " ".join(self.spec.scopes)
        if self.spec.audience:
            form["audience"] = self.spec.audience
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        limit = fmt(self.spec.timeout)
        try:
            async with asyncio.timeout(self.spec.timeout):
                async with self._session.post(
                    self.spec.token_url, data=form, headers={"Accept": "application/json"},
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(8192):
                        body += chunk
                        if len(body) > _MAX_TOKEN_ANSWER:
                            raise self.fail("token endpoint answer is larger than 64 KiB")
        except TimeoutError:
            raise self.fail(f"token endpoint {self._where} did not answer within {limit}") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise self.fail(f"cannot reach the token endpoint {self._where}: {reason}") from None
        except aiohttp.ServerDisconnectedError:
            raise self.fail(f"token endpoint {self._where} closed the connection") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise self.fail(
                f"token request to {self._where} failed ({type(exc).__name__})"
            ) from None
        return self._accept(status, bytes(body))

    def _accept(self, status: int, body: bytes) -> str:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not 200 <= status < 300:
            raise self.fail(f"token endpoint answered HTTP {status}{self._error(doc)}")
        if not isinstance(doc, dict):
            raise self.fail("token endpoint answered with a body that is not a JSON object")
        token = doc.get("access_token")
        if not isinstance(token, str) or not token.strip():
            raise self.fail("token endpoint answer has no access_token")
        expires = doc.get("expires_in")
        try:
            lifetime = float(expires) if expires is not None else _DEFAULT_OAUTH_LIFETIME
        except (TypeError, ValueError):
            lifetime = _DEFAULT_OAUTH_LIFETIME
        lifetime = max(lifetime, 0.0)
        self._cached = (token.strip(), self._clock() + lifetime - _margin(lifetime))
        log.debug("credential token fetched", credential=self.name, expires_in=lifetime)
        return token.strip()

    def _error(self, doc: Any) -> str:
        """` (error: description)` of an OAuth2 error answer, clipped and with the client secret
        (and anything else known secret) masked: a hostile endpoint may echo the form back."""
        if not isinstance(doc, dict):
            return ""
        said = [clip(v, 60) for v in (doc.get("error"), doc.get("error_description"))
                if isinstance(v, str) and v.strip()]
        if not said:
            return ""
        mine = Secrets([self.spec.client_secret.get_secret_value()])
        return f" ({KNOWN.mask(mine.mask(': '.join(said)))})"

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


class Credentials:
    """The named credentials of a config; providers are built on first use and kept (caches)."""

    def __init__(
        self,
        specs: dict[str, CredentialSpec] | None = None,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self._specs = dict(specs or {})
        self._clock = clock
        self._monotonic = monotonic
        self._providers: dict[str, _Provider] = {}
        KNOWN.add(self, Secrets(v for spec in self._specs.values() for v in _secret_values(spec)))

    def secrets(self, name: str) -> list[str]:
        """The static secret values of credential `name` (a bearer token, a JWT secret, a
        client secret: every SecretStr of its spec), for the checks to mask."""
        spec = self._specs.get(name)
        return list(_secret_values(spec)) if spec is not None else []

    def __repr__(self) -> str:
        return f"Credentials({sorted(self._specs)})"

    def _provider(self, name: str) -> _Provider:
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        spec = self._specs.get(name)
        if spec is None:
            raise CredentialError(f"credential {name}: not defined in the config")
        if spec.bearer is not None:
            provider = _Bearer(name, spec.bearer)
        elif spec.jwt is not None:
            provider = _Jwt(name, spec.jwt, self._clock)
        else:
            assert spec.oauth2 is not None
            provider = _OAuth2(name, spec.oauth2, self._monotonic)
        self._providers[name] = provider
        return provider

    async def token(self, name: str) -> str:
        """A currently valid token for credential `name`, or CredentialError."""
        return await self._provider(name).get()

    async def aclose(self) -> None:
        """Release any HTTP session held for token endpoints."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()


def _secret_values(model: BaseModel) -> Iterator[str]:
    """Every SecretStr value in `model` and the models it holds (a new kind of credential is
    covered as soon as its secrets are SecretStr)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from _secret_values(value)


@dataclass
class Attached:
    """Where a target's credential goes in its request, and the token itself (what the checks
    scrub from their details, and what tells a check's cached request that it changed)."""

    token: str = field(default="", repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    query: dict[str, str] = field(default_factory=dict, repr=False)
    subprotocols: list[str] = field(default_factory=list, repr=False)

    def secrets(self) -> list[str]:
        """What a failure detail must never quote: the token and its header line's value (their
        other forms, URL-encoded or base64, are probe.redact's)."""
        return [self.token, *self.headers.values(), *self.query.values()]


async def attach(target: Target, credentials: Credentials) -> Attached:
    """Fetch the target's credential (if any) and place it as `credential_in` says."""
    out = Attached()
    if target.credential is None:
        return out
    token = await credentials.token(target.credential)
    out.token = token
    if target.credential_in == "header":
        name = target.credential_name or "Authorization"
        out.headers[name] = f"{target.credential_scheme} {token}".strip()
    elif target.credential_in == "query":
        out.query[target.credential_name or "access_token"] = token
    else:
        out.subprotocols.append(token)
    return out
