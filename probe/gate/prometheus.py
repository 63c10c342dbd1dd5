"""`probe gate --prometheus URL [-c FILE] [--selector SEL] [--max-age D]`: the fleet's verdict.

It reads the daemons' own metrics back from a Prometheus-compatible query API
(`URL/api/v1/query`), for probers running as several replicas, shards or sidecars CI cannot
reach. A bearer token for the query API is read from $PROBE_PROMETHEUS_TOKEN, never from the
daemon's gate token.

What it trusts, and why:
- `--selector '{job="stageprobe",env="staging"}'` is added to every metric of every query, so
  another environment sharing the Prometheus, or an old revision still scraped under another
  label, cannot answer for this one.
- Only FRESH series count: a sample older than `--max-age` (default 1m: four scrape intervals of
  the 15 s in deploy/, so one slow or missed scrape is not an outage; set ~3x your interval)
  is ignored. Prometheus keeps returning a series for 5 minutes after its last sample when the
  target vanishes without a staleness marker; a crashed replica must not vote meanwhile.
- With `-c FILE` the file says which targets exist and which are critical: every critical one
  must have at least one fresh `probe_target_ready` series, and a target with none is not ready
  ("no data in Prometheus for 2m: its shard 1/3 is down or not scraped", the time since its
  newest sample within the last hour, and its owning shards by the same rendezvous hash the
  daemons use). This is the only way to see a replica that is gone: its series vanish.
- Without `-c`, what Prometheus has is all there is: a shard missing from the fleet its
  siblings announce (`probe_shard_info`) is still caught, but an unsharded replica that is gone
  is invisible, and the verdict says so in a non-critical `absent-targets` entry.
- A target reported by several fresh series (redundant shards, PROBE_SHARD_REPLICAS=2, or
  unsharded replicas) is ready only if every one of them says ready. Without `-c` the gate is
  also ready only if `probe_gate_ready` is 1 in every fresh replica.

The cause of a not-ready target is its most frequent failure class over the last 5 minutes
(`increase(probe_failures_total[5m])`). Which targets are critical comes from the file, else
from `probe_target_critical` (critical if so in any replica); without either, a target that is
not ready while every replica's gate is ready must be non-critical.

probe_target_ready is 0 alike for a failing target and a `stale` one (no result for 2 x interval
+ timeout: the daemon's probes do not come back, a starved or overloaded prober). With `-c`, the
file gives each target's interval and timeout, so a not-ready target whose newest result
(`probe_target_last_result_timestamp_seconds`, among its replicas that say not ready) is older
than that is `stale` (`stale: no result for 41s (stale after 25s)`), as the daemon itself
would say; otherwise it shows as `failing`. Without `-c` the limit is unknown, and every
not-ready target shows as `failing`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from probe.cli import EXIT_USAGE
from probe.config import Config, ConfigError, load_config
from probe.gate import Fetch, classify, conclude, get, query_url, synthetic
from probe.readiness import State, TargetVerdict, Verdict, stale_after
from probe.report import public_url
from probe.shard import owners

PROMETHEUS_TOKEN_ENV = "PROBE_PROMETHEUS_TOKEN"
FAILURE_WINDOW = "5m"
LAST_SEEN_WINDOW = 3600  # seconds back the gate looks for a vanished target's newest sample
DEFAULT_MAX_AGE = 60.0
SHARD_LABELS = frozenset({"__name__", "shard", "index", "count", "replicas"})
_SELECTOR = re.compile(r"\{[^{}]*\}")
_UNSET_VAR = re.compile(r"environment variable (\w+) is not set$")
STAND_IN = "gate-stand-in"
NO_C_NOTE = ("without -c FILE, targets with no series in Prometheus (a replica down or not "
             "scraped) cannot be detected; pass the daemons' config file")


class PromError(Exception):
    pass


@dataclass(frozen=True)
class Expected:
    """A target of the `-c` file, as far as the gate cares."""

    name: str
    kind: str
    critical: bool
    stale_after: float | None = None  # seconds: 2 x interval + timeout (readiness.stale_after)


@dataclass
class Observed:
    """One round of answers from Prometheus (fresh series only): the input of `verdict`."""

    gates: list[float] = field(default_factory=list)
    # target -> one (value, shard label or "") per fresh probe_target_ready series
    targets: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    causes: dict[str, tuple[str, float]] = field(default_factory=dict)
    critical: dict[str, bool] = field(default_factory=dict)
    shards: set[tuple[int, int, int]] = field(default_factory=set)  # (index, count, replicas)
    last_seen: dict[str, float] = field(default_factory=dict)  # target -> seconds since newest
    # target -> seconds since the newest result among its fresh series that say not ready
    result_age: dict[str, float] = field(default_factory=dict)


def ago(seconds: float) -> str:
    """45s, 2m, 1h5m: how long since a sample, to the precision a reader needs."""
    s = max(0, round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60}m" if s % 3600 >= 60 else f"{s // 3600}h"


def _fleet(shards: set[tuple[int, int, int]]) -> tuple[int, int] | None:
    """The (count, replicas) most fresh shards announce; None when unsharded or unknown."""
    if not shards:
        return None
    (count, replicas), _ = Counter((c, r) for _, c, r in shards).most_common(1)[0]
    return (count, replicas) if count > 1 else None


def _not_ready(name: str, kind: str, critical: bool, failure: str | None,
               detail: str, state: State = "failing") -> TargetVerdict:
    return TargetVerdict(name=name, kind=kind, critical=critical, ready=False, state=state,
                         failure=failure, detail=detail, status_code=None, close_code=None,
                         version=None, latency_ms={})


def _no_data(name: str, obs: Observed, fleet: tuple[int, int] | None) -> str:
    age = obs.last_seen.get(name)
    when = f"for {ago(age)}" if age is not None else f"in the last {ago(LAST_SEEN_WINDOW)}"
    if fleet is None:
        who = "its replica is"
    else:
        mine = [f"{i}/{fleet[0]}" for i in sorted(owners(name, *fleet))]
        who = f"its shard {mine[0]} is" if len(mine) == 1 else f"its shards {', '.join(mine)} are"
    return f"no data in Prometheus {when}: {who} down or not scraped"


def _judge(name: str, kind: str, critical: bool, values: list[tuple[float, str]],
           obs: Observed, limit: float | None = None) -> TargetVerdict:
    """`limit`: the target's stale_after, when the file gives it."""
    down = [shard for v, shard in values if not v >= 1]
    if not down:
        return TargetVerdict(name=name, kind=kind, critical=critical, ready=True, state="ready",
                             failure=None, detail="", status_code=None, close_code=None,
                             version=None, latency_ms={})
    n = len(values)
    age = obs.result_age.get(name)
    if limit is not None and age is not None and age > limit:
        where = f" in {len(down)} of {n} replicas" if n > 1 else ""
        return _not_ready(name, kind, critical, None,
                          f"no result for {ago(age)}{where} (stale after {limit:g}s)", "stale")
    detail = f"not ready in {len(down)} of {n} replica{'s' if n > 1 else ''}"
    if any(down):
        detail += f" (shard {', '.join(sorted(s for s in down if s))})"
    failure = None
    if name in obs.causes:
        failure, count = obs.causes[name]
        detail += f"; {count:.0f} {failure} failures in the last {FAILURE_WINDOW}"
    return _not_ready(name, kind, critical, failure, detail)


def verdict(obs: Observed, expected: list[Expected] | None = None) -> Verdict:
    """Readiness of the fleet from what Prometheus answered (pure, so it is easy to test)."""
    fleet = _fleet(obs.shards)
    if expected is not None:
        out = [_judge(e.name, e.kind, e.critical, obs.targets[e.name], obs, e.stale_after)
               if obs.targets.get(e.name) else
               _not_ready(e.name, e.kind, e.critical, None, _no_data(e.name, obs, fleet))
               for e in expected]
        return Verdict(ready=all(t.ready for t in out if t.critical), targets=out)
    if not obs.gates:
        return synthetic("prometheus", None, "no data from Prometheus for probe_gate_ready")
    gate_ready = all(v >= 1 for v in obs.gates)
    out = []
    for name in sorted(obs.targets):
        values = obs.targets[name]
        fails = any(not v >= 1 for v, _ in values)
        critical = obs.critical.get(name, not (gate_ready and fails))
        out.append(_judge(name, "", critical, values, obs))
    if not gate_ready and all(t.ready for t in out):
        down = sum(1 for v in obs.gates if not v >= 1)
        why = f"probe_gate_ready is 0 in {down} of {len(obs.gates)} replicas"
        out.append(synthetic("probe_gate_ready", None, why).targets[0])
    missing = []
    for count in sorted({c for _, c, _ in obs.shards if c > 1}):
        present = {i for i, c, _ in obs.shards if c == count}
        missing += [f"{i}/{count}" for i in range(count) if i not in present]
    for label in missing:
        out.append(_not_ready(f"shard {label}", "gate", True, None,
                              f"no fresh data in Prometheus from shard {label}, which its "
                              "sibling shards announce: its targets cannot be judged"))
    out.append(_not_ready("absent-targets", "gate", False, None, NO_C_NOTE))
    return Verdict(ready=gate_ready and not missing, targets=out)


# --- the queries ---------------------------------------------------------------------------


def _key(labels: dict[str, Any], drop: frozenset[str]) -> frozenset[tuple[str, Any]]:
    """The labels that name the scraped daemon (job, instance, pod, ...), to join on."""
    return frozenset((k, v) for k, v in labels.items() if k not in drop)


def _value(series: dict[str, Any]) -> float:
    try:
        return float(series["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return float("nan")


async def _query(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                 budget: float, promql: str) -> list[dict[str, Any]]:
    status, body = await get(session, url, headers, budget, params={"query": promql})
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


def check_selector(selector: str) -> str:
    """'' or a `{...}` label selector; ValueError otherwise (Prometheus checks its syntax)."""
    selector = selector.strip()
    if selector and not _SELECTOR.fullmatch(selector):
        raise ValueError(f"--selector must be a label selector like '{{job=\"stageprobe\"}}', "
                         f"got {selector!r}")
    return selector


def queries(selector: str, max_age: float) -> dict[str, str]:
    """The PromQL of one round, every metric scoped by `selector` ('' or `{...}`)."""
    def fresh(metric: str) -> str:
        m = metric + selector
        return f"{m} and (time() - timestamp({m})) < {max_age:g}"

    step = max(1, min(15, int(max_age // 4)))
    ready = f"probe_target_ready{selector}"
    return {
        "gates": fresh("probe_gate_ready"),
        "ready": fresh("probe_target_ready"),
        "shards": fresh("probe_shard_info"),
        "critical": f"max by (target) ({fresh('probe_target_critical')})",
        "causes": (f"sum by (target, failure) (increase(probe_failures_total{selector}"
                   f"[{FAILURE_WINDOW}])) > 0"),
        "last_seen": (f"time() - max by (target) (max_over_time(timestamp("
                      f"probe_target_ready{selector})[{LAST_SEEN_WINDOW}s:{step}s]))"),
        # joined on every label (the replica's), so each age is that of a not-ready series
        "result_age": (f"min by (target) ((time() - probe_target_last_result_timestamp_seconds"
                       f"{selector}) and ({ready} == 0) and (time() - timestamp({ready})) < "
                       f"{max_age:g})"),
    }


def prometheus_fetcher(url: str, token: str | None, selector: str = "",
                       expected: list[Expected] | None = None,
                       max_age: float = DEFAULT_MAX_AGE) -> Fetch:
    api = query_url(url)
    shown = public_url(api)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if not max_age > 0:
        raise ValueError(f"--max-age must be above 0, got {max_age:g}")
    promql = queries(check_selector(selector), max_age)

    async def observe(session: aiohttp.ClientSession, budget: float) -> Observed:
        async def q(name: str) -> list[dict[str, Any]]:
            return await _query(session, api, headers, budget, promql[name])

        names = ["shards", "ready", "causes"] + (["result_age"] if expected else
                                                  ["gates", "critical"])
        answers = dict(zip(names, await asyncio.gather(*(q(n) for n in names)), strict=True))
        obs = Observed()
        shard_of: dict[frozenset[tuple[str, Any]], str] = {}
        for s in answers["shards"]:
            labels = s.get("metric") or {}
            try:
                index, count = int(labels["index"]), int(labels["count"])
                replicas = int(labels.get("replicas") or 1)
            except (KeyError, TypeError, ValueError):
                continue
            obs.shards.add((index, count, replicas))
            shard_of[_key(labels, SHARD_LABELS)] = f"{index}/{count}"
        for s in answers["ready"]:
            labels = s.get("metric") or {}
            name = labels.get("target")
            if isinstance(name, str):
                shard = shard_of.get(_key(labels, frozenset({"__name__", "target"})), "")
                obs.targets.setdefault(name, []).append((_value(s), shard))
        for s in answers["causes"]:
            labels, count = s.get("metric") or {}, _value(s)
            name, failure = labels.get("target"), labels.get("failure")
            if isinstance(name, str) and isinstance(failure, str) and count > obs.causes.get(
                    name, ("", 0.0))[1]:
                obs.causes[name] = (failure, count)
        for s in answers.get("result_age", []):
            name = (s.get("metric") or {}).get("target")
            if isinstance(name, str):
                obs.result_age[name] = _value(s)
        obs.gates = [_value(s) for s in answers.get("gates", [])]
        for s in answers.get("critical", []):
            name = (s.get("metric") or {}).get("target")
            if isinstance(name, str):
                obs.critical[name] = _value(s) >= 1
        if expected and any(e.name not in obs.targets for e in expected):
            for s in await q("last_seen"):
                name = (s.get("metric") or {}).get("target")
                if isinstance(name, str):
                    obs.last_seen[name] = _value(s)
        return obs

    async def fetch(session: aiohttp.ClientSession, budget: float) -> Verdict:
        try:
            obs = await observe(session, budget)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure, words = classify(exc)
            return synthetic("prometheus", failure, f"cannot reach Prometheus at {shown}: {words}")
        except PromError as exc:
            return synthetic("prometheus", "protocol", f"Prometheus at {shown}: {exc}")
        return verdict(obs, expected)

    return fetch


def expected_targets(path: Path) -> list[Expected]:
    """The `-c` file's targets. Variables the gate's environment lacks (the daemons' secrets)
    get a stand-in value: the gate needs names, kinds and criticality, never a credential."""
    try:
        config: Config = load_config(path)
    except ConfigError as err:
        unset = [m.group(1) for e in err.errors if (m := _UNSET_VAR.search(e))]
        if not unset or len(unset) != len(err.errors):
            raise
        config = load_config(path, {**os.environ, **dict.fromkeys(unset, STAND_IN)})
    return [Expected(t.name, t.kind, t.critical, stale_after(t)) for t in config.targets]


def main(args: argparse.Namespace) -> int:
    if args.url is not None:
        print("probe gate: give the daemon's URL or --prometheus URL (one of them)",
              file=sys.stderr)
        return EXIT_USAGE
    expected = expected_targets(args.config) if args.config is not None else None
    try:
        fetch = prometheus_fetcher(args.prometheus, os.environ.get(PROMETHEUS_TOKEN_ENV),
                                   args.selector, expected, args.max_age)
    except ValueError as exc:
        print(f"probe gate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return conclude(fetch, args)
