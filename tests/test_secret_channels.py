"""Every source of a secret against every output channel, in every form a server may echo.

Sources (all configured at once): a custom header (X-Api-Key), a query value (?api_key=), URL
userinfo (its password and the Basic value built from it, HTTP and WebSocket), a static bearer
token, a JWT secret and the token minted with it, an OAuth2 client secret and access token, a
login's password (JSON and form bodies) and the token it obtained.

Loopback echo servers (tests/faults/echo.py) send each secret back raw, URL-encoded, base64 or
as its first 8 characters: into a body a body_regex then quotes, a token endpoint's error, a
WebSocket upgrade's 400 body, a close reason, the reply to a message.

Channels read: `probe run` (a real subprocess, DEBUG logs, JSON and console) on its stderr, its
/metrics (both formats), /readyz, /api/v1/status and /status, the log line of a failed reload;
`probe check` in every report format (text, json, junit, github with its step summary, a
--junit file); `probe validate` and `probe check` on a config whose URLs carry the secrets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from faults.echo import ACCESS_TOKEN, FORMS
from faults.fixtures import StartFaultServer
from helpers import http_get, run_daemon, until

API_KEY = "apikey/Vq4+Zr8=Lp2w"
QUERY_TOKEN = "qtok/Hs5+Mn1=Kd6y"
URL_USER = "probe-user"
URL_PASSWORD = "pass/Wd9+Ty4=Xcq"
BEARER = "bearer/Gt3+Ru7=Nb5z"
JWT_SECRET = "jwt-secret/Fk2+Pl8=Qm4-long-enough-for-hs256"
JWT_HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # how every minted HS256 token starts
CLIENT_SECRET = "client/Sc6+Ve2=Ja9k"
LOGIN_PASSWORD = "login-pw/Hq8+Zd3=Mv6t"
BASIC = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()
SECRETS = {
    "X-Api-Key": API_KEY, "query": QUERY_TOKEN, "URL password": URL_PASSWORD,
    "Basic value": BASIC, "bearer": BEARER, "JWT secret": JWT_SECRET, "JWT": JWT_HEADER,
    "client_secret": CLIENT_SECRET, "access token": ACCESS_TOKEN, "login password": LOGIN_PASSWORD,
}
ECHOED = tuple(FORMS)  # raw, quote, plus (quote_plus), b64, b64url, p8 (the first 8 characters)
WS_ECHOED = ("raw", "quote", "b64", "p8")


def hits(channels: dict[str, str]) -> list[str]:
    """Every (channel, secret, form) where that form of that secret appears."""
    return [f"{where}: {name} ({form})"
            for where, text in channels.items()
            for name, secret in SECRETS.items()
            for form, encode in FORMS.items()
            if encode(secret) in text]


def config(http: str, ws: str, echo_port: int) -> dict[str, Any]:
    """One target per (source, form, channel); every one fails with the echo in reach of its
    detail, but http-version-*, which succeed serving the echo as their version."""
    userinfo = f"{URL_USER}:{quote(URL_PASSWORD, safe='')}@"
    query = f"api_key={quote(QUERY_TOKEN, safe='')}"
    never = {"body_regex": "^this never matches$"}
    targets: list[dict[str, Any]] = []
    credentials: dict[str, Any] = {
        "bearer": {"bearer": {"token": BEARER}},
        "hs": {"jwt": {"secret": JWT_SECRET, "claims": {"sub": "probe"}}},
        "oauth": {"oauth2": {"token_url": f"{http}/token-ok", "client_id": "probe",
                             "client_secret": CLIENT_SECRET, "timeout": "1s"}},
        "login": {"login": {"url": f"{http}/token-ok", "timeout": "1s",  # issues ACCESS_TOKEN
                            "json": {"email": "probe@example.test", "password": LOGIN_PASSWORD}}},
    }
    for form in ECHOED:
        sources: list[tuple[str, str, dict[str, Any]]] = [
            ("key", f"{http}/h.x-api-key/{form}", {"headers": {"X-Api-Key": API_KEY}}),
            ("query", f"{http}/q.api_key/{form}?{query}", {}),
            ("pw", f"http://{userinfo}127.0.0.1:{echo_port}/pw/{form}", {}),
            ("basic", f"http://{userinfo}127.0.0.1:{echo_port}/a.authorization/{form}", {}),
            ("bearer", f"{http}/a.authorization/{form}", {"credential": "bearer"}),
            ("jwt", f"{http}/a.authorization/{form}", {"credential": "hs"}),
            ("oauth", f"{http}/a.authorization/{form}", {"credential": "oauth"}),
            ("secret", f"{http}/ok", {"credential": f"oauth-echo-{form}"}),
            ("login", f"{http}/a.authorization/{form}", {"credential": "login"}),
            ("loginpw", f"{http}/ok", {"credential": f"login-echo-{form}"}),
        ]
        credentials[f"login-echo-{form}"] = {"login": {  # its 400's error echoes the password
            "url": f"{http}/token/f.password/{form}", "form": {"password": LOGIN_PASSWORD},
            "timeout": "1s"}}
        credentials[f"oauth-echo-{form}"] = {"oauth2": {
            "token_url": f"{http}/token/f.client_secret/{form}", "client_id": "probe",
            "client_secret": CLIENT_SECRET, "timeout": "1s"}}
        targets += [{"name": f"http-{name}-{form}", "url": url, "expect": never, **extra}
                    for name, url, extra in sources]
        targets.append({"name": f"http-version-{form}", "version_path": "version",
                        "url": f"{http}/h.x-api-key/{form}/version",
                        "headers": {"X-Api-Key": API_KEY}})  # succeeds, serving the key
    step = {"send": "hello", "expect": {"regex": "^this never matches$"}, "timeout": "1s"}
    wsinfo = f"ws://{userinfo}{ws.removeprefix('ws://')}"
    for channel in ("reject", "close", "message"):
        for form in WS_ECHOED:
            sources = [
                ("key", f"{ws}/{channel}/h.x-api-key/{form}", {"headers": {"X-Api-Key": API_KEY}}),
                ("query", f"{ws}/{channel}/q.api_key/{form}?{query}", {}),
                ("pw", f"{wsinfo}/{channel}/pw/{form}", {}),
                ("basic", f"{wsinfo}/{channel}/a.authorization/{form}", {}),
                ("jwt", f"{ws}/{channel}/a.authorization/{form}", {"credential": "hs"}),
            ]
            targets += [{"name": f"ws-{channel}-{name}-{form}", "url": url, "messages": [step],
                         **extra} for name, url, extra in sources]
    return {
        "defaults": {"interval": "2s", "timeout": "1s", "success_threshold": 1,
                     "failure_threshold": 1},
        "credentials": credentials,
        "targets": targets,
    }


def broken(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with URLs no check accepts, each still carrying its userinfo and query secrets."""
    bad = json.loads(json.dumps(cfg))
    for t in bad["targets"][:4]:
        t["url"] = t["url"].replace("http://", "ftp://", 1)
    bad["credentials"]["oauth"]["oauth2"]["token_url"] = (
        f"gopher://{URL_USER}:{quote(URL_PASSWORD, safe='')}@127.0.0.1/t?secret="
        f"{quote(CLIENT_SECRET, safe='')}")
    return bad


async def run(*argv: str, env: dict[str, str]) -> tuple[str, str]:
    """`python -m probe ARGV` as a subprocess: its stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probe", *argv, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return out.decode(errors="replace"), err.decode(errors="replace")


async def daemon_channels(text: str, tmp: Path, fmt: str, bad_text: str) -> dict[str, str]:
    """What `probe run` serves and logs (at DEBUG, in `fmt`) once every target has failed, and
    the log line of a reload that fails on `bad_text`."""
    env = {"PROBE_LOG_FORMAT": fmt, "PROBE_LOG_LEVEL": "debug"}
    got: dict[str, str] = {}
    await asyncio.to_thread(tmp.mkdir)
    async with run_daemon(text, tmp, env=env) as daemon:
        async def all_probed() -> bool:
            answer = await http_get(f"{daemon.url}/api/v1/status")
            if answer is None or answer[0] != 200:
                return False
            targets = json.loads(answer[1])["targets"]
            return all(t.get("state") in ("failing", "ready") for t in targets)

        await until(all_probed, "every target to be probed once", within=60, every=0.2,
                    detail=daemon.log_text)
        for path, headers in (("/metrics", None),
                              ("/metrics", {"Accept": "application/openmetrics-text"}),
                              ("/readyz", None), ("/api/v1/status", None), ("/status", None)):
            answer = await http_get(daemon.url + path, headers)
            assert answer is not None, path
            got[f"{fmt} daemon {path} {headers or ''}"] = answer[1]
        (tmp / "probe.yaml").write_text(bad_text, encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        await until(lambda: "reload failed" in daemon.log_text(), "the failed reload's log line",
                    within=20, detail=daemon.log_text)
        got[f"{fmt} daemon stderr (DEBUG)"] = daemon.log_text()
    return got


@pytest.mark.timeout(300)
async def test_no_secret_in_any_form_reaches_any_channel(
    fault_server: StartFaultServer, tmp_path: Path
) -> None:
    echo, ws_echo = fault_server("echo"), fault_server("ws_echo")
    cfg = config(echo.url(""), ws_echo.ws_url(""), echo.port)
    text, bad_text = yaml.safe_dump(cfg), yaml.safe_dump(broken(cfg))
    channels: dict[str, str] = {}
    for fmt in ("json", "console"):
        channels |= await daemon_channels(text, tmp_path / fmt, fmt, bad_text)

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(text, encoding="utf-8")
    bad.write_text(bad_text, encoding="utf-8")
    summary, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    for fmt in ("text", "json", "junit", "github"):
        out, err = await run("check", "-c", str(good), "--format", fmt, "--junit", str(junit),
                             "-v", env=env)
        channels[f"probe check --format {fmt} (stdout)"] = out
        channels[f"probe check --format {fmt} (stderr, -v)"] = err
        channels[f"--junit file (with --format {fmt})"] = junit.read_text(encoding="utf-8")
    channels["github step summary"] = summary.read_text(encoding="utf-8")
    for cmd in ("validate", "check"):
        channels[f"probe {cmd} (bad config)"] = "".join(await run(cmd, "-c", str(bad), env=env))

    # the probes did reach the echo: the failures are the echo's, not a setup mistake
    report = json.loads(channels["probe check --format json (stdout)"])
    failures = {t["name"]: t["failure"] for t in report["targets"]}
    assert failures["http-key-raw"] == "assertion", failures
    assert failures["http-secret-raw"] == "credential", failures
    assert failures["http-loginpw-raw"] == "credential", failures
    assert failures["http-login-raw"] == "assertion", failures
    assert failures["ws-reject-key-raw"] == "ws_rejected", failures
    assert failures["ws-close-jwt-raw"] == "ws_closed", failures
    assert failures["ws-message-basic-raw"] == "assertion", failures
    assert "invalid configuration" in channels["probe validate (bad config)"]

    found = hits(channels)
    assert not found, (f"{len(found)} hits across {len({f.split(': ')[0] for f in found})} "
                       "channels:\n" + "\n".join(found))
    unmasked = [t["name"] for t in report["targets"]
                if "***" not in (t["version"] if "version" in t["name"] else t["detail"])]
    assert not unmasked, f"no echo was masked in these details: {unmasked}"
