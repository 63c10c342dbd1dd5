"""Credential blocks of the config file: what a target may authenticate with.

Secret values are SecretStr so that a repr, a log line or a validation error never shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from probe.config_base import Duration, Strict


class BearerSpec(Strict):
    """A static token: inline, from an environment variable, or from a file re-read on change."""

    token: SecretStr | None = None
    token_env: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BearerSpec:
        given = [k for k in ("token", "token_env", "token_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of token, token_env, token_file")
        return self


class JwtSpec(Strict):
    """A JWT minted by the prober, as the staging backend's own clients would get one."""

    secret: SecretStr | None = None
    private_key_file: Path | None = None
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256"] = "HS256"
    ttl: Duration = 600.0
    claims: dict[str, Any] = Field(default_factory=dict)
    kid: str | None = None
    cache: bool = True

    @model_validator(mode="after")
    def _key_fits_algorithm(self) -> JwtSpec:
        if self.algorithm.startswith("HS"):
            if self.secret is None or not self.secret.get_secret_value():
                raise ValueError(f"algorithm {self.algorithm} needs a non-empty secret")
        elif self.private_key_file is None:
            raise ValueError(f"algorithm {self.algorithm} needs private_key_file")
        return self


class OAuth2Spec(Strict):
    """OAuth2 client-credentials grant; the token is cached until shortly before it expires."""

    token_url: str
    client_id: str
    client_secret: SecretStr
    scopes: list[str] = Field(default_factory=list)
    audience: str | None = None
    timeout: Duration = 5.0

    @field_validator("token_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"token_url must be an http(s) URL, got {v!r}")
        return v


class CredentialSpec(Strict):
    bearer: BearerSpec | None = None
    jwt: JwtSpec | None = None
    oauth2: OAuth2Spec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialSpec:
        given = [k for k in ("bearer", "jwt", "oauth2") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a credential is exactly one of bearer, jwt, oauth2")
        return self
