"""Reloads never make /readyz say more than the evidence: `probe run` as a real subprocess (and
the Daemon in-process where a real signal to our own process is the simplest real path).

- a changed target (any field, or the credential it uses) restarts at `pending`: the gate does not
  answer 200 on what was proven of the old definition;
- a config caught half-written by SIGHUP is not applied until two reads agree, so a failing
  critical target is never dropped, not even for a moment;
- the file is read off the event loop with a timeout: a FIFO cannot block /livez or SIGTERM;
- once draining, SIGHUP does not reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from helpers import ProbeRun, StartDaemon, refused_port, until

from probe.config import ConfigError, parse_config
from probe.daemon.reload import FileReader, read_settled
from probe.daemon.run import install_signals
from probe.twin import Twin

pytestmark = pytest.mark.timeout(90)


async def answer(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as r:
        return r.status, await r.json(content_type=None)


def logged(p: ProbeRun, message: str) -> Callable[[], list[dict[str, Any]]]:
    """A poll for the daemon's JSON log lines starting with `message`."""
    return lambda: [line for line in p.logs() if line.get("message", "").startswith(message)]


@pytest.mark.parametrize("change", ["url", "credential"])
async def test_a_changed_target_restarts_at_pending(
    change: str, twin: Twin, http: aiohttp.ClientSession,
    probe_run: Callable[..., ProbeRun], tmp_path: Path,
) -> None:
    """Measured before the fix: 200 for ~failure_threshold x interval after repointing a ready
    critical target at a dead port; a rotated token kept the old token's `ready` for good."""
    cfg = tmp_path / "probe.yaml"

    def write(url: str, token: str) -> None:
        cfg.write_text(yaml.safe_dump({
            "defaults": {"interval": "1s", "timeout": "500ms", "success_threshold": 2,
                         "failure_threshold": 3},
            "credentials": {"ci": {"bearer": {"token": token}}},
            "targets": [{"name": "api", "url": url, "credential": "ci"},
                        {"name": "keep", "url": f"{twin.url}/api/health"}]}))

    write(f"{twin.url}/health", "token-1")
    p = await probe_run(cfg).live()

    async def ready() -> dict[str, Any] | None:
        status, body = await answer(http, f"{p.url}/api/v1/status")
        return body if status == 200 and body["ready"] else None

    before = {t["name"]: t for t in (await until(ready, "both targets ready"))["targets"]}
    with refused_port() as dead:
        if change == "url":
            write(f"http://127.0.0.1:{dead}/health", "token-1")
        else:
            write(f"{twin.url}/health", "token-2")
        p.signal(signal.SIGHUP)
        [line] = await until(logged(p, "config reloaded"), "the reload to be applied")
        assert line["changed"] == ["api"] and line["added"] == line["removed"] == []
        status, body = await answer(http, f"{p.url}/readyz")
        async with http.get(f"{p.url}/metrics") as r:
            metrics = await r.text()
    assert status == 503, body
    targets = {t["name"]: t for t in body["targets"]}
    assert targets["api"]["state"] in ("pending", "failing") and not targets["api"]["ready"]
    # Restarted: its count begins again (one probe of the new definition may already have
    # succeeded by the time /readyz is asked; the old record had at least success_threshold).
    assert targets["api"]["consecutive_successes"] < 2, targets["api"]
    assert targets["keep"]["ready"] and targets["keep"]["since"] == before["keep"]["since"]
    assert 'probe_target_ready{target="api"} 0' in metrics
    assert 'probe_target_ready{target="keep"} 1' in metrics
    assert "probe_gate_ready 0" in metrics
    assert "token-1" not in p.log_text() and "token-2" not in p.log_text()


async def test_a_half_written_config_never_drops_a_failing_critical_target(
    twin: Twin, http: aiohttp.ClientSession, probe_run: Callable[..., ProbeRun], tmp_path: Path,
) -> None:
    """The file is rewritten a line at a time (a slow copy) and SIGHUP arrives when only its first
    lines are there, which parse as a valid config without the failing target. Read at once,
    that prefix opened the gate; read until two reads agree, the whole file is applied."""
    cfg = tmp_path / "probe.yaml"
    with refused_port() as dead:
        lines = ["defaults: {interval: 300ms, timeout: 250ms, success_threshold: 1,"
                 " failure_threshold: 1}", "targets:"]
        lines += [f"  - {{name: pad{i}, url: '{twin.url}/health'}}" for i in range(12)]
        lines.append(f"  - {{name: broken, url: 'http://127.0.0.1:{dead}/'}}")
        cfg.write_text("\n".join(lines) + "\n")
        p = await probe_run(cfg).live()

        async def broken_failing() -> bool:
            status, body = await answer(http, f"{p.url}/readyz")
            states = {t["name"]: t["state"] for t in body["targets"]}
            return status == 503 and states.pop("broken") == "failing" and all(
                s == "ready" for s in states.values())

        await until(broken_failing, "the pads ready and broken failing")
        opened: list[Any] = []

        async def watch() -> None:  # the gate must stay shut all along
            while True:
                status, body = await answer(http, f"{p.url}/readyz")
                if status == 200:
                    opened.append(body)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            with cfg.open("w") as f:
                f.write("\n".join(lines[:4]) + "\n")  # defaults, targets: and two pads
                f.flush()
                p.signal(signal.SIGHUP)
                for line in lines[4:]:  # the rest at a slow copy's pace
                    await asyncio.sleep(0.05)
                    f.write(line + "\n")
                    f.flush()
            [line] = await until(logged(p, "config reloaded"), "the settled file applied")
            status, body = await answer(http, f"{p.url}/readyz")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    assert line["removed"] == [] and line["changed"] == [] and line["added"] == []
    assert not opened, f"/readyz said ready while the file was being written: {opened[0]}"
    assert status == 503 and "broken" in {t["name"] for t in body["targets"]}


async def test_a_fifo_config_blocks_neither_livez_nor_sigterm(
    twin: Twin, http: aiohttp.ClientSession, probe_run: Callable[..., ProbeRun], tmp_path: Path,
) -> None:
    """SIGHUP with the config path now a FIFO nobody writes: open() blocks in the kernel. On the
    event loop that made /livez unreachable and SIGTERM wait; in the reader thread it does not."""
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [
        {"name": "h", "url": f"{twin.url}/health", "interval": "300ms", "timeout": "250ms"}]}))
    p = await probe_run(cfg).live()
    cfg.unlink()
    os.mkfifo(cfg)
    p.signal(signal.SIGHUP)
    probes = twin.requests("/health")
    for _ in range(3):  # /livez answers while the read hangs, and probing goes on
        status, body = await asyncio.wait_for(answer(http, f"{p.url}/livez"), 2)
        assert status == 200 and body["alive"] is True, body
    await until(lambda: twin.requests("/health") >= probes + 3, "probes while the read hangs")
    p.signal(signal.SIGTERM)  # during the hung read
    assert await p.wait(5) == 0
    assert "Traceback" not in p.log_text()


async def test_a_read_that_hangs_times_out_and_is_not_repeated(tmp_path: Path) -> None:
    """FileReader on a real FIFO: the read gives up after its timeout, and while its thread is
    still stuck in open() no second thread is started."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    reader = FileReader(timeout=0.3)
    try:
        with pytest.raises(ConfigError, match=r"could not be read within 0\.3s"):
            await reader.read(fifo)
        with pytest.raises(ConfigError, match="an earlier read of the file has still not returned"):
            await reader.read(fifo)
    finally:  # release the stuck thread: a writer opens, and closes at once
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


async def test_a_file_that_keeps_changing_is_not_applied(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("v0\n")
    reader = FileReader()

    async def keep_writing() -> None:  # whole versions (os.replace): never an empty file
        for i in range(1, 1000):
            (tmp_path / "next").write_text(f"v{i}\n")
            os.replace(tmp_path / "next", path)
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(keep_writing())
    try:
        with pytest.raises(ConfigError, match=r"kept changing for 0\.3s"):
            await read_settled(path, reader, settle=0.05, within=0.3)
    finally:
        writer.cancel()
    assert await read_settled(path, reader, settle=0.05) == path.read_text()


@contextlib.contextmanager
def signal_handlers() -> Iterator[asyncio.Event]:
    """Whatever install_signals puts on the test's own loop is taken off again. Yields an event
    set by SIGUSR1: signals sent in a row are handled in that order, so once a SIGUSR1 sent after
    a SIGHUP has been handled, the SIGHUP's handler has run."""
    loop = asyncio.get_running_loop()
    marker = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, marker.set)
    try:
        yield marker
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)


async def test_sighup_reloads_but_not_while_draining(
    twin: Twin, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The real SIGHUP handler, sent to this process: it reloads, and after SIGTERM (draining)
    it does not — a daemon going away must not start new targets."""
    cfg = tmp_path / "probe.yaml"

    def write(*names: str) -> None:
        cfg.write_text(yaml.safe_dump({"targets": [
            {"name": n, "url": f"{twin.url}/health", "interval": "300ms", "timeout": "250ms"}
            for n in names]}))

    write("a")
    daemon = await start_daemon(parse_config(cfg.read_text(), env={}))
    daemon.config_path = cfg
    names = lambda: [t.name for t in daemon.config.targets]  # noqa: E731
    with signal_handlers() as handled:
        install_signals(daemon)
        write("a", "b")
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: names() == ["a", "b"], "the SIGHUP reload")

        write("a", "b", "c")
        os.kill(os.getpid(), signal.SIGTERM)  # the real handler: draining
        await until(lambda: daemon.runtime.draining, "draining")
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(handled.wait(), 10)  # the SIGHUP's handler has run
        assert names() == ["a", "b"], "reloaded while draining"


async def test_concurrent_reloads_share_one_read_and_apply(
    twin: Twin, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """SIGHUP and POST /-/reload at once: both get the one reload's answer, rather than the
    second finding the reader busy and reporting a failure."""
    cfg = tmp_path / "probe.yaml"
    cfg.write_text(yaml.safe_dump({"targets": [{"name": "a", "url": f"{twin.url}/health"}]}))
    daemon = await start_daemon(parse_config(cfg.read_text(), env={}))
    daemon.config_path = cfg
    cfg.write_text(yaml.safe_dump({"targets": [{"name": "b", "url": f"{twin.url}/health"}]}))
    assert await asyncio.gather(daemon.reload(), daemon.reload()) == [True, True]
    assert [t.name for t in daemon.config.targets] == ["b"]
