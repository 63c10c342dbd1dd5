"""Credentials referenced by name from targets: static bearer, minted JWT, OAuth2 client credentials.

STUB: the interface is fixed (Credentials.token, attach, CredentialError); the WebSocket issue
fills in minting, caching and the token endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from probe.config import CredentialSpec, Target


class CredentialError(Exception):
    """No credential could be obtained; the message names the credential, never its value."""


class Credentials:
    def __init__(self, specs: dict[str, CredentialSpec] | None = None) -> None:
        self._specs = dict(specs or {})

    async def token(self, name: str) -> str:
        """A currently valid token for credential `name`, or CredentialError."""
        raise CredentialError(f"credential {name!r} is not implemented yet")

    async def aclose(self) -> None:
        """Release any HTTP session held for token endpoints."""


@dataclass
class Attached:
    """Where a target's credential goes in its request."""

    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    subprotocols: list[str] = field(default_factory=list)


async def attach(target: Target, credentials: Credentials) -> Attached:
    """Fetch the target's credential (if any) and place it as `credential_in` says."""
    out = Attached()
    if target.credential is None:
        return out
    token = await credentials.token(target.credential)
    if target.credential_in == "header":
        name = target.credential_name or "Authorization"
        out.headers[name] = f"{target.credential_scheme} {token}".strip()
    elif target.credential_in == "query":
        out.query[target.credential_name or "access_token"] = token
    else:
        out.subprotocols.append(token)
    return out
