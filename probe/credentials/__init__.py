"""Named credentials for targets: static bearer, minted JWT, OAuth2 client credentials, a login
at the auth service (the fetched kinds live in probe.credentials.fetch).

Secrets stay inside this module and the request that carries them. Every error names the
credential and the reason, never a value: an operator reads `credential oauth: token endpoint
answered HTTP 500`, and a leaked log line costs nothing. Tokens are cached as late as is safe, so
a probe every few seconds does not mint or fetch a token every few seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, SecretStr

from probe.config import BearerSpec, CredentialSpec, JwtSpec, LoginSpec, Target
from probe.credentials.fetch import Clock, CredentialError, Login, OAuth2, Provider, margin
from probe.redact import KNOWN, Secrets

__all__ = ["Attached", "CredentialError", "Credentials", "attach"]


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


class _Bearer(Provider):
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


class _Jwt(Provider):
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
            self._cached = (token, now + lifetime - margin(max(lifetime, 0.0)))
        return token


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
        self._providers: dict[str, Provider] = {}
        KNOWN.add(self, Secrets(v for spec in self._specs.values() for v in _secret_values(spec)))

    def secrets(self, name: str) -> list[str]:
        """The static secret values of credential `name` (a bearer token, a JWT secret, a
        client secret, a login's body and headers: every SecretStr of its spec), for the checks
        to mask."""
        spec = self._specs.get(name)
        return list(_secret_values(spec)) if spec is not None else []

    def __repr__(self) -> str:
        return f"Credentials({sorted(self._specs)})"

    def _provider(self, name: str) -> Provider:
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
        elif spec.login is not None:
            provider = Login(name, spec.login, self._monotonic, self._clock)
        else:
            assert spec.oauth2 is not None
            provider = OAuth2(name, spec.oauth2, self._monotonic)
        self._providers[name] = provider
        return provider

    async def token(self, name: str) -> str:
        """A currently valid token for credential `name`, or CredentialError."""
        return await self._provider(name).get()

    def invalidate(self, name: str | None, token: str) -> None:
        """A target answered 401/403 to `token` of credential `name`: a fetched token (login,
        OAuth2) is obtained anew on next use, unless another caller already replaced it."""
        provider = self._providers.get(name) if name is not None else None
        if provider is not None:
            provider.invalidate(token)

    def source(self, name: str) -> str:
        """`NAME` or `NAME, from the login at URL,`: how a rejection names the credential sent
        (`credential NAME, from the login at URL, was sent`)."""
        provider = self._providers.get(name)
        return provider.source() if provider is not None else name

    async def aclose(self) -> None:
        """Release any HTTP session held for token endpoints."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()


def _secret_values(model: BaseModel) -> Iterator[str]:
    """Every SecretStr value in `model` and the models it holds, also as values of a dict (a
    login's form and headers), and every scalar of a login's JSON body (a new kind of credential
    is covered as soon as its secrets are SecretStr)."""
    if isinstance(model, LoginSpec):
        yield from model.body_values()
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from _secret_values(value)
        elif isinstance(value, dict):
            yield from (v.get_secret_value() for v in value.values() if isinstance(v, SecretStr))


@dataclass
class Attached:
    """Where a target's credential goes in its request, and the token itself (what the checks
    scrub from their details, and what tells a check's cached request that it changed)."""

    token: str = field(default="", repr=False)
    source: str = ""  # the credential's name and where its token came from (no secret)
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
    out.source = credentials.source(target.credential)
    if target.credential_in == "header":
        name = target.credential_name or "Authorization"
        out.headers[name] = f"{target.credential_scheme} {token}".strip()
    elif target.credential_in == "query":
        out.query[target.credential_name or "access_token"] = token
    else:
        out.subprotocols.append(token)
    return out
