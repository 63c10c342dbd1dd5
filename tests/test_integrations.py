"""stageprobe as rollout tools and CI systems use it: Flagger's webhook, Argo Rollouts' web metric,
the GitHub Action and the CI examples.

The Flagger and Argo requests are built from the shipped examples in deploy/rollouts/ (URL, path,
jsonPath, successCondition are read from the YAML), and sent, with the method, headers and body
each tool sends, to a real daemon probing the twin, ready and then not ready. So an example that
drifts from what the daemon answers fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from helpers import StartDaemon
from test_gate import TOKEN, failing, gate_config, ready

from probe.daemon import Daemon
from probe.twin import Twin

pytestmark = [pytest.mark.timeout(90), pytest.mark.twin(version="abc")]

ROOT = Path(__file__).resolve().parent.parent
ROLLOUTS = ROOT / "deploy" / "rollouts"
GO_AGENT = "Go-http-client/1.1"  # both controllers use Go's net/http with its default agent


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def on_daemon(url: str, daemon: Daemon) -> str:
    """The example's in-cluster URL with its scheme and host replaced by the test daemon's."""
    p = urlsplit(url)
    return daemon.url + p.path + (f"?{p.query}" if p.query else "")


# --- Flagger ------------------------------------------------------------------------------------


def flagger_webhooks() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    canary = load(ROLLOUTS / "flagger-canary.yaml")
    assert canary["apiVersion"] == "flagger.app/v1beta1" and canary["kind"] == "Canary"
    hooks = canary["spec"]["analysis"]["webhooks"]
    assert {h["type"] for h in hooks} >= {"pre-rollout", "confirm-promotion"}
    return canary, hooks


async def flagger_calls(daemon: Daemon) -> dict[str, int]:
    """What Flagger's callWebhook does for each webhook: POST the JSON payload with
    Content-Type application/json; a status above 202 halts the step. Returns name -> status."""
    canary, hooks = flagger_webhooks()
    out = {}
    async with aiohttp.ClientSession() as http:
        for hook in hooks:
            payload = {"name": canary["metadata"]["name"],
                       "namespace": canary["metadata"]["namespace"], "phase": "Progressing",
                       "metadata": hook.get("metadata") or {}}
            async with http.post(on_daemon(hook["url"], daemon), data=json.dumps(payload),
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": GO_AGENT},
                                 timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
                out[hook["name"]] = resp.status
    return out


async def test_flagger_webhooks_pass_when_ready_and_halt_when_not(
        twin: Twin, start_daemon: StartDaemon) -> None:
    # with a gate token set, as in production: Flagger sends none and needs only the status
    daemon = await ready(await start_daemon(gate_config(twin), gate_token=TOKEN))
    statuses = await flagger_calls(daemon)
    assert statuses and all(s <= 202 for s in statuses.values()), statuses
    await failing(daemon, twin)
    statuses = await flagger_calls(daemon)
    assert all(s > 202 for s in statuses.values()), statuses


async def test_readyz_answers_head_like_get(daemon: Daemon, twin: Twin) -> None:
    await ready(daemon)
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{daemon.url}/readyz") as resp:
            assert resp.status == 200
        await failing(daemon, twin)
        async with http.head(f"{daemon.url}/readyz") as resp:
            assert resp.status == 503


@pytest.fixture
async def daemon(twin: Twin, start_daemon: StartDaemon) -> Daemon:
    return await start_daemon(gate_config(twin))


# --- Argo Rollouts ------------------------------------------------------------------------------


def json_path(expr: str, data: Any) -> Any:
    """The `{$.a.b}` subset of Kubernetes JSONPath that the template uses."""
    m = re.fullmatch(r"\{\$((?:\.[A-Za-z_][\w-]*)+)\}", expr)
    assert m, f"unsupported jsonPath {expr!r}"
    for key in m.group(1).split(".")[1:]:
        data = data[key]
    return data


def evaluate(condition: str, result: Any) -> bool:
    """Argo's successCondition (expr-lang) for `result == true|false|NUMBER` conditions."""
    m = re.fullmatch(r"result\s*==\s*(true|false|\d+)", condition.strip())
    assert m, f"unsupported successCondition {condition!r}"
    want = {"true": True, "false": False}.get(m.group(1), m.group(1))
    return bool(result == want)


async def argo_measurement(daemon: Daemon, token: str) -> str:
    """What Argo's web provider does: GET with the template's headers; a non-2xx answer is an
    Error, a JSON answer is Successful or Failed by successCondition on the jsonPath value."""
    template = load(ROLLOUTS / "argo-analysistemplate.yaml")
    assert template["apiVersion"] == "argoproj.io/v1alpha1"
    assert template["kind"] == "AnalysisTemplate"
    (metric,) = template["spec"]["metrics"]
    web = metric["provider"]["web"]
    headers = {h["key"]: h["value"].replace("{{args.gate-token}}", token)
               for h in web.get("headers", [])}
    headers["User-Agent"] = GO_AGENT
    async with aiohttp.ClientSession() as http, http.get(
            on_daemon(web["url"], daemon), headers=headers,
            timeout=aiohttp.ClientTimeout(total=web.get("timeoutSeconds", 10))) as resp:
        if not 200 <= resp.status < 300:
            return "Error"
        result = json_path(web["jsonPath"], json.loads(await resp.read()))
    return "Successful" if evaluate(metric["successCondition"], result) else "Failed"


async def test_argo_analysis_is_successful_when_ready_and_failed_when_not(
        twin: Twin, start_daemon: StartDaemon) -> None:
    daemon = await ready(await start_daemon(gate_config(twin), gate_token=TOKEN))
    assert await argo_measurement(daemon, TOKEN) == "Successful"
    assert await argo_measurement(daemon, "wrong") == "Error", "a wrong token is no verdict"
    await failing(daemon, twin)
    assert await argo_measurement(daemon, TOKEN) == "Failed", "not ready must be Failed, not Error"
