"""What the daemon's log says, read from a real `probe run` probing the twin: every line that
matters carries its reason in `message` (the one field Cloud Logging's summary shows), a failing
target's change of cause is logged, and so are the gate's own ready / not-ready changes."""

from __future__ import annotations

import io
import signal
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import ProbeRun, run_daemon, until

from probe.logging import configure
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
