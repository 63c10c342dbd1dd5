"""The dashboard and the alert rules against a real Prometheus scraping a real daemon.

The test starts, on loopback only: four twins (healthy; WebSocket upgrade refused and answers
60 ms late; WebSocket handler crashing with 1011; TLS with a certificate that expires in 7 days),
`probe run` probing them, and the Debian `prometheus` binary scraping the daemon (plus a second,
dead scrape target: a prober that is down) with deploy/prometheus/scrape.yaml's job and
alerts.yaml's rules. Then EVERY PromQL expression of deploy/grafana/dashboard.json and of
deploy/prometheus/alerts.yaml goes through Prometheus' HTTP API and must answer without error and
with data; the faulty twins are there so that alerts which only fire on faults (ws_auth, 1011,
latency, certificate, prober down, gate closed) really have data.

The one documented exception: StageprobeSchedulerLagging's threshold (p99 lag > 1 s) cannot be
reached honestly on a test machine without starving the daemon, so its expression is evaluated
without the `> 1` comparison; the histogram_quantile under it must still return data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from certs import make_self_signed
from helpers import ProbeRun, Prometheus, PromQLError, refused_port, running_twin, until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package "
                       "`prometheus`); this test needs a real server"),
    pytest.mark.timeout(240),
    # One loop for the module: the stack's twins serve from it while each test awaits its
    # queries, so nothing may block it.
    pytest.mark.asyncio(loop_scope="module"),
]

JWT_SECRET = "observability-test-secret-of-32-bytes+"
DATA_DEADLINE = 120.0  # seconds for every expression to have data (2-core CI machine)
# What Grafana would substitute, for a 1 s scrape interval and the "All" target selection.
GRAFANA_VARS = {"target": ".+", "__rate_interval": "10s", "__interval": "2s", "__range": "2m",
                "datasource": "prometheus"}
# Alerts whose condition a healthy test machine cannot honestly meet: evaluated without it.
WITHOUT_THRESHOLD = {"StageprobeSchedulerLagging": r"\s*>\s*1\s*$",
                     # one unsharded daemon here; tests/test_shards.py kills a real shard
                     "StageprobeShardMissing": r"\s*<\s*max by \(job\) \(probe_shards\S*\)\s*$"}


@dataclass
class Stack:
    prometheus: Prometheus
    daemon: ProbeRun
    dead: str  # host:port of the scrape target nobody listens on
    targets: list[str]

    def logs(self) -> str:
        out = []
        for name, text in (("daemon", self.daemon.log_text()),
                           ("prometheus", self.prometheus.log_text())):
            out.append(f"--- {name} log (tail) ---\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(out)


def probe_config(healthy: str, rejecting: str, crashing: str, tls: str, ca_file: Path) -> str:
    ws = lambda base: "ws" + base.removeprefix("http")  # noqa: E731
    ping = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "500ms"}
    chat = {"name": "agent-reply", "send": {"type": "user_message", "text": "hello"},
            "until": {"json": {"type": "agent_completed"}}, "timeout": "500ms"}
    config = {
        "defaults": {"interval": "1s", "timeout": "900ms", "success_threshold": 1,
                     "failure_threshold": 1},
        "credentials": {"e2e-user": {"jwt": {"secret": JWT_SECRET, "algorithm": "HS256",
                                             "ttl": "10m", "claims": {"sub": "observability"}}}},
        "targets": [
            {"name": "backend-health", "url": f"{healthy}/health",
             "expect": {"status": [200], "json": {"status": "healthy"}},
             "latency": {"p50": "1s", "p95": "2s", "p99": "3s", "window": 20, "min_samples": 3}},
            {"name": "chat-ws", "url": f"{ws(healthy)}/ws", "credential": "e2e-user",
             "messages": [ping, chat],
             "latency": [{"measure": "rtt", "p95": "2s", "window": 20, "min_samples": 3},
                         {"measure": "agent-reply", "p95": "2s", "window": 20,
                          "min_samples": 3}]},
            # Answers 60 ms late against a 10 ms p95 bound: StagingLatencyTargetBreached.
            {"name": "slow-health", "url": f"{rejecting}/health",
             "latency": {"p95": "10ms", "window": 20, "min_samples": 3}},
            # The upgrade is answered 403: ws_auth, StagingWebSocketAuthRejected.
            {"name": "ws-auth-rejected", "url": f"{ws(rejecting)}/ws", "credential": "e2e-user",
             "messages": [ping]},
            # The handler closes with 1011 on a user message: StagingWebSocketServerError.
            {"name": "ws-server-error", "url": f"{ws(crashing)}/ws", "credential": "e2e-user",
             "messages": [ping, chat]},
            # A certificate valid for 7 more days: StagingCertificateExpiringSoon.
            {"name": "tls-expiring", "url": f"{tls}/health", "ca_file": str(ca_file),
             "critical": False},
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_config(daemon: str, dead: str) -> str:
    """deploy/prometheus/scrape.yaml with the targets swapped and 1 s intervals."""
    config = yaml.safe_load((DEPLOY / "prometheus/scrape.yaml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"][0]["targets"] = [daemon, dead]
    return yaml.safe_dump(config, sort_keys=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    async with contextlib.AsyncExitStack() as started:  # stopped in reverse: processes first
        cert = make_self_signed(tmp / "tls", days=7)
        twins = [await started.enter_async_context(running_twin(jwt_secret=JWT_SECRET))
                 for _ in range(3)]
        twins.append(await started.enter_async_context(
            running_twin(cert.server_context(), jwt_secret=JWT_SECRET)))
        _, rejecting, crashing, _ = twins
        rejecting.set_fault(ws="reject", delay_ms=60)
        crashing.set_fault(ws="crash")

        config = tmp / "probe.yaml"
        config.write_text(probe_config(*(t.url for t in twins), ca_file=cert.cert_file))
        daemon = ProbeRun(config, tmp, {"PROBE_GATE_TOKEN": None, "PROBE_LOG_LEVEL": "info"})
        started.callback(daemon.close)
        dead = f"127.0.0.1:{started.enter_context(refused_port())}"
        prometheus = Prometheus(
            tmp, prometheus_config(daemon.url.removeprefix("http://"), dead), "--log.level=warn")
        started.callback(prometheus.stop)
        names = [t["name"] for t in yaml.safe_load(config.read_text())["targets"]]
        await daemon.live(30)
        await prometheus.ready(30)
        yield Stack(prometheus=prometheus, daemon=daemon, dead=dead, targets=names)


# --- the expressions --------------------------------------------------------------------------


def substitute(expr: str) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}) as Grafana would; unknown ones fail."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARS, f"unknown dashboard variable ${name} in {expr!r}"
        return GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana/dashboard.json").read_text())
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((f"{p['title']} [{t['refId']}]", substitute(t["expr"])))
    return out


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            if rule["alert"] in WITHOUT_THRESHOLD:
                stripped = re.sub(WITHOUT_THRESHOLD[rule["alert"]], "", expr)
                assert stripped != expr, f"{rule['alert']}: its threshold is no longer `> 1`"
                expr = stripped
            out.append((rule["alert"], expr))
    return out


async def wait_for_data(stack: Stack, queries: list[tuple[str, str]]) -> dict[str, list[Any]]:
    """Every query answered without error and with data, polled until the deadline."""
    results: dict[str, list[Any]] = {}

    async def complete() -> bool:
        for name, expr in queries:
            if not results.get(name):
                try:
                    results[name] = await stack.prometheus.query(expr)
                except PromQLError as exc:  # never becomes right by waiting
                    pytest.fail(f"{name}: Prometheus rejects the expression\n  {expr}\n  {exc}")
        return all(results.get(name) for name, _ in queries)

    def missing() -> str:
        lines = "\n".join(f"  {n}: {e}" for n, e in queries if not results.get(n))
        return f"no data for:\n{lines}\n{stack.logs()}"

    await until(complete, "data for every expression", within=DATA_DEADLINE, every=1.0,
                detail=missing)
    return results


# --- tests -------------------------------------------------------------------------------------


async def test_every_dashboard_expression_returns_data(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    results = await wait_for_data(stack, queries)
    # Spot checks that the data is the right data, not merely some data.
    gate = results["Gate [A]"]
    assert [float(r["value"][1]) for r in gate] == [0.0], "two critical targets are failing"
    by_target = {r["metric"]["target"]: float(r["value"][1])
                 for r in results["Target readiness [A]"]}
    assert by_target["backend-health"] == 1 and by_target["ws-auth-rejected"] == 0
    closes = {r["metric"]["target"]: float(r["value"][1])
              for r in results["WebSocket close codes [A]"]}
    assert closes["ws-server-error"] == 1011
    causes = {(r["metric"]["target"], r["metric"]["failure"])
              for r in results["Failures in range [A]"]}
    assert {("ws-auth-rejected", "ws_auth"), ("ws-server-error", "ws_closed")} <= causes
    p95 = results["Latency percentiles against targets [B]"]
    measures = {r["metric"].get("measure") for r in p95}
    assert {"total", "rtt"} <= measures
    steps = {(r["metric"]["target"], r["metric"]["measure"])
             for r in results["Step latency p95 by measure [A]"]}
    assert ("chat-ws", "agent-reply") in steps
    assert {m for _, m in steps} == {"agent-reply"}, "only named steps, not the built-ins"
    bound = results["Step latency p95 by measure [B]"]
    assert {(r["metric"]["target"], r["metric"]["measure"]) for r in bound} == {
        ("chat-ws", "agent-reply")}


async def test_every_alert_expression_returns_data(stack: Stack) -> None:
    results = await wait_for_data(stack, alert_queries())
    fired = {name: {r["metric"].get("target") for r in rows} for name, rows in results.items()}
    assert fired["StagingCriticalTargetFailing"] >= {"ws-auth-rejected", "ws-server-error",
                                                     "slow-health"}
    assert "tls-expiring" not in fired["StagingCriticalTargetFailing"], "critical: false"
    assert fired["StagingWebSocketAuthRejected"] == {"ws-auth-rejected"}
    assert fired["StagingWebSocketServerError"] == {"ws-server-error"}
    assert fired["StagingLatencyTargetBreached"] == {"slow-health"}
    assert fired["StagingCertificateExpiringSoon"] == {"tls-expiring"}
    down = {r["metric"].get("instance") for r in results["StageprobeDown"]}
    assert down == {stack.dead}, "only the dead scrape target is down"


async def test_rules_evaluate_cleanly_and_fault_alerts_go_active(stack: Stack) -> None:
    """The same rules loaded into Prometheus' rule engine: no evaluation error, and every alert
    whose fault is present is pending or firing (their `for:` is minutes, so mostly pending)."""
    expected = {name for name, _ in alert_queries()} - set(WITHOUT_THRESHOLD)

    async def active() -> set[str] | None:
        rules_data = await stack.prometheus.api("/api/v1/rules")
        assert rules_data is not None, "Prometheus stopped answering"
        rules = [r for g in rules_data["groups"] for r in g["rules"]]
        assert rules, "Prometheus loaded no rules"
        for r in rules:
            assert r["health"] in ("ok", "unknown"), f"{r['name']}: {r.get('lastError')}"
        if any(r["health"] == "unknown" for r in rules):
            return None  # not evaluated yet
        alerts = (await stack.prometheus.api("/api/v1/alerts") or {}).get("alerts", [])
        names = {a["labels"]["alertname"] for a in alerts if a["state"] in ("pending", "firing")}
        return names if expected <= names else None

    names = await until(active, "every fault's alert active", within=DATA_DEADLINE, every=0.5,
                        detail=stack.logs)
    assert "StageprobeSchedulerLagging" not in names, "the daemon is not starved here"


async def test_target_variable_lists_every_target(stack: Stack) -> None:
    dash = json.loads((DEPLOY / "grafana/dashboard.json").read_text())
    var = next(v for v in dash["templating"]["list"] if v["name"] == "target")
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"])
    assert m, var["query"]
    metric, label = m.groups()

    async def every_target() -> bool:
        values = await stack.prometheus.api(f"/api/v1/label/{label}/values", {"match[]": metric})
        return values is not None and set(stack.targets) <= set(values)

    assert await until(every_target, "target label values", within=DATA_DEADLINE, every=0.5,
                       detail=stack.logs)


async def test_gate_through_prometheus_names_the_causes(stack: Stack) -> None:
    """What CI does for a sidecar deployment (docs/deploy.md): `probe gate --prometheus`."""
    await wait_for_data(stack, [("ws_auth counted",
                                 'increase(probe_failures_total{failure="ws_auth"}[1m]) > 0')])
    env = {k: v for k, v in os.environ.items() if k != "PROBE_PROMETHEUS_TOKEN"}
    gate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probe", "gate", "--prometheus", stack.prometheus.url,
        "--format", "json", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(gate.communicate(), 60)
    finally:
        if gate.returncode is None:
            gate.kill()
            await gate.wait()
    assert gate.returncode == 1, (out + err).decode()
    verdict = json.loads(out)
    assert verdict["ready"] is False
    targets = {t["name"]: t for t in verdict["targets"]}
    assert targets["backend-health"]["ready"] is True
    assert targets["ws-auth-rejected"]["failure"] == "ws_auth"
    assert targets["ws-server-error"]["failure"] == "ws_closed"
