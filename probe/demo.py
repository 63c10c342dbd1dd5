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
import os
import secrets
import sys

from probe.config import Config, parse_config
from probe.daemon import Daemon, serve
from probe.logging import configure
from probe.loop import run_loop
from probe.twin import Twin
from probe.twin_auth import E2E_EMAIL

BOOT_SECONDS = 4.0
VERSION = "demo-1"  # what the twin serves and the daemon expects; switch it to see a mismatch

_CONFIG = """\
defaults: {{interval: 2s, timeout: 1s, success_threshold: 2, failure_threshold: 2}}
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
      - send: {{type: ping}}
        expect: {{json: {{type: pong}}}}
        timeout: 1s
"""


def demo_config(base: str, secret: str, password: str = "") -> Config:
    text = _CONFIG.format(base=base, ws="ws" + base.removeprefix("http"), version=VERSION,
                          email=E2E_EMAIL)
    return parse_config(text, "<demo>", env={"DEMO_JWT_SECRET": secret,
                                             "DEMO_E2E_PASSWORD": password})


def _banner(daemon: Daemon, twin: Twin) -> str:
    d, t = daemon.url, twin.url
    return "\n".join([
        "",
        "stageprobe demo — a simulated staging backend (the twin) and the prober, on loopback",
        f"  status page   {d}/status",
        f"  metrics       {d}/metrics",
        f"  gate          {d}/readyz      (or: probe gate {d})",
        f"  the twin      {t}/health   (boots 'starting' for {BOOT_SECONDS:g}s)",
        "",
        "Switch a fault on, watch /status and /readyz name it, then switch it off:",
        f"  curl -X POST {t}/_twin/fault -d '{{\"health\": \"503\"}}'",
        f"  curl -X POST {t}/_twin/fault -d '{{\"delay_ms\": 150}}'      # latency target",
        f"  curl -X POST {t}/_twin/fault -d '{{\"version\": \"demo-2\"}}'  # wrong build",
        f"  curl -X POST {t}/_twin/fault -d '{{\"auth\": \"other_secret\"}}'"
        "  # the auth service signs with another secret",
        f"  curl -X POST {t}/_twin/reset",
        "Faults: health|api = ok starting 503 500 slow hang drop garbage degraded big,"
        " ws = ok reject crash drop silent, auth = ok other_secret reject 503",
        f"State: curl {t}/_twin/state",
        "Ctrl-C stops the demo.",
        "",
    ])


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
