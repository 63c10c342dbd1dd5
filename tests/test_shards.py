"""Sharded replicas: PROBE_SHARD's rendezvous split, and the fleet's gate through a real
Prometheus scraping real `probe run` shards that probe one loopback server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from helpers import ProbeRun, Prometheus, http_get, run_cli, samples, serving, until, value

from probe.cli import _parser
from probe.config import ConfigError, parse_config
from probe.daemon.run import Daemon
from probe.shard import Shard, from_environ, owned, owners, parse, split

ROOT = Path(__file__).resolve().parent.parent
SHARDS = ROOT / "deploy" / "kubernetes" / "shards"
NAMES = [f"t{i:02d}" for i in range(36)]


# --- the split -----------------------------------------------------------------------------


def test_parse_accepts_index_count_and_a_statefulset_ordinal() -> None:
    assert parse("1/3") == Shard(1, 3, 1)
    assert parse(" 0 / 1 ") == Shard(0, 1, 1)
    assert parse("ordinal/3", hostname="stageprobe-2") == Shard(2, 3, 1)
    assert parse("ordinal/4", "2", hostname="probe-shard-3") == Shard(3, 4, 2)
    assert from_environ({}) == Shard()


@pytest.mark.parametrize(("value", "replicas", "hostname", "words"), [
    ("3/3", None, None, "INDEX must be below COUNT (3), got 3"),
    ("1", None, None, "must be INDEX/COUNT or ordinal/COUNT"),
    ("-1/3", None, None, "must be INDEX/COUNT"),
    ("0/0", None, None, "COUNT must be 1..1024"),
    ("ordinal/3", None, "laptop", "needs a pod name ending in -N"),
    ("ordinal/3", None, "stageprobe-5", "INDEX must be below COUNT (3), got 5"),
    ("0/3", "4", None, "PROBE_SHARD_REPLICAS must be 1..COUNT (3), got 4"),
    ("0/3", "two", None, "PROBE_SHARD_REPLICAS must be a whole number"),
])
def test_parse_names_what_is_wrong(value: str, replicas: str | None, hostname: str | None,
                                   words: str) -> None:
    env = {"PROBE_SHARD": value, **({"PROBE_SHARD_REPLICAS": replicas} if replicas else {}),
           **({"HOSTNAME": hostname} if hostname else {})}
    with pytest.raises(ConfigError) as err:
        from_environ(env)
    assert err.value.source == "environment" and words in err.value.errors[0]


def test_every_target_has_exactly_one_owner_and_the_split_is_even() -> None:
    names = [f"target-{i}" for i in range(3000)]
    parts = split(names, 3)
    assert sorted(n for part in parts.values() for n in part) == sorted(names)
    assert all(800 < len(part) < 1200 for part in parts.values()), {
        i: len(p) for i, p in parts.items()}


def test_a_changed_count_moves_only_the_targets_of_the_added_shard() -> None:
    names = [f"target-{i}" for i in range(3000)]
    before = {n: owners(n, 3)[0] for n in names}
    after = {n: owners(n, 4)[0] for n in names}
    moved = [n for n in names if before[n] != after[n]]
    assert all(after[n] == 3 for n in moved), "a target moved between surviving shards"
    assert 600 < len(moved) < 900, len(moved)  # ~1/4: the fewest any split can move
    back = [n for n in names if after[n] == 3]
    assert all(owners(n, 3)[0] == before[n] for n in back)


def test_replicas_are_the_top_scores_and_include_the_single_owner() -> None:
    for name in NAMES:
        two = owners(name, 3, 2)
        assert len(set(two)) == 2 and two[0] == owners(name, 3)[0]
    parts = split(NAMES, 3, 2)
    assert all(sum(n in part for part in parts.values()) == 2 for n in NAMES)


def test_the_split_is_the_same_in_every_process() -> None:
    """hashlib, not hash(): another interpreter with another hash seed agrees."""
    code = "from probe.shard import split; print(split([f't{i:02d}' for i in range(36)], 3))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=ROOT)
        assert out.stdout.strip() == str(split(NAMES, 3))


def config_text(port: int, failing: set[str] = frozenset(), names: list[str] = NAMES) -> str:
    """Dozens of targets on one server; each request says which shard sent it (X-Shard)."""
    lines = ["defaults: {interval: 1s, timeout: 800ms, success_threshold: 1, "
             "failure_threshold: 1}", "targets:"]
    for i, name in enumerate(names):
        critical = "true" if i % 3 or name in failing else "false"
        lines += [f"  - name: {name}", f"    url: http://127.0.0.1:{port}/t/{name}",
                  '    headers: {X-Shard: "${PROBE_SHARD}"}', f"    critical: {critical}"]
    return "\n".join(lines) + "\n"


def test_the_daemon_keeps_only_its_shard_on_start_and_on_reload() -> None:
    env = {"PROBE_SHARD": "1/3"}
    config = parse_config(config_text(9), env=env)
    daemon = Daemon(config, shard=Shard(1, 3))
    mine = split(NAMES, 3)[1]
    assert [t.name for t in daemon.config.targets] == mine
    assert [t.name for t in daemon.runtime.readiness.verdict(0.0).targets] == mine
    s = samples(daemon.metrics)
    assert value(s, "probe_shard_info", shard="1/3", index="1", count="3", replicas="1") == 1
    assert value(s, "probe_shards") == 3
    daemon.apply(parse_config(config_text(9, names=[*NAMES, "t99"]), env=env))
    assert [t.name for t in daemon.config.targets] == split([*NAMES, "t99"], 3)[1]
    assert owned(config, Shard()) is config


async def test_probe_run_rejects_a_bad_shard_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(config_text(9), encoding="utf-8")
    run = ProbeRun(cfg, tmp_path, {"PROBE_SHARD": "ordinal/3", "HOSTNAME": "laptop"})
    try:
        assert await run.wait(20) == 2
    finally:
        run.close()
    assert "PROBE_SHARD=ordinal/3 needs a pod name ending in -N" in run.log_text()


# --- three real shards, one real Prometheus ---------------------------------------------------


class Counting:
    """One loopback server for every target: counts requests per (path, X-Shard header)."""

    def __init__(self, failing: set[str] = frozenset(),
                 failing_for: set[tuple[str, str]] = frozenset()) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        self.failing = failing
        self.failing_for = failing_for  # (target, shard): fails for that shard's probes only
        self.app = web.Application()
        self.app.router.add_get("/t/{name}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        name, shard = request.match_info["name"], request.headers.get("X-Shard", "")
        self.seen[(name, shard)] += 1
        bad = name in self.failing or (name, shard) in self.failing_for
        return web.Response(status=500 if bad else 200, text="ok")

    def senders(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for name, shard in self.seen:
            out.setdefault(name, set()).add(shard)
        return out


def start_shard(cfg: Path, tmp: Path, label: str, port: int | None = None,
                replicas: int = 1) -> ProbeRun:
    """`probe run` as shard `label`; on `port` when restarting one Prometheus already scrapes."""
    env: dict[str, str | None] = {"PROBE_SHARD": label, "PROBE_GATE_TOKEN": None,
                                  "PROBE_SHARD_REPLICAS": str(replicas)}
    if port is not None:
        env["PROBE_LISTEN"] = f"127.0.0.1:{port}"
    run = ProbeRun(cfg, tmp, env)
    if port is not None:  # ProbeRun picked a port of its own; PROBE_LISTEN won
        run.port, run.url = port, f"http://127.0.0.1:{port}"
    return run


@contextmanager
def prometheus(tmp: Path, runs: list[ProbeRun]) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (Debian package `prometheus`)")
    p = Prometheus(
        tmp, "global: {scrape_interval: 1s, scrape_timeout: 900ms}\n"
        "scrape_configs:\n  - job_name: stageprobe\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(f'127.0.0.1:{r.port}') for r in runs)}]\n")
    try:
        yield p
    finally:
        p.stop()


@asynccontextmanager
async def fleet(tmp: Path, counting: Counting, count: int, names: list[str] = NAMES,
                replicas: int = 1) -> AsyncIterator[tuple[Path, list[ProbeRun], Prometheus]]:
    async with serving(counting.app) as base:
        cfg = tmp / "probe.yaml"
        port = int(base.rpartition(":")[2])
        cfg.write_text(config_text(port, counting.failing, names), "utf-8")
        runs = [start_shard(cfg, tmp, f"{i}/{count}", replicas=replicas) for i in range(count)]
        try:
            for r in runs:
                await r.live(30)
            with prometheus(tmp, runs) as p:
                await p.ready()
                yield cfg, runs, p
        finally:
            for r in runs:
                await r.stop()


async def gate(capsys: pytest.CaptureFixture[str], p: Prometheus, *args: str,
               scoped: bool = True) -> tuple[int, dict[str, Any]]:
    """`probe gate --prometheus` with --format json; `scoped`: with a selector and a short
    --max-age (else the plain command line, as CI ran it before either existed)."""
    capsys.readouterr()
    scope = ("--selector", '{job="stageprobe"}', "--max-age", "5s") if scoped else ()
    code = await run_cli("gate", "--prometheus", p.url, "--format", "json", *scope, *args)
    return code, json.loads(capsys.readouterr().out)


def not_ready(answer: dict[str, Any], critical: bool = True) -> set[str]:
    return {t["name"] for t in answer["targets"] if not t["ready"] and t["critical"] == critical}


def shard_panels() -> dict[str, str]:
    """The Shards row of deploy/grafana/dashboard.json: title -> its one query, with the
    dashboard's $target variable at "All"."""
    dash = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text(encoding="utf-8"))
    return {p["title"]: p["targets"][0]["expr"].replace("$target", ".*")
            for p in dash["panels"] if p["id"] in (25, 26, 27)}


def alert_expr(name: str) -> str:
    groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())["groups"]
    return next(r["expr"] for g in groups for r in g["rules"] if r.get("alert") == name)


@pytest.mark.timeout(240)
async def test_three_shards_split_the_work_and_the_gate_sees_one_go(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counting = Counting()
    parts = split(NAMES, 3)
    critical = {n for i, n in enumerate(NAMES) if i % 3}
    async with fleet(tmp_path, counting, 3) as (cfg, runs, p):
        for i, r in enumerate(runs):  # each /readyz answers for its own targets only
            got = await http_get(f"{r.url}/readyz")
            assert got is not None
            assert sorted(t["name"] for t in json.loads(got[1])["targets"]) == parts[i]
        code, answer = await gate(capsys, p, "-c", str(cfg), "--wait", "60s")
        assert code == 0 and answer["ready"], answer
        senders = counting.senders()
        assert sorted(senders) == NAMES, "a target nobody probed"
        assert senders == {n: {f"{owners(n, 3)[0]}/3"} for n in NAMES}, "probed by two shards"

        panels = shard_panels()  # the dashboard's own queries, against this fleet
        rows = await p.query(panels["Which shard probes each target"])
        assert {(r["metric"]["target"], r["metric"]["shard"]) for r in rows} == {
            (n, f"{owners(n, 3)[0]}/3") for n in NAMES}
        assert await p.values(panels["Shards missing"]) == [0.0]

        runs[1].proc.kill()  # a crash: no drain, its series go stale at the next scrape
        lost = set(parts[1])

        async def gate_misses_shard_1() -> dict[str, Any] | None:
            code, answer = await gate(capsys, p, "-c", str(cfg))
            return answer if code == 1 and not_ready(answer) == lost & critical else None

        answer = await until(gate_misses_shard_1, "the gate to name shard 1's targets",
                             within=30, every=0.3)
        assert not_ready(answer, critical=False) == lost - critical
        for t in answer["targets"]:
            if not t["ready"]:
                assert t["failure"] is None and t["detail"].startswith(
                    "no data in Prometheus for "), t
                assert t["detail"].endswith(": its shard 1/3 is down or not scraped"), t
        code, answer = await gate(capsys, p)  # without -c: the missing shard itself
        assert code == 1 and not_ready(answer) == {"shard 1/3"}, answer
        assert await p.values(panels["Shards missing"]) == [1.0]
        assert await p.values(alert_expr("StageprobeShardMissing")) == [2.0]

        runs[1] = start_shard(cfg, tmp_path, "1/3", port=runs[1].port)
        await runs[1].live(30)
        code, answer = await gate(capsys, p, "-c", str(cfg), "--wait", "60s")
        assert code == 0 and answer["ready"], answer
        assert counting.senders() == {n: {f"{owners(n, 3)[0]}/3"} for n in NAMES}


@pytest.mark.timeout(180)
async def test_killing_the_shard_that_probes_a_failing_target_is_not_ready(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two shards; the one probing the failing critical target dies. Prometheus then holds no
    failing series at all, and a gate that takes whatever series exist says ready (as it did
    before probe_shard_info and -c: run this with an older probe gate to see it)."""
    names = NAMES[:8]
    bad = "t04"
    owner = owners(bad, 2)[0]
    critical = {n for i, n in enumerate(names) if i % 3 or n == bad}
    async with fleet(tmp_path, Counting(failing={bad}), 2, names) as (cfg, runs, p):

        async def failing_seen() -> bool:
            code, answer = await gate(capsys, p, scoped=False)
            return code == 1 and not_ready(answer) == {bad}

        await until(failing_seen, f"the gate to see {bad} failing", within=60, every=0.3)
        runs[owner].proc.kill()
        lost = set(split(names, 2)[owner])

        async def series_gone() -> bool:  # Prometheus's view, whatever the gate makes of it
            return await p.values('count(probe_target_ready{job="stageprobe"})') == [
                float(len(names) - len(lost))]

        await until(series_gone, "the killed shard's series to go stale", within=30)
        code, answer = await gate(capsys, p, scoped=False)
        assert code == 1, f"READY with {bad}'s only replica gone: {answer}"
        assert not_ready(answer) == {f"shard {owner}/2"}

        code, answer = await gate(capsys, p, "-c", str(cfg))
        assert code == 1 and not_ready(answer) == lost & critical, answer
        (entry,) = [t for t in answer["targets"] if t["name"] == bad]
        assert f"its shard {owner}/2 is down" in entry["detail"] and not entry["ready"]


@pytest.mark.timeout(180)
async def test_redundant_shards_are_ready_only_if_every_fresh_replica_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PROBE_SHARD_REPLICAS=2 on 2 shards: every target is probed by both. One target fails
    for shard 1's probes only: not ready while shard 1 reports it, ready once shard 1 is gone
    (the one fresh replica left says ready), and no target is without data meanwhile."""
    names = NAMES[:6]
    flaky = "t01"
    counting = Counting(failing_for={(flaky, "1/2")})
    async with fleet(tmp_path, counting, 2, names, replicas=2) as (cfg, runs, p):

        async def disagreement_seen() -> bool:  # both replicas' series in, one says not ready
            code, answer = await gate(capsys, p, "-c", str(cfg))
            details = [t["detail"] for t in answer["targets"] if t["name"] == flaky]
            return code == 1 and not_ready(answer) == {flaky} and details[0].startswith(
                "not ready in 1 of 2 replicas (shard 1/2)")

        await until(disagreement_seen, f"the gate to see {flaky} fail in shard 1 only",
                    within=60, every=0.3)
        assert counting.senders() == {n: {"0/2", "1/2"} for n in names}, "each on both shards"

        runs[1].proc.kill()
        code, answer = await gate(capsys, p, "-c", str(cfg), "--wait", "30s")
        assert code == 0 and answer["ready"], answer


# --- deploy/kubernetes/shards ----------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_shards_manifests_are_wired_together(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kustomization = load_all(SHARDS / "kustomization.yaml")[0]
    docs = {}
    for resource in kustomization["resources"]:
        assert (SHARDS / resource).is_file(), resource
        for doc in load_all(SHARDS / resource):
            docs[doc["kind"]] = doc
    sts, svc, monitor, job = (docs[k] for k in ("StatefulSet", "Service", "PodMonitor", "Job"))
    replicas = sts["spec"]["replicas"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["PROBE_SHARD"] == f"ordinal/{replicas}"
    assert parse(env["PROBE_SHARD"], hostname=f"{sts['metadata']['name']}-{replicas - 1}")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"].items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[monitor["spec"]["jobLabel"]] == "stageprobe"
    (gate_container,) = job["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(gate_container["args"])
    assert args.command == "gate" and args.prometheus and args.config and args.selector
    mounts = {m["mountPath"] for m in gate_container["volumeMounts"]}
    assert str(args.config.parent) in mounts
    assert "PROBE_SHARD" not in {v["name"] for v in gate_container.get("env", [])}
    # the gate reads the shards' own config without their secrets (a stand-in fills them)
    configmap = load_all(SHARDS.parent / "configmap.yaml")[0]
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    config = tmp_path / "config.yaml"
    config.write_text(configmap["data"]["config.yaml"], encoding="utf-8")
    monkeypatch.delenv("JWT_SECRET", raising=False)
    from probe.gate.prometheus import expected_targets  # here: the old-gate check needs none

    expected = expected_targets(config)
    assert expected and any(e.kind == "websocket" for e in expected)
