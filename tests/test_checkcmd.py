"""`probe check` end to end against the twin on loopback: exit codes, causes and reports.

The CLI runs in a worker thread (it owns its own event loop, as it does from a shell) while the
twin serves from the test's loop; the test flips the twin's faults as a deployment would.
"""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import refused_port, until
from helpers import run_cli as run

from probe.twin import Twin

pytestmark = [pytest.mark.timeout(60), pytest.mark.twin(version="abc")]


def write_config(tmp_path: Path, targets: str, interval: str = "200ms") -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(
        f"defaults:\n  interval: {interval}\n  timeout: {interval}\n  success_threshold: 2\n"
        f"  failure_threshold: 2\ntargets:\n{targets}",
        encoding="utf-8",
    )
    return path


def health(twin: Twin, extra: str = "", name: str = "backend-health") -> str:
    return f"  - name: {name}\n    url: {twin.url}/health\n{extra}"


async def test_healthy_twin_is_ready(twin: Twin, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, health(twin, "    expect: {json: {status: healthy}}\n"))
    assert await run("check", "-c", str(cfg)) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK   backend-health  ready (HTTP 200")
    assert "READY: 1/1 critical targets ready" in out
    assert twin.requests("/health") == 2, "one round: exactly success_threshold probes"


async def test_503_is_not_ready_with_http_status_as_the_cause(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    twin.set_fault(health="503")
    cfg = write_config(tmp_path, health(twin))
    assert await run("check", "-c", str(cfg)) == 1
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("FAIL backend-health  http_status: ") and "503" in first
    assert "NOT READY" in out
    assert twin.requests("/health") == 2, "one round: exactly failure_threshold probes"


async def test_latency_target_breached_names_the_measured_p95(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    twin.set_fault(delay_ms=150)
    extra = "    latency: {p95: 100ms, window: 5, min_samples: 3}\n"
    cfg = write_config(tmp_path, health(twin, extra), interval="400ms")
    assert await run("check", "-c", str(cfg), "--format", "json") == 1
    data = json.loads(capsys.readouterr().out)
    (t,) = data["targets"]
    assert data["ready"] is False
    assert (t["state"], t["failure"]) == ("ready", "latency")
    assert t["latency_ms"]["p95"] >= 150.0
    assert t["detail"].startswith(f"total p95 {t['latency_ms']['p95']:.0f}ms > 100ms")
    assert t["detail"].endswith("(3 samples)")


async def test_expect_version_not_served_names_both_versions(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, health(twin, "    version_path: version\n"))
    assert await run("check", "-c", str(cfg), "--expect-version", "def") == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("FAIL backend-health  version_mismatch: ")
    assert "abc" in first and "def" in first
    # and the version that is served passes
    assert await run("check", "-c", str(cfg), "--expect-version", "abc") == 0


async def test_wait_until_the_twin_turns_healthy(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    twin.set_fault(health="starting")
    cfg = write_config(tmp_path, health(twin))

    async def heal_after_three_probes() -> None:
        await until(lambda: twin.requests("/health") >= 3)
        twin.set_fault(health="ok")

    healer = asyncio.create_task(heal_after_three_probes())
    assert await run("check", "-c", str(cfg), "--wait", "20s") == 0
    await healer
    captured = capsys.readouterr()
    assert "READY" in captured.out
    assert "http_status" in captured.err, "progress named the cause while waiting"
    assert captured.err.strip().splitlines()[-1].endswith("READY: 1/1 critical targets ready")


async def test_wait_on_a_twin_that_never_heals_ends_at_the_deadline_with_the_reason(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    twin.set_fault(health="503")
    cfg = write_config(tmp_path, health(twin))
    t0 = time.monotonic()
    assert await run("check", "-c", str(cfg), "--wait", "1s") == 1
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 10.0
    out = capsys.readouterr().out
    assert out.startswith("FAIL backend-health  http_status: ") and "503" in out
    assert twin.requests("/health") >= 3, "kept probing at the interval until the deadline"


async def test_refused_and_non_critical_targets(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as port:
        targets = health(twin) + (f"  - name: gone\n    url: http://127.0.0.1:{port}/\n"
                                  "    critical: false\n")
        cfg = write_config(tmp_path, targets)
        assert await run("check", "-c", str(cfg)) == 0, "a non-critical target does not block"
    out = capsys.readouterr().out
    assert "WARN gone" in out and "refused" in out
    cfg.write_text(cfg.read_text().replace("    critical: false\n", ""))
    assert await run("check", "-c", str(cfg)) == 1
    assert "FAIL gone" in capsys.readouterr().out


async def test_junit_and_github_reports(twin: Twin, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    twin.set_fault(health="503")
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    cfg = write_config(tmp_path, health(twin) + health(twin, name="second"))
    junit = tmp_path / "out" / "junit.xml"
    assert await run("check", "-c", str(cfg), "--format", "github", "--junit", str(junit)) == 1
    out = capsys.readouterr().out
    assert out.startswith("::error title=backend-health%3A http_status::http_status: ")
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "2")
    assert "| :x: | backend-health | failing | http\\_status: " in summary.read_text()


async def test_bad_config_exits_2_naming_the_place(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("targets:\n  - name: x\n    url: http://127.0.0.1:1/\n    timout: 1s\n")
    assert await run("check", "-c", str(cfg)) == 2
    assert "targets[0] (x).timout" in capsys.readouterr().err


SHA = "9aca97a0f3c1b2d4e5f60718293a4b5c6d7e8f90"


async def test_expect_version_that_checks_nothing_is_a_usage_error(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unset $GIT_SHA (`--expect-version ""`) or no version_path anywhere used to pass as
    ready: the version the CI job waits for was never compared with anything."""
    plain = write_config(tmp_path, health(twin))
    assert await run("check", "-c", str(plain), "--expect-version", "") == 2
    err = capsys.readouterr().err
    assert "--expect-version is empty" in err and "$GIT_SHA" in err
    assert await run("check", "-c", str(plain), "--expect-version", "abc") == 2
    assert "no target has a version_path" in capsys.readouterr().err
    assert twin.requests("/health") == 0, "refused before probing anything"

    in_file = tmp_path / "expect.yaml"
    in_file.write_text(plain.read_text().replace("targets:\n", "expect_version: abc\ntargets:\n"))
    assert await run("check", "-c", str(in_file)) == 2
    assert "expect_version is 'abc' but no target has a version_path" in capsys.readouterr().err
    assert await run("validate", "-c", str(in_file)) == 2
    # an empty `${VAR:-}` in the file means "no expectation", which needs no version_path
    in_file.write_text(plain.read_text().replace(
        "targets:\n", "expect_version: ${STAGEPROBE_UNSET_VERSION:-}\ntargets:\n"))
    assert await run("check", "-c", str(in_file)) == 0


@pytest.mark.twin(version=SHA)
async def test_a_git_sha_matches_its_short_form_both_ways(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, health(twin, "    version_path: version\n"))
    assert await run("check", "-c", str(cfg), "--expect-version", SHA[:7]) == 0
    twin.set_fault(version=SHA[:7])
    assert await run("check", "-c", str(cfg), "--expect-version", SHA) == 0
    capsys.readouterr()
    assert await run("check", "-c", str(cfg), "--expect-version", "9aca97b") == 1
    assert "version_mismatch" in capsys.readouterr().out


async def test_one_round_keeps_decided_targets_fresh(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fast target decided early keeps being probed while a slow one decides, so the verdict
    at the end of the round rests on fresh results (older ones would be `stale`)."""
    with refused_port() as port:
        targets = health(twin, "    interval: 200ms\n    timeout: 200ms\n") + (
            f"  - name: slow\n    url: http://127.0.0.1:{port}/\n    interval: 1s\n"
            "    timeout: 1s\n    failure_threshold: 3\n    critical: false\n")
        cfg = write_config(tmp_path, targets)
        assert await run("check", "-c", str(cfg), "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    fast, slow = data["targets"]
    assert (fast["state"], slow["state"]) == ("ready", "failing")
    assert slow["last_probe_at"] - fast["last_probe_at"] < 2 * 0.2 + 0.2
    assert twin.requests("/health") > 2, "probed past its decision"
