"""stageprobe as rollout tools and CI systems use it: Flagger's webhook, Argo Rollouts' web metric,
the GitHub Action and the CI examples.

The Flagger and Argo requests are built from the shipped examples in deploy/rollouts/ (URL, path,
jsonPath, successCondition are read from the YAML), and sent, with the method, headers and body
each tool sends, to a real daemon probing the twin, ready and then not ready. So an example that
drifts from what the daemon answers fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from helpers import StartDaemon
from test_gate import TOKEN, failing, gate_config, ready

from probe.daemon.run import Daemon
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


# --- the GitHub Action and the CI examples ------------------------------------------------------

ACTION = ROOT / "action.yml"
CI_FILES = [ROOT / "deploy" / "ci" / "github-actions.yaml",
            ROOT / "deploy" / "ci" / "gitlab-ci.yml", ACTION]
EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def action() -> dict[str, Any]:
    spec = load(ACTION)
    assert spec["runs"]["using"] == "composite"
    return spec


def step_env(step: dict[str, Any], inputs: dict[str, str], **context: str) -> dict[str, str]:
    """A step's `env:` as the runner evaluates it: `${{ inputs.X }}` from the given inputs or
    the input's default, `${{ github.action_path }}` etc. from `context`."""
    defaults = {k: str(v.get("default", "")) for k, v in action()["inputs"].items()}

    def value(m: re.Match[str]) -> str:
        scope, _, name = m.group(1).partition(".")
        if scope == "inputs":
            return inputs.get(name, defaults[name])
        return context[name]

    return {k: EXPR.sub(value, str(v)) for k, v in (step.get("env") or {}).items()}


def test_action_inputs_are_documented_used_and_never_pasted_into_a_script() -> None:
    spec = action()
    inputs = spec["inputs"]
    for name, meta in inputs.items():
        assert meta.get("description"), f"input {name} has no description"
    steps = spec["runs"]["steps"]
    wired = "".join(json.dumps(s.get("env") or {}) + json.dumps(s.get("with") or {})
                    for s in steps)
    used = {m.group(1).removeprefix("inputs.") for m in EXPR.finditer(wired)}
    assert set(inputs) <= used, f"inputs never used: {set(inputs) - used}"
    for step in steps:
        if "run" in step:
            # an input's text pasted into the script would be run as shell (script injection)
            assert "${{" not in step["run"], step["run"]
            assert step["shell"] == "bash"
    for name, meta in spec["outputs"].items():
        assert meta.get("description") and EXPR.search(meta["value"]), name


def test_action_installs_from_its_own_repository() -> None:
    (install,) = [s for s in action()["runs"]["steps"] if "pip" in s.get("run", "")]
    assert install["env"]["ACTION_PATH"] == "${{ github.action_path }}"
    assert re.search(r'pip" install [^\n]*"\$ACTION_PATH"$', install["run"], re.M), install["run"]


def pip_requirements(text: str) -> list[str]:
    """What each `pip install` line of a CI file installs (variables resolved from the file's
    own `STAGEPROBE: ...` definition)."""
    defined = dict(re.findall(r"^\s*(STAGEPROBE\w*):\s*(.+?)\s*$", text, re.M))
    found = []
    for line in re.findall(r"pip\"? install ([^\n#]+)", text):
        for word in re.findall(r'"[^"]*"|\S+', line):
            word = word.strip('"')
            if word.startswith("-"):
                continue
            found.append(re.sub(r"\$(\w+)", lambda m: defined.get(m.group(1), m.group(0)),
                                word).strip('"'))
    return found


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_ci_examples_install_stageprobe_from_where_it_is(path: Path) -> None:
    """stageprobe is on no package index: an example must install it from its repository (a
    git URL, an archive, a checkout) or use its container image, never `pip install stageprobe`."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"stageprobe\s*(==|>=|~=)", text), "a version from a package index"
    for req in pip_requirements(text):
        if "stageprobe" in req.lower() and " @ " not in req:
            pytest.fail(f"{path.name}: `pip install {req}` would look for it on a package index")
        assert not re.fullmatch(r"[A-Za-z0-9_.-]+", req), f"`pip install {req}`: a package index"
    if path.name == "gitlab-ci.yml":
        job = load(path)["staging-readiness"]
        image = job["image"]["name"]
        assert image == "$STAGEPROBE_IMAGE" and job["image"]["entrypoint"] == [""]
        assert not load(path)["variables"]["STAGEPROBE_IMAGE"].startswith("python:")


@pytest.fixture
def runner(tmp_path: Path) -> Path:
    """A runner's RUNNER_TEMP with the install step's result in place: the action installs
    stageprobe into $RUNNER_TEMP/stageprobe; here its `probe` is this checkout's."""
    bin_dir = tmp_path / "runner" / "stageprobe" / "bin"
    bin_dir.mkdir(parents=True)
    probe = bin_dir / "probe"
    probe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m probe "$@"\n', encoding="utf-8")
    probe.chmod(0o755)
    return tmp_path / "runner"


async def run_action(runner: Path, workspace: Path, **inputs: str) -> tuple[int, str, Path,
                                                                          dict[str, str]]:
    """Run the action's probe step as the runner does (bash -eo pipefail, the step's env,
    GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files); (exit code, stdout, summary, outputs)."""
    (step,) = [s for s in action()["runs"]["steps"] if s.get("id") == "probe"]
    script = workspace / "step.sh"
    script.write_text(step["run"], encoding="utf-8")
    summary, output = workspace / "summary.md", workspace / "output"
    summary.write_text("", encoding="utf-8")
    output.write_text("", encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "RUNNER_TEMP": str(runner), "GITHUB_OUTPUT": str(output),
           "GITHUB_STEP_SUMMARY": str(summary), **step_env(step, inputs)}
    proc = await asyncio.create_subprocess_exec(
        "bash", "--noprofile", "--norc", "-eo", "pipefail", str(script), cwd=workspace, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return proc.returncode or 0, out.decode(), summary, outputs


async def test_the_action_step_against_the_twin(twin: Twin, tmp_path: Path, runner: Path) -> None:
    workspace = tmp_path / "work"
    workspace.mkdir()
    (workspace / "staging.yaml").write_text(f"""
defaults: {{interval: 500ms, timeout: 500ms, success_threshold: 1, failure_threshold: 1}}
targets:
  - {{name: backend-health, url: "{twin.url}/health", version_path: version}}
""", encoding="utf-8")
    code, out, summary, outputs = await run_action(
        runner, workspace, config="staging.yaml", wait="20s", **{"expect-version": "abc"})
    assert code == 0, out
    assert outputs == {"ready": "true", "exit-code": "0"}
    assert "::notice title=staging ready::READY: 1/1" in out
    assert summary.read_text().startswith("### :white_check_mark: staging ready")
    report = ET.parse(workspace / "stageprobe-report.xml").getroot()
    assert (report.get("tests"), report.get("failures")) == ("1", "0")

    twin.set_fault(health="503")
    code, out, summary, outputs = await run_action(
        runner, workspace, config="staging.yaml", wait="", junit="reports/r.xml")
    assert code == 1, out
    assert outputs == {"ready": "false", "exit-code": "1"}
    assert "::error title=backend-health%3A http_status::" in out
    assert "| :x: | backend-health | failing | http\\_status: HTTP 503" in summary.read_text()
    assert ET.parse(workspace / "reports" / "r.xml").getroot().get("failures") == "1"

    code, out, _, outputs = await run_action(runner, workspace, command="gate")
    assert code == 2 and "needs the url input" in out
    code, out, _, outputs = await run_action(runner, workspace, config="staging.yaml",
                                             targets="backend-health nope", wait="")
    assert code == 2 and outputs["exit-code"] == "2" and "no target named 'nope'" in out
