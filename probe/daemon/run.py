"""`probe run`: probe continually, serve /metrics and /readyz, reload on SIGHUP, drain on SIGTERM.

Shutdown order matters for a CI gate: on SIGTERM/SIGINT /readyz turns 503 `draining` at once
(nobody should start a deploy against a prober that is going away), then in-flight probes are
cancelled, then the listener closes; the process exits 0 well within 5 s.

A reload never makes things worse: an invalid new file is logged with all its errors and the
running config stays. The file is read off the event loop and applied only once two reads agree
(probe.daemon.reload: a FIFO, a hung mount or a half-written file cannot block the loop or open
the gate). A valid one starts added targets, stops removed ones and removes their series, restarts
changed ones (any field, or the credential they use) at `pending`, and keeps the state and
latency windows of unchanged targets only. Once draining, SIGHUP is ignored: a daemon going
away must not start new targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import ValidationError

from probe import __version__
from probe.checks import CheckContext
from probe.config import Config, ConfigError, Settings, Target, load_config, parse_config
from probe.credentials import Credentials
from probe.daemon.history import History
from probe.daemon.listener import GuardedSite, ServerLimits
from probe.daemon.reload import FileReader, read_settled
from probe.daemon.scheduler import Scheduler
from probe.daemon.server import Runtime, make_app
from probe.daemon.statelog import StateLog
from probe.logging import configure
from probe.loop import run_loop
from probe.metrics import Metrics
from probe.outcome import Outcome
from probe.readiness import Readiness
from probe.redact import KNOWN, Secrets
from probe.shard import Shard, from_environ, owned

log = structlog.get_logger("probe.daemon")
SHUTDOWN_TIMEOUT = 1.0  # seconds the listener waits for open requests when closing


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        errors = [f"PROBE_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                  for e in exc.errors(include_url=False, include_input=False)]
        raise ConfigError("environment", errors) from None


def _context(config: Config) -> CheckContext:
    return CheckContext(Credentials(config.credentials), config.expect_version)


class Daemon:
    """The running prober: config, scheduler, metrics, readiness, history and the HTTP server."""

    def __init__(
        self, config: Config, *, config_path: Path | None = None, gate_token: str | None = None,
        shard: Shard | None = None, limits: ServerLimits | None = None,
    ) -> None:
        self.limits = limits or ServerLimits.from_environ()  # see probe.daemon.listener
        self.config_path = config_path
        if gate_token:  # masked in every log line, like the targets' secrets
            KNOWN.add(self, Secrets([gate_token]))
        self.shard = shard or Shard()
        config = owned(config, self.shard)  # this shard's targets only, here and in apply()
        self.ctx = _context(config)
        self.metrics = Metrics()
        self.metrics.set_shard(self.shard.index, self.shard.count, self.shard.replicas)
        self.history = History.from_config(config)
        self.runtime = Runtime(
            config=config, readiness=Readiness(config), metrics=self.metrics,
            history=self.history, gate_token=gate_token,
        )
        # the log lines of state, cause, gate and staleness changes; its clock is the one
        # _on_outcome gives readiness
        self.states = StateLog(clock=time.time)
        self.scheduler = Scheduler(config, self.ctx, self._on_outcome, self.metrics.observe_lag,
                                   undecided=self.runtime.readiness.undecided)
        self.runtime.scheduler = self.scheduler
        if config_path is not None:  # POST /-/reload (probe reload), like SIGHUP
            self.runtime.reload = self.reload
        for target in config.targets:
            self.metrics.add_target(target)
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._reader = FileReader()
        self._reloading: asyncio.Task[None] | None = None  # SIGHUP's, re-run while signalled
        self._reload_again = False
        self._current: asyncio.Future[bool] | None = None  # the one read-and-apply in flight
        self.url = ""

    @property
    def config(self) -> Config:
        return self.runtime.config

    def _on_outcome(self, outcome: Outcome, target: Target) -> None:
        self.metrics.record(outcome, target)
        self.history.record(outcome)
        readiness = self.runtime.readiness
        transition = readiness.observe(outcome, time.time())
        if transition is not None:
            self.history.transition(transition)
        self.states.after(outcome, transition, readiness)

    async def start(self, host: str, port: int) -> str:
        """Listen, then start probing; returns the base URL. OSError if the port is taken."""
        self._runner = web.AppRunner(
            make_app(self.runtime), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=self.limits.keepalive_timeout,
        )
        await self._runner.setup()
        try:
            await GuardedSite(self._runner, host, port, self.limits.max_connections,
                              reuse_address=True).start()
        except OSError:
            await self._runner.cleanup()
            raise
        bound = self._runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound}"
        await self.scheduler.start()
        loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        log.info("stageprobe started", version=__version__, listen=f"{host}:{bound}", loop=loop,
                 targets=len(self.config.targets), shard=self.shard.label,
                 config=str(self.config_path) if self.config_path else None)
        return self.url

    def request_stop(self, reason: str = "signal") -> None:
        if not self._stopping.is_set():
            self.runtime.draining = True
            self._stopping.set()
            log.info("draining", reason=reason)

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self.runtime.draining = True
        for pending in (self._reloading, self._current):
            if pending is not None:
                pending.cancel()
        await self.scheduler.stop()
        self.states.close()  # no target goes stale for want of the probes just stopped
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.ctx.credentials.aclose()
        for task in list(self._closing):
            task.cancel()
        log.info("stopped")

    def request_reload(self) -> None:
        """SIGHUP: reload in a task (the loop keeps serving meanwhile); ignored once draining.
        A SIGHUP during a reload makes that reload run once more when it ends."""
        if self._stopping.is_set():
            log.info("reload ignored: the daemon is draining")
            return
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.create_task(self._reload_until_current(), name="reload")

    async def _reload_until_current(self) -> None:
        while True:
            self._reload_again = False
            await self.reload()
            if not self._reload_again:
                return

    async def reload(self) -> bool:
        """Re-read the config file; on any error keep the running config. True if applied.

        Callers at the same time (SIGHUP, POST /-/reload) share one read-and-apply: two would
        contend for the one reader thread and apply twice."""
        if self._current is None or self._current.done():
            self._current = asyncio.ensure_future(self._reload_once())
        return await asyncio.shield(self._current)

    async def _reload_once(self) -> bool:
        if self.config_path is None:
            log.warning("reload requested but there is no config file to re-read")
            return False
        try:
            text = await read_settled(self.config_path, self._reader)
            new = parse_config(text, str(self.config_path))
        except ConfigError as err:
            first = err.errors[0] if err.errors else "invalid"
            more = f" (+{len(err.errors) - 1} more)" if len(err.errors) > 1 else ""
            log.error(f"config reload failed: {first}{more}; the running config stays",
                      source=err.source, errors=err.errors)
            return False
        if self._stopping.is_set():
            log.info("reload dropped: the daemon began draining while reading the file")
            return False
        self.apply(new)
        return True

    def apply(self, new: Config) -> None:
        new = owned(new, self.shard)
        old = self.config
        new_targets = {t.name: t for t in new.targets}
        ctx = None
        if new.credentials != old.credentials or new.expect_version != old.expect_version:
            ctx, previous = _context(new), self.ctx
            self.ctx = ctx
            self._close_later(previous.credentials,
                              max((t.timeout for t in old.targets), default=0.0) + 1)
        self.runtime.config = new
        changes = self.runtime.readiness.reconfigure(new)  # computed once, for everyone below
        self.scheduler.reconfigure(new, ctx, restart=changes.changed)
        self.states.forget({*changes.removed, *changes.changed})
        for name in changes.removed:
            self.metrics.forget(name)
            self.history.forget(name)
        for name in changes.added + changes.changed:  # a kind change (http <-> ws) swaps series
            self.metrics.add_target(new_targets[name])
        self.history.reconfigure(new.history.results, new.history.span, len(new.targets))
        log.info("config reloaded", added=changes.added, removed=changes.removed,
                 changed=changes.changed, targets=len(new.targets))

    def _close_later(self, credentials: Credentials, after: float) -> None:
        """Close replaced credentials once probes that may still use them are done."""
        async def close() -> None:
            try:
                await asyncio.sleep(after)
            finally:
                with contextlib.suppress(Exception):
                    await credentials.aclose()

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def install_signals(daemon: Daemon, reload: bool = True) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop, sig.name)
    if reload and hasattr(signal, "SIGHUP"):
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)


async def serve(
    config: Config, *, host: str, port: int, config_path: Path | None = None,
    gate_token: str | None = None,
    on_started: Callable[[Daemon], Awaitable[None] | None] | None = None,
    shard: Shard | None = None,
) -> int:
    """Run a daemon until SIGTERM/SIGINT; the exit code. Also used by `probe demo`."""
    daemon = Daemon(config, config_path=config_path, gate_token=gate_token, shard=shard)
    install_signals(daemon, reload=config_path is not None)
    try:
        await daemon.start(host, port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        log.error(f"cannot listen on {host}:{port}: {why}", listen=f"{host}:{port}", error=why)
        await daemon.scheduler.stop()
        return 2
    try:
        if on_started is not None:
            result = on_started(daemon)
            if asyncio.iscoroutine(result):
                await result
        await daemon.wait_stopped()
    finally:
        await daemon.stop()
    return 0


GC_THRESHOLDS = (10_000, 20, 100)  # CPython's default is (700, 10, 10)


def settle_gc(daemon: Daemon) -> None:
    """Keep the cyclic GC from stalling the event loop (`probe run` only; see bench/).

    Why: with ~1000 targets the daemon holds ~10^5 long-lived objects (config, metric
    children, readiness windows), and every full collection walked them all with the loop
    blocked: 50-300 ms pauses every few seconds, which were most of the scheduler lag p99 and
    of the latency error p99. gc.freeze() takes what exists out of the collector's way: once
    now, and again once every target has had its first result (metric series and windows are
    made then). Fewer young collections (a larger gen0 threshold) cost less CPU; each stays
    short. Reference counting still frees everything as before; only garbage cycles among
    frozen objects would stay, and those are built once at start.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    settle = min(60.0, max((t.interval + t.timeout for t in daemon.config.targets),
                           default=0.0) + 1.0)

    def freeze_again() -> None:
        gc.collect()
        gc.freeze()

    asyncio.get_running_loop().call_later(settle, freeze_again)


def main(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure(level=settings.log_level)
    shard = from_environ()
    path = Path(args.config) if getattr(args, "config", None) else settings.config
    config = load_config(path)
    try:
        host, port = settings.host_port
    except ValueError as exc:
        raise ConfigError("environment", [str(exc)]) from None
    token = settings.gate_token.get_secret_value() if settings.gate_token else None
    code = run_loop(serve(config, host=host, port=port, config_path=path, gate_token=token,
                          on_started=settle_gc, shard=shard), daemon=True)
    sys.stderr.flush()
    return code
