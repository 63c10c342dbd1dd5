"""`probe reload`: make a running daemon re-read its config file, with no shell and no `kill`.

The image has neither (it ships only Python and the package), so `kubectl exec ... kill -HUP 1`
cannot work there; `kubectl exec deploy/stageprobe -- probe reload` does. By default it POSTs
/-/reload to the daemon in the same container, at 127.0.0.1 and the port `probe run` listens on
(PORT, else PROBE_LISTEN's), with PROBE_GATE_TOKEN as the bearer token when it is set; URL points
it at another daemon. `--pid PID` sends SIGHUP to a local process instead.

Exit codes: 0 reloaded, 1 the new file is invalid (the daemon keeps its running config, and
logs why), 2 the daemon could not be reached or refused the call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request

from probe.config import ConfigError, Settings

TIMEOUT = 10.0  # seconds: a reload reads and validates one file
MAX_ANSWER = 4096  # bytes of the daemon's answer read; it is one small JSON object


def default_url() -> str:
    """The daemon in this container: loopback, on the port `probe run` would listen on."""
    try:
        _, port = Settings().host_port
    except (ValueError, ConfigError) as exc:
        raise SystemExit(f"probe reload: {exc}; pass the daemon's URL") from None
    return f"http://127.0.0.1:{port}"


def reload_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/-/reload") else f"{base}/-/reload"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is here: the bearer token never follows one."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_reload(url: str, token: str | None) -> tuple[int, dict[str, object]]:
    """(HTTP status, JSON answer) of POST url; OSError when nothing answers."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=TIMEOUT) as resp:
            return resp.status, _json(resp.read(MAX_ANSWER))
    except urllib.error.HTTPError as err:
        with err:
            return err.code, _json(err.read(MAX_ANSWER))


def _json(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def main(args: argparse.Namespace) -> int:
    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as exc:
            print(f"probe reload: cannot signal process {args.pid}: {exc.strerror}",
                  file=sys.stderr)
            return 2
        print(f"sent SIGHUP to process {args.pid}; the daemon logs the outcome")
        return 0
    url = reload_url(args.url or default_url())
    if not url.startswith(("http://", "https://")):
        print(f"probe reload: not an http(s) URL: {url}", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env) or None
    try:
        status, answer = post_reload(url, token)
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        print(f"probe reload: no daemon answers at {url}: {reason}", file=sys.stderr)
        return 2
    if status == 200 and answer.get("reloaded") is True:
        print(f"reloaded: {answer.get('targets')} target(s)")
        return 0
    error = str(answer.get("error") or f"HTTP {status}")
    print(f"probe reload: {error}", file=sys.stderr)
    return 1 if status == 500 else 2
