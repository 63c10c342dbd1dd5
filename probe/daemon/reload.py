"""Reading the config file for a SIGHUP reload: off the event loop, bounded, and only once settled.

Why each rule:
- the read runs in its own daemon thread, never on the loop: a FIFO with no writer or a hung
  network mount blocks `open()`/`read()` in the kernel, and on the loop that stopped /livez,
  /readyz and SIGTERM handling with it. A daemon thread (not the default executor) because a
  thread stuck in the kernel cannot be cancelled, and the interpreter joins executor threads at
  exit: the process must still exit on SIGTERM. At most one such thread at a time: while one is
  stuck, further reloads are refused instead of piling up threads.
- each read has READ_TIMEOUT; past it the reload is given up and the running config stays.
- the file is applied only when two reads SETTLE seconds apart agree: an editor or `kubectl cp`
  still writing it gives a prefix that may parse as a valid config with a failing critical
  target missing, which would open the gate. A file still changing after SETTLE_WITHIN seconds
  is not applied.
- MAX_BYTES caps what a read holds in memory.

What a reload changes (diff_configs) is decided here once, for readiness, the scheduler and the
metrics alike: a target is changed when any field of it differs or the credential block it uses
does, and a changed target is proven again from no results.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

from probe.config import Config, ConfigError, Target

READ_TIMEOUT = 5.0  # seconds one read of the file may take
SETTLE = 0.5  # seconds between the two reads that must agree
SETTLE_WITHIN = 10.0  # seconds a file may keep changing before the reload is given up
MAX_BYTES = 16 << 20


def _read_bytes(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"the file is larger than {MAX_BYTES >> 20} MiB")
    return data


class FileReader:
    """Reads one file at a time in a daemon thread, each read bounded by READ_TIMEOUT."""

    def __init__(self, timeout: float = READ_TIMEOUT) -> None:
        self.timeout = timeout
        self._reading = False  # a thread is inside open()/read() (set False as it leaves them)

    async def read(self, path: Path) -> bytes:
        """The file's bytes, or ConfigError saying why not (the reload's log line shows it)."""
        if self._reading:
            raise ConfigError(str(path), [
                "an earlier read of the file has still not returned (a FIFO, or a hung "
                "mount?); not reloading"])
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        def settle(data: bytes | None, error: BaseException | None) -> None:
            if done.done():  # timed out meanwhile
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(data or b"")

        def work() -> None:
            data: bytes | None = None
            error: BaseException | None = None
            try:
                data = _read_bytes(path)
            except OSError as exc:
                error = ConfigError(str(path), [
                    f"cannot read the file: {exc.strerror or type(exc).__name__}"])
            except ValueError as exc:
                error = ConfigError(str(path), [str(exc)])
            self._reading = False
            with contextlib.suppress(RuntimeError):  # the loop closed while we were stuck
                loop.call_soon_threadsafe(settle, data, error)

        self._reading = True
        threading.Thread(target=work, name="config-read", daemon=True).start()
        try:
            async with asyncio.timeout(self.timeout):
                return await done
        except TimeoutError:
            raise ConfigError(str(path), [
                f"the file could not be read within {self.timeout:g}s (a FIFO, or a hung "
                "mount?); not reloading"]) from None


async def read_settled(path: Path, reader: FileReader, settle: float = SETTLE,
                       within: float = SETTLE_WITHIN) -> str:
    """The file's text once two reads `settle` seconds apart agree; ConfigError otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    first = await reader.read(path)
    while True:
        await asyncio.sleep(settle)
        second = await reader.read(path)
        if second == first:
            break
        if loop.time() >= deadline:
            raise ConfigError(str(path), [
                f"the file kept changing for {within:g}s; not reloading"])
        first = second
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None


@dataclass(frozen=True)
class Changes:
    """What a reload does to the targets, computed once (diff_configs) for every consumer."""

    added: list[str]
    removed: list[str]
    changed: list[str]  # definition or credential changed: restarted from scratch


def _uses(target: Target) -> set[str]:
    """The credentials a target uses: its own, or its steps' for a flow."""
    return {c for c in (target.credential, *(s.credential for s in target.steps)) if c}


def diff_configs(old: Config, new: Config) -> Changes:
    """Targets added, removed, and changed: any field of the Target, or the spec of the
    credential it uses (a rotated token or a new token URL is a new definition too)."""
    before = {t.name: t for t in old.targets}
    after = {t.name: t for t in new.targets}
    changed = sorted(
        name for name in before.keys() & after.keys()
        if before[name] != after[name] or any(
            old.credentials.get(c) != new.credentials.get(c) for c in _uses(after[name])))
    return Changes(added=sorted(after.keys() - before.keys()),
                   removed=sorted(before.keys() - after.keys()), changed=changed)
