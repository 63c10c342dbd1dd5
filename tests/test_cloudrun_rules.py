"""Every file in deploy/cloudrun/ against the rules Cloud Run documents, not only Knative's schema.

`gcloud run services replace` cannot run here, so each rule below is the documented constraint
it enforces at deploy time (Cloud Run docs, "Configure CPU limits", "Configure memory limits",
"Deploy multiple containers", "Configure container health checks", "Configure labels" and the
Admin API's Probe and Container reference):

- labels (metadata and template): valid Google Cloud labels, so keys 1-63 characters of
  lowercase letters, digits, `_` and `-` starting with a letter, values 0-63 of the same
  characters, at most 64 per resource: `app.kubernetes.io/name` is rejected;
- CPU per container: 0.08 to 1 in steps of 0.001, or a whole number above 1 (at most 8);
  the instance's total over all containers follows the same rule (1.5 is rejected), is at least
  1 vCPU with instance-based billing (`cpu-throttling: "false"`), the second generation
  environment and concurrency above 1 (all three need at least 1 vCPU), and at most 8;
- memory of the instance against its CPU: at least 512 MiB, at most 4 GiB per vCPU (1 -> 4 GiB,
  2 -> 8 GiB, 4 -> 16 GiB, 6 -> 24 GiB, 8 -> 32 GiB), at least 2 GiB at 4 vCPU and 4 GiB at
  6 or 8; every container sets both limits once there are sidecars;
- exactly one ingress container: `ports` with one entry and a containerPort, on exactly one
  container; a port name of `http1` or `h2c`; at most 10 containers with unique DNS-label names;
- probes: startup HTTP/TCP/gRPC, liveness HTTP/gRPC, no readiness or exec probes;
  periodSeconds 1-240 (startup) or 1-3600 (liveness), initialDelaySeconds 0-240 / 0-3600,
  timeoutSeconds at least 1 and at most periodSeconds, failureThreshold at least 1, and a
  startup probe's failureThreshold * periodSeconds at most 240 s; the ingress container's
  probes use its containerPort;
- `run.googleapis.com/container-dependencies`: JSON mapping container names to lists of
  container names, every one of them in the template, no self-dependency and no cycle;
- PORT is reserved (Cloud Run sets it for the ingress container).

Files that are not a Knative Service are held to what reads them: RunMonitoring to the
collector's strict schema (tests/test_deploy.py), a probe config to probe.config. A file nobody
checks fails `test_every_cloud_run_file_is_checked`.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
CLOUDRUN = ROOT / "deploy" / "cloudrun"

LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
MAX_LABELS = 64
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
MAX_CONTAINERS = 10
MAX_CPU = Decimal(8)
MIN_FRACTIONAL_CPU = Decimal("0.08")
MIB = 1
GIB = 1024 * MIB
MIN_MEMORY = 512 * MIB
# (whole vCPU, minimum memory, maximum memory) from "Configure memory limits".
MEMORY_BY_CPU = {1: (MIN_MEMORY, 4 * GIB), 2: (MIN_MEMORY, 8 * GIB), 4: (2 * GIB, 16 * GIB),
                 6: (4 * GIB, 24 * GIB), 8: (4 * GIB, 32 * GIB)}
PROBE_HANDLERS = {"httpGet", "tcpSocket", "grpc", "exec"}
ALLOWED_HANDLERS = {"startupProbe": {"httpGet", "tcpSocket", "grpc"},
                    "livenessProbe": {"httpGet", "grpc"}}
PERIOD_MAX = {"startupProbe": 240, "livenessProbe": 3600}
STARTUP_WINDOW_MAX = 240
PORT_NAMES = {"http1", "h2c"}


def documents() -> list[tuple[Path, Any]]:
    return [(p, yaml.safe_load(p.read_text(encoding="utf-8")))
            for p in sorted(CLOUDRUN.glob("*.y*ml"))]


def knative_services() -> list[Path]:
    return [p for p, doc in documents()
            if doc.get("apiVersion") == "serving.knative.dev/v1" and doc.get("kind") == "Service"]


def cpu(value: str | int | float) -> Decimal:
    """A Kubernetes CPU quantity (`1`, `500m`, `0.5`) in vCPU."""
    text = str(value)
    return Decimal(text[:-1]) / 1000 if text.endswith("m") else Decimal(text)


def memory_mib(value: str) -> Decimal:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|M|G)", str(value))
    assert m, f"memory {value!r}: use Mi or Gi"
    factor = {"Mi": 1, "Gi": 1024, "M": Decimal(10**6) / 2**20, "G": Decimal(10**9) / 2**20}
    return Decimal(m.group(1)) * factor[m.group(2)]


def cpu_problem(value: Decimal, what: str) -> str | None:
    if value > 1:
        if value != value.to_integral_value():
            return f"{what} is {value} vCPU: values above 1 must be whole numbers"
        if value > MAX_CPU:
            return f"{what} is {value} vCPU: at most {MAX_CPU}"
        return None
    if value < MIN_FRACTIONAL_CPU:
        return f"{what} is {value} vCPU: at least {MIN_FRACTIONAL_CPU}"
    if value != value.quantize(Decimal("0.001")):
        return f"{what} is {value} vCPU: below 1, steps of 0.001"
    return None


def label_problems(labels: dict[str, Any] | None, where: str) -> list[str]:
    labels = labels or {}
    out = [f"{where}: {len(labels)} labels, at most {MAX_LABELS}"] if len(labels) > MAX_LABELS \
        else []
    for key, value in labels.items():
        if not LABEL_KEY.fullmatch(str(key)):
            out.append(f"{where}: label key {key!r} (lowercase letters, digits, _ and - only)")
        if not LABEL_VALUE.fullmatch(str(value)):
            out.append(f"{where}: label value {value!r} of {key!r}")
    return out


def probe_problems(container: dict[str, Any], ingress_port: int | None) -> list[str]:
    name = container["name"]
    out = []
    if "readinessProbe" in container:
        out.append(f"{name}: readinessProbe (use startupProbe and livenessProbe)")
    for kind, allowed in ALLOWED_HANDLERS.items():
        probe = container.get(kind)
        if probe is None:
            continue
        handlers = PROBE_HANDLERS & probe.keys()
        if len(handlers) != 1 or not handlers <= allowed:
            out.append(f"{name}.{kind}: handler {sorted(handlers)}, one of {sorted(allowed)}")
        period = probe.get("periodSeconds", 10)
        timeout = probe.get("timeoutSeconds", 1)
        delay = probe.get("initialDelaySeconds", 0)
        failures = probe.get("failureThreshold", 3)
        if not 1 <= period <= PERIOD_MAX[kind]:
            out.append(f"{name}.{kind}: periodSeconds {period}, 1-{PERIOD_MAX[kind]}")
        if not 0 <= delay <= PERIOD_MAX[kind]:
            out.append(f"{name}.{kind}: initialDelaySeconds {delay}, 0-{PERIOD_MAX[kind]}")
        if not 1 <= timeout <= period:
            out.append(f"{name}.{kind}: timeoutSeconds {timeout}, 1 to periodSeconds {period}")
        if failures < 1:
            out.append(f"{name}.{kind}: failureThreshold {failures}, at least 1")
        if kind == "startupProbe" and failures * period > STARTUP_WINDOW_MAX:
            out.append(f"{name}.{kind}: failureThreshold x periodSeconds = {failures * period}"
                       f" s, at most {STARTUP_WINDOW_MAX}")
        for handler in handlers & {"httpGet", "tcpSocket", "grpc"}:
            port = probe[handler].get("port")
            if ingress_port is not None and port is not None and int(port) != ingress_port:
                out.append(f"{name}.{kind}: port {port}, the ingress port is {ingress_port}")
            if ingress_port is None and port is None:
                out.append(f"{name}.{kind}: a sidecar's probe needs its port")
    return out


def dependency_problems(annotation: str | None, names: list[str]) -> list[str]:
    if annotation is None:
        return []
    try:
        deps = json.loads(annotation)
    except json.JSONDecodeError as exc:
        return [f"container-dependencies is not JSON: {exc}"]
    if not isinstance(deps, dict) or not all(
            isinstance(v, list) and all(isinstance(n, str) for n in v) for v in deps.values()):
        return ["container-dependencies must map a container name to a list of names"]
    out = []
    for container, needs in deps.items():
        for name in [container, *needs]:
            if name not in names:
                out.append(f"container-dependencies names {name!r}, not a container here")
        if container in needs:
            out.append(f"container-dependencies: {container!r} depends on itself")
    started: set[str] = set(names) - deps.keys()
    pending = {c: set(n) for c, n in deps.items() if c in names}
    while pending:
        free = [c for c, needs in pending.items() if needs <= started]
        if not free:
            out.append(f"container-dependencies has a cycle among {sorted(pending)}")
            break
        started |= set(free)
        for c in free:
            del pending[c]
    return out


def resource_problems(svc: dict[str, Any]) -> list[str]:
    template = svc["spec"]["template"]
    annotations = template.get("metadata", {}).get("annotations", {})
    spec = template["spec"]
    containers = spec["containers"]
    out = []
    total_cpu, total_mem = Decimal(0), Decimal(0)
    for c in containers:
        limits = c.get("resources", {}).get("limits", {})
        if len(containers) > 1 and not {"cpu", "memory"} <= limits.keys():
            out.append(f"{c['name']}: set both cpu and memory limits on every container")
        container_cpu = cpu(limits.get("cpu", 1))
        if (problem := cpu_problem(container_cpu, f"{c['name']}'s cpu")) is not None:
            out.append(problem)
        total_cpu += container_cpu
        total_mem += memory_mib(limits.get("memory", "512Mi"))
    if (problem := cpu_problem(total_cpu, "the instance's total cpu")) is not None:
        out.append(problem)
    if total_cpu < 1:
        needs_one = {
            "instance-based billing": annotations.get("run.googleapis.com/cpu-throttling")
            == "false",
            "gen2": annotations.get("run.googleapis.com/execution-environment") == "gen2",
            "concurrency above 1": spec.get("containerConcurrency", 80) > 1,
        }
        for what, used in needs_one.items():
            if used:
                out.append(f"total cpu {total_cpu} vCPU is below 1, which {what} needs")
    whole = int(total_cpu.to_integral_value(rounding="ROUND_CEILING"))
    low, high = MEMORY_BY_CPU.get(whole, (MIN_MEMORY, 4 * GIB * whole))
    if total_cpu < 1:
        high = GIB if total_cpu >= Decimal("0.5") else MIN_MEMORY
    if not low <= total_mem <= high:
        out.append(f"total memory {total_mem} MiB with {total_cpu} vCPU: {low}-{high} MiB")
    return out


def service_problems(svc: dict[str, Any]) -> list[str]:
    out = label_problems(svc["metadata"].get("labels"), "metadata.labels")
    template = svc["spec"]["template"]
    out += label_problems(template.get("metadata", {}).get("labels"),
                          "spec.template.metadata.labels")
    containers = template["spec"]["containers"]
    names = [c.get("name", "") for c in containers]
    if len(containers) > MAX_CONTAINERS:
        out.append(f"{len(containers)} containers, at most {MAX_CONTAINERS}")
    if len(set(names)) != len(names) or not all(DNS_LABEL.fullmatch(n) for n in names):
        out.append(f"container names {names}: unique DNS labels")
    ingress = [c for c in containers if c.get("ports")]
    ingress_port = None
    if len(ingress) != 1:
        out.append(f"{len(ingress)} containers with ports: exactly one ingress container")
    else:
        ports = ingress[0]["ports"]
        if len(ports) != 1 or "containerPort" not in ports[0]:
            out.append(f"{ingress[0]['name']}: one port with a containerPort")
        else:
            ingress_port = int(ports[0]["containerPort"])
            if ports[0].get("name", "http1") not in PORT_NAMES:
                out.append(f"port name {ports[0]['name']!r}: one of {sorted(PORT_NAMES)}")
    for c in containers:
        port = ingress_port if c in ingress else None
        out += probe_problems(c, port)
        out += [f"{c['name']}: PORT is reserved" for v in c.get("env", [])
                if v["name"] == "PORT"]
    annotations = template.get("metadata", {}).get("annotations", {})
    out += dependency_problems(annotations.get("run.googleapis.com/container-dependencies"),
                               names)
    out += resource_problems(svc)
    return out


@pytest.mark.parametrize("path", knative_services(), ids=lambda p: p.name)
def test_cloud_run_service_follows_the_documented_rules(path: Path) -> None:
    problems = service_problems(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert problems == [], f"{path.name}:\n  " + "\n  ".join(problems)


def test_every_cloud_run_file_is_checked() -> None:
    """A Knative Service (above), a RunMonitoring (test_deploy's strict schema) or a probe
    config: nothing in deploy/cloudrun/ goes unchecked."""
    for path, doc in documents():
        if path in knative_services():
            continue
        if doc.get("kind") == "RunMonitoring":
            assert doc["apiVersion"] == "monitoring.googleapis.com/v1beta", path.name
            continue
        assert "targets" in doc, f"{path.name}: neither a Cloud Run resource nor a probe config"
        config = parse_config(path.read_text(encoding="utf-8"), path.name,
                              env={"JWT_SECRET": "stand-in-secret"})
        assert config.targets


# --- the rules themselves can fail ----------------------------------------------------------


def test_the_rules_reject_what_cloud_run_rejects() -> None:
    def svc(*containers: dict[str, Any], labels: dict[str, str] | None = None,
            deps: str | None = None) -> dict[str, Any]:
        annotations = {"run.googleapis.com/cpu-throttling": "false"}
        if deps is not None:
            annotations["run.googleapis.com/container-dependencies"] = deps
        return {"metadata": {"name": "s", "labels": labels or {}},
                "spec": {"template": {"metadata": {"annotations": annotations},
                                      "spec": {"containers": list(containers)}}}}

    def box(name: str, cpu_: str, mem: str = "512Mi", **extra: Any) -> dict[str, Any]:
        return {"name": name, "image": "i",
                "resources": {"limits": {"cpu": cpu_, "memory": mem}}, **extra}

    ingress = {"ports": [{"name": "http1", "containerPort": 8080}]}
    assert service_problems(svc(box("a", "1", **ingress), box("b", "1", "256Mi"))) == []
    found = " | ".join(service_problems(svc(box("a", "1", **ingress), box("b", "500m"))))
    assert "values above 1 must be whole numbers" in found
    assert any("label key" in p for p in service_problems(
        svc(box("a", "1", **ingress), labels={"app.kubernetes.io/name": "x"})))
    assert any("exactly one ingress" in p for p in service_problems(
        svc(box("a", "500m", **ingress), box("b", "500m", **ingress))))
    assert any("not a container here" in p for p in service_problems(
        svc(box("a", "1", **ingress), deps='{"a": ["collector"]}')))
    assert any("cycle" in p for p in service_problems(
        svc(box("a", "500m", **ingress), box("b", "500m"), deps='{"a": ["b"], "b": ["a"]}')))
    slow = {"startupProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 10,
                             "failureThreshold": 30}}
    assert any("at most 240" in p for p in service_problems(
        svc(box("a", "1", **ingress, **slow))))
    assert any("below 1" in p for p in service_problems(svc(box("a", "500m", **ingress))))
    assert any("total memory" in p for p in service_problems(
        svc(box("a", "1", "5Gi", **ingress))))
