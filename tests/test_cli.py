"""The CLI as a CI job or a person meets it: choosing targets, -q/-v, --timeout, Ctrl-C, a wrong
--junit path or no config file, `probe init`, and help that documents every option.

`probe check` runs against the twin on loopback (in-process in a worker thread, or as a real
subprocess where a signal is the point).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import refused_port, stop_process, until
from helpers import run_cli as run
from test_checkcmd import health, write_config

from probe.cli import main as cli
from probe.twin import Twin

pytestmark = [pytest.mark.timeout(60), pytest.mark.twin(version="abc")]

ROOT = Path(__file__).resolve().parent.parent


def two_targets(twin: Twin, tmp_path: Path, dead: int) -> Path:
    return write_config(tmp_path, health(twin) + f"  - name: dead\n    url: "
                        f"http://127.0.0.1:{dead}/\n")


async def test_target_and_exclude_probe_only_the_chosen_targets(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with refused_port() as dead:
        cfg = str(two_targets(twin, tmp_path, dead))
        assert await run("check", "-c", cfg) == 1
        capsys.readouterr()
        assert await run("check", "-c", cfg, "--exclude", "dead") == 0
        out = capsys.readouterr().out
        assert "dead" not in out and "READY: 1/1" in out
        before = twin.requests("/health")
        assert await run("check", "-c", cfg, "--target", "dead") == 1
        assert twin.requests("/health") == before, "a target left out is not probed"
        assert "FAIL dead  refused" in capsys.readouterr().out
        assert await run("check", "-c", cfg, "--target", "backend-health",
                         "--target", "nope", "--exclude", "nope2") == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "no target named 'nope', 'nope2' (targets: backend-health, dead)" in captured.err
        assert twin.requests("/health") == before, "a usage error probes nothing"


async def test_quiet_is_the_verdict_line_and_verbose_a_line_per_probe(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path, health(twin)))
    assert await run("check", "-c", cfg, "-q", "--timeout", "20s") == 0
    captured = capsys.readouterr()
    assert captured.out == "READY: 1/1 critical targets ready\n"
    assert captured.err == "", "-q: no progress either"
    assert await run("check", "-c", cfg, "-v") == 0
    err = capsys.readouterr().err
    assert err.count("probe backend-health: ok in") == 2, err  # success_threshold probes


def test_timeout_is_wait() -> None:
    from probe.cli import _parser

    for command in (["check"], ["gate", "http://127.0.0.1:1"]):
        assert _parser().parse_args([*command, "--timeout", "90s"]).wait == 90.0
        assert _parser().parse_args([*command, "--wait", "2m"]).wait == 120.0


async def test_an_unwritable_junit_path_fails_before_probing(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path, health(twin)))
    (tmp_path / "reports").write_text("a file where a directory should be")
    assert await run("check", "-c", cfg, "--wait", "10m",
                     "--junit", str(tmp_path / "reports" / "r.xml")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"probe check: --junit {tmp_path / 'reports' / 'r.xml'}: ")
    assert "is not a directory" in err and "Traceback" not in err
    assert twin.requests("/health") == 0


def test_a_missing_default_config_says_how_to_pass_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROBE_CONFIG", raising=False)
    for command in ("check", "validate"):
        assert cli([command]) == 2
        err = capsys.readouterr().err
        assert "no config file: the default, config/example.yaml," in err, err
        assert "-c FILE" in err and "PROBE_CONFIG=FILE" in err and "probe init" in err
    monkeypatch.setenv("PROBE_CONFIG", str(tmp_path / "nope.yaml"))
    assert cli(["check"]) == 2
    assert "$PROBE_CONFIG is not at" in capsys.readouterr().err


def spawn(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / "stderr.txt"
    with err.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "probe", *argv], stdout=subprocess.DEVNULL,
                                stderr=fh, env={**os.environ, "NO_COLOR": "1"})
    return proc, err


@pytest.mark.parametrize("command", ["check", "gate"])
async def test_ctrl_c_exits_130(command: str, twin: Twin, tmp_path: Path) -> None:
    twin.set_fault(health="503")
    with refused_port() as port:
        argv = (["check", "-c", str(write_config(tmp_path, health(twin)))] if command == "check"
                else ["gate", f"http://127.0.0.1:{port}"])
        proc, err = spawn(tmp_path, *argv, "--wait", "10m")
        try:
            # SIGINT once it is waiting, i.e. has printed its first progress line
            await until(lambda: "critical ready" in err.read_text(), "a progress line",
                        detail=err.read_text)
            proc.send_signal(signal.SIGINT)
            code = await asyncio.to_thread(proc.wait, 20)
        finally:
            stop_process(proc)
    assert code == 130, err.read_text()
    text = err.read_text()
    assert f"probe {command}: interrupted" in text and "Traceback" not in text


def test_init_writes_a_starter_that_validates_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "conf" / "stageprobe.yaml"
    assert cli(["init", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().err
    assert cli(["validate", "-c", str(path)]) == 0
    starter = path.read_text()
    path.write_text(starter + "# mine\n")
    assert cli(["init", str(path)]) == 2
    assert "exists; not overwriting it" in capsys.readouterr().err
    assert path.read_text().endswith("# mine\n"), "the existing file is untouched"
    assert cli(["init", str(path), "--force"]) == 0 and path.read_text() == starter
    capsys.readouterr()
    assert cli(["init", "-"]) == 0
    assert "targets:" in capsys.readouterr().out


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from probe.cli import _parser

    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_of_every_command_is_described() -> None:
    for name, parser in subcommands().items():
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (
                f"probe {name} {'/'.join(action.option_strings) or action.dest} has no help")


def test_help_names_every_variable_the_code_reads_and_the_readme_s_exit_codes() -> None:
    from probe.cli import _parser
    from probe.config import Settings

    text = _parser().format_help()
    read = set()
    for source in (ROOT / "probe").rglob("*.py"):
        read |= set(re.findall(r"\bPROBE_[A-Z_]+[A-Z]\b", source.read_text(encoding="utf-8")))
    read |= {f"PROBE_{name.upper()}" for name in Settings.model_fields if name != "port"}
    read |= {"PORT", "NO_COLOR", "GITHUB_STEP_SUMMARY"}
    missing = sorted(v for v in read if v not in text)
    assert not missing, f"probe --help does not name {missing}"
    for signame in ("SIGTERM", "SIGHUP", "SIGINT"):
        assert signame in text
    codes = re.findall(r"^  (\d+) ", text.split("exit codes:")[1], re.M)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    said = readme[readme.index("\nExit codes:"):].split("\n\n")[0]
    assert re.findall(r"`(\d+)`", said) == codes, (said, codes)
    for name in ("run", "check", "gate", "validate", "init"):
        assert "exit codes" in subcommands()[name].format_help(), name


async def test_one_round_shows_what_it_waits_for(
        twin: Twin, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    twin.set_fault(health="503")
    cfg = str(write_config(tmp_path, health(twin)))
    assert await run("check", "-c", cfg) == 1  # no --wait: one round
    err = capsys.readouterr().err
    assert "] 0/1 critical ready; backend-health: http_status: HTTP 503" in err, err
    assert "READY:" not in err


def tty_output(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`probe ARGV` with its stdout on a pseudo-terminal: (exit code, what it printed)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "probe", *argv], stdout=slave,
                                stderr=subprocess.DEVNULL, env=env)
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(20)
    finally:
        os.close(master)
        stop_process(proc)
    return code, b"".join(chunks).decode()


@pytest.mark.parametrize("no_color", ["", "1"])
async def test_check_is_coloured_on_a_terminal_unless_no_color(
        no_color: str, twin: Twin, tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, health(twin)))
    code, out = await asyncio.to_thread(tty_output, ["check", "-c", cfg],
                                        {**os.environ, "NO_COLOR": no_color})
    assert code == 0 and "backend-health" in out, out
    assert ("\x1b[32mOK" in out) is (not no_color), repr(out)
    assert ("\x1b[" in out) is (not no_color)
