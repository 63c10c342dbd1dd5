"""Credential blocks of the config file: what a target may authenticate with (a static bearer,
a JWT minted here, an OAuth2 client-credentials token, a login at the auth service).

Secret values are SecretStr so that a repr, a log line or a validation error never shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, model_validator

from probe.config.base import Duration, Strict


def _http_url(v: str) -> str:
    if urlsplit(v).scheme not in ("http", "https"):
        raise ValueError(f"must be an http(s) URL, got {v!r}")
    return v


HttpUrl = Annotated[str, AfterValidator(_http_url)]  # an auth service's or token endpoint's


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

    token_url: HttpUrl
    client_id: str
    client_secret: SecretStr
    scopes: list[str] = Field(default_factory=list)
    audience: str | None = None
    timeout: Duration = 5.0



class LoginSpec(Strict):
    """A token from the auth service's own login endpoint, as the application's clients get one:
    the probe then sees the auth service and the backend disagree (another signing secret).

    The body and headers are secrets (a password, an API key): kept out of repr, masked in every
    output (see probe.credentials._secret_values)."""

    url: HttpUrl
    method: Literal["POST", "PUT", "GET"] = "POST"
    json_: dict[str, Any] | None = Field(default=None, alias="json", repr=False)
    form: dict[str, SecretStr] | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    token_path: str = "access_token"
    expires_in_path: str | None = None
    ttl: Duration = 300.0
    timeout: Duration = 5.0


    @model_validator(mode="after")
    def _one_body(self) -> LoginSpec:
        if self.json_ is not None and self.form is not None:
            raise ValueError("set json or form, not both")
        if self.method == "GET" and (self.json_ is not None or self.form is not None):
            raise ValueError("a GET login has no body (json, form)")
        return self

    def body_values(self) -> list[str]:
        """Every scalar of the JSON body, as text (what a password may be)."""
        out: list[str] = []

        def walk(v: Any) -> None:
            if isinstance(v, dict):
                for item in v.values():
                    walk(item)
            elif isinstance(v, list):
                for item in v:
                    walk(item)
            elif isinstance(v, str | int | float) and not isinstance(v, bool):
                out.append(str(v))

        walk(self.json_)
        return out


class CredentialSpec(Strict):
    bearer: BearerSpec | None = None
    jwt: JwtSpec | None = None
    oauth2: OAuth2Spec | None = None
    login: LoginSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialSpec:
        given = [k for k in ("bearer", "jwt", "oauth2", "login") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a credential is exactly one of bearer, jwt, oauth2, login")
        return self
