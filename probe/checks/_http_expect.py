"""What an HTTP answer must look like: compiled once per target, checked once per probe.

A daemon probes the same targets every few seconds, so everything that depends only on the
target (the request's bytes, regexes, split JSON paths, the status set and its wording) is built
into a `Plan` the first time a target is probed and reused while that Target object lives.
A reload builds new Target objects, so a changed config never sees a stale plan.

Semantics fixed here (and documented for config authors):
- `expect.status`: the set of acceptable codes; unset means any 2xx.
- `expect.json` / `version_path`: dotted paths; a segment indexes a list when the node is a list
  (`items.0.id`, negative indices count from the end). Values compare as JSON: `1` is not `"1"`
  and `true` is not `1`.
- `expect.headers`: name -> regex that must match the WHOLE value (re.fullmatch); with several
  values of one header, any one may match. Matching is case-sensitive.
- `expect.body_regex`: re.search anywhere in the body, decoded with the response charset
  (default UTF-8, undecodable bytes replaced).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from probe.checks import USER_AGENT, PerObject, clip, keep, recall
from probe.checks._http_request import Hop, as_written, build_hop
from probe.checks._trace import configured
from probe.config import FlowStep, Target
from probe.outcome import Failure
from probe.version_match import version_matches

MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class JsonCheck:
    path: str
    keys: tuple[str, ...]
    expected: Any


@dataclass(frozen=True, slots=True)
class Plan:
    hop: Hop  # the first request, its bytes ready (see _http_request)
    headers: tuple[tuple[str, str], ...]  # the configured headers, for redirect hops
    statuses: frozenset[int] | None  # None: any 2xx
    expected_status: str  # "2xx", "200", "200 or 204", ...
    allow_redirects: bool
    max_redirects: int  # redirects followed at most
    json_checks: tuple[JsonCheck, ...]
    header_checks: tuple[tuple[str, re.Pattern[str], bool], ...]  # (name, full match, negated)
    body_re: re.Pattern[str] | None
    version_path: str | None
    version_keys: tuple[str, ...] | None
    keep_body: bool  # False: the body is only counted, never kept
    redirect_hosts: frozenset[str] = frozenset()  # hosts whose answers a detail may quote
    traced: bool = True  # False: the target configures its own traceparent (see _trace)
    body_not: tuple[re.Pattern[str], ...] = ()  # expect.body_not_regex: none may be found
    tls: bool | None = None  # expect.tls: the final answer over TLS (True) or not (False)
    http_versions: frozenset[str] | None = None  # expect.http_versions ("1.1", "2")
    server_name: str | None = None  # tls_server_name, for the target's own origin
    ip_protocol: str | None = None  # the address family dialled first (checks.by_protocol)
    ip_fallback: bool = True  # the other family is dialled too

    def sni(self, hop: Hop) -> str:
        """The TLS server name for `hop`: tls_server_name on the target's own origin (a
        redirect elsewhere is verified as the name it leads to)."""
        return self.server_name if self.server_name and hop.origin == self.hop.origin else (
            hop.host)

    def quotable(self, hop: Hop) -> bool:
        """Whether a detail may quote what `hop` answered: the target's own host (on its port,
        or the default port of the hop's scheme: an http -> https redirect), or a host the
        config allows (`redirect_hosts`, `*.example.com` for its subdomains). A redirect to
        anywhere else (an internal address or port, say) must not be read back in a detail."""
        host = hop.host.lower().rstrip(".")
        if host == self.hop.host.lower().rstrip(".") and hop.port in (
            self.hop.port, 443 if hop.tls else 80
        ):
            return True
        return host in self.redirect_hosts or any(
            h.startswith("*.") and host.endswith(h[1:]) for h in self.redirect_hosts
        )

    def status_ok(self, code: int) -> bool:
        return 200 <= code < 300 if self.statuses is None else code in self.statuses


_PLANS: PerObject[Plan] = {}


def plan_for(target: Target) -> Plan:
    """The target's Plan, built on first use and dropped when the Target is garbage collected."""
    return recall(_PLANS, target) or keep(_PLANS, target, _build(target))


def _build(t: Target) -> Plan:
    headers: CIMultiDict[str] = CIMultiDict(t.headers)
    headers.setdefault("User-Agent", USER_AGENT)
    url = as_written(t.url)
    placed = None  # the header the credential goes in, per probe
    if t.credential is not None and t.credential_in == "header":
        # It replaces a configured header of that name (one Authorization line, not two), as
        # aiohttp's headers.update() did.
        placed = (t.credential_name or "Authorization").lower()
        headers.popall(placed, None)
    if (url.raw_user is not None or url.raw_password is not None) and placed != "authorization":
        # `https://user:pass@host/` is Basic auth, as aiohttp sent it, unless an Authorization
        # header is configured; like any Authorization it stays on the target's origin.
        basic = base64.b64encode(f"{url.user or ''}:{url.password or ''}".encode()).decode()
        headers.setdefault("Authorization", f"Basic {basic}")
    data: bytes | None = None
    if t.json_body is not None:
        data = json.dumps(t.json_body, separators=(",", ":")).encode()
        headers.setdefault("Content-Type", "application/json")
    elif t.body is not None:
        data = t.body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    expect = t.expect
    statuses = frozenset(expect.status) if expect.status else None
    json_checks = tuple(
        JsonCheck(path, tuple(path.split(".")), as_json(value))
        for path, value in expect.json_.items()
    )
    follow = t.follow_redirects and t.max_redirects > 0
    wants_text = expect.body_regex is not None or bool(expect.body_not_regex)
    return Plan(
        hop=build_hop(t.method, url, headers.items(), data),
        headers=tuple(headers.items()),
        statuses=statuses,
        expected_status=_wording(sorted(statuses)) if statuses else "2xx",
        allow_redirects=follow,
        max_redirects=t.max_redirects,
        json_checks=json_checks,
        header_checks=tuple((n, re.compile(p), False) for n, p in expect.headers.items())
        + tuple((n, re.compile(p), True) for n, p in expect.headers_not.items()),
        body_not=tuple(re.compile(p) for p in expect.body_not_regex),
        tls=expect.tls,
        http_versions=frozenset(expect.http_versions) if expect.http_versions else None,
        server_name=t.tls_server_name,
        ip_protocol=t.ip_protocol,
        ip_fallback=t.ip_protocol_fallback,
        body_re=re.compile(expect.body_regex) if expect.body_regex is not None else None,
        version_path=t.version_path,
        version_keys=tuple(t.version_path.split(".")) if t.version_path else None,
        keep_body=bool(json_checks or wants_text or t.version_path
                       or (isinstance(t, FlowStep) and t.extracts_json)),
        redirect_hosts=frozenset(h.lower().rstrip('.') for h in t.redirect_hosts),
        traced=not configured(headers.keys()),
    )


# The details of evaluate() that name a failed header or body pattern: blackbox_exporter's
# probe_failed_due_to_regex (a JSON path or version mismatch is not a regex).
_REGEX_DETAILS = ("header ", "body does not match /", "body matches /")


def regex_failed(failure: Failure | None, detail: str) -> bool:
    return failure is Failure.ASSERTION and detail.startswith(_REGEX_DETAILS)


def answer_failure(plan: Plan, tls: bool, version: str) -> str | None:
    """Why the final answer fails expect.tls or expect.http_versions (blackbox_exporter's
    fail_if_ssl / fail_if_not_ssl / valid_http_versions), or None."""
    if plan.tls is not None and tls != plan.tls:
        how = "over TLS" if tls else "over plain HTTP"
        return f"answered {how} (expect.tls: {str(plan.tls).lower()})"
    if plan.http_versions is not None and version not in plan.http_versions:
        return (f"answered HTTP/{version} (expect.http_versions:"
                f" {', '.join(sorted(plan.http_versions))})")
    return None


def as_json(value: Any) -> Any:
    """YAML may hand us dates and the like; compare what JSON would have carried."""
    return json.loads(json.dumps(value, default=str))


def _wording(codes: list[int]) -> str:
    if len(codes) == 1:
        return str(codes[0])
    return ", ".join(map(str, codes[:-1])) + f" or {codes[-1]}"


# --- formatting ------------------------------------------------------------------------------


def show(value: Any, limit: int = 60) -> str:
    """A value as JSON text, short enough for a one-line detail."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except ValueError:
        text = repr(value)
    return clip(text, limit)


def quote(text: str, limit: int = 40) -> str:
    """A piece of text, shortened first and then quoted, so the quotes always close."""
    return json.dumps(clip(text, limit), ensure_ascii=False)


def size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


# --- checking --------------------------------------------------------------------------------


def resolve(doc: Any, keys: tuple[str, ...]) -> Any:
    node = doc
    for key in keys:
        if isinstance(node, dict):
            node = node.get(key, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list):
            try:
                node = node[int(key)]
            except (ValueError, IndexError):
                return MISSING
        else:
            return MISSING
    return node


def same(expected: Any, actual: Any) -> bool:
    """JSON equality: bools are not numbers, 1 == 1.0, containers compare deeply."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            same(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(same, expected, actual))
    return type(expected) is type(actual) and expected == actual


def _text(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _not_json(exc: ValueError | RecursionError, body: bytes, charset: str | None) -> str:
    if not body.strip():
        return "body is not JSON: the body is empty"
    if isinstance(exc, json.JSONDecodeError):
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    elif isinstance(exc, RecursionError):
        why = "nested too deeply to parse"
    else:
        why = str(exc)
    return f"body is not JSON: {why} (body starts {quote(_text(body[:64], charset))})"


def _version_text(value: Any) -> str:
    return value if isinstance(value, str) else show(value, 100)


def evaluate(
    plan: Plan,
    headers: CIMultiDictProxy[str],
    body: bytes,
    charset: str | None,
    expect_version: str | None,
) -> tuple[str | None, Failure | None, str]:
    """(served version, failure or None, detail) for an answer whose status already passed.

    Order: the version first (a gate waiting for a new build wants to hear "old build", not
    whichever field the old build also gets wrong), then headers, body regex, JSON paths.
    Without expect_version a missing version is not a failure: it is just not reported.
    """
    doc: Any = MISSING
    json_error = ""
    if plan.version_keys is not None or plan.json_checks:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # also a hostile `[[[[...` nesting
            json_error = _not_json(exc, body, charset)
    version: str | None = None
    if plan.version_keys is not None and doc is not MISSING:
        found = resolve(doc, plan.version_keys)
        if found is not MISSING and found is not None:
            version = _version_text(found)
    if expect_version is not None and plan.version_keys is not None:
        if doc is MISSING:
            return None, Failure.ASSERTION, f"{json_error} (version_path {plan.version_path})"
        if version is None:
            return None, Failure.ASSERTION, (
                f"version_path {plan.version_path}: not found in the body"
                f" (expected build {clip(expect_version, 40)})"
            )
        if not version_matches(expect_version, version):  # exact, or one git commit
            return version, Failure.VERSION_MISMATCH, (
                f"serving build {clip(version, 60)}, expected {clip(expect_version, 60)}"
            )
    for name, pattern, negated in plan.header_checks:
        values = headers.getall(name, [])
        if negated:  # expect.headers_not: a missing header passes
            hit = next((v for v in values if pattern.fullmatch(v)), None)
            if hit is not None:
                return version, Failure.ASSERTION, (
                    f"header {name}: {quote(hit, 50)} matches /{clip(pattern.pattern, 40)}/"
                    " (expect.headers_not)"
                )
            continue
        if not values:
            return version, Failure.ASSERTION, (
                f"header {name}: missing (expected /{clip(pattern.pattern, 40)}/)"
            )
        if not any(pattern.fullmatch(v) for v in values):
            return version, Failure.ASSERTION, (
                f"header {name}: expected /{clip(pattern.pattern, 40)}/, got {quote(values[0], 50)}"
            )
    text = _text(body, charset) if plan.body_re is not None or plan.body_not else ""
    if plan.body_re is not None:
        if plan.body_re.search(text) is None:
            return version, Failure.ASSERTION, (
                f"body does not match /{clip(plan.body_re.pattern, 40)}/"
                f" (body starts {quote(text[:64])})"
            )
    for pattern in plan.body_not:
        found = pattern.search(text)
        if found is not None:
            return version, Failure.ASSERTION, (
                f"body matches /{clip(pattern.pattern, 40)}/ (expect.body_not_regex):"
                f" {quote(found.group(0))}"
            )
    if plan.json_checks:
        if doc is MISSING:
            return version, Failure.ASSERTION, json_error
        for check in plan.json_checks:
            actual = resolve(doc, check.keys)
            if actual is MISSING:
                return version, Failure.ASSERTION, (
                    f"json {check.path}: missing (expected {show(check.expected)})"
                )
            if not same(check.expected, actual):
                return version, Failure.ASSERTION, (
                    f"json {check.path}: expected {show(check.expected)}, got {show(actual)}"
                )
    return version, None, ""
