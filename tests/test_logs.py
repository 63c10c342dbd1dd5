"""What the daemon's log says, read from a real `probe run` probing the twin: every line that
matters carries its reason in `message` (the one field Cloud Logging's summary shows), a failing
target's change of cause is logged, and so are the gate's own ready / not-ready changes."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import ProbeRun, http_get, run_daemon, until

from probe.config import parse_config
from probe.daemon.statelog import StateLog
from probe.logging import configure
from probe.outcome import Outcome
from probe.readiness import Readiness, stale_after
from probe.twin import Twin

pytestmark = [pytest.mark.timeout(60)]


async def logged(daemon: ProbeRun, text: str, nth: int = 1) -> dict[str, Any]:
    """The `nth` JSON log line whose `message` contains `text`, once there is one."""
    def find() -> dict[str, Any] | None:
        found = [line for line in daemon.logs() if text in line.get("message", "")]
        return found[nth - 1] if len(found) >= nth else None

    line: dict[str, Any] = await until(find, f"log line {nth} saying {text!r}",
                                       detail=daemon.log_text)
    return line


async def test_causes_and_gate_changes_are_logged_with_the_reason_in_message(
        twin: Twin, tmp_path: Path) -> None:
    config = f"""
defaults: {{interval: 200ms, timeout: 150ms, success_threshold: 1, failure_threshold: 1}}
targets:
  - {{name: backend-health, url: "{twin.url}/health"}}
"""
    async with run_daemon(config, tmp_path) as daemon:
        ready = await logged(daemon, "staging ready")
        assert ready["gate"] == "ready" and ready["severity"] == "INFO"

        twin.set_fault(health="hang")
        failing = await logged(daemon, "target backend-health is failing: timeout")
        assert failing["failure"] == "timeout" and failing["severity"] == "WARNING"
        gate = await logged(daemon, "staging not ready: waiting on backend-health")
        assert gate["blocking"] == ["backend-health"]

        twin.set_fault(health="503")
        now = await logged(daemon, "target backend-health is still failing, now http_status: "
                                   "HTTP 503")
        assert (now["failure"], now["was"]) == ("http_status", "timeout")

        twin.set_fault(health="ok")
        await logged(daemon, "target backend-health is ready", nth=2)
        await logged(daemon, "staging ready", nth=2)
        lines = [line["message"] for line in daemon.logs()]
        assert sum("still failing" in m for m in lines) == 1, "one line per change of cause"


async def results(daemon: ProbeRun, target: str) -> float:
    """How many results `target` has had, from the daemon's /metrics."""
    got = await http_get(f"{daemon.url}/metrics")
    found = re.findall(rf'^probe_results_total{{[^}}]*target="{target}"[^}}]*}} (\S+)$',
                       got[1] if got else "", re.M)
    return sum(map(float, found))


async def test_a_target_that_goes_stale_is_logged_once_and_its_next_result_ends_it(
        twin: Twin, tmp_path: Path) -> None:
    """No result is not an event, so only a timer can log that a target went stale. The daemon
    is frozen (SIGSTOP: a starved container, a paused VM) for longer than 2 x interval + timeout
    while the twin hangs: on SIGCONT each target, critical or not, gets one WARNING saying it
    is stale and how old its last result is; the next result (a timeout) ends it in one line,
    and the results after that log no more staleness."""
    interval, timeout = 1.0, 0.8
    limit = 2 * interval + timeout
    config = f"""
defaults: {{interval: {interval}s, timeout: {timeout}s, success_threshold: 1,
            failure_threshold: 1}}
targets:
  - {{name: backend-health, url: "{twin.url}/health"}}
  - {{name: docs, url: "{twin.url}/health", critical: false}}
"""
    loop = asyncio.get_running_loop()
    async with run_daemon(config, tmp_path) as daemon:
        await logged(daemon, "staging ready")
        seen = await results(daemon, "backend-health")
        await until(lambda: _more(results(daemon, "backend-health"), seen), "a fresh result")
        twin.set_fault(health="hang")
        daemon.signal(signal.SIGSTOP)
        try:
            stopped = loop.time()
            await until(lambda: loop.time() - stopped > limit + 0.5, "the results to age",
                        within=limit + 5)
        finally:
            daemon.signal(signal.SIGCONT)
        for name, critical in (("backend-health", True), ("docs", False)):
            stale = await logged(daemon, f"target {name} is stale: no result for ")
            assert stale["severity"] == "WARNING" and stale["state"] == "stale", stale
            assert stale["critical"] is critical and stale["age"] > limit, stale
            assert f"(stale after {limit:g}s = 2 x interval 1s + timeout 0.8s)" in stale["message"]
            assert stale["detail"] in stale["message"]
            ended = await logged(daemon, f"target {name} is failing: timeout")
            assert ended["old"] == "stale" and ended["stale_for"] > limit, ended
        after = await results(daemon, "backend-health")
        await until(lambda: _more(results(daemon, "backend-health"), after + 1),
                    "two more results", detail=daemon.log_text)
        lines = [line["message"] for line in daemon.logs()]
        for name in ("backend-health", "docs"):
            assert sum(m.startswith(f"target {name} is stale") for m in lines) == 1, lines
            assert sum(m.startswith(f"target {name} is failing") for m in lines) == 1, lines


async def _more(value: Any, than: float) -> bool:
    return bool(await value > than)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("no_color", ["", "1"])
def test_console_logs_are_coloured_on_a_terminal_unless_no_color(
        no_color: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", no_color)
    stream = Terminal()
    try:
        configure(fmt="console", stream=stream)
        structlog.get_logger("t").warning("target x is failing: timeout")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "target x is failing: timeout" in text
    assert ("\x1b[" in text) is (not no_color), text


@pytest.mark.parametrize("level", ["debug", "info"])
async def test_debug_adds_a_line_per_probe(level: str, twin: Twin, tmp_path: Path) -> None:
    config = f"""
defaults: {{interval: 200ms, timeout: 150ms, success_threshold: 1, failure_threshold: 1}}
targets:
  - {{name: backend-health, url: "{twin.url}/health"}}
"""
    async with run_daemon(config, tmp_path, env={"PROBE_LOG_LEVEL": level}) as daemon:
        await logged(daemon, "staging ready")
        await until(lambda: twin.requests("/health") >= 3, "three probes")
    probes = [line for line in daemon.logs()
              if line["message"].startswith("probe backend-health: ok in")]
    if level == "debug":
        assert len(probes) >= 3 and probes[0]["severity"] == "DEBUG", daemon.log_text()
    else:
        assert probes == []


async def test_a_failed_reload_says_why_in_message(twin: Twin, tmp_path: Path) -> None:
    config = f"targets:\n  - {{name: backend-health, url: \"{twin.url}/health\"}}\n"
    async with run_daemon(config, tmp_path) as daemon:
        (tmp_path / "probe.yaml").write_text(config.replace("url:", "timout: 1s, url:"))
        daemon.signal(signal.SIGHUP)
        line = await logged(daemon, "config reload failed: targets[0]")
    assert "timout" in line["message"] and line["message"].endswith("the running config stays")


async def test_a_stale_timer_re_arms_on_newer_results_and_logs_once(
        restore_logging: None) -> None:
    """StateLog's timers on their own, fed by hand: a timer that finds a newer result re-arms
    for its expiry instead of logging, a stale target is logged once however long it stays
    stale, a result ends it ("is ready: a fresh result"), and close() leaves no timer."""
    structlog.reset_defaults()  # a CLI run before this one may have left a WARNING filter
    config = parse_config("targets:\n  - {name: t, url: 'http://127.0.0.1:1/', interval: 100ms,"
                          " timeout: 50ms, success_threshold: 1}\n", env={})
    limit = stale_after(config.targets[0])
    readiness, states = Readiness(config), StateLog(clock=time.time)

    def result() -> float:
        outcome = Outcome(target="t", kind="http", success=True, duration=0.01)
        at = time.time()
        states.after(outcome, readiness.observe(outcome, at), readiness)
        return at

    def stale_lines() -> list[dict[str, Any]]:
        return [e for e in logs if e.get("state") == "stale"]

    with structlog.testing.capture_logs() as logs:
        first = result()
        await until(lambda: time.time() > first + limit / 2, "half the limit", every=0.01)
        second = result()  # the timer armed for `first` finds this one and re-arms
        [stale] = await until(stale_lines, "the stale line", every=0.01)
        assert stale["log_level"] == "warning" and stale["target"] == "t"
        # its age is the second result's: the first's expiry found that one and re-armed
        assert stale["age"] >= round(limit, 1) and stale["detail"].startswith("no result for")
        await until(lambda: time.time() > second + 3 * limit, "staleness to last", every=0.01)
        fresh = result()
        assert len(stale_lines()) == 1, logs
        [ended] = [e for e in logs if e.get("old") == "stale"]
        assert ended["event"].startswith("target t is ready: a fresh result, the first in ")
        assert ended["stale_for"] == round(fresh - second, 1)
        states.close()
        await until(lambda: time.time() > fresh + 2 * limit, "past the limit", every=0.01)
        assert len(stale_lines()) == 1, "a closed StateLog times nothing"
