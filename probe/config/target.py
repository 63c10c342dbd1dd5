"""The targets' shape in the config: what to probe (Target, a flow's FlowStep), what the answer
must look like (Expect, a WebSocket message's Match, a Step), and the `defaults:` keys.

Kept apart from probe.config (loading the file, the whole Config, the environment) because
it is a different job: what one target may say, checked per target, not how a file is read or
how targets refer to each other. probe.config re-exports every name, and the package imports
them from there (`from probe.config import Target`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from probe.config.base import Duration, Strict
from probe.config.http import HttpVersion, TlsVersion, one_or_more
from probe.config.latency import Latency, LatencyTarget, latency_blocks
from probe.config.steps import check_extract

__all__ = ["MAX_FLOW_STEPS", "NAME", "WS_CLOSE_ALLOWANCE", "CredentialIn", "Expect", "FlowStep",
           "Match", "Regex", "Step", "Target", "TargetDefaults", "inherited"]


def _compile(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Regex = Annotated[str, BeforeValidator(lambda v: _compile(v) if isinstance(v, str) else v)]


class Expect(Strict):
    status: list[int] | None = None  # None: any 2xx
    json_: dict[str, Any] = Field(default_factory=dict, alias="json")  # dotted path -> value
    headers: dict[str, Regex] = Field(default_factory=dict)  # name -> regex (full match)
    body_regex: Regex | None = None
    # blackbox_exporter's fail_if_body_matches_regexp / fail_if_header_matches / fail_if_ssl,
    # fail_if_not_ssl and valid_http_versions (probe/config/http.py)
    body_not_regex: Annotated[list[Regex], BeforeValidator(one_or_more)] = Field(
        default_factory=list)  # none may be found in the body (re.search)
    headers_not: dict[str, Regex] = Field(default_factory=dict)  # no value may fully match
    tls: bool | None = None  # true: the final answer must come over TLS; false: must not
    http_versions: list[HttpVersion] | None = None  # the final answer's; None: any

    @field_validator("status")
    @classmethod
    def _statuses(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("status must list at least one code")
            bad = [s for s in v if not 100 <= s <= 599]
            if bad:
                raise ValueError(f"not an HTTP status code: {bad}")
        return v


class Match(Strict):
    """What a WebSocket message must look like."""

    json_: dict[str, Any] = Field(default_factory=dict, alias="json")
    regex: Regex | None = None

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not self.json_ and self.regex is None:
            raise ValueError("a match needs json or regex")
        return self


NAME = r"^[A-Za-z0-9_.:-]{1,100}$"  # a target's or a step's name (also a label value)


class Step(Strict):
    """One WebSocket exchange: send, then expect the next message or read `until` one matches."""

    name: str | None = Field(default=None, pattern=NAME)  # a latency measure of its own
    send: Any = None  # dict/list -> JSON text frame; str -> text frame
    expect: Match | None = None
    until: Match | None = None
    timeout: Duration = 5.0

    @model_validator(mode="after")
    def _one_wait(self) -> Step:
        if self.expect is not None and self.until is not None:
            raise ValueError("a step has expect or until, not both")
        if self.send is None and self.expect is None and self.until is None:
            raise ValueError("a step needs send, expect or until")
        return self


class TargetDefaults(Strict):
    """Keys that may be set once under `defaults:` and overridden per target."""

    interval: Duration = 10.0
    timeout: Duration = 5.0
    success_threshold: int = Field(default=2, ge=1, le=100)
    failure_threshold: int = Field(default=3, ge=1, le=100)
    critical: bool = True
    follow_redirects: bool = False
    max_redirects: int = Field(default=5, ge=0, le=50)
    redirect_hosts: list[str] = Field(default_factory=list)  # other hosts a detail may quote
    tls_verify: bool = True
    ca_file: Path | None = None
    tls_server_name: str | None = None  # SNI and the name verified, for the target's own host
    tls_min_version: TlsVersion | None = None
    # resume the last verified TLS session while it is fresh evidence (probe.checks._tls_sessions)
    tls_resume: bool = True
    cert_file: Path | None = None  # a client certificate (mTLS), PEM; its key too, or key_file
    key_file: Path | None = None
    # blackbox's preferred_ip_protocol / ip_protocol_fallback: which family's addresses are
    # dialled first (None: the resolver's order), and whether the other family is tried at all
    ip_protocol: Literal["ip4", "ip6"] | None = None
    ip_protocol_fallback: bool = True
    body_limit: int = Field(default=1 << 20, ge=1)  # bytes; also the WebSocket message cap
    # a forward proxy for http(s) targets (http://[user:pass@]host[:port]; ws ones go direct),
    # instead of the environment's http_proxy / HTTPS_PROXY / NO_PROXY; "none": direct
    proxy_url: str | None = Field(default=None, pattern=r"^(none|http://\S+|[^\s/:]+:\d+)$")
    # "2": HTTP/2 (TLS ALPN h2 only; h2c with prior knowledge on http://), else HTTP/1.1
    http_version: Literal["1.1", "2"] = "1.1"


CredentialIn = Literal["header", "query", "subprotocol"]
MAX_FLOW_STEPS = 20
WS_CLOSE_ALLOWANCE = 1.0  # seconds a held target's timeout keeps for connect and close
# not inherited by ws(s) targets
_HTTP_ONLY_DEFAULTS = ("follow_redirects", "max_redirects", "redirect_hosts")


class Target(TargetDefaults):
    name: str = Field(pattern=NAME)
    url: str = ""  # a flow has none: its steps do
    method: str = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = None
    body: str | None = None
    credential: str | None = None
    credential_in: CredentialIn = "header"
    credential_name: str | None = None  # default Authorization / access_token
    credential_scheme: str = "Bearer"  # prefix in a header ("" sends the bare token)
    expect: Expect = Field(default_factory=Expect)
    version_path: str | None = None
    # one block, or several (each its own measure, bounds and window): see `latencies`
    latency: Annotated[Latency | None, BeforeValidator(latency_blocks)] = None
    # WebSocket
    subprotocols: list[str] = Field(default_factory=list)
    origin: str | None = None
    connections: int = Field(default=1, ge=1, le=1000)
    messages: list[Step] = Field(default_factory=list)
    hold: Duration = 0.0  # keep the session open this long after the steps (0: close at once)
    keepalive: Duration | None = None  # WebSocket ping interval while held
    # a flow: HTTP requests and WebSocket sessions in order, each a FlowStep
    steps: list[FlowStep] = Field(default_factory=list, max_length=MAX_FLOW_STEPS)

    @property
    def kind(self) -> Literal["http", "websocket", "flow"]:
        if self.steps:
            return "flow"
        return "websocket" if urlsplit(self.url).scheme in ("ws", "wss") else "http"

    @model_validator(mode="before")
    @classmethod
    def _steps_inherit(cls, data: Any) -> Any:
        """A flow's own defaults (timeout, tls_verify, body_limit, ...) are its steps' defaults:
        they are handed to each step, which takes them as `defaults:` are taken."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            return data
        given = {k: v for k, v in data.items() if k in _STEP_TAKES}
        steps = [{**s, _FROM_FLOW: given} if isinstance(s, dict) else s for s in data["steps"]]
        return {**data, "steps": steps}

    @property
    def stale_after(self) -> float:
        """Seconds after its last result at which a target's evidence is too old to count: two
        missed results plus the time a probe may take (readiness's `stale`; also how long a
        verified TLS session may be resumed, probe.checks._tls_sessions)."""
        return 2 * self.interval + self.timeout

    @property
    def latencies(self) -> tuple[LatencyTarget, ...]:
        """Every latency block of the target, in the file's order."""
        lat = self.latency
        return () if lat is None else lat if isinstance(lat, tuple) else (lat,)

    @property
    def measure(self) -> str:
        """The latency measure the status page charts by default: the first block's."""
        blocks = self.latencies
        return blocks[0].measure if blocks else "total"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"URL scheme must be http, https, ws or wss, got {v!r}")
        if not parts.hostname:
            raise ValueError(f"URL has no host: {v!r}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z]+", v):
            raise ValueError(f"not an HTTP method: {v!r}")
        return v.upper()

    def _ws_only(self) -> None:
        """Redirects are not followed on a WebSocket upgrade (a 3xx names its Location), so
        setting them on a ws(s) target is an error rather than silently ignored (`defaults:`
        does not give them to ws targets); `timeout` must cover the hold."""
        redirects = set(_HTTP_ONLY_DEFAULTS) & self.model_fields_set
        if redirects:
            verb = "are" if len(redirects) > 1 else "is"
            raise ValueError(f"target {self.name}: {' and '.join(sorted(redirects))} {verb} for "
                             "http(s) targets only (a WebSocket upgrade is never redirected)")
        if self.keepalive is not None:
            if self.keepalive <= 0 or self.keepalive >= self.hold:
                raise ValueError(f"target {self.name}: keepalive pings while held: it must be "
                                 "more than 0 and shorter than hold")
        if self.hold:
            longest = max((m.timeout for m in self.messages), default=0.0)
            need = self.hold + longest + WS_CLOSE_ALLOWANCE
            if self.timeout < need:
                steps = f" + the longest step's timeout ({longest:g}s)" if longest else ""
                raise ValueError(
                    f"target {self.name}: timeout ({self.timeout:g}s) must cover hold "
                    f"({self.hold:g}s){steps} + {WS_CLOSE_ALLOWANCE:g}s to connect and close: "
                    f"at least {need:g}s"
                )

    def _flow_only(self) -> None:
        """A flow's requests are its steps': the flow itself has a name, scheduling, readiness,
        latency and the defaults its steps take, nothing a step would silently ignore."""
        if self.url:
            raise ValueError("a target has url or steps (a flow), not both")
        extra = self.model_fields_set - _FLOW_FIELDS
        if extra:
            raise ValueError(f"{', '.join(sorted(extra))}: set on each step of a flow, not on "
                             "the flow")

    @model_validator(mode="after")
    def _fits_kind(self) -> Target:
        if not self.url and not self.steps:
            raise ValueError("a target needs a url (or steps, for a flow)")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is the key of cert_file: set cert_file too")
        if self.json_body is not None and self.body is not None:
            raise ValueError("set json_body or body, not both")
        if self.kind == "flow":
            self._flow_only()
        elif self.kind == "http":
            if self.messages:
                raise ValueError("messages are for ws:// and wss:// targets only")
            if self.subprotocols or self.connections != 1:
                raise ValueError("subprotocols and connections are for WebSocket targets only")
            if self.credential_in == "subprotocol":
                raise ValueError("credential_in: subprotocol is for WebSocket targets only")
            if self.hold or self.keepalive is not None:
                raise ValueError("hold and keepalive are for WebSocket targets only")
        elif self.json_body is not None or self.body is not None or self.method != "GET":
            raise ValueError("method, json_body and body are for http(s) targets only")
        else:
            self._ws_only()
        bounded: set[tuple[str, str]] = set()
        for lat in self.latencies:
            if lat.measure in ("handshake", "rtt") and self.kind != "websocket":
                raise ValueError(f"latency measure {lat.measure} is for WebSocket targets")
            if lat.measure == "rtt" and not self.messages:
                raise ValueError("latency measure rtt needs messages to time")
            for q in lat.bounds():
                if (lat.measure, q) in bounded:  # one bound per series of probe_latency_target
                    raise ValueError(f"latency: {lat.measure} {q} is bounded twice")
                bounded.add((lat.measure, q))
        if self.timeout > self.interval:
            if "timeout" not in self.model_fields_set:  # only the built-in 5s: clamp it
                object.__setattr__(self, "timeout", self.interval)
                return self
            raise ValueError(
                f"timeout ({self.timeout:g}s) must not exceed interval ({self.interval:g}s)"
            )
        return self


_FROM_FLOW = "[flow]"  # the key a flow hands its defaults to a step under (no YAML key has `[`)
_FLOW_ONLY = ("interval", "success_threshold", "failure_threshold", "critical", "latency",
              "steps")
_STEP_TAKES = frozenset(TargetDefaults.model_fields) - set(_FLOW_ONLY[1:])  # interval too
_FLOW_FIELDS = frozenset({"name", "steps", "latency", *TargetDefaults.model_fields})


class FlowStep(Target):
    """One step of a flow: an HTTP request or a WebSocket session (by its URL's scheme) with
    the keys of such a target, credentials included, so every rule of those checks applies.
    Its name is a latency measure and names it in a failure; `extract` takes values from its
    answer (`json.PATH` or `header:NAME`) for the `{{name}}` of the steps after it."""

    extract: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_flow(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        flow = data.pop(_FROM_FLOW, {})
        own = [k for k in _FLOW_ONLY if k in data]
        if own:
            raise ValueError(f"{', '.join(own)}: set on the flow, not on one of its steps")
        return {**inherited(flow, data), **data}

    @field_validator("extract")
    @classmethod
    def _extract(cls, v: dict[str, str]) -> dict[str, str]:
        return check_extract(v)

    @model_validator(mode="after")
    def _extract_http(self) -> FlowStep:
        if self.extract and self.kind not in ("http", "websocket"):
            raise ValueError("extract is for http(s) and ws(s) steps: values come from an answer")
        return self

    @property
    def extracts_json(self) -> bool:
        """Whether the answer's body must be kept for `extract`."""
        return any(where.startswith("json.") for where in self.extract.values())


Target.model_rebuild()


def inherited(defaults: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The `defaults:` keys a target takes: a ws(s) target skips the HTTP-only ones."""
    url = target.get("url")
    if isinstance(url, str) and url.lower().startswith(("ws:", "wss:")):
        return {k: v for k, v in defaults.items() if k not in _HTTP_ONLY_DEFAULTS}
    return defaults
