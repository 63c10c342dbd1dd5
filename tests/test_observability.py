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
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from certs import make_self_signed
from helpers import free_port

from probe.twin import Twin

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package "
                       "`prometheus`); this test needs a real server"),
    pytest.mark.timeout(240),
]

JWT_SECRET = "observability-test-secret-of-32-bytes+"
DATA_DEADLINE = 120.0  # seconds for every expression to have data (2-core CI machine)
# What Grafana would substitute, for a 1 s scrape interval and the "All" target selection.
GRAFANA_VARS = {"target": ".+", "__rate_interval": "10s", "__interval": "2s", "__range": "2m",
                "datasource": "prometheus"}
# Alerts whose condition a healthy test machine cannot honestly meet: evaluated without it.
WITHOUT_THRESHOLD = {"StageprobeSchedulerLagging": r"\s*>\s*1\s*$"}

T = TypeVar("T")


class PromQLError(AssertionError):
    """Prometheus rejected an expression (bad syntax, many-to-many matching, ...)."""


def http_json(url: str, timeout: float = 10.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise PromQLError(f"HTTP {exc.code} from {url}: {body}") from None


def wait_until(what: str, check: Any, deadline: float, logs: Any = None) -> Any:
    """Poll `check()` until it returns something truthy or the deadline passes."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"{what} not within {deadline:g}s (last: {last!r})"
                + (f"\n{logs()}" if logs else ""))


class LoopThread:
    """An event loop in a thread, for the in-process twins while the tests block on HTTP."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    prometheus: str  # base URL
    daemon: str
    dead: str  # host:port of the scrape target nobody listens on
    targets: list[str]
    tmp: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = http_json(url)
        if answer.get("status") != "success":
            raise PromQLError(f"{expr!r}: {answer}")
        return list(answer["data"]["result"])

    def logs(self) -> str:
        out = []
        for name in ("daemon.log", "prometheus.log"):
            path = self.tmp / name
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name} (tail) ---\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(out)


def probe_config(healthy: str, rejecting: str, crashing: str, tls: str, ca_file: Path) -> str:
    ws = lambda base: "ws" + base.removeprefix("http")  # noqa: E731
    ping = {"send": {"type": "ping"}, "expect": {"json": {"type": "pong"}}, "timeout": "500ms"}
    chat = {"send": {"type": "user_message", "text": "hello"},
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
             "latency": {"measure": "rtt", "p95": "2s", "window": 20, "min_samples": 3}},
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


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    loop = LoopThread()
    twins = [Twin(jwt_secret=JWT_SECRET) for _ in range(4)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _, rejecting, crashing, tls = twins
        cert = make_self_signed(tmp / "tls", days=7)
        urls = [loop.run(t.start("127.0.0.1", 0)) for t in twins[:3]]
        urls.append(loop.run(tls.start("127.0.0.1", 0, ssl_context=cert.server_context())))
        rejecting.set_fault(ws="reject", delay_ms=60)
        crashing.set_fault(ws="crash")

        config = tmp / "probe.yaml"
        config.write_text(probe_config(*urls, ca_file=cert.cert_file))
        daemon_port, prom_port, dead_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "PROBE_GATE_TOKEN")}
        env.update(PROBE_LISTEN=f"127.0.0.1:{daemon_port}", PROBE_LOG_FORMAT="json",
                   PROBE_LOG_LEVEL="info")
        with (tmp / "daemon.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "probe", "run", "-c", str(config)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        prom_yml = tmp / "prometheus.yml"
        prom_yml.write_text(prometheus_config(f"127.0.0.1:{daemon_port}",
                                              f"127.0.0.1:{dead_port}"))
        with (tmp / "prometheus.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={prom_yml}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                cwd=tmp, stdout=log, stderr=subprocess.STDOUT))
        names = [t["name"] for t in yaml.safe_load(config.read_text())["targets"]]
        s = Stack(prometheus=f"http://127.0.0.1:{prom_port}",
                  daemon=f"http://127.0.0.1:{daemon_port}", dead=f"127.0.0.1:{dead_port}",
                  targets=names, tmp=tmp)

        def alive() -> bool:
            for proc in procs:
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args[0]} exited with {proc.returncode}\n{s.logs()}")
            return True

        def answers(url: str) -> bool:
            alive()
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
            return False

        wait_until("the daemon's /livez", lambda: answers(f"{s.daemon}/livez"), 30, s.logs)
        wait_until("Prometheus ready", lambda: answers(f"{s.prometheus}/-/ready"), 30, s.logs)
        yield s
    finally:
        for proc in procs:
            stop_process(proc)
        for twin in twins:
            with contextlib.suppress(Exception):
                loop.run(twin.stop())
        loop.close()


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


def wait_for_data(stack: Stack, queries: list[tuple[str, str]]) -> dict[str, list[Any]]:
    """Every query answered without error and with data, polled until the deadline."""
    results: dict[str, list[Any]] = {}
    end = time.monotonic() + DATA_DEADLINE
    while True:
        for name, expr in queries:
            if not results.get(name):
                try:
                    results[name] = stack.query(expr)
                except PromQLError as exc:  # never becomes right by waiting
                    pytest.fail(f"{name}: Prometheus rejects the expression\n  {expr}\n  {exc}")
        missing = [(n, e) for n, e in queries if not results.get(n)]
        if not missing:
            return results
        if time.monotonic() > end:
            lines = "\n".join(f"  {n}: {e}" for n, e in missing)
            pytest.fail(f"no data within {DATA_DEADLINE:g}s for:\n{lines}\n{stack.logs()}")
        time.sleep(1.0)


# --- tests -------------------------------------------------------------------------------------


def test_every_dashboard_expression_returns_data(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    results = wait_for_data(stack, queries)
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


def test_every_alert_expression_returns_data(stack: Stack) -> None:
    results = wait_for_data(stack, alert_queries())
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


def test_rules_evaluate_cleanly_and_fault_alerts_go_active(stack: Stack) -> None:
    """The same rules loaded into Prometheus' rule engine: no evaluation error, and every alert
    whose fault is present is pending or firing (their `for:` is minutes, so mostly pending)."""
    expected = {name for name, _ in alert_queries()} - set(WITHOUT_THRESHOLD)

    def active() -> set[str] | None:
        groups = http_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert rules, "Prometheus loaded no rules"
        for r in rules:
            assert r["health"] in ("ok", "unknown"), f"{r['name']}: {r.get('lastError')}"
        if any(r["health"] == "unknown" for r in rules):
            return None  # not evaluated yet
        alerts = http_json(f"{stack.prometheus}/api/v1/alerts")["data"]["alerts"]
        names = {a["labels"]["alertname"] for a in alerts if a["state"] in ("pending", "firing")}
        return names if expected <= names else None

    names = wait_until("every fault's alert active", active, DATA_DEADLINE, stack.logs)
    assert "StageprobeSchedulerLagging" not in names, "the daemon is not starved here"


def test_target_variable_lists_every_target(stack: Stack) -> None:
    dash = json.loads((DEPLOY / "grafana/dashboard.json").read_text())
    var = next(v for v in dash["templating"]["list"] if v["name"] == "target")
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"])
    assert m, var["query"]
    metric, label = m.groups()
    url = (f"{stack.prometheus}/api/v1/label/{label}/values?"
           + urllib.parse.urlencode({"match[]": metric}))
    values = wait_until("target label values",
                        lambda: set(stack.targets) <= set(http_json(url)["data"]) or None,
                        DATA_DEADLINE, stack.logs)
    assert values


def test_gate_through_prometheus_names_the_causes(stack: Stack) -> None:
    """What CI does for a sidecar deployment (docs/deploy.md): `probe gate --prometheus`."""
    wait_for_data(stack, [("ws_auth counted",
                           'increase(probe_failures_total{failure="ws_auth"}[1m]) > 0')])
    env = {k: v for k, v in os.environ.items() if k != "PROBE_PROMETHEUS_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "probe", "gate", "--prometheus", stack.prometheus,
         "--format", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["ready"] is False
    targets = {t["name"]: t for t in verdict["targets"]}
    assert targets["backend-health"]["ready"] is True
    assert targets["ws-auth-rejected"]["failure"] == "ws_auth"
    assert targets["ws-server-error"]["failure"] == "ws_closed"
