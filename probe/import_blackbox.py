"""`probe import-blackbox MODULES.yml --targets FILE`: a stageprobe config from a
blackbox_exporter module file and the targets probed with it.

The config goes to stdout (YAML, checked by the same validation as `probe validate`); every
module key it could not map, and why, goes to stderr as one line, so nothing is dropped
silently. Exit 0 when every target was converted, 1 when some were left out (a module of another
prober, an unknown module), 2 on a file that cannot be read.

Targets (`--targets FILE`): one per line, `URL` or `MODULE URL` (`#` starts a comment), or a
Prometheus file_sd list (`[{targets: [...], labels: {module: ...}}]`, YAML or JSON), the module
from a `module` or `__param_module` label; `--module NAME` for those that name none.

What maps (see README, "Coming from blackbox_exporter"): the module's timeout, method, headers,
body, valid_status_codes, valid_http_versions, follow_redirects (blackbox follows by default,
stageprobe does not: set explicitly), fail_if_ssl / fail_if_not_ssl, the body and header regexes
(a blackbox header regex matches anywhere in the value, ours the whole value: wrapped in `.*`),
tls_config (insecure_skip_verify, ca_file, cert_file, key_file, server_name, min_version) and
body_size_limit. Secrets are never copied: a header that carries one (Authorization, Cookie, a
token or key) becomes `${BLACKBOX_HEADER_<NAME>}` for the environment to fill.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from probe.config import NAME, Config, ConfigError, parse_duration

_SECRET_HEADER = re.compile(r"authorization|cookie|.*(token|key|secret|password|auth).*", re.I)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_TLS = {"insecure_skip_verify": "tls_verify", "ca_file": "ca_file", "cert_file": "cert_file",
        "key_file": "key_file", "server_name": "tls_server_name", "min_version": "tls_min_version"}
# Keys whose absence is fine and whose presence needs a word: key -> why it does not map.
_UNMAPPED = {
    "compression": "Accept-Encoding is always gzip, deflate (decoded)",
    "body_file": "put the body inline as body:",
    "basic_auth": "a secret: put the user and password in the URL from the environment, "
                  "https://${BASIC_USER}:${BASIC_PASSWORD}@host/",
    "bearer_token": "a secret: declare a bearer credential (credentials:) for the target",
    "bearer_token_file": "declare a bearer credential (credentials:) for the target",
    "authorization": "a secret: declare a credential (credentials:) for the target",
    "oauth2": "declare an oauth2 credential (credentials:) for the target",
    "proxy_url": "proxies are not configured by module here",
    "enable_http2": "HTTP/1.1 is probed",
    "skip_resolve_phase_with_proxy": "proxies are not configured by module here",
    "http_client_config": "its keys are module keys here (tls_config, ...)",
}


def convert(modules: dict[str, Any], targets: list[tuple[str | None, str]],
            default_module: str | None) -> tuple[dict[str, Any], list[str]]:
    """(stageprobe config, what could not be mapped: one line each)."""
    notes: list[str] = []
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    mapped: dict[str, dict[str, Any] | None] = {}
    for module, url in targets:
        module = module or default_module
        if module is None:
            notes.append(f"target {url}: no module (name one in the file or with --module)")
            continue
        if module not in mapped:
            spec = modules.get(module)
            if not isinstance(spec, dict):
                notes.append(f"module {module}: not in the module file; its targets left out")
                mapped[module] = None
            else:
                mapped[module] = _module(module, spec, notes)
        fields = mapped[module]
        if fields is None:
            continue
        out.append({"name": _name(url, names), "url": url, **copy.deepcopy(fields)})
    return {"targets": out}, notes


def _module(module: str, spec: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    prober = spec.get("prober", "http")
    if prober != "http":
        notes.append(f"module {module}: prober {prober} is not probed here (http and WebSocket"
                     " only); its targets left out")
        return None
    fields: dict[str, Any] = {}
    if "timeout" in spec:
        timeout = parse_duration(str(spec["timeout"]))
        fields["timeout"] = str(spec["timeout"])
        if timeout > 10:  # the default interval: a timeout may not exceed it
            fields["interval"] = str(spec["timeout"])
    http = spec.get("http") or {}
    note = _noter(module, notes)
    for key in sorted(set(http) - _KNOWN):
        note(f"http.{key}", _UNMAPPED.get(key, "not known here"))
    fields["follow_redirects"] = bool(http.get("follow_redirects",
                                               not http.get("no_follow_redirects", False)))
    if http.get("method", "GET").upper() != "GET":
        fields["method"] = http["method"].upper()
    if http.get("headers"):
        fields["headers"] = _headers(http["headers"], note)
    if http.get("body") is not None:
        fields["body"] = str(http["body"])
    if str(http.get("preferred_ip_protocol", "")).lower() in ("ip4", "ip6"):
        fields["ip_protocol"] = str(http["preferred_ip_protocol"]).lower()
        fields["ip_protocol_fallback"] = bool(http.get("ip_protocol_fallback", True))
    elif "preferred_ip_protocol" in http:
        note("http.preferred_ip_protocol", "ip4 or ip6 only")
    if "body_size_limit" in http and (limit := _bytes(http["body_size_limit"])):
        fields["body_limit"] = limit
    tls = {**((http.get("http_client_config") or {}).get("tls_config") or {}),
           **(http.get("tls_config") or {})}
    for key in sorted(tls):
        if key not in _TLS:
            note(f"http.tls_config.{key}", "not supported here")
        elif key == "insecure_skip_verify":
            if tls[key]:
                fields["tls_verify"] = False
        else:
            fields[_TLS[key]] = str(tls[key])
    expect = _expect(http, note)
    if expect:
        fields["expect"] = expect
    return fields


def _noter(module: str, notes: list[str]) -> Any:
    def note(key: str, why: str, done: str = "not mapped") -> None:
        notes.append(f"module {module}: {key}: {done} ({why})")
    return note


def _expect(http: dict[str, Any], note: Any) -> dict[str, Any]:
    expect: dict[str, Any] = {}
    if http.get("valid_status_codes"):
        expect["status"] = [int(c) for c in http["valid_status_codes"]]
    if http.get("valid_http_versions"):
        expect["http_versions"] = [str(v) for v in http["valid_http_versions"]]
    if http.get("fail_if_ssl") and http.get("fail_if_not_ssl"):
        note("http.fail_if_ssl", "together with fail_if_not_ssl every probe fails")
    elif http.get("fail_if_ssl") or http.get("fail_if_not_ssl"):
        expect["tls"] = bool(http.get("fail_if_not_ssl"))
    positive = _patterns(http, "fail_if_body_not_matches_regexp", note)
    if len(positive) == 1:
        expect["body_regex"] = positive[0]
    elif positive:  # every one must be found: one search of lookaheads
        expect["body_regex"] = "^" + "".join(f"(?=[\\s\\S]*?(?:{p}))" for p in positive)
    if negative := _patterns(http, "fail_if_body_matches_regexp", note):
        expect["body_not_regex"] = negative
    for key, into in (("fail_if_header_not_matches", "headers"),
                      ("fail_if_header_matches", "headers_not")):
        for rule in http.get(key) or []:
            name, pattern = str(rule.get("header", "")), str(rule.get("regexp", ""))
            if not _python_re(pattern):
                note(f"http.{key} {name}", f"/{pattern}/ is not a Python regex")
                continue
            if into in expect and name in expect[into]:
                note(f"http.{key} {name}", "one pattern per header here; the first is kept")
                continue
            # blackbox's regexp is found anywhere in a value; ours matches the whole value
            whole = pattern.startswith(".*") and pattern.endswith(".*")
            expect.setdefault(into, {})[name] = pattern if whole else f".*(?:{pattern}).*"
            missing_fails = not rule.get("allow_missing", False)
            if into == "headers" and not missing_fails:
                note(f"http.{key} {name}: allow_missing", "a missing header fails here")
            elif into == "headers_not" and missing_fails:
                note(f"http.{key} {name}: allow_missing false", "a missing header passes here")
    return expect


def _patterns(http: dict[str, Any], key: str, note: Any) -> list[str]:
    """The module's patterns under `key` that Python's re reads as Go's regexp does (RE2
    syntax is nearly a subset; one it is not is named and left out)."""
    kept = []
    for pattern in map(str, http.get(key) or []):
        if _python_re(pattern):
            kept.append(pattern)
        else:
            note(f"http.{key} /{pattern}/", "not a Python regex")
    return kept


def _python_re(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _headers(headers: dict[str, Any], note: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        if _SECRET_HEADER.fullmatch(str(name)):
            var = "BLACKBOX_HEADER_" + re.sub(r"\W", "_", str(name)).upper()
            out[str(name)] = f"${{{var}}}"
            note(f"http.headers.{name}", f"a secret: set {var} in the environment",
                 done=f"value not copied, ${{{var}}} instead")
        else:
            out[str(name)] = str(value)
    return out


def _bytes(value: Any) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        return None
    return int(m.group(1)) * _UNITS[m.group(2).lower()] or None  # 0: blackbox's "no limit"


_KNOWN = {"valid_status_codes", "valid_http_versions", "method", "headers", "body",
          "follow_redirects", "no_follow_redirects", "fail_if_ssl", "fail_if_not_ssl",
          "fail_if_body_matches_regexp", "fail_if_body_not_matches_regexp",
          "fail_if_header_matches", "fail_if_header_not_matches", "tls_config",
          "body_size_limit", "preferred_ip_protocol", "ip_protocol_fallback"}


def _name(url: str, taken: set[str]) -> str:
    parts = urlsplit(url)
    base = re.sub(r"[^A-Za-z0-9_.:-]+", "-", f"{parts.hostname or 'target'}{parts.path}")
    base = base.strip("-")[:90] or "target"
    name, n = base, 2
    while name in taken or not re.fullmatch(NAME, name):
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def read_targets(path: Path) -> list[tuple[str | None, str]]:
    """(module or None, URL) per target of a list file or a file_sd file."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith(("[", "-")):
        groups = json.loads(text) if stripped.startswith("[") else yaml.safe_load(text)
        out = []
        for group in groups or []:
            labels = group.get("labels") or {}
            module = labels.get("module") or labels.get("__param_module")
            out += [(module, str(t)) for t in group.get("targets") or []]
        return out
    out2: list[tuple[str | None, str]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) == 1:
            out2.append((None, words[0]))
        elif len(words) == 2:
            out2.append((words[0], words[1]))
    return out2


def main(args: argparse.Namespace) -> int:
    try:
        modules = (yaml.safe_load(args.modules.read_text(encoding="utf-8")) or {}).get(
            "modules") or {}
        targets = read_targets(args.targets)
    except (OSError, ValueError, yaml.YAMLError, AttributeError) as exc:
        print(f"probe import-blackbox: cannot read the files: {exc}", file=sys.stderr)
        return 2
    config, notes = convert(modules, targets, args.module)
    for line in notes:
        print(f"probe import-blackbox: {line}", file=sys.stderr)
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    try:  # what is printed must load (the ${VAR}s given a stand-in, as probe gate does)
        Config.model_validate(yaml.safe_load(re.sub(r"\$\{\w+\}", "x", text)))
    except (ValueError, ConfigError) as exc:
        print(f"probe import-blackbox: the converted config does not validate: {exc}",
              file=sys.stderr)
        return 2
    sys.stdout.write(text)
    left_out = len(targets) - len(config["targets"])
    return 1 if left_out else 0
