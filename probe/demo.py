"""`probe demo`: the twin and the daemon on loopback, so anyone can see stageprobe work in a minute.

The daemon listens on --host (127.0.0.1 unless $PROBE_DEMO_HOST says otherwise; the image sets
0.0.0.0 so `docker run -p 9464:9464 IMAGE demo` is reachable from the host) and --port ($PORT
or 9464). The twin always stays on 127.0.0.1: only the daemon is meant to be reached.

The config is generated here (not read from config/) because `probe demo` must work from a fresh
`pip install`, where no repository files exist. The twin boots "starting" for a few seconds, so
the first thing the demo shows is a target going from pending/failing to ready.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from probe.config import Config, parse_config
from probe.daemon.run import Daemon, serve
from probe.logging import configure
from probe.loop import run_loop
from probe.twin import Twin
from probe.twin.auth import E2E_EMAIL

BOOT_SECONDS = 4.0
VERSION = "demo-1"  # what the twin serves and the daemon expects; switch it to see a mismatch
TOKEN_TTL_S = 10  # the auth service's tokens live this long, so a switched secret shows soon


@dataclass(frozen=True)
class SeedFailure:
    """One of the seeds' staging incidents as a twin switch, and what /status then says.

    The banner lists them; tests/test_demo_loop.py switches each on against config/example.yaml
    (the same targets as the demo's) and checks /api/v1/status names it so."""

    what: str  # the incident, as the team would say it
    switch: dict[str, Any]  # the body of POST /_twin/fault
    target: str  # the target that fails
    failure: str  # its failure, from the closed vocabulary
    says: tuple[str, ...]  # words of the detail that name the cause


SEED_FAILURES: tuple[SeedFailure, ...] = (
    SeedFailure("the backend is still starting", {"health": "starting"}, "backend-health",
                "http_status", ("HTTP 503",)),
    SeedFailure("the auth service signs with another secret", {"auth": "other_secret"},
                "chat-ws", "ws_auth", ("HTTP 403", "credential e2e-login, from the login at")),
    SeedFailure("the backend crashes after the first message", {"ws": "crash"}, "chat-ws",
                "ws_closed", ('1011 "Internal error"', "step agent-start")),
    SeedFailure("the agent starts late", {"agent_start_delay_ms": 700}, "chat-ws", "latency",
                ("agent-start p95", "> 500ms")),
    SeedFailure("message processing is slow", {"agent_done_delay_ms": 400}, "chat-ws",
                "latency", ("agent-done p95", "> 200ms")),
    SeedFailure("a load balancer cuts sessions after 1 s", {"ws_cut_after_s": 1}, "chat-hold",
                "ws_dropped", ("connection lost", "while held")),
    SeedFailure("an old revision still serves", {"version": "old-revision"}, "backend-health",
                "version_mismatch", ("serving build old-revision",)),
)

# config/example.yaml's targets (tests/test_demo_loop.py keeps them the same), at a demo's pace.
_CONFIG = """\
defaults: {{interval: 2s, timeout: 1500ms, success_threshold: 2, failure_threshold: 2}}
expect_version: {version}
credentials:
  e2e-user:
    jwt: {{secret: "${{DEMO_JWT_SECRET}}", algorithm: HS256, ttl: 10m,
          claims: {{sub: demo-e2e-user, aud: staging}}}}
  e2e-login:
    login: {{url: "{base}/auth/login", json: {{email: {email}, password: "${{DEMO_E2E_PASSWORD}}"}},
            token_path: access_token, expires_in_path: expires_in}}
targets:
  - name: backend-health
    url: {base}/health
    expect: {{status: [200], json: {{status: healthy}}}}
    version_path: version
    latency: {{p95: 100ms, min_samples: 3, window: 10}}
  - name: api-health
    url: {base}/api/health
    expect: {{json: {{status: ok}}}}
  - name: agents-stop
    url: {base}/api/agents/stop
    method: POST
    json_body: {{agent_id: demo-probe}}
    credential: e2e-user
    expect: {{status: [200], json: {{stopped: true}}}}
  - name: chat-ws
    url: {ws}/ws
    credential: e2e-login
    messages:
      - {{send: {{type: ping}}, expect: {{json: {{type: pong}}}}, timeout: 1s}}
      - {{name: agent-start, send: {{type: user_message, text: hello}},
         until: {{json: {{type: agent_started}}}}, timeout: 1s}}
      - {{name: agent-done, until: {{json: {{type: agent_completed}}}}, timeout: 1s}}
    latency:
      - {{measure: rtt, p95: 50ms, window: 30s, min_samples: 3}}
      - {{measure: agent-start, p95: 500ms, window: 30s, min_samples: 3}}
      - {{measure: agent-done, p95: 200ms, window: 30s, min_samples: 3}}
      - {{measure: total, p95: 1s, window: 30s, min_samples: 3}}
  - name: thread-roundtrip
    steps:
      - {{name: create-thread, url: "{base}/api/threads", method: POST, credential: e2e-login,
         json_body: {{title: demo}}, expect: {{status: [201]}}, extract: {{thread_id: json.id}}}}
      - name: chat
        url: "{ws}/ws?thread={{{{thread_id}}}}"
        credential: e2e-login
        messages:
          - {{send: {{type: user_message, text: "hello {{{{thread_id}}}}"}},
             until: {{json: {{type: agent_completed, thread: "{{{{thread_id}}}}"}}}}}}
    latency: {{measure: create-thread, p95: 100ms, window: 30s, min_samples: 3}}
  - name: chat-hold
    url: {ws}/ws
    credential: e2e-login
    messages:
      - {{send: {{type: ping}}, expect: {{json: {{type: pong}}}}, timeout: 1s}}
    hold: 3s
    keepalive: 1s
    interval: 5s
    timeout: 5s
"""


def demo_config(base: str, secret: str, password: str = "") -> Config:
    text = _CONFIG.format(base=base, ws="ws" + base.removeprefix("http"), version=VERSION,
                          email=E2E_EMAIL)
    return parse_config(text, "<demo>", env={"DEMO_JWT_SECRET": secret,
                                             "DEMO_E2E_PASSWORD": password})


def _banner(daemon: Daemon, twin: Twin) -> str:
    d, t = daemon.url, twin.url
    lines = [
        "",
        "stageprobe demo — a simulated staging backend (the twin) and the prober, on loopback",
        f"  status page   {d}/status      (JSON: {d}/api/v1/status)",
        f"  metrics       {d}/metrics",
        f"  gate          {d}/readyz      (or: probe gate {d})",
        f"  the twin      {t}/health   (boots 'starting' for {BOOT_SECONDS:g}s)",
        "The loop: login at the auth service -> POST /api/threads -> WebSocket /ws?thread=ID ->"
        " agent_started, agent_completed (targets chat-ws, thread-roundtrip, chat-hold).",
        "",
        "Switch one of the seeds' failures on, watch /status name it, then switch it off:",
    ]
    for seed in SEED_FAILURES:
        lines.append(f"  {seed.what}:")
        lines.append(f"    curl -X POST {t}/_twin/fault -d '{json.dumps(seed.switch)}'")
        says = " and ".join(f'"{words}"' for words in seed.says)
        lines.append(f"    -> {seed.target}  {seed.failure}, the detail saying {says}")
    lines += [
        f"Off again: curl -X POST {t}/_twin/reset   (the version: -d '{{\"version\": "
        f"\"{VERSION}\"}}' to /_twin/fault)",
        f"Tokens live {TOKEN_TTL_S}s, so a switched auth secret shows at the next login; a latency"
        " verdict clears 30 s after the slow answers stop.",
        "More switches: health|api = ok starting 503 500 slow hang drop garbage degraded big,"
        " ws = ok reject crash drop silent, auth = ok other_secret reject 503, delay_ms, slow_ms",
        f"State: curl {t}/_twin/state",
        "Ctrl-C stops the demo.",
        "",
    ]
    return "\n".join(lines)


def demo_port(arg: int | None) -> int:
    """--port, else $PORT (as `probe run` honours it), else 9464. ValueError for a bad PORT."""
    if arg is not None:
        return arg
    text = os.environ.get("PORT") or "9464"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"PORT must be a port number, got {text!r}") from None


async def _run(args: argparse.Namespace) -> int:
    secret, password = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    twin = Twin(version=VERSION, jwt_secret=secret, starting=BOOT_SECONDS,
                accounts={E2E_EMAIL: password})
    twin.set_fault(token_ttl_s=TOKEN_TTL_S)
    try:
        base = await twin.start("127.0.0.1", args.twin_port)
    except OSError as exc:
        print(f"probe demo: cannot start the twin on port {args.twin_port}: {exc.strerror}",
              file=sys.stderr)
        return 2
    config = demo_config(base, secret, password)

    def started(daemon: Daemon) -> None:
        print(_banner(daemon, twin), flush=True)

    try:
        code = await serve(config, host=args.host, port=args.port, on_started=started)
    finally:
        await twin.stop()
    if code == 2:
        print(f"probe demo: cannot listen on {args.host}:{args.port} (try --port 0)",
              file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    configure(level="info")
    try:
        args.port = demo_port(args.port)
    except ValueError as exc:
        print(f"probe demo: {exc}", file=sys.stderr)
        return 2
    return run_loop(_run(args), daemon=True)
