"""`probe gate`: ask a running daemon (or Prometheus) whether staging is ready, and why not.

`probe gate URL` GETs the daemon's /readyz (appended when URL is a base URL) with the bearer token
from $PROBE_GATE_TOKEN (or --token-env VAR) when set, and renders the verdict it answers. Redirects
are not followed, so the token never travels to another host.

`probe gate --prometheus URL` reads the daemon's own metrics back from a Prometheus-compatible
query API (`URL/api/v1/query`), for probers running as several replicas or as sidecars CI cannot
reach. Across replicas it is strict: the gate is ready only if `probe_gate_ready` is 1 in every
replica reporting it (`min`), and a target only if `probe_target_ready` is 1 in every replica
reporting it. The cause of a not-ready target is its most frequent failure class over the last 5
minutes (`increase(probe_failures_total[5m])`). Which targets are critical comes from
`probe_target_critical` (critical if so in any replica); without that series, a target that is
not ready while every replica's gate is ready must be non-critical, and others show as
critical. Metrics carry only ready or not, so a target that is not ready shows as `failing`.
A bearer token for the query API is read from $PROBE_PROMETHEUS_TOKEN, never from the daemon's
gate token.

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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from probe.cli import EXIT_NOT_READY, EXIT_READY, EXIT_USAGE
from probe.loop import run_loop
from probe.readiness import TargetVerdict, Verdict
from probe.report import Progress, emit, public_url

POLL = 1.0  # seconds between polls while waiting
REQUEST_TIMEOUT = 10.0
BODY_LIMIT = 8 << 20
PROMETHEUS_TOKEN_ENV = "PROBE_PROMETHEUS_TOKEN"
FAILURE_WINDOW = "5m"

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


def _classify(exc: BaseException) -> tuple[str, str]:
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


async def _get(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
               budget: float, params: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with session.get(url, headers=headers, params=params, allow_redirects=False,
                           timeout=aiohttp.ClientTimeout(total=budget)) as resp:
        return resp.status, await resp.content.read(BODY_LIMIT)


def readyz_fetcher(url: str, token: str | None, token_env: str | None) -> Fetch:
    target = readyz_url(url)
    shown = public_url(target)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def fetch(session: aiohttp.ClientSession, budget: float) -> Verdict:
        try:
            status, body = await _get(session, target, headers, budget)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure, words = _classify(exc)
            return synthetic("probe-daemon", failure,
                             f"cannot reach the daemon at {shown}: {words}")
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
        ready = verdict.ready and status == 200
        if not ready and not verdict.targets:
            why = (f"the token in ${token_env} was not accepted" if token else
                   f"set ${token_env or 'PROBE_GATE_TOKEN'} to the daemon's gate token")
            return synthetic("probe-daemon", None,
                             f"the daemon answered not ready (HTTP {status}); details need its "
                             f"gate token: {why}")
        return Verdict(ready=ready, targets=verdict.targets, since=verdict.since)

    return fetch


class PromError(Exception):
    pass


async def _query(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                 budget: float, promql: str) -> list[dict[str, Any]]:
    status, body = await _get(session, url, headers, budget, params={"query": promql})
    try:
        data = json.loads(body)
    except ValueError:
        raise PromError(f"HTTP {status}, not a Prometheus API answer") from None
    if not isinstance(data, dict) or data.get("status") != "success":
        error = data.get("error") if isinstance(data, dict) else None
        raise PromError(f"HTTP {status}: {error or 'query failed'}")
    result = (data.get("data") or {}).get("result")
    if not isinstance(result, list):
        raise PromError("the answer has no result vector")
    return [r for r in result if isinstance(r, dict)]


def _value(series: dict[str, Any]) -> float:
    try:
        return float(series["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return float("nan")


def prometheus_verdict(gates: list[float], targets: dict[str, list[float]],
                       causes: dict[str, tuple[str, float]],
                       critical: dict[str, bool] | None = None) -> Verdict:
    """Readiness across replicas from raw series values (pure, so it is easy to test)."""
    if not gates:
        return synthetic("prometheus", None, "no data from Prometheus for probe_gate_ready")
    gate_ready = all(v >= 1 for v in gates)
    out = []
    for name in sorted(targets):
        values = targets[name]
        down = sum(1 for v in values if not v >= 1)
        failure, detail = None, ""
        if down:
            detail = f"not ready in {down} of {len(values)} replica{'s' if len(values) > 1 else ''}"
            if name in causes:
                failure, count = causes[name]
                detail += f"; {count:.0f} {failure} failures in the last {FAILURE_WINDOW}"
        out.append(TargetVerdict(
            name=name, kind="", ready=not down,
            critical=(critical or {}).get(name, not (gate_ready and down)),
            state="failing" if down else "ready",
            failure=failure, detail=detail, status_code=None, close_code=None, version=None,
            latency_ms={}))
    if not gate_ready and all(t.ready for t in out):
        down = sum(1 for v in gates if not v >= 1)
        why = f"probe_gate_ready is 0 in {down} of {len(gates)} replicas"
        out.append(synthetic("probe_gate_ready", None, why).targets[0])
    return Verdict(ready=gate_ready, targets=out)


def prometheus_fetcher(url: str, token: str | None) -> Fetch:
    api = query_url(url)
    shown = public_url(api)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def fetch(session: aiohttp.ClientSession, budget: float) -> Verdict:
        try:
            gates = [_value(s) for s in await _query(session, api, headers, budget,
                                                     "probe_gate_ready")]
            targets: dict[str, list[float]] = {}
            for s in await _query(session, api, headers, budget, "probe_target_ready"):
                name = (s.get("metric") or {}).get("target")
                if isinstance(name, str):
                    targets.setdefault(name, []).append(_value(s))
            critical: dict[str, bool] = {}
            for s in await _query(session, api, headers, budget,
                                  "max by (target) (probe_target_critical)"):
                name = (s.get("metric") or {}).get("target")
                if isinstance(name, str):
                    critical[name] = _value(s) >= 1
            causes: dict[str, tuple[str, float]] = {}
            promql = (f"sum by (target, failure) "
                      f"(increase(probe_failures_total[{FAILURE_WINDOW}])) > 0")
            for s in await _query(session, api, headers, budget, promql):
                labels, count = s.get("metric") or {}, _value(s)
                name, failure = labels.get("target"), labels.get("failure")
                if isinstance(name, str) and isinstance(failure, str) and count > causes.get(
                        name, ("", 0.0))[1]:
                    causes[name] = (failure, count)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure, words = _classify(exc)
            return synthetic("prometheus", failure, f"cannot reach Prometheus at {shown}: {words}")
        except PromError as exc:
            return synthetic("prometheus", "protocol", f"Prometheus at {shown}: {exc}")
        return prometheus_verdict(gates, targets, causes, critical)

    return fetch


async def run_gate(fetch: Fetch, wait: float | None, progress: Progress | None = None) -> Verdict:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + (wait or 0.0)
    async with aiohttp.ClientSession() as session:
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
    if (args.url is None) == (args.prometheus is None):
        print("probe gate: give the daemon's URL or --prometheus URL (one of them)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.prometheus is not None:
            fetch = prometheus_fetcher(args.prometheus, os.environ.get(PROMETHEUS_TOKEN_ENV))
        else:
            token_env = args.token_env or None
            token = os.environ.get(token_env) if token_env else None
            fetch = readyz_fetcher(args.url, token or None, token_env)
    except ValueError as exc:
        print(f"probe gate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = Progress(args.wait) if args.wait is not None else None
    verdict = run_loop(run_gate(fetch, args.wait, progress))
    emit(verdict, args.format, args.junit, out=sys.stdout)
    return EXIT_READY if verdict.ready else EXIT_NOT_READY
