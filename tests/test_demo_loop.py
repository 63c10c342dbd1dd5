"""The whole chat loop of config/example.yaml (login -> thread -> WebSocket -> agent events)
against a real twin, probed by a real `probe run`: each of the seeds' failures (probe.demo's
SEED_FAILURES, the list `probe demo` prints) switched on at the twin is named in
/api/v1/status as the banner says, and switched off, the gate is ready again.

The daemon runs on a copy of config/example.yaml with a test's pace (1 s intervals, a 2 s hold,
4-sample latency windows, loose bounds where a loaded machine could breach them); every other
line is the example's, and `probe demo`'s own config has the same targets and measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from helpers import ProbeRun, http_get, until

from probe.demo import SEED_FAILURES, SeedFailure, _banner, demo_config
from probe.twin import DEV_JWT_SECRET, Twin
from probe.twin.auth import DEV_E2E_PASSWORD

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "example.yaml"
VERSION = "twin-1"  # what the twin serves; EXPECTED_VERSION for the daemon

pytestmark = [pytest.mark.twin(version=VERSION, jwt_secret=DEV_JWT_SECRET),
              pytest.mark.timeout(300)]

# (example's text, the test's) — each must be in the example, so a change there shows here.
PACE = [
    ("interval: 5s", "interval: 1s"),
    ("timeout: 2s", "timeout: 1s"),
    ("failure_threshold: 3", "failure_threshold: 2"),
    ("window: 1m", "window: 4"),
    ("{p95: 250ms}", "{p95: 2s}"),  # backend-health
    ("{measure: rtt, p95: 50ms}", "{measure: rtt, p95: 2s}"),
    ("{measure: create-thread, p95: 100ms}", "{measure: create-thread, p95: 2s}"),
    ("hold: 20s", "hold: 2s"),
    ("keepalive: 5s", "keepalive: 500ms"),
    ("interval: 30s", "interval: 4s"),
    ("timeout: 25s", "timeout: 4s"),
]


def example_at_test_pace(twin: Twin) -> str:
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in [("127.0.0.1:8080", f"127.0.0.1:{twin.port}"), *PACE]:
        assert old in text, f"config/example.yaml no longer has {old!r}"
        text = text.replace(old, new)
    return text


async def status(daemon: ProbeRun) -> dict[str, Any] | None:
    got = await http_get(f"{daemon.url}/api/v1/status")
    if got is None or got[0] != 200:
        return None
    return json.loads(got[1])  # type: ignore[no-any-return]


def entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["targets"] if t["name"] == name)


def not_ready(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "no status"
    return "; ".join(f"{t['name']} {t['state']} {t['failure']}: {t['detail']}"
                     for t in doc["targets"] if not t["ready"]) or "every target ready"


async def test_each_seed_failure_is_named_and_clears(twin: Twin, tmp_path: Path) -> None:
    twin.set_fault(token_ttl_s=2)  # a switched auth secret shows at the next login, ~2 s on
    config = tmp_path / "example.yaml"
    config.write_text(example_at_test_pace(twin), encoding="utf-8")
    daemon = ProbeRun(config, tmp_path, {"EXPECTED_VERSION": VERSION, "PROBE_GATE_TOKEN": None,
                                         "TWIN_E2E_PASSWORD": None, "TWIN_JWT_SECRET": None})
    try:
        await daemon.live(30)
        last: dict[str, Any] = {}

        async def ready() -> bool:
            last["doc"] = doc = await status(daemon)
            return doc is not None and doc["ready"] is True

        await until(ready, "the example to be ready", within=60,
                    detail=lambda: not_ready(last.get("doc")))
        assert twin.requests("/api/threads") > 0 and twin.requests("/auth/login") > 0

        for seed in SEED_FAILURES:
            twin.set_fault(**seed.switch)

            async def named(seed: SeedFailure = seed) -> dict[str, Any] | None:
                doc = last["doc"] = await status(daemon)
                if doc is None:
                    return None
                got = entry(doc, seed.target)
                if got["ready"] or got["failure"] != seed.failure:
                    return None
                return got if all(w in got["detail"] for w in seed.says) else None

            got = await until(named, f"{seed.what}: {seed.target} {seed.failure}", within=30,
                              detail=lambda: not_ready(last.get("doc")))
            assert last["doc"]["ready"] is False, f"{seed.what}: the gate stayed open"
            if seed.failure == "ws_auth":  # the one line says where the token came from
                assert f"{twin.url}/auth/login" in got["detail"]
            twin.reset()
            twin.set_fault(version=VERSION)
            await until(ready, f"ready again after {seed.what}", within=40,
                        detail=lambda: not_ready(last.get("doc")))
    finally:
        await daemon.stop()
    log = daemon.log_text()
    assert "Traceback" not in log
    for secret in (DEV_E2E_PASSWORD, DEV_JWT_SECRET, "eyJ"):
        assert secret not in log


def test_the_demo_probes_what_the_example_does() -> None:
    """`probe demo` builds its config in code (it runs from a bare install); it has the
    example's targets and each one's latency measures, so SEED_FAILURES hold for it too."""
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))

    def measures(latency: Any) -> set[str]:
        blocks = latency if isinstance(latency, list) else [latency] if latency else []
        return {b.get("measure", "total") for b in blocks}

    want = {t["name"]: measures(t.get("latency")) for t in example["targets"]}
    demo = demo_config("http://127.0.0.1:1", "s" * 32, "password")
    assert {t.name: {b.measure for b in t.latencies} for t in demo.targets} == want
    for seed in SEED_FAILURES:
        assert seed.target in want, seed


def test_the_banner_says_how_to_switch_each_seed_failure() -> None:
    twin, daemon = SimpleNamespace(url="http://127.0.0.1:8081"), SimpleNamespace(
        url="http://127.0.0.1:9464")
    text = _banner(daemon, twin)  # type: ignore[arg-type]
    for seed in SEED_FAILURES:
        assert f"curl -X POST {twin.url}/_twin/fault -d '{json.dumps(seed.switch)}'" in text
        assert f"-> {seed.target}  {seed.failure}" in text
    assert f"curl -X POST {twin.url}/_twin/reset" in text
    assert f"{daemon.url}/api/v1/status" in text
