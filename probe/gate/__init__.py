"""`probe gate`: ask a running daemon (or Prometheus) whether staging is ready, and why not.

`probe gate URL` GETs the daemon's /readyz (appended when URL is a base URL) with the bearer token
from $PROBE_GATE_TOKEN (or --token-env VAR) when set, and renders the verdict it answers. Redirects
are not followed, so the token never travels to another host. Answers that waiting cannot change
are usage errors (exit 2) at once: HTTP 404 (not the daemon's URL), 401/403, and a daemon that
withholds its details because the token is missing or wrong (never "READY 0/0").

`probe gate --prometheus URL` asks Prometheus instead: see probe.gate.prometheus, which
shares this module's polling and connection handling.

With --wait, both poll until ready or the deadline; an unreachable daemon meanwhile is "not ready
yet" with that reason, and is the final reason if the deadline passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from probe.cli import EXIT_NOT_READY, EXIT_READY, EXIT_USAGE, UsageError
from probe.loop import run_loop
from probe.readiness import TargetVerdict, Verdict
from probe.report import Progress, emit, public_url
from probe.selection import narrowed

POLL = 1.0  # seconds between polls while waiting
REQUEST_TIMEOUT = 10.0
BODY_LIMIT = 8 << 20

Fetch = Callable[[aiohttp.ClientSession, float], Awaitable[Verdict]]


def _endpoint(url: str, what: str, suffix: str, keep_query: bool) -> str:
    """`url` with `suffix` appended to its path unless it already ends there."""
    p = urlsplit(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {public_url(url)!r}")
    path = p.path.rstrip("/")
    if not path.endswith(suffix):
        path += suffix
    return urlunsplit((p.scheme, p.netloc, path, p.query if keep_query else "", ""))


def readyz_url(url: str) -> str:
    return _endpoint(url, "the daemon URL", "/readyz", keep_query=True)


def query_url(url: str) -> str:
    return _endpoint(url, "--prometheus", "/api/v1/query", keep_query=False)


def synthetic(name: str, failure: str | None, detail: str, kind: str = "gate") -> Verdict:
    """A not-ready verdict whose one entry is the reason no real verdict could be had."""
    tv = TargetVerdict(name=name, kind=kind, critical=True, ready=False,
                       state="failing" if failure else "pending", failure=failure, detail=detail,
                       status_code=None, close_code=None, version=None, latency_ms={})
    return Verdict(ready=False, targets=[tv])


def classify(exc: BaseException) -> tuple[str, str]:
    """A connection error -> (failure class, words), without the exception's raw text."""
    if isinstance(exc, TimeoutError):
        return "timeout", "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", "the name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls", "TLS handshake or certificate verification failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "refused", "connection refused"
        return "refused", f"cannot connect ({type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return "disconnected", "the connection closed before a complete answer"
    return "protocol", f"{type(exc).__name__}"


async def get(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
               budget: float, params: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with session.get(url, headers=headers, params=params, allow_redirects=False,
                           timeout=aiohttp.ClientTimeout(total=budget)) as resp:
        return resp.status, await resp.content.read(BODY_LIMIT)


def _token_words(token: str | None, token_env: str | None) -> str:
    if token:
        return f"the token in ${token_env} is wrong (the daemon did not accept it)"
    return (f"the gate token is missing: set ${token_env or 'PROBE_GATE_TOKEN'} to the daemon's "
            "PROBE_GATE_TOKEN (or name another variable with --token-env VAR)")


def readyz_fetcher(url: str, token: str | None, token_env: str | None) -> Fetch:
    target = readyz_url(url)
    shown = public_url(target)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def fetch(session: aiohttp.ClientSession, budget: float) -> Verdict:
        try:
            status, body = await get(session, target, headers, budget)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure, words = classify(exc)
            return synthetic("probe-daemon", failure,
                             f"cannot reach the daemon at {shown}: {words}")
        if status == 404:
            raise UsageError(f"nothing answers at {shown} (HTTP 404): give the daemon's base URL "
                             "or its /readyz URL")
        if status in (401, 403):
            raise UsageError(f"{shown} refused the request (HTTP {status}): "
                             f"{_token_words(token, token_env)}")
        try:
            data = json.loads(body)
            verdict = Verdict.from_dict(data)
        except ValueError as exc:
            if status not in (200, 503):
                return synthetic("probe-daemon", "http_status",
                                 f"the daemon answered HTTP {status} at {shown}")
            return synthetic("probe-daemon", "protocol",
                             f"the daemon's answer at {shown} is not a verdict: {exc}")
        if data.get("draining"):
            return synthetic("probe-daemon", "disconnected",
                             f"the daemon at {shown} is draining (shutting down)")
        if "targets" not in data:  # what a daemon with PROBE_GATE_TOKEN tells anonymous callers
            raise UsageError(f"the daemon at {shown} withholds its verdict's details: "
                             f"{_token_words(token, token_env)}")
        ready = verdict.ready and status == 200
        return Verdict(ready=ready, targets=verdict.targets, since=verdict.since)

    return fetch


async def run_gate(fetch: Fetch, wait: float | None, progress: Progress | None = None) -> Verdict:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + (wait or 0.0)
    async with aiohttp.ClientSession(trust_env=True) as session:  # proxies from the env
        try:
            while True:
                remaining = deadline - loop.time()
                budget = REQUEST_TIMEOUT if wait is None else min(REQUEST_TIMEOUT,
                                                                  max(1.0, remaining))
                verdict = await fetch(session, budget)
                if progress is not None:
                    progress.update(verdict, loop.time() - start)
                remaining = deadline - loop.time()
                if verdict.ready or wait is None or remaining <= 0:
                    return verdict
                await asyncio.sleep(min(POLL, remaining))
        finally:
            if progress is not None:
                progress.close()


def main(args: argparse.Namespace) -> int:
    """`probe gate URL` (cli.py sends `probe gate --prometheus URL` to probe.gate.prometheus)."""
    if args.url is None or args.prometheus is not None:
        print("probe gate: give the daemon's URL or --prometheus URL (one of them)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.config is not None or args.selector:
        print("probe gate: -c and --selector go with --prometheus URL", file=sys.stderr)
        return EXIT_USAGE
    try:
        token_env = args.token_env or None
        token = os.environ.get(token_env) if token_env else None
        fetch = readyz_fetcher(args.url, token or None, token_env)
    except ValueError as exc:
        print(f"probe gate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return conclude(fetch, args)


def conclude(fetch: Fetch, args: argparse.Namespace) -> int:
    """Poll `fetch` as the flags say (--wait, --target/--exclude, -q/-v), print the verdict in
    --format (and --junit), and return the exit code: the same for the daemon and Prometheus."""
    if args.verbose:  # every poll's answer, also without --wait
        progress: Progress | None = Progress(args.wait, heartbeat=0.0)
    else:
        progress = Progress(args.wait) if args.wait is not None and not args.quiet else None
    verdict = run_loop(run_gate(narrowed(fetch, args.target, args.exclude), args.wait, progress))
    emit(verdict, args.format, args.junit, out=sys.stdout, quiet=args.quiet)
    return EXIT_READY if verdict.ready else EXIT_NOT_READY
